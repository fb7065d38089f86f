//! The encoding of [`Frozen`] daemons.
//!
//! # Version 1 (integers little-endian)
//!
//! ```text
//! magic "CMFROZEN" | version u16 = 1 | daemon_count u32 | total_len u64
//! record * daemon_count:
//!   kind_len u8 (1..=255) | kind (UTF-8)
//!   max_snapshot_bytes u64
//!   secret_seed [32]
//!   snapshot_len u64
//!   header_xxh3 u64            xxh3-64 of the record's fields above
//!   snapshot [snapshot_len]    a migration's key-handing snapshot:
//!                              CMSNAP v1 body | xxh3-64 of the body
//! ```
//!
//! `total_len` is the length of the whole encoding; nothing may follow the
//! last record. Every count and length is checked against its limit and
//! against the bytes present before anything is allocated for it, so a
//! decoder's allocations stay proportional to its input. Each record's
//! fields are covered by its header checksum and each snapshot by its own
//! trailer (the state is hashed once, as in a migration); a snapshot must
//! name the entity of the key beside it. The checksums catch corruption,
//! not forgery: the bytes travel between two processes of one node, over
//! a Unix socket only that node's user may open, and they hold the
//! daemons' secret keys anyway.

use std::collections::HashSet;
use std::io::{self, Write};
use std::sync::Arc;

use bytes::Bytes;
use xxhash_rust::xxh3::{xxh3_64, Xxh3Default};
use zeroize::Zeroizing;

use super::error::DecodeError;
use super::frozen::{Frozen, FrozenDaemon};
use super::keys::KeyCache;
use crate::compute::handle::DaemonHostConfig;
use crate::compute::snapshot::{Proof, StateSnapshot};
use crate::compute::{StateBuf, MAX_SNAPSHOT_BYTES};
use crate::identity::Identity;

const MAGIC: &[u8; 8] = b"CMFROZEN";
/// The version of the frozen-daemons encoding this build writes and reads.
pub const FROZEN_VERSION: u16 = 1;
/// The most daemons one encoding may carry.
pub const MAX_FROZEN_DAEMONS: u32 = 1 << 20;

/// magic, version, daemon_count, total_len.
pub(super) const HEADER_LEN: u64 = 8 + 2 + 4 + 8;
/// A record's fixed fields: kind_len, max_snapshot_bytes, seed,
/// snapshot_len, header checksum.
const RECORD_FIXED: u64 = 1 + 8 + 32 + 8 + 8;
/// The smallest record: a one-byte kind and a snapshot of at least its
/// checksum. A lower bound, to bound a count by the bytes present.
const MIN_RECORD: u64 = RECORD_FIXED + 1 + 8;

/// The length of `daemon`'s record: its header and its snapshot.
pub(super) fn record_len(kind: &str, snapshot_len: u64) -> u64 {
    RECORD_FIXED + kind.len() as u64 + snapshot_len
}

/// Writes the encoding of `frozen` (`frozen.bytes()` long) to `out`.
pub(super) fn write(frozen: &Frozen, out: &mut impl Write) -> io::Result<u64> {
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..10].copy_from_slice(&FROZEN_VERSION.to_le_bytes());
    // At most MAX_FROZEN_DAEMONS: `Frozen` is built from a runtime or a
    // decoded encoding, both bounded.
    let count = u32::try_from(frozen.daemons.len()).unwrap_or(u32::MAX);
    header[10..14].copy_from_slice(&count.to_le_bytes());
    header[14..22].copy_from_slice(&frozen.bytes.to_le_bytes());
    out.write_all(&header)?;
    let mut written = HEADER_LEN;
    for daemon in &frozen.daemons {
        let body = daemon.snapshot.body();
        let body_len: u64 = body.iter().map(|b| b.len() as u64).sum();
        let trailer = Proof::Checksummed.trailer_len() as u64;
        let head = record_header(daemon, body_len + trailer);
        out.write_all(&head)?;
        let sum = write_hashed(&body, body_len, out)?;
        out.write_all(&sum.to_le_bytes())?;
        written += head.len() as u64 + body_len + trailer;
    }
    Ok(written)
}

/// A body at least this long is hashed on a second thread while it is
/// written (the two take about as long on a large state).
const PARALLEL_HASH_MIN: u64 = 4 << 20;

