//! `cellmesh`: the node daemon and CLI.
//!
//! `cellmesh demo` runs the built-in local demo (no configuration needed);
//! `cellmesh version` prints the version.

mod demo;

use std::process::ExitCode;

const USAGE: &str = "usage: cellmesh <command>

commands:
  demo      run a counter daemon locally: deliver, snapshot, restore, resume
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
