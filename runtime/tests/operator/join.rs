//! Nodes join through a seed; a wrong PSK is kept out; a missing PSK is a
//! clear error; `cellmesh` alone prints help.

use std::process::Command;
use std::time::Duration;

use super::common::*;

#[test]
fn two_node_processes_join_through_a_seed() {
    let dir = scratch("join");
    let a = NodeProc::start(&dir, "a", &[], None);
    let b = NodeProc::start(&dir, "b", &["--seed", &a.mesh_addr.clone()], None);
    a.wait_peers(1);
    b.wait_peers(1);
    let peers = a.json(&["get", "peers"]);
    assert_eq!(peers[0]["node_id"], b.node_id.as_str());
    assert!(peers[0]["connected_since"].is_string(), "{peers}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_node_with_another_psk_is_kept_out() {
    let dir = scratch("psk");
    let a = NodeProc::start(&dir, "a", &[], None);
    let other = "a5".repeat(32);
    let mut cmd = Command::new(bin());
    let child = cmd
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.join("b"))
        .args(["--seed", &a.mesh_addr, "--for", "3"])
        .env("CELLMESH_PSK", other)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let out = child.wait_with_output().expect("exits");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("seed peer unreachable"),
        "a warning names the seed: {log}"
    );
    assert!(!log.contains("peer joined"), "{log}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(a.json(&["get", "peers"]), serde_json::json!([]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_psk_is_a_clear_error() {
    let dir = scratch("nopsk");
    let out = Command::new(bin())
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--for",
            "1",
            "--data-dir",
        ])
        .arg(dir.join("a"))
        .env_remove("CELLMESH_PSK")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CELLMESH_PSK"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_arguments_print_help_and_every_command_has_help() {
    let out = Command::new(bin()).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage: cellmesh"), "{}", stderr(&out));
    for cmd in [
        "node", "demo", "apply", "get", "describe", "logs", "delete", "migrate", "spawn", "drain",
        "events", "status",
    ] {
        let out = Command::new(bin())
            .args([cmd, "--help"])
            .output()
            .expect("runs");
        assert!(out.status.success(), "{cmd} --help: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: cellmesh"), "{cmd}");
    }
}

#[test]
fn the_demo_still_runs() {
    let out = Command::new(bin()).arg("demo").output().expect("runs");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("restored; event 4 -> count 4"),
        "{}",
        stdout(&out)
    );
}