/// Writes `body` to `out` and returns its xxh3-64, the checksum a
/// snapshot's trailer carries.
fn write_hashed(body: &[Bytes], len: u64, out: &mut impl Write) -> io::Result<u64> {
    let hash = || {
        let mut hasher = Xxh3Default::new();
        body.iter().for_each(|segment| hasher.update(segment));
        hasher.digest()
    };
    if len < PARALLEL_HASH_MIN {
        body.iter().try_for_each(|segment| out.write_all(segment))?;
        return Ok(hash());
    }
    std::thread::scope(|scope| {
        let hashing = std::thread::Builder::new()
            .name("cellmesh-freeze-hash".into())
            .spawn_scoped(scope, hash);
        body.iter().try_for_each(|segment| out.write_all(segment))?;
        match hashing {
            Ok(hashing) => hashing
                .join()
                .map_err(|_| io::Error::other("hashing a frozen state panicked")),
            // No thread to be had: hash here.
            Err(_) => Ok(hash()),
        }
    })
}

/// A record's header, checksum included. It holds the secret seed: it is
/// zeroized when dropped.
fn record_header(daemon: &FrozenDaemon, snapshot_len: u64) -> Zeroizing<Vec<u8>> {
    let kind = daemon.kind.as_bytes();
    let mut head = Zeroizing::new(Vec::with_capacity(RECORD_FIXED as usize + kind.len()));
    // Kinds are 1..=255 bytes: `register_factory` refuses others.
    head.push(u8::try_from(kind.len()).unwrap_or(u8::MAX));
    head.extend_from_slice(kind);
    head.extend_from_slice(&daemon.config.max_snapshot_bytes.to_le_bytes());
    head.extend_from_slice(daemon.keypair.secret_seed().as_ref());
    head.extend_from_slice(&snapshot_len.to_le_bytes());
    let sum = xxh3_64(&head);
    head.extend_from_slice(&sum.to_le_bytes());
    head
}

/// Decodes frozen daemons; states are slices of `shared` when given
/// (`bytes` is then `shared` itself), copies otherwise.
pub(super) fn decode(
    bytes: &[u8],
    shared: Option<&Bytes>,
    keys: Option<&KeyCache>,
) -> Result<Frozen, DecodeError> {
    let mut r = Reader {
        rest: bytes,
        record: None,
    };
    if r.take("magic", 8)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let version = u16::from_le_bytes([r.u8("version")?, r.u8("version")?]);
    if version != FROZEN_VERSION {
        return Err(DecodeError::UnsupportedVersion(version));
    }
    let count = r.u32("daemon_count")?;
    if count > MAX_FROZEN_DAEMONS {
        return Err(DecodeError::Oversized {
            field: "daemon_count".into(),
            len: count.into(),
            max: MAX_FROZEN_DAEMONS.into(),
        });
    }
    let total = r.u64("total_len")?;
    if total != bytes.len() as u64 {
        return Err(if total > bytes.len() as u64 {
            DecodeError::Truncated {
                field: "total_len".into(),
                needed: total,
                available: bytes.len() as u64,
            }
        } else {
            DecodeError::TrailingBytes(bytes.len() as u64 - total)
        });
    }
    r.ensure("records", u64::from(count) * MIN_RECORD)?;
    let mut parsed = Vec::with_capacity(count as usize);
    for index in 0..count {
        r.record = Some(index);
        parsed.push(parse_record(&mut r, index)?);
    }
    if !r.rest.is_empty() {
        return Err(DecodeError::TrailingBytes(r.rest.len() as u64));
    }
    let daemons = materialize(&parsed, shared, keys)?;
    let mut seen =
        HashSet::with_capacity_and_hasher(daemons.len(), foldhash::fast::RandomState::default());
    for daemon in &daemons {
        if !seen.insert(daemon.origin_hash()) {
            return Err(DecodeError::DuplicateDaemon(daemon.origin_hash()));
        }
    }
    Ok(Frozen {
        daemons,
        bytes: total,
    })
}

/// A record whose header checked out, its snapshot not yet decoded.
struct Parsed<'a> {
    index: u32,
    kind: &'a str,
    max_snapshot_bytes: u64,
    seed: Zeroizing<[u8; 32]>,
    snapshot: &'a [u8],
}

