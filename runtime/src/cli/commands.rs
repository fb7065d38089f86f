//! The client commands: each one request (or stream) to the node's control
//! plane, its answer printed as a table or as JSON.

use std::io::{IsTerminal, Read};

use hyper::Method;
use serde_json::{json, Value};

use super::client::{resolve_token, Client, ClientError};
use super::{table, Cli, Command, GetWhat, MigrateWhat, Output};

/// Runs a client command and returns its exit code (0 ok, 1 failed,
/// 2 usage, 3 node unreachable or token refused), having printed any
/// error on stderr.
pub async fn run_client(cli: Cli) -> u8 {
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cellmesh: {e}");
            e.exit_code()
        }
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

async fn run(cli: Cli) -> Result<u8, ClientError> {
    let control = cli
        .control
        .clone()
        .or_else(|| std::env::var("CELLMESH_CONTROL").ok())
        .unwrap_or_else(|| crate::config::DEFAULT_CONTROL_LISTEN.to_string());
    let token = resolve_token(cli.token_file.as_ref())?;
    let client = Client::new(&control, token);
    let json_out = cli.output == Output::Json;
    match cli.command {
        Command::Node(_) | Command::Demo => Err(ClientError::Usage("not a client command".into())),
        Command::Apply { file } => {
            let doc = read_input(&file)?;
            let v = client.call(Method::POST, "/v1/cells", Some(doc)).await?;
            if json_out {
                print_json(&v);
            } else {
                println!(
                    "cell {} applied (daemon {})",
                    table::cell(&v["cell_id"]),
                    table::cell(&v["origin_hash"])
                );
            }
            Ok(0)
        }
        Command::Get { what } => {
            let path = match what {
                GetWhat::Cells => "/v1/cells",
                GetWhat::Daemons => "/v1/daemons",
                GetWhat::Peers => "/v1/peers",
            };
            let v = client.call(Method::GET, path, None).await?;
            if json_out {
                print_json(&v);
                return Ok(0);
            }
            let rows = v.as_array().cloned().unwrap_or_default();
            let columns: &[(&str, &str)] = match what {
                GetWhat::Cells => &[
                    ("id", "ID"),
                    ("state", "STATE"),
                    ("exit_code", "EXIT"),
                    ("current_node", "NODE"),
                    ("hosted_here", "HERE"),
                    ("started_at", "STARTED"),
                ],
                GetWhat::Daemons => &[
                    ("origin_hash", "ORIGIN"),
                    ("kind", "KIND"),
                    ("events_processed", "EVENTS"),
                    ("state_bytes", "STATE BYTES"),
                    ("entity_id", "ENTITY"),
                ],
                GetWhat::Peers => &[
                    ("node_id", "NODE"),
                    ("address", "ADDRESS"),
                    ("tags", "TAGS"),
                    ("connected_since", "CONNECTED SINCE"),
                ],
            };
            table::print(&rows, columns);
            Ok(0)
        }
        Command::Describe { id, .. } => {
            let v = client.call(Method::GET, &cell_path(&id, ""), None).await?;
            if json_out {
                print_json(&v);
            } else {
                table::print_fields(&v, 0);
            }
            Ok(0)
        }
        Command::Logs { id } => {
            let v = client
                .call(Method::GET, &cell_path(&id, "/output"), None)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                print!("{}", v["stdout"].as_str().unwrap_or_default());
                eprint!("{}", v["stderr"].as_str().unwrap_or_default());
                if v["finished"] == Value::Bool(false) {
                    eprintln!("(cell {id:?}: the command has not finished)");
                }
            }
            Ok(0)
        }
        Command::Delete { id, .. } => {
            let v = client
                .call(Method::DELETE, &cell_path(&id, ""), None)
                .await?;
            if json_out {
                print_json(&v);
            } else {
                println!("cell {id} is being destroyed");
            }
            Ok(0)
        }
        Command::Migrate { what, id, to } => {
            let path = match what {
                MigrateWhat::Cell => cell_path(&id, "/migrate"),
                MigrateWhat::Daemon => format!("/v1/daemons/{}/migrate", encode(&id)),
            };
            let body = serde_json::to_vec(&json!({ "to": to })).unwrap_or_default();
            let v = client.call(Method::POST, &path, Some(body)).await?;
            if json_out {
                print_json(&v);
            } else {
                println!(
                    "moved to {} in {:.1} ms (blackout {:.2} ms, {} bytes)",
                    table::cell(&v["to"]),
                    v["total_seconds"].as_f64().unwrap_or(0.0) * 1e3,
                    v["blackout_seconds"].as_f64().unwrap_or(0.0) * 1e3,
                    table::cell(&v["snapshot_bytes"]),
                );
            }
            Ok(0)
        }
        Command::Spawn { kind, count, on } => {
            let body = serde_json::to_vec(&json!({"kind": kind, "count": count, "on": on}))
                .unwrap_or_default();
            let v = client.call(Method::POST, "/v1/daemons", Some(body)).await?;
            if json_out {
                print_json(&v);
            } else {
                let spawned = v["spawned"].as_array().map_or(0, Vec::len);
                println!("spawned {spawned} {kind} daemon(s)");
            }
            Ok(if v.get("error").is_some() { 1 } else { 0 })
        }
        Command::Drain { deadline } => drain(&client, deadline, json_out).await,
        Command::Events { follow, since } => {
            let path = format!("/v1/events?since={since}&follow={follow}");
            client
                .stream(Method::GET, &path, None, |v| println!("{v}"))
                .await?;
            Ok(0)
        }
        Command::Upgrade { binary } => super::upgrade::run(&client, binary, json_out).await,
        Command::Status => {
            let v = client.call(Method::GET, "/v1/node", None).await?;
            if json_out {
                print_json(&v);
            } else {
                table::print_fields(&v, 0);
            }
            Ok(0)
        }
    }
}

