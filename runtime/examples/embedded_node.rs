//! A service embedding a cellmesh node with its own daemon kind, `tally`
//! (sums the bytes of the events it receives), next to the built-in
//! `counter` and the cells' kind. The node is the same one `cellmesh node`
//! runs: its control plane is driven by the `cellmesh` CLI.
//!
//! Run (the PSK is shared by every node of the mesh):
//!
//! ```sh
//! export CELLMESH_PSK=$(openssl rand -hex 32)
//! cargo run -p cellmesh-runtime --example embedded_node -- ./tally-data 127.0.0.1:7490
//! # in another terminal:
//! cargo run -p cellmesh-runtime -- --control 127.0.0.1:7490 \
//!     --token-file ./tally-data/control.token spawn tally --count 3
//! cargo run -p cellmesh-runtime -- --control 127.0.0.1:7490 \
//!     --token-file ./tally-data/control.token get daemons
//! ```
//!
//! Ctrl-C drains the node (to peers, if any) and leaves the mesh.

use bytes::Bytes;
use cellmesh::capabilities::CapabilityFilter;
use cellmesh::compute::{CausalEvent, MeshDaemon, ProcessError};
use cellmesh_runtime::{logging, Node, NodeConfig, NodeFlags};

/// The service's own kind: the sum of the sizes of the events seen.
#[derive(Default)]
struct Tally(u64);

impl MeshDaemon for Tally {
    fn name(&self) -> &str {
        "tally"
    }
    fn requirements(&self) -> CapabilityFilter {
        CapabilityFilter::default()
    }
    fn process(&mut self, event: &CausalEvent) -> Result<Vec<Bytes>, ProcessError> {
        self.0 += event.payload.len() as u64;
        Ok(vec![Bytes::copy_from_slice(&self.0.to_le_bytes())])
    }
    fn snapshot(&self) -> Option<Bytes> {
        Some(Bytes::copy_from_slice(&self.0.to_le_bytes()))
    }
    fn restore(&mut self, state: Bytes) -> Result<(), ProcessError> {
        let raw: [u8; 8] = state[..]
            .try_into()
            .map_err(|_| ProcessError::RestoreFailed(format!("tally: {} bytes", state.len())))?;
        self.0 = u64::from_le_bytes(raw);
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let flags = NodeFlags {
        data_dir: Some(args.next().unwrap_or_else(|| "./tally-data".into()).into()),
        control_listen: Some(
            args.next()
                .unwrap_or_else(|| "127.0.0.1:7490".into())
                .parse()?,
        ),
        listen: Some("127.0.0.1:0".parse()?),
        ..NodeFlags::default()
    };
    // The service's own settings could come from anywhere; here the same
    // precedence as `cellmesh node`: these flags, then CELLMESH_*.
    let config = NodeConfig::resolve(&flags, |k| std::env::var(k).ok())?;
    logging::init(config.log.format);
    let node = Node::builder(config)
        .register("tally", || Box::new(Tally::default()))
        .start()
        .await?;
    println!(
        "service node {} on {}, control on {} (token in {})",
        node.node_id(),
        node.mesh_addr(),
        node.control_addr(),
        node.config().control.token_file.display()
    );
    node.run_until_signal(None).await;
    Ok(())
}
