//! Parsing of single configuration values, with errors naming the key and
//! where the value came from.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cellmesh::mesh::{Psk, PskError};

use super::ConfigError;

/// Where a value came from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "config file {}", p.display()),
            Self::Env(v) => write!(f, "environment {v}"),
        }
    }
}

fn bad(key: &'static str, src: &Source, reason: String) -> ConfigError {
    ConfigError::Value {
        key,
        source_name: src.to_string(),
        reason,
    }
}

/// The log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn addr(key: &'static str, src: &Source, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim()
        .parse()
        .map_err(|e| bad(key, src, format!("{v:?} is not an ip:port address ({e})")))
}

pub(crate) fn addr_list(
    key: &'static str,
    src: &Source,
    v: &str,
) -> Result<Vec<SocketAddr>, ConfigError> {
    list(v).iter().map(|a| addr(key, src, a)).collect()
}

/// A comma-separated list, blanks dropped.
pub(crate) fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn log_format(
    key: &'static str,
    src: &Source,
    v: &str,
) -> Result<LogFormat, ConfigError> {
    match v.trim() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(bad(
            key,
            src,
            format!("{other:?} is not a log format (text or json)"),
        )),
    }
}

pub(crate) fn duration(key: &'static str, src: &Source, v: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(v.trim()).map_err(|e| {
        bad(
            key,
            src,
            format!("{v:?} is not a duration like 30s or 2m ({e})"),
        )
    })?;
    if d.is_zero() {
        return Err(bad(key, src, "must be above zero".into()));
    }
    Ok(d)
}

/// Decodes a PSK written as 64 hex digits (surrounding whitespace ignored).
/// The message never echoes the key.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_psk(text: &str) -> Result<Psk, String> {
    Psk::from_hex(text).map_err(|e| match e {
        PskError::Length(n) => format!("expected 64 hex digits, got {n} characters"),
        PskError::NotHex(at) => format!("non-hex digit at position {at}"),
        other => other.to_string(),
    })
}
