//! `cellmesh`: the node daemon and CLI.
//!
//! `cellmesh demo` runs the built-in local demo (no configuration needed);
//! `cellmesh node` runs a mesh node; `cellmesh version` prints the version.

mod demo;
mod node;

use std::process::ExitCode;

const USAGE: &str = "usage: cellmesh <command>

commands:
  demo      run a counter daemon locally: deliver, snapshot, restore, resume
  node      run a mesh node until Ctrl-C
              --listen ADDR     address to bind (default 0.0.0.0:7400)
              --seed ADDR       join the mesh through this peer (repeatable)
              --key-file PATH   the node's secret key, created if absent
                                (default ./cellmesh-node.key)
              --psk-file PATH   the mesh pre-shared key as 64 hex digits
                                (default: the CELLMESH_PSK environment variable)
              --tag TAG         advertise a capability tag (repeatable)
              --for SECONDS     stop after this long
  version   print the version
  help      print this text";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") | None => match demo::run().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cellmesh demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        Some("node") => match node::parse(&args[1..]) {
            Ok(node_args) => match node::run(node_args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cellmesh node: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("cellmesh node: {e}\n\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("version" | "--version" | "-V") => {
            println!("cellmesh {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("cellmesh: unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
