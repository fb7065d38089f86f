//! Node processes for the operator tests: each `cellmesh node` runs in its
//! own data directory on loopback ports chosen by the OS (read back from
//! `control.addr`), and is driven through the `cellmesh` CLI.
#![allow(dead_code)] // each topic uses part of the harness

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PSK: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// Bound on every wait for a state.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cellmesh")
}

/// A fresh scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cellmesh-op-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Polls `f` until it returns `Some`, at most `WAIT`.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `cellmesh node` process.
pub struct NodeProc {
    pub child: Child,
    pub dir: PathBuf,
    pub control: String,
    pub node_id: String,
    pub mesh_addr: String,
}

impl NodeProc {
    /// Starts a node in `root/name` with `extra` flags (and, if given, a
    /// config file with `config` as its body).
    pub fn start(root: &Path, name: &str, extra: &[&str], config: Option<&str>) -> Self {
        Self::start_with_env(root, name, extra, config, &[])
    }

    /// As [`start`](Self::start), with `env` set for the node process.
    pub fn start_with_env(
        root: &Path,
        name: &str,
        extra: &[&str],
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = root.join(name);
        let _ = std::fs::remove_file(dir.join("control.addr"));
        let mut cmd = Command::new(bin());
        cmd.args(["node", "--data-dir"]).arg(&dir);
        match config {
            Some(body) => {
                let file = root.join(format!("{name}.toml"));
                std::fs::write(&file, body).expect("config file");
                cmd.arg("--config").arg(file);
            }
            None => {
                cmd.args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"]);
            }
        }
        let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log file");
        let child = cmd
            .args(extra)
            .env("CELLMESH_PSK", PSK)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the node binary starts");
        let addr_file = dir.join("control.addr");
        let mut node = Self {
            child,
            dir,
            control: String::new(),
            node_id: String::new(),
            mesh_addr: String::new(),
        };
        node.control = wait_for(&format!("{name}'s control address"), || {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node {name} exited at start: {status}");
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|s| s.trim().to_string())
        });
        let status = node.json(&["status"]);
        node.node_id = status["node_id"].as_str().expect("node id").to_string();
        node.mesh_addr = status["mesh_address"]
            .as_str()
            .expect("address")
            .to_string();
        node
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("control.token")
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.token_file())
            .expect("token")
            .trim()
            .to_string()
    }

    /// Runs `cellmesh --control .. --token-file .. ARGS`.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_stdin(args, None)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(bin());
        cmd.arg("--control")
            .arg(&self.control)
            .arg("--token-file")
            .arg(self.token_file())
            .args(args)
            .env_remove("CELLMESH_TOKEN")
            .env_remove("CELLMESH_CONTROL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("cli runs");
        if let Some(input) = stdin {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write stdin");
        }
        drop(child.stdin.take());
        child.wait_with_output().expect("cli output")
    }

    /// Runs a CLI command with `-o json` that must succeed; its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "cellmesh {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cellmesh {args:?}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Waits until this node has `n` connected peers.
    pub fn wait_peers(&self, n: usize) {
        wait_for(&format!("{n} peers"), || {
            let peers = self.json(&["get", "peers"]);
            (peers.as_array().map_or(0, Vec::len) == n).then_some(())
        });
    }

    /// Origins of the daemons of `kind` this node hosts.
    pub fn daemons(&self, kind: &str) -> Vec<Value> {
        self.json(&["get", "daemons"])
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    /// A raw HTTP request to the control plane; (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.control).expect("connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.control,
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write");
        // The server may answer (413) before reading a large body.
        let _ = stream.write_all(body);
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) with a pid of a child this test started.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        wait_for("the node to exit", || self.child.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        let name = self
            .dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let root = self.dir.parent().expect("root");
        std::fs::read_to_string(root.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

impl NodeProc {
    /// A closure answering `/readyz`'s status at `control` (0 if the node
    /// does not answer).
    pub fn probe(control: &str) -> impl Fn() -> u16 {
        let control = control.to_string();
        move || {
            use std::io::{Read, Write};
            let Ok(mut s) = std::net::TcpStream::connect(&control) else {
                return 0;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let req =
                format!("GET /readyz HTTP/1.1\r\nHost: {control}\r\nConnection: close\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                return 0;
            }
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw);
            String::from_utf8_lossy(&raw)
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0)
        }
    }
}

/// A peer of the mesh in this process, joined through the node at `seed`,
/// with a started runtime and no daemon kinds (it only sends).
pub fn peer(tokio: &tokio::runtime::Runtime, seed: &str) -> cellmesh::compute::DaemonRuntime {
    tokio.block_on(async {
        let psk = cellmesh::mesh::Psk::from_hex(PSK).expect("psk");
        let mesh = cellmesh::mesh::MeshBuilder::new("127.0.0.1:0", psk)
            .expect("builder")
            .seed_peers([seed.parse().expect("addr")])
            .build()
            .await
            .expect("mesh");
        let rt = cellmesh::compute::DaemonRuntime::new(std::sync::Arc::new(mesh));
        rt.start().await.expect("start");
        rt
    })
}

/// Waits until `rt` knows where every daemon of `origins` lives.
pub fn wait_located(rt: &cellmesh::compute::DaemonRuntime, origins: &[u64]) {
    wait_for("the peer to locate every daemon", || {
        origins
            .iter()
            .all(|o| rt.mesh().locate(*o).is_some())
            .then_some(())
    });
}

/// Sends `signal` to process `pid` (one this test caused to exist).
pub fn signal(pid: u64, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) on a node process this test started.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

impl NodeProc {
    /// Each counter daemon's events processed, by origin.
    pub fn counts(&self) -> std::collections::HashMap<u64, u64> {
        self.daemons("counter")
            .into_iter()
            .map(|d| {
                (
                    u64::from_str_radix(d["origin_hash"].as_str().unwrap(), 16).unwrap(),
                    d["events_processed"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// The origins of the daemons `spawn ... -o json` answered.
    pub fn spawn_counters(&self, n: usize) -> Vec<u64> {
        let spawned = self.json(&["spawn", "counter", "--count", &n.to_string()]);
        let origins: Vec<u64> = spawned["spawned"]
            .as_array()
            .expect("spawned")
            .iter()
            .map(|d| u64::from_str_radix(d["origin_hash"].as_str().unwrap(), 16).unwrap())
            .collect();
        assert_eq!(origins.len(), n);
        origins
    }

    /// Applies the cell `doc` (the node's only cell) and waits until its
    /// command completed.
    pub fn apply_completed(&self, doc: &str) {
        let out = self.cli_stdin(&["apply", "-f", "-"], Some(doc.as_bytes()));
        assert!(out.status.success(), "apply: {}", stderr(&out));
        wait_for("the cell to complete", || {
            let cells = self.json(&["get", "cells"]);
            (cells[0]["exit_code"] == 0).then_some(())
        });
    }

    /// Deletes cell `id` (the node's only cell) and waits until it is
    /// listed destroyed.
    pub fn delete_cell(&self, id: &str) {
        let out = self.cli(&["delete", "cell", id]);
        assert!(out.status.success(), "delete {id}: {}", stderr(&out));
        wait_for("the cell to be destroyed", || {
            let cells = self.json(&["get", "cells"]);
            (cells[0]["state"] == "destroyed").then_some(())
        });
    }
}
