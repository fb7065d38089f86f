//! The compute layer's protocols on the mesh, registered on its router when
//! a [`DaemonRuntime`] is created:
//!
//! - `cellmesh/events/1` ([`wire`]): deliveries and spawns, as tagged
//!   requests and replies on a few long-lived streams per peer (`client`,
//!   `serve`);
//! - `cellmesh/migrate/1`: one stream per migration or status query
//!   (`migrate`; the protocol itself is [`migration`](super::migration)).
//!
//! Both reach the node's runtime through one [`Binding`]: a started runtime
//! binds itself, and until then (or after its shutdown) peers are told
//! `NotReady`.

mod client;
mod migrate;
mod serve;
pub(crate) mod wire;

use std::any::Any;
use std::sync::Arc;

use arc_swap::ArcSwapOption;

use crate::compute::migration::wire::ALPN_MIGRATE;
use crate::compute::DaemonRuntime;
use crate::mesh::{Mesh, Pool};
use crate::NodeId;

pub(crate) use migrate::migrate_stream;
pub(crate) use serve::refusal;
pub(crate) use wire::{EventRefusal, EventReply, EventRequest, Reply, Request, SpawnRequest};

type Runtime = dyn Fn() -> Option<DaemonRuntime> + Send + Sync;

/// The runtime bound to a node's protocols. It names its owner so that a
/// runtime only ever unbinds itself, and reaches the runtime without
/// keeping it alive.
struct Bound {
    owner: u64,
    runtime: Box<Runtime>,
}

/// What the node's compute protocols share: the bound runtime and the
/// event links to peers.
#[derive(Default)]
pub(crate) struct Binding {
    bound: ArcSwapOption<Bound>,
    links: Pool<NodeId, Arc<client::EventLink>>,
}

impl Binding {
    /// The binding of `mesh`'s compute protocols, registering them on its
    /// router on first use (one binding per node, however many runtimes
    /// are created on it).
    pub(crate) fn of(mesh: &Mesh) -> Arc<Binding> {
        let events = mesh.register_protocol(wire::ALPN_EVENTS, || {
            Arc::new(serve::EventsProtocol {
                binding: Arc::default(),
            })
        });
        let events: Arc<dyn Any + Send + Sync> = events;
        let binding = match events.downcast::<serve::EventsProtocol>() {
            Ok(events) => Arc::clone(&events.binding),
            // Only this module registers the events ALPN.
            Err(_) => Arc::default(),
        };
        mesh.register_protocol(ALPN_MIGRATE, || {
            Arc::new(migrate::MigrateProtocol {
                binding: Arc::clone(&binding),
            })
        });
        binding
    }

    /// Binds the runtime `runtime` reaches, unless another owner's is
    /// bound. Returns whether `owner` now holds the binding.
    pub(crate) fn bind(&self, owner: u64, runtime: Box<Runtime>) -> bool {
        let previous = self.bound.compare_and_swap(
            &None::<Arc<Bound>>,
            Some(Arc::new(Bound { owner, runtime })),
        );
        previous.as_ref().is_none_or(|held| held.owner == owner)
    }

    /// Unbinds the runtime if `owner` holds the binding.
    pub(crate) fn unbind(&self, owner: u64) {
        self.bound.rcu(|held| match held {
            Some(b) if b.owner == owner => None,
            other => other.clone(),
        });
    }

    /// The bound runtime, while it exists.
    pub(crate) fn runtime(&self) -> Option<DaemonRuntime> {
        (self.bound.load().as_ref()?.runtime)()
    }

    fn is_bound(&self) -> bool {
        self.bound.load().is_some()
    }
}

impl Mesh {
    /// Whether a started [`DaemonRuntime`] serves this node's events and
    /// migrations.
    pub fn has_migration_handler(&self) -> bool {
        let Some(events) = self.protocol(wire::ALPN_EVENTS) else {
            return false;
        };
        let events: Arc<dyn Any + Send + Sync> = events;
        events
            .downcast::<serve::EventsProtocol>()
            .is_ok_and(|events| events.binding.is_bound())
    }
}
