//! The flags of `cellmesh node`, the top layer of the configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::LogFormat;
use super::{Layered, PskSource};

/// `cellmesh node` flags. Each overrides the same key from the environment
/// and the configuration file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeFlags {
    /// TOML configuration file (keys match these flags; see the README).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Mesh (QUIC) address to bind [default: 0.0.0.0:7400].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Join the mesh through this peer (repeatable).
    #[arg(long = "seed", value_name = "ADDR")]
    pub seeds: Vec<SocketAddr>,
    /// The node's secret key, created if absent [default: DATA_DIR/node.key].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// File holding the mesh pre-shared key as 64 hex digits [default: the
    /// CELLMESH_PSK environment variable].
    #[arg(long, value_name = "PATH")]
    pub psk_file: Option<PathBuf>,
    /// Capability tag to advertise (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Data directory: event log, key, token [default: ./cellmesh-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Control plane (HTTP) address [default: 127.0.0.1:7480].
    #[arg(long, value_name = "ADDR")]
    pub control_listen: Option<SocketAddr>,
    /// Control plane bearer token file, created if absent [default:
    /// DATA_DIR/control.token].
    #[arg(long, value_name = "PATH")]
    pub control_token_file: Option<PathBuf>,
    /// Log format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// How long a drain may take [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_deadline: Option<Duration>,
    /// Stop (draining first) after this many seconds instead of waiting
    /// for a signal.
    #[arg(long = "for", value_name = "SECONDS", value_parser = parse_seconds)]
    pub run_for: Option<Duration>,
}

fn parse_duration(v: &str) -> Result<Duration, String> {
    match humantime::parse_duration(v) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err("must be above zero".into()),
        Err(e) => Err(format!("not a duration like 30s or 2m ({e})")),
    }
}

fn parse_seconds(v: &str) -> Result<Duration, String> {
    let secs: f64 = v
        .parse()
        .map_err(|_| "not a number of seconds".to_string())?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err("must be positive".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

impl NodeFlags {
    pub(crate) fn apply(&self, out: &mut Layered) {
        if let Some(v) = self.listen {
            out.listen = Some(v);
        }
        if !self.seeds.is_empty() {
            out.seeds = Some(self.seeds.clone());
        }
        if let Some(v) = &self.key_file {
            out.key_file = Some(v.clone());
        }
        if let Some(v) = &self.psk_file {
            out.psk = Some(PskSource::File(v.clone()));
        }
        if !self.tags.is_empty() {
            out.tags = Some(self.tags.clone());
        }
        if let Some(v) = &self.data_dir {
            out.data_dir = Some(v.clone());
        }
        if let Some(v) = self.control_listen {
            out.control_listen = Some(v);
        }
        if let Some(v) = &self.control_token_file {
            out.token_file = Some(v.clone());
        }
        if let Some(v) = self.log_format {
            out.log_format = Some(v);
        }
        if let Some(v) = self.drain_deadline {
            out.drain_deadline = Some(v);
        }
    }
}
