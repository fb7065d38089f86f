//! `cellmesh node`: run a mesh node until interrupted.
//!
//! The node binds a QUIC endpoint, joins the mesh through its seeds, hosts
//! the built-in `counter` daemon kind (so peers can place daemons on it) and
//! prints membership changes as they happen.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cellmesh::capabilities::CapabilitySet;
use cellmesh::compute::DaemonRuntime;
use cellmesh::mesh::{MeshBuilder, Psk, PskError};
use cellmesh::Identity;

use crate::demo::Counter;

/// The environment variable holding the mesh pre-shared key (64 hex digits).
pub const PSK_ENV: &str = "CELLMESH_PSK";

/// What `cellmesh node` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArgs {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Peers to join through.
    pub seeds: Vec<SocketAddr>,
    /// Where the node's secret key lives (created if absent).
    pub key_file: PathBuf,
    /// A file holding the PSK, instead of the environment variable.
    pub psk_file: Option<PathBuf>,
    /// Capability tags to advertise.
    pub tags: Vec<String>,
    /// Stop after this long instead of waiting for Ctrl-C.
    pub run_for: Option<Duration>,
}

/// Why the node could not start.
#[derive(Debug)]
pub enum NodeError {
    /// A command-line argument is missing, unknown or malformed.
    Usage(String),
    /// The pre-shared key is missing or malformed.
    Psk(String),
    /// The key file could not be read or written, or is malformed.
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The mesh or runtime failed.
    Mesh(String),
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) => write!(f, "{m}"),
            Self::Psk(m) => write!(f, "pre-shared key: {m}"),
            Self::KeyFile { path, reason } => {
                write!(f, "key file {}: {reason}", path.display())
            }
            Self::Mesh(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for NodeError {}

/// Parses the arguments after `node`.
///
/// # Errors
/// [`NodeError::Usage`] naming the offending argument.
pub fn parse(args: &[String]) -> Result<NodeArgs, NodeError> {
    let mut out = NodeArgs {
        listen: "0.0.0.0:7400".parse().expect("valid default address"),
        seeds: Vec::new(),
        key_file: PathBuf::from("cellmesh-node.key"),
        psk_file: None,
        tags: Vec::new(),
        run_for: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| NodeError::Usage(format!("{flag} needs a value")))
        };
        let addr = |v: &String| {
            v.parse::<SocketAddr>().map_err(|e| {
                NodeError::Usage(format!("{flag} {v:?}: not an ip:port address ({e})"))
            })
        };
        match flag.as_str() {
            "--listen" => out.listen = addr(value()?)?,
            "--seed" => out.seeds.push(addr(value()?)?),
            "--key-file" => out.key_file = PathBuf::from(value()?),
            "--psk-file" => out.psk_file = Some(PathBuf::from(value()?)),
            "--tag" => out.tags.push(value()?.clone()),
            "--for" => {
                let v = value()?;
                let secs: f64 = v.parse().map_err(|_| {
                    NodeError::Usage(format!("--for {v:?}: not a number of seconds"))
                })?;
                if !(secs.is_finite() && secs > 0.0) {
                    return Err(NodeError::Usage(format!("--for {v:?}: must be positive")));
                }
                out.run_for = Some(Duration::from_secs_f64(secs));
            }
            other => return Err(NodeError::Usage(format!("unknown option {other:?}"))),
        }
    }
    Ok(out)
}

/// Decodes a PSK written as 64 hex digits (surrounding whitespace ignored).
///
/// # Errors
/// [`NodeError::Psk`] saying what is wrong (never echoing the key).
pub fn parse_psk(text: &str) -> Result<Psk, NodeError> {
    Psk::from_hex(text).map_err(|e| {
        NodeError::Psk(match e {
            PskError::Length(n) => format!("expected 64 hex digits, got {n} characters"),
            PskError::NotHex(at) => format!("non-hex digit at position {at}"),
            other => other.to_string(),
        })
    })
}

fn load_psk(args: &NodeArgs) -> Result<Psk, NodeError> {
    match &args.psk_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| NodeError::Psk(format!("{}: {e}", path.display())))?;
            parse_psk(&text)
        }
        None => match std::env::var(PSK_ENV) {
            Ok(text) => parse_psk(&text),
            Err(_) => Err(NodeError::Psk(format!(
                "set {PSK_ENV} to 64 hex digits (e.g. `openssl rand -hex 32`) or pass --psk-file"
            ))),
        },
    }
}