async fn drain(
    client: &Client,
    deadline: Option<String>,
    json_out: bool,
) -> Result<u8, ClientError> {
    let body = match &deadline {
        Some(d) => serde_json::to_vec(&json!({ "deadline": d })).unwrap_or_default(),
        None => Vec::new(),
    };
    let terminal = std::io::stderr().is_terminal() && !json_out;
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("draining [{bar:40}] {pos}/{len} moved {msg}")
        {
            bar.set_style(style);
        }
        bar
    });
    let mut report = None;
    client
        .stream(Method::POST, "/v1/node/drain", Some(body), |v| {
            match v["type"].as_str() {
                Some("progress") => {
                    let total = v["total"].as_u64().unwrap_or(0);
                    let done = v["migrated"].as_u64().unwrap_or(0);
                    let failed = v["failed"].as_u64().unwrap_or(0);
                    if let Some(bar) = &bar {
                        bar.set_length(total);
                        bar.set_position(done);
                        bar.set_message(format!("{failed} failed"));
                    } else if json_out {
                        println!("{v}");
                    } else {
                        println!("progress: {done}/{total} moved, {failed} failed");
                    }
                }
                _ => report = Some(v),
            }
        })
        .await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let Some(report) = report else {
        return Err(ClientError::Failed(
            "the drain stream ended without a report".into(),
        ));
    };
    if report["type"] == "error" {
        return Err(ClientError::Failed(format!(
            "drain failed: {}",
            report["error"]["message"]
                .as_str()
                .unwrap_or("unknown error")
        )));
    }
    if json_out {
        println!("{report}");
    } else {
        println!(
            "drained: {} of {} moved ({} cells) in {:.2} s; {} stayed; {} left on the node",
            table::cell(&report["migrated"]),
            table::cell(&report["total"]),
            table::cell(&report["cells_migrated"]),
            report["elapsed_seconds"].as_f64().unwrap_or(0.0),
            report["failed"].as_array().map_or(0, Vec::len),
            table::cell(&report["remaining"]),
        );
        for placed in report["placed"].as_array().into_iter().flatten() {
            println!(
                "  {} -> {}",
                table::cell(&placed[1]),
                table::cell(&placed[0])
            );
        }
        for f in report["failed"].as_array().into_iter().flatten() {
            let what = f["cell_id"]
                .as_str()
                .map(|c| format!("cell {c}"))
                .unwrap_or_else(|| format!("daemon {}", table::cell(&f["origin_hash"])));
            println!("  stayed: {what}: {}", table::cell(&f["message"]));
        }
    }
    let stayed = report["failed"].as_array().is_some_and(|f| !f.is_empty());
    Ok(u8::from(stayed))
}

fn read_input(file: &std::path::Path) -> Result<Vec<u8>, ClientError> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Failed(format!("reading stdin: {e}")))?;
        return Ok(buf);
    }
    std::fs::read(file).map_err(|e| ClientError::Failed(format!("{}: {e}", file.display())))
}

fn cell_path(id: &str, suffix: &str) -> String {
    format!("/v1/cells/{}{suffix}", encode(id))
}

/// Percent-encodes a path segment.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
