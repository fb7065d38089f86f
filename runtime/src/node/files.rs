//! The node's files: the data directory, the key, the control token, the
//! pre-shared key and the bound control address.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cellmesh::mesh::Psk;
use cellmesh::Identity;

use super::StartError;
use crate::config::{parse_psk, PskSource};

/// Creates `dir` if needed and checks that the node can write there.
pub(crate) fn prepare_data_dir(dir: &Path) -> Result<(), StartError> {
    let fail = |reason: String| StartError::DataDir {
        path: dir.to_owned(),
        reason,
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create it: {e}")))?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| fail(format!("not writable by this process: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Reads the pre-shared key from where the configuration says.
pub(crate) fn load_psk(source: Option<&PskSource>) -> Result<Psk, StartError> {
    match source {
        Some(PskSource::File(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| StartError::Psk {
                reason: format!("psk file {}: {e}", path.display()),
            })?;
            parse_psk(&text).map_err(|reason| StartError::Psk {
                reason: format!("psk file {}: {reason}", path.display()),
            })
        }
        Some(PskSource::Inline(text)) => parse_psk(text).map_err(|reason| StartError::Psk {
            reason: format!("{}: {reason}", crate::config::PSK_ENV),
        }),
        None => Err(StartError::Config(crate::config::ConfigError::MissingPsk)),
    }
}

/// The node key at `path`, or a fresh one to be written once the node
/// bound its port (`true` then).
pub(crate) fn load_key(path: &Path) -> Result<(Identity, bool), StartError> {
    let fail = |reason: String| StartError::KeyFile {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| fail(format!("expected 32 bytes, found {}", bytes.len())))?;
            Ok((Identity::from_seed(seed), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((Identity::generate(), true)),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes a fresh node key (owner-only, never over an existing file).
pub(crate) fn write_key(path: &Path, identity: &Identity) -> Result<(), StartError> {
    write_private(path, &identity.secret_seed()).map_err(|e| StartError::KeyFile {
        path: path.to_owned(),
        reason: format!("cannot write the new key: {e}"),
    })
}

/// The control token at `path`, created (0600, 32 random bytes as hex)
/// if absent.
pub(crate) fn load_or_create_token(path: &Path) -> Result<String, StartError> {
    let fail = |reason: String| StartError::TokenFile {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(fail(format!(
                    "the token is {} characters; at least 16 are required",
                    token.len()
                )));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).map_err(|e| fail(format!("no randomness: {e}")))?;
            let token = hex(&bytes);
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| fail(e.to_string()))?;
            }
            write_private(path, format!("{token}\n").as_bytes())
                .map_err(|e| fail(format!("cannot create it: {e}")))?;
            Ok(token)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Writes a bound address (control or mesh) into the data directory
/// (atomically: a reader sees the whole address or no file).
pub(crate) fn write_addr(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let tmp: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, format!("{addr}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cellmesh-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn key_is_loaded_or_generated_and_written_once() {
        let dir = scratch("key");
        let path = dir.join("node.key");
        let (fresh, created) = load_key(&path).expect("fresh");
        assert!(created);
        assert!(!path.exists(), "nothing is written before the node binds");
        write_key(&path, &fresh).expect("write");
        let (again, created) = load_key(&path).expect("load");
        assert!(!created);
        assert_eq!(fresh.entity_id(), again.entity_id());
        std::fs::write(&path, b"short").unwrap();
        let e = load_key(&path).expect_err("malformed").to_string();
        assert!(e.contains("expected 32 bytes, found 5"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn token_is_created_owner_only_and_reused() {
        let dir = scratch("token");
        let path = dir.join("control.token");
        let token = load_or_create_token(&path).expect("created");
        assert_eq!(token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_or_create_token(&path).expect("reused"), token);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