/// Loads the node key from `path`, creating it (owner-only) if absent.
fn load_or_create_key(path: &Path) -> Result<(Identity, bool), NodeError> {
    let fail = |reason: String| NodeError::KeyFile {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let identity = Identity::generate();
            write_private(path, &identity.secret_seed()).map_err(|e| fail(e.to_string()))?;
            Ok((identity, true))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(bytes)
}

/// Runs the node until Ctrl-C (or `--for`), then leaves the mesh.
///
/// # Errors
/// Any [`NodeError`].
pub async fn run(args: NodeArgs) -> Result<(), NodeError> {
    let psk = load_psk(&args)?;
    let (identity, created) = load_or_create_key(&args.key_file)?;
    let capabilities = args
        .tags
        .iter()
        .fold(CapabilitySet::new(), |set, tag| set.with_tag(tag.clone()));
    let mesh = MeshBuilder::new(args.listen, psk)
        .map_err(|e| NodeError::Mesh(e.to_string()))?
        .identity(identity)
        .capabilities(capabilities)
        .seed_peers(args.seeds.clone())
        .build()
        .await
        .map_err(|e| NodeError::Mesh(format!("cannot start the node: {e}")))?;
    println!(
        "node {} listening on {}{}",
        mesh.node_id(),
        mesh.local_addr(),
        if created { " (new key)" } else { "" }
    );
    let mesh = Arc::new(mesh);
    let rt = DaemonRuntime::new(Arc::clone(&mesh));
    rt.register_factory("counter", || Box::new(Counter(0)))
        .map_err(|e| NodeError::Mesh(e.to_string()))?;
    rt.start()
        .await
        .map_err(|e| NodeError::Mesh(e.to_string()))?;

    let stop = async {
        match args.run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let mut known = std::collections::BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = tick.tick() => {
                let now: std::collections::BTreeSet<_> = mesh.peers().into_iter().collect();
                for joined in now.difference(&known) {
                    println!("peer joined {joined}");
                }
                for left in known.difference(&now) {
                    println!("peer left {left}");
                }
                known = now;
            }
        }
    }
    println!("leaving the mesh");
    let _ = rt.shutdown().await;
    mesh.leave().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_every_option() {
        let a = parse(&args(&[
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "127.0.0.1:7401",
            "--seed",
            "[::1]:7402",
            "--tag",
            "gpu",
            "--key-file",
            "/tmp/k",
            "--for",
            "1.5",
        ]))
        .expect("valid");
        assert_eq!(a.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(a.seeds.len(), 2);
        assert_eq!(a.tags, vec!["gpu".to_owned()]);
        assert_eq!(a.key_file, PathBuf::from("/tmp/k"));
        assert_eq!(a.run_for, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn bad_arguments_are_named() {
        for (list, needle) in [
            (&["--seed"][..], "--seed needs a value"),
            (&["--seed", "nowhere"][..], "--seed \"nowhere\""),
            (&["--for", "-1"][..], "must be positive"),
            (&["--bogus"][..], "unknown option \"--bogus\""),
        ] {
            let e = parse(&args(list)).expect_err("invalid").to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn psk_must_be_64_hex_digits() {
        assert_eq!(
            parse_psk(&format!(" {}\n", "ab".repeat(32))).expect("valid"),
            Psk::from_bytes([0xab; 32])
        );
        assert!(parse_psk("abc").is_err());
        let e = parse_psk(&"zz".repeat(32))
            .expect_err("not hex")
            .to_string();
        assert!(e.contains("non-hex"), "{e}");
        assert!(!e.contains("zz"), "the key is never echoed: {e}");
    }

    #[test]
    fn key_file_is_created_then_reused() {
        let dir = std::env::temp_dir().join(format!("cellmesh-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.key");
        let (first, created) = load_or_create_key(&path).expect("create");
        assert!(created);
        let (again, created) = load_or_create_key(&path).expect("load");
        assert!(!created);
        assert_eq!(first.entity_id(), again.entity_id());
        std::fs::write(&path, b"short").unwrap();
        let e = load_or_create_key(&path)
            .expect_err("malformed")
            .to_string();
        assert!(e.contains("expected 32 bytes, found 5"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