fn parse_record<'a>(r: &mut Reader<'a>, index: u32) -> Result<Parsed<'a>, DecodeError> {
    let start = r.rest;
    let kind_len = r.u8("kind_len")?;
    if kind_len == 0 {
        return Err(r.malformed("kind_len", "a kind is 1 to 255 bytes"));
    }
    let kind = std::str::from_utf8(r.take("kind", kind_len.into())?)
        .map_err(|_| r.malformed("kind", "not UTF-8"))?;
    let max_snapshot_bytes = r.u64("max_snapshot_bytes")?;
    let mut seed = Zeroizing::new([0u8; 32]);
    seed.copy_from_slice(r.take("secret_seed", 32)?);
    let snapshot_len = r.u64("snapshot_len")?;
    let covered = start.len() - r.rest.len();
    let sum = r.u64("header_xxh3")?;
    if xxh3_64(&start[..covered]) != sum {
        return Err(DecodeError::BadChecksum { index });
    }
    if snapshot_len > MAX_SNAPSHOT_BYTES as u64 {
        return Err(DecodeError::Oversized {
            field: format!("record {index} snapshot_len"),
            len: snapshot_len,
            max: MAX_SNAPSHOT_BYTES as u64,
        });
    }
    if snapshot_len < 8 {
        return Err(r.malformed("snapshot_len", "shorter than its checksum"));
    }
    Ok(Parsed {
        index,
        kind,
        max_snapshot_bytes,
        seed,
        snapshot: r.take("snapshot", snapshot_len)?,
    })
}

/// Records from which on the daemons are decoded on several threads:
/// deriving each daemon's key from its seed is a curve operation, the
/// bulk of a small daemon's decoding.
const PARALLEL_FROM: usize = 128;

/// Decodes the records' keys and snapshots, on several threads for many
/// records. The first failing record (lowest index) names the error.
fn materialize(
    parsed: &[Parsed<'_>],
    shared: Option<&Bytes>,
    keys: Option<&KeyCache>,
) -> Result<Vec<FrozenDaemon>, DecodeError> {
    // With the keys derived ahead, a record is a checksum and a copy.
    if parsed.len() < PARALLEL_FROM || keys.is_some() {
        return parsed.iter().map(|p| finish(p, shared, keys)).collect();
    }
    in_parallel(parsed, |p| finish(p, shared, None))
        .into_iter()
        .collect()
}

/// `f` of every item, in order, computed on as many threads as the
/// machine has cores (at most 8).
pub(super) fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 || items.len() < 2 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| {
                // The work does not panic; if it did, the panic goes on.
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Derives a record's key and decodes its snapshot.
fn finish(
    p: &Parsed<'_>,
    shared: Option<&Bytes>,
    keys: Option<&KeyCache>,
) -> Result<FrozenDaemon, DecodeError> {
    // Unless the input is shared, the state is copied (once) into a
    // buffer of the state pool, which recycles mapped pages.
    let owned;
    let (snapshot, shared) = match shared {
        Some(whole) => (p.snapshot, Some(whole)),
        None => {
            let mut buf = StateBuf::with_capacity(p.snapshot.len());
            buf.extend_from_slice(p.snapshot);
            owned = buf.freeze();
            (&owned[..], Some(&owned))
        }
    };
    let body = &snapshot[..snapshot.len() - 8];
    let keypair = match keys {
        Some(cache) => cache.key_of(&p.seed),
        None => Arc::new(Identity::from_seed(*p.seed).into_keypair()),
    };
    let snapshot =
        StateSnapshot::from_checksummed(snapshot, shared, xxh3_64(body), Arc::clone(&keypair))
            .map_err(|source| DecodeError::Snapshot {
                index: p.index,
                source,
            })?;
    Ok(FrozenDaemon {
        kind: Arc::from(p.kind),
        config: DaemonHostConfig::default().max_snapshot_bytes(p.max_snapshot_bytes),
        keypair,
        snapshot,
        record_len: record_len(p.kind, p.snapshot.len() as u64),
    })
}

struct Reader<'a> {
    rest: &'a [u8],
    /// The record being read, to name fields.
    record: Option<u32>,
}

impl<'a> Reader<'a> {
    fn name(&self, field: &str) -> String {
        match self.record {
            Some(i) => format!("record {i} {field}"),
            None => field.to_owned(),
        }
    }

    fn malformed(&self, field: &str, reason: &'static str) -> DecodeError {
        DecodeError::Malformed {
            field: self.name(field),
            reason,
        }
    }

    fn ensure(&self, field: &str, needed: u64) -> Result<(), DecodeError> {
        if needed > self.rest.len() as u64 {
            return Err(DecodeError::Truncated {
                field: self.name(field),
                needed,
                available: self.rest.len() as u64,
            });
        }
        Ok(())
    }

    fn take(&mut self, field: &str, n: u64) -> Result<&'a [u8], DecodeError> {
        self.ensure(field, n)?;
        // `ensure` checked `n` against the slice's length.
        let (head, tail) = self.rest.split_at(n as usize);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(field, 1)?[0])
    }

    fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(field, 4)?);
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, field: &str) -> Result<u64, DecodeError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(field, 8)?);
        Ok(u64::from_le_bytes(b))
    }
}
