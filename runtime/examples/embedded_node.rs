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
//!
//! `cargo test -p cellmesh-runtime` builds this example as a test target
//! (`test = true` in `runtime/Cargo.toml`) and runs its self-check: the
//! same `start_service` as `main`, in a scratch directory on loopback, a
//! `tally` spawned through the control plane and fed events, then a
//! shutdown.

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

/// The service node's settings: `data_dir`, the control plane on
/// `control`, the mesh on an OS-chosen loopback port, the rest read from
/// `env` (`CELLMESH_*`, the PSK among them) as `cellmesh node` does.
fn service_config(
    data_dir: std::path::PathBuf,
    control: std::net::SocketAddr,
    env: impl Fn(&str) -> Option<String>,
) -> Result<NodeConfig, Box<dyn std::error::Error>> {
    let flags = NodeFlags {
        data_dir: Some(data_dir),
        control_listen: Some(control),
        listen: Some("127.0.0.1:0".parse()?),
        ..NodeFlags::default()
    };
    // The service's own settings could come from anywhere; here the same
    // precedence as `cellmesh node`: these flags, then CELLMESH_*.
    Ok(NodeConfig::resolve(&flags, env)?)
}

/// Starts the service's node with its own kind, `tally`.
async fn start_service(config: NodeConfig) -> Result<Node, Box<dyn std::error::Error>> {
    let node = Node::builder(config)
        .register("tally", || Box::new(Tally::default()))
        .start()
        .await?;
    Ok(node)
}

#[cfg_attr(test, allow(dead_code))]
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let data_dir = args.next().unwrap_or_else(|| "./tally-data".into()).into();
    let control = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7490".into())
        .parse()?;
    let config = service_config(data_dir, control, |k| std::env::var(k).ok())?;
    logging::init(config.log.format);
    let node = start_service(config).await?;
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use cellmesh::compute::{CausalEvent, CausalLink};

    use super::*;

    /// One HTTP/1.1 request to the control plane; (status, body).
    fn http(node: &Node, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(node.control_addr()).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            node.token(),
            body.len()
        );
        s.write_all(head.as_bytes()).expect("write");
        let mut raw = String::new();
        let _ = s.read_to_string(&mut raw);
        let status = raw
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = raw
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_node_spawns_and_feeds_its_own_kind() {
        let dir = std::env::temp_dir().join(format!("cellmesh-embedded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let psk = "42".repeat(32);
        let config = service_config(dir.clone(), "127.0.0.1:0".parse().unwrap(), |k| {
            (k == "CELLMESH_PSK").then(|| psk.clone())
        })
        .expect("the service's settings");
        let node = start_service(config).await.expect("the service starts");
        let n = node.clone();
        let (status, body) = tokio::task::spawn_blocking(move || {
            http(
                &n,
                "POST",
                "/v1/daemons",
                r#"{"kind": "tally", "count": 3}"#,
            )
        })
        .await
        .expect("request");
        assert_eq!(status, 201, "{body}");
        let tallies: Vec<u64> = node
            .runtime()
            .daemons(false)
            .into_iter()
            .filter(|d| d.kind == "tally")
            .map(|d| d.origin_hash)
            .collect();
        assert_eq!(tallies.len(), 3);
        let mut last = Vec::new();
        for (seq, size) in [(1, 5usize), (2, 7)] {
            let event = CausalEvent {
                link: CausalLink {
                    origin_hash: 9,
                    horizon_encoded: 0,
                    sequence: seq,
                    parent_hash: 0,
                },
                payload: Bytes::from(vec![0u8; size]),
                received_at: 0,
            };
            last = node.runtime().send(tallies[0], event).await.expect("send");
        }
        assert_eq!(last[0].payload[..], 12u64.to_le_bytes(), "5 + 7 bytes");
        node.shutdown(None).await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
