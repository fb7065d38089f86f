//! `cellmesh`: the node daemon (`cellmesh node`) and its CLI client
//! (`cellmesh get cells`, `cellmesh drain`, ...). `cellmesh --help` lists
//! the commands; exit codes: 0 ok, 1 the operation failed, 2 usage error,
//! 3 the node could not be reached or refused the token. `cellmesh node`
//! exits 0 after a drain (even one that left daemons no peer took) and 1
//! when a second SIGTERM or Ctrl-C stopped it before its drain finished.

use std::process::ExitCode;

use cellmesh_runtime::cli::{run_client, Cli, Command};
use cellmesh_runtime::{logging, Node, NodeConfig, RunEnd, StartError};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cellmesh: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Demo => match cellmesh_runtime::demo::run().await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("cellmesh demo failed: {e}");
                    ExitCode::FAILURE
                }
            },
            Command::Node(flags) => run_node(*flags).await,
            _ => ExitCode::from(run_client(cli).await),
        }
    })
}

async fn run_node(flags: cellmesh_runtime::NodeFlags) -> ExitCode {
    let config = match NodeConfig::resolve(&flags, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cellmesh node: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log.format);
    let node = match Node::builder(config).start().await {
        Ok(node) => node,
        Err(e) => {
            eprintln!("cellmesh node: {e}");
            let code = match e {
                StartError::Config(_) => 2,
                _ => 1,
            };
            return ExitCode::from(code);
        }
    };
    match node.run_until_signal(flags.run_for).await {
        RunEnd::Interrupted => ExitCode::FAILURE,
        // The successor waits for this process to be gone: no teardown.
        RunEnd::HandedOver => std::process::exit(0),
        _ => ExitCode::SUCCESS,
    }
}
