//! `cellmesh node` as operators run it: two processes on loopback join
//! through a seed and see each other; a node with the wrong PSK is kept out.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PSK: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

struct Node {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Node {
    fn start(dir: &std::path::Path, name: &str, psk: &str, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cellmesh"))
            .args([
                "node",
                "--listen",
                "127.0.0.1:0",
                "--for",
                "8",
                "--key-file",
            ])
            .arg(dir.join(format!("{name}.key")))
            .args(extra)
            .env("CELLMESH_PSK", psk)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the node binary starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// The first line containing `needle`, within a bounded wait.
    fn expect(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(6)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line containing {needle:?}: {e}"),
            }
        }
    }

    /// Lines printed within `wait`.
    fn lines_within(&self, wait: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => out.push(line),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn scratch(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cellmesh-cli-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// `node <id> listening on <addr>` → (id, addr).
fn banner(line: &str) -> (String, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    (words[1].to_owned(), words[4].to_owned())
}

#[test]
fn two_node_processes_join_through_a_seed() {
    let dir = scratch("join");
    let a = Node::start(&dir, "a", PSK, &[]);
    let (a_id, a_addr) = banner(&a.expect("listening on"));
    let b = Node::start(&dir, "b", PSK, &["--seed", &a_addr]);
    let (b_id, _) = banner(&b.expect("listening on"));
    assert!(b.expect("peer joined").contains(&a_id));
    assert!(a.expect("peer joined").contains(&b_id));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_with_another_psk_is_kept_out() {
    let dir = scratch("psk");
    let a = Node::start(&dir, "a", PSK, &[]);
    let (_, a_addr) = banner(&a.expect("listening on"));
    let other = "a5".repeat(32);
    let b = Node::start(&dir, "b", &other, &["--seed", &a_addr]);
    b.expect("listening on");
    let seen: Vec<String> = b
        .lines_within(Duration::from_secs(2))
        .into_iter()
        .chain(a.lines_within(Duration::from_millis(200)))
        .collect();
    assert!(
        !seen.iter().any(|l| l.contains("peer joined")),
        "no peer may join with a wrong PSK: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_psk_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_cellmesh"))
        .args(["node", "--listen", "127.0.0.1:0", "--for", "1"])
        .env_remove("CELLMESH_PSK")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("CELLMESH_PSK"), "{err}");
}
