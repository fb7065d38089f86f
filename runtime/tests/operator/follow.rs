//! `cellmesh events -f`: the node's signed cell events so far, then new
//! ones as they are appended.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use super::common::*;
use super::drain::apply;

fn doc(id: &str) -> String {
    super::cells::DOC.replace("hello-cell", id).replace(
        ", \"requires\": { \"requirements\": [{ \"tag\": \"runner\" }] }",
        "",
    )
}

#[test]
fn events_follow_prints_the_history_then_new_events() {
    let dir = scratch("follow");
    let a = NodeProc::start(&dir, "a", &[], None);
    apply(&a, &doc("before-cell"));
    let mut follow = Command::new(bin())
        .arg("--control")
        .arg(&a.control)
        .arg("--token-file")
        .arg(a.token_file())
        .args(["events", "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cellmesh events -f starts");
    let (tx, rx) = mpsc::channel();
    let out = follow.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |needle: &str| {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if seen.iter().any(|l: &String| l.contains(needle)) {
                return;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    serde_json::from_str::<serde_json::Value>(&line).expect("a JSON line");
                    seen.push(line);
                }
                Err(_) => panic!("no event naming {needle} within {WAIT:?}: {seen:?}"),
            }
        }
    };
    wait_line("before-cell");
    apply(&a, &doc("after-cell"));
    wait_line("after-cell");
    let _ = follow.kill();
    let _ = follow.wait();
    let _ = reader.join();
    let _ = std::fs::remove_dir_all(&dir);
}
