//! The token, and bad input: each a clear error naming the thing, the
//! exit code the CLI documents, and the node keeps serving.

use std::process::Command;

use super::common::*;

#[test]
fn the_token_guards_every_route_but_health() {
    let dir = scratch("token");
    let a = NodeProc::start(&dir, "a", &[], None);
    let b = NodeProc::start(&dir, "b", &[], None);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.token_file())
            .expect("token file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is owner-only");
    }
    assert_eq!(a.token().len(), 64);
    for path in [
        "/v1/node",
        "/v1/cells",
        "/v1/daemons",
        "/v1/peers",
        "/metrics",
        "/v1/events",
    ] {
        for token in [None, Some("wrong"), Some(b.token().as_str())] {
            let (status, body) = a.http("GET", path, token, b"");
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
            assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
        }
        let (status, _) = a.http("GET", path, Some(&a.token()), b"");
        assert_eq!(status, 200, "{path} with the node's token");
    }
    for path in ["/livez", "/readyz"] {
        let (status, body) = a.http("GET", path, None, b"");
        assert_eq!(status, 200, "{path}: {body}");
    }
    // The CLI: a refused token and an unreachable node are exit code 3.
    let out = Command::new(bin())
        .args(["--control", &a.control, "--token-file"])
        .arg(b.token_file())
        .arg("status")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );
    let out = Command::new(bin())
        .args(["--control", "127.0.0.1:1", "--token-file"])
        .arg(a.token_file())
        .arg("status")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot reach the node at 127.0.0.1:1"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_input_is_a_clear_error_and_the_node_keeps_serving() {
    let dir = scratch("badinput");
    let a = NodeProc::start(&dir, "a", &[], None);
    let fail = |args: &[&str], stdin: Option<&[u8]>, code: i32, needle: &str| {
        let out = a.cli_stdin(args, stdin);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle),
            "{args:?}: {:?} lacks {needle:?}",
            stderr(&out)
        );
    };
    fail(
        &["apply", "-f", "-"],
        Some(b"{not json"),
        1,
        "does not parse",
    );
    let unknown = super::cells::DOC.replace(
        "\"kind\": \"ExecutionCell\",",
        "\"kind\": \"ExecutionCell\", \"colour\": 1,",
    );
    fail(&["apply", "-f", "-"], Some(unknown.as_bytes()), 1, "colour");
    fail(
        &["apply", "-f", "/nonexistent/doc.json"],
        None,
        1,
        "/nonexistent/doc.json",
    );
    fail(
        &["describe", "cell", "no-such-cell"],
        None,
        1,
        "no-such-cell",
    );
    fail(&["logs", "no-such-cell"], None, 1, "no-such-cell");
    fail(&["delete", "cell", "no-such-cell"], None, 1, "no-such-cell");
    // A well-formed node id of a node that is not in the mesh.
    let stranger = cellmesh::Identity::generate().entity_id().to_string();
    let spawned = a.json(&["spawn", "counter"]);
    let origin = spawned["spawned"][0]["origin_hash"]
        .as_str()
        .expect("origin")
        .to_string();
    fail(
        &["migrate", "daemon", &origin, "--to", &stranger],
        None,
        1,
        &stranger,
    );
    fail(
        &["migrate", "daemon", &origin, "--to", "nonsense"],
        None,
        1,
        "field `to`",
    );
    fail(
        &["migrate", "daemon", "00000000000000aa", "--to", &stranger],
        None,
        1,
        "not a connected peer",
    );
    fail(&["spawn", "no-such-kind"], None, 1, "no-such-kind");
    fail(&["get", "everything"], None, 2, "everything");
    // An over-size body: 413, JSON.
    let big = vec![b' '; cellmesh_runtime::MAX_BODY_BYTES + 1024];
    let (status, body) = a.http("POST", "/v1/cells", Some(&a.token()), &big);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("body_too_large"), "{body}");
    let (status, body) = a.http("GET", "/v1/cells/nope", Some(&a.token()), b"");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"code\":\"unknown_cell\""), "{body}");

    // A config file with an unknown key; a data directory that cannot be.
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:0\"\n[control]\nlisten_at = \"x\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["node", "--config"])
        .arg(&file)
        .env("CELLMESH_PSK", PSK)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("listen_at") && stderr(&out).contains("bad.toml"),
        "{}",
        stderr(&out)
    );
    let blocker = dir.join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let out = Command::new(bin())
        .args([
            "node",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(blocker.join("data"))
        .env("CELLMESH_PSK", PSK)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("data directory") && stderr(&out).contains("a-file/data"),
        "{}",
        stderr(&out)
    );

    // Still serving.
    let status = a.json(&["status"]);
    assert_eq!(status["ready"], true);
    assert_eq!(status["daemons"], 1);
    let _ = std::fs::remove_dir_all(&dir);
}
