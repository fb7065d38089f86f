//! [`NodeConfig`]: what a node runs with, resolved from flags, the
//! `CELLMESH_*` environment, a TOML file and defaults, in that order of
//! precedence.
//!
//! Every key of the file is documented in the README's operator section
//! with its default; the file's keys match the flags (`control.listen` is
//! `--control-listen`, `CELLMESH_CONTROL_LISTEN`).

mod file;
mod flags;
mod parse;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use flags::NodeFlags;
pub use parse::{parse_psk, LogFormat};

use file::FileLayer;
use parse::Source;

/// Default mesh listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";
/// Default control-plane listen address.
pub const DEFAULT_CONTROL_LISTEN: &str = "127.0.0.1:7480";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./cellmesh-data";
/// Default freeze bound of an upgrade.
pub const DEFAULT_UPGRADE_FREEZE: Duration = Duration::from_millis(500);

/// Default drain deadline.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(30);
/// The environment variable holding the mesh pre-shared key itself.
pub const PSK_ENV: &str = "CELLMESH_PSK";
/// Name of the node key inside the data directory (the default key file).
pub const KEY_FILE_NAME: &str = "node.key";
/// Name of the control token inside the data directory (the default).
pub const TOKEN_FILE_NAME: &str = "control.token";
/// The file, inside the data directory, where a running node writes the
/// address its control plane is bound to (useful with `127.0.0.1:0`).
pub const CONTROL_ADDR_FILE_NAME: &str = "control.addr";

/// Why a configuration could not be resolved. Each variant names the key
/// and where its value came from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML of the expected shape (an unknown key, a value
    /// of the wrong type); the message names the key and its line.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// A value does not parse.
    #[error("{source_name}: key `{key}`: {reason}")]
    Value {
        /// The key (`control.listen`).
        key: &'static str,
        /// Where the value came from: `config file PATH`, `environment
        /// CELLMESH_LISTEN` or `flag --listen`.
        source_name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No pre-shared key was configured.
    #[error(
        "no pre-shared key: set {PSK_ENV} to 64 hex digits (e.g. `openssl rand -hex 32`), \
         or `psk_file` in the config file, or pass --psk-file"
    )]
    MissingPsk,
}

/// Logging output format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

/// The control plane's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Where the HTTP control plane listens (default `127.0.0.1:7480`).
    pub listen: SocketAddr,
    /// The bearer token's file; created (0600, 32 random bytes as hex) on
    /// first start if absent. Default `<data_dir>/control.token`.
    pub token_file: PathBuf,
}

/// Where the pre-shared key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PskSource {
    /// A file holding 64 hex digits.
    File(PathBuf),
    /// The key itself (from `CELLMESH_PSK`), as 64 hex digits.
    Inline(String),
}

/// Everything a node runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeConfig {
    /// Mesh (QUIC) listen address (default `0.0.0.0:7400`).
    pub listen: SocketAddr,
    /// Peers to join through, dialled in the background.
    pub seeds: Vec<SocketAddr>,
    /// The node's secret key, created after the node bound its port if
    /// absent (default `<data_dir>/node.key`).
    pub key_file: PathBuf,
    /// The mesh pre-shared key; `None` only in configurations built in code
    /// for [`NodeBuilder::psk`](crate::NodeBuilder::psk).
    pub psk: Option<PskSource>,
    /// Capability tags this node advertises.
    pub tags: Vec<String>,
    /// The data directory: event log, key, token (default
    /// `./cellmesh-data`).
    pub data_dir: PathBuf,
    /// The control plane.
    pub control: ControlConfig,
    /// Logging.
    pub log: LogConfig,
    /// How long a drain (API, SIGTERM, Ctrl-C) may take (default 30 s).
    pub drain_deadline: Duration,
    /// The most a node's daemons stay frozen in an upgrade before the node
    /// gives up on its successor and serves them again (default 500 ms;
    /// file key `upgrade.freeze`, `CELLMESH_UPGRADE_FREEZE`).
    pub upgrade_freeze: Duration,
}

