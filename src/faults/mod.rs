//! The fault-injection harness: real faults on real sockets and processes.
//!
//! - [`proxy`]: a UDP relay placed in front of a node that drops, delays,
//!   duplicates, reorders and blacks out packets per direction, seeded, and
//!   changeable at run time through a cloneable [`ProxyHandle`].
//! - [`process`]: a node in its own OS process ([`NodeProcess`]), driven by
//!   line commands, that the test can `SIGKILL`, `SIGSTOP` and `SIGCONT`,
//!   optionally at a named protocol point (`CELLMESH_FAULT_AT`, see
//!   `cellmesh::fault`).
//! - [`node`]: the program such a process runs ([`node_entry`]).
//! - [`stranger`]: a QUIC client that reaches a node but holds no mesh key.
//!
//! # Placing the proxy between two nodes
//!
//! A node dials a peer at the address it knows it by. Build node A, put a
//! proxy in front of it (`UdpProxy::start(a.local_addr(), seed)`) and let B
//! join *through the proxy* (`MeshBuilder::seed_peers([proxy.addr()])` or
//! `b.connect(proxy.addr())`). Then every packet between A and B crosses
//! the proxy, whichever side dials later:
//!
//! - B knows A by the proxy's address (the remote address of its control
//!   link), so B's event and migration connections to A dial the proxy.
//! - A sees B's packets come from the proxy's upstream socket for B (one
//!   per client address), which is the remote address of A's control link
//!   to B; A's later dials to B (events, migration streams: the SDK's
//!   `addr_of` prefers the live control link's remote address) go to that
//!   socket, and the proxy relays whatever A sends there to B.
//!
//! Ingress is client → node (B → A), egress node → client (A → B).
//!
//! Limits: once the control link between A and B is gone (a blackout longer
//! than the idle timeout), `addr_of` falls back to the address in B's
//! signed membership record, which is B's own socket: a later dial from A
//! to B bypasses the proxy (and, since A drops B's record with the link, a
//! dial may fail as an unknown node instead). A third node C that learns of
//! A or B by gossip dials the advertised address, not the proxy.

pub mod node;
pub mod process;
pub mod proxy;
pub mod stranger;

pub use node::{node_entry, NODE_ENV};
pub use process::{
    HostState, Hosted, MigrateArgs, Migration, NodeOpts, NodeProcess, Outcome, ProcessError, Reply,
};
pub use proxy::{Direction, Faults, ProxyHandle, ProxyStats, Scheduled, UdpProxy};
pub use stranger::{stranger, StrangerError};

/// A small seeded PRNG (xorshift64*), so that a fault schedule replays
/// exactly from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value, zero included).
    pub fn new(seed: u64) -> Self {
        // splitmix64 spreads nearby seeds apart and avoids the zero state.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `true` with probability `p` (0 never, 1 always).
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn the_same_seed_replays_and_another_differs() {
        let a: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..8)
            .scan(Rng::new(7), |r, _| Some(r.next_u64()))
            .collect();
        let c: Vec<u64> = (0..8)
            .scan(Rng::new(8), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mut r = Rng::new(0);
        let hits = (0..10_000).filter(|_| r.chance(0.2)).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
        assert!(!Rng::new(1).chance(0.0));
    }
}
