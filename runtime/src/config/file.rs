//! The TOML configuration file: every key optional, unknown keys refused.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::parse::{self, Source};
use super::{ConfigError, Layered, PskSource};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileLayer {
    listen: Option<String>,
    seeds: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    psk_file: Option<PathBuf>,
    tags: Option<Vec<String>>,
    data_dir: Option<PathBuf>,
    control: Option<ControlSection>,
    log: Option<LogSection>,
    drain: Option<DrainSection>,
    upgrade: Option<UpgradeSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ControlSection {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainSection {
    deadline: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeSection {
    freeze: Option<String>,
}

impl FileLayer {
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Writes this file's values into `out`. Relative paths in the file are
    /// taken relative to the current directory, like the flags'.
    pub(crate) fn apply(self, src: &Source, out: &mut Layered) -> Result<(), ConfigError> {
        if let Some(v) = self.listen {
            out.listen = Some(parse::addr("listen", src, &v)?);
        }
        if let Some(v) = self.seeds {
            let seeds: Result<Vec<_>, _> = v.iter().map(|s| parse::addr("seeds", src, s)).collect();
            out.seeds = Some(seeds?);
        }
        out.key_file = self.key_file.or(out.key_file.take());
        if let Some(p) = self.psk_file {
            out.psk = Some(PskSource::File(p));
        }
        out.tags = self.tags.or(out.tags.take());
        out.data_dir = self.data_dir.or(out.data_dir.take());
        if let Some(control) = self.control {
            if let Some(v) = control.listen {
                out.control_listen = Some(parse::addr("control.listen", src, &v)?);
            }
            out.token_file = control.token_file.or(out.token_file.take());
        }
        if let Some(v) = self.log.and_then(|l| l.format) {
            out.log_format = Some(parse::log_format("log.format", src, &v)?);
        }
        if let Some(v) = self.drain.and_then(|d| d.deadline) {
            out.drain_deadline = Some(parse::duration("drain.deadline", src, &v)?);
        }
        if let Some(v) = self.upgrade.and_then(|u| u.freeze) {
            out.upgrade_freeze = Some(parse::duration("upgrade.freeze", src, &v)?);
        }
        Ok(())
    }
}