impl NodeConfig {
    /// The defaults, with the data directory at `data_dir` (the key and
    /// token files inside it).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        Self {
            listen: DEFAULT_LISTEN.parse().expect("a valid constant address"),
            seeds: Vec::new(),
            key_file: data_dir.join(KEY_FILE_NAME),
            psk: None,
            tags: Vec::new(),
            control: ControlConfig {
                listen: DEFAULT_CONTROL_LISTEN
                    .parse()
                    .expect("a valid constant address"),
                token_file: data_dir.join(TOKEN_FILE_NAME),
            },
            data_dir,
            log: LogConfig {
                format: LogFormat::Text,
            },
            drain_deadline: DEFAULT_DRAIN_DEADLINE,
            upgrade_freeze: DEFAULT_UPGRADE_FREEZE,
        }
    }

    /// Resolves the configuration: `flags` over the environment (read
    /// through `env`) over the file named by `--config` (or
    /// `CELLMESH_CONFIG`) over the defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the key and its source.
    pub fn resolve(
        flags: &NodeFlags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file_path = flags
            .config
            .clone()
            .or_else(|| env("CELLMESH_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(path) => FileLayer::load(path)?,
            None => FileLayer::default(),
        };
        let file_src = |path: &Option<PathBuf>| {
            Source::File(path.clone().unwrap_or_else(|| PathBuf::from("?")))
        };
        let fsrc = file_src(&file_path);
        let mut layer = Layered::default();
        // Lowest first: file, then environment, then flags.
        file.apply(&fsrc, &mut layer)?;
        env_layer(&env, &mut layer)?;
        flags.apply(&mut layer);

        let data_dir = layer
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        let mut config = Self::with_data_dir(data_dir.clone());
        if let Some(v) = layer.listen {
            config.listen = v;
        }
        if let Some(v) = layer.seeds {
            config.seeds = v;
        }
        if let Some(v) = layer.key_file {
            config.key_file = v;
        }
        if let Some(v) = layer.tags {
            config.tags = v;
        }
        if let Some(v) = layer.control_listen {
            config.control.listen = v;
        }
        if let Some(v) = layer.token_file {
            config.control.token_file = v;
        }
        if let Some(v) = layer.log_format {
            config.log.format = v;
        }
        if let Some(v) = layer.drain_deadline {
            config.drain_deadline = v;
        }
        if let Some(v) = layer.upgrade_freeze {
            config.upgrade_freeze = v;
        }
        config.psk = layer.psk;
        Ok(config)
    }

    /// Where a running node writes its bound control address.
    pub fn control_addr_file(&self) -> PathBuf {
        self.data_dir.join(CONTROL_ADDR_FILE_NAME)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}

/// The values found so far, each layer overwriting the one below.
#[derive(Debug, Default)]
pub(crate) struct Layered {
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) seeds: Option<Vec<SocketAddr>>,
    pub(crate) key_file: Option<PathBuf>,
    pub(crate) psk: Option<PskSource>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) control_listen: Option<SocketAddr>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) log_format: Option<LogFormat>,
    pub(crate) drain_deadline: Option<Duration>,
    pub(crate) upgrade_freeze: Option<Duration>,
}

fn env_layer(env: &impl Fn(&str) -> Option<String>, out: &mut Layered) -> Result<(), ConfigError> {
    let src = |var: &str| Source::Env(var.to_string());
    let get = |var: &str| env(var).filter(|v| !v.trim().is_empty());
    if let Some(v) = get("CELLMESH_LISTEN") {
        out.listen = Some(parse::addr("listen", &src("CELLMESH_LISTEN"), &v)?);
    }
    if let Some(v) = get("CELLMESH_SEEDS") {
        out.seeds = Some(parse::addr_list("seeds", &src("CELLMESH_SEEDS"), &v)?);
    }
    if let Some(v) = get("CELLMESH_KEY_FILE") {
        out.key_file = Some(PathBuf::from(v));
    }
    if let Some(v) = get("CELLMESH_PSK_FILE") {
        out.psk = Some(PskSource::File(PathBuf::from(v)));
    }
    if let Some(v) = get(PSK_ENV) {
        out.psk = Some(PskSource::Inline(v));
    }
    if let Some(v) = get("CELLMESH_TAGS") {
        out.tags = Some(parse::list(&v));
    }
    if let Some(v) = get("CELLMESH_DATA_DIR") {
        out.data_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = get("CELLMESH_CONTROL_LISTEN") {
        let s = src("CELLMESH_CONTROL_LISTEN");
        out.control_listen = Some(parse::addr("control.listen", &s, &v)?);
    }
    if let Some(v) = get("CELLMESH_CONTROL_TOKEN_FILE") {
        out.token_file = Some(PathBuf::from(v));
    }
    if let Some(v) = get("CELLMESH_LOG_FORMAT") {
        let s = src("CELLMESH_LOG_FORMAT");
        out.log_format = Some(parse::log_format("log.format", &s, &v)?);
    }
    if let Some(v) = get("CELLMESH_DRAIN_DEADLINE") {
        let s = src("CELLMESH_DRAIN_DEADLINE");
        out.drain_deadline = Some(parse::duration("drain.deadline", &s, &v)?);
    }
    if let Some(v) = get("CELLMESH_UPGRADE_FREEZE") {
        let s = src("CELLMESH_UPGRADE_FREEZE");
        out.upgrade_freeze = Some(parse::duration("upgrade.freeze", &s, &v)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
