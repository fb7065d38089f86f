//! A cell's captured output: written to one file per stream in the node's
//! data directory as it arrives, bounded, read back on demand and carried
//! with the cell when it migrates.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Largest `limits.outputBytes` a document may ask for (per stream):
/// 64 MiB.
pub const MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// Name of the directory, inside the data directory, holding output files.
pub const OUTPUT_DIR: &str = "cell-output";

/// A cell's stdout and stderr as kept, with how much the command wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CellOutput {
    /// Stdout as kept: at most the output bound.
    #[serde(with = "b64")]
    pub stdout: Bytes,
    /// Stderr as kept: at most the output bound.
    #[serde(with = "b64")]
    pub stderr: Bytes,
    /// Bytes the command wrote to stdout (kept and dropped).
    pub stdout_bytes: u64,
    /// Bytes the command wrote to stderr (kept and dropped).
    pub stderr_bytes: u64,
    /// Whether either stream wrote more than the bound (the rest was
    /// counted and dropped).
    pub truncated: bool,
}

/// A part of a cell's output: up to a given number of bytes of each stream
/// from given offsets, read for a peer in chunks
/// ([`CellBackend::output_range`](crate::cell::CellBackend::output_range)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutputRange {
    /// The bytes asked for in `stdout` and `stderr` (empty from an offset
    /// at or past the end); the counters and `truncated` are the whole
    /// output's.
    pub chunk: CellOutput,
    /// Bytes of stdout kept (the length of its file).
    pub stdout_len: u64,
    /// Bytes of stderr kept (the length of its file).
    pub stderr_len: u64,
}

impl OutputRange {
    /// The range of `full` starting at `stdout_from` and `stderr_from`, at
    /// most `max` bytes of each stream.
    pub fn cut(full: &CellOutput, stdout_from: u64, stderr_from: u64, max: u64) -> Self {
        let cut = |b: &Bytes, from: u64| {
            let from = usize::try_from(from).unwrap_or(usize::MAX).min(b.len());
            let to = from
                .saturating_add(usize::try_from(max).unwrap_or(usize::MAX))
                .min(b.len());
            b.slice(from..to)
        };
        Self {
            chunk: CellOutput {
                stdout: cut(&full.stdout, stdout_from),
                stderr: cut(&full.stderr, stderr_from),
                stdout_bytes: full.stdout_bytes,
                stderr_bytes: full.stderr_bytes,
                truncated: full.truncated,
            },
            stdout_len: full.stdout.len() as u64,
            stderr_len: full.stderr.len() as u64,
        }
    }
}

/// Up to `max` bytes of the file at `path` from `from`, and the file's
/// length; a missing file is empty. Only the range is read (a seek, then
/// a read bounded by `max`), never the whole file.
fn read_at(path: &Path, from: u64, max: u64) -> std::io::Result<(Bytes, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Bytes::new(), 0)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let want = len.saturating_sub(from).min(max);
    if want == 0 {
        return Ok((Bytes::new(), len));
    }
    file.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::with_capacity(usize::try_from(want).unwrap_or(usize::MAX));
    // At most `want` bytes; fewer only if the file was cut in between (a
    // new cell with the same id), which the reader sees as the end.
    file.take(want).read_to_end(&mut buf)?;
    Ok((Bytes::from(buf), len))
}

/// Bytes as a base64 string in JSON (never an array of numbers).
pub(crate) mod b64 {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

/// One stream's counters, shared by its writer and readers.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) path: PathBuf,
    bound: u64,
    written: AtomicU64,
    kept: AtomicU64,
    /// Set when the pipe closed (every writer of it is gone).
    closed: std::sync::atomic::AtomicBool,
}

impl Stream {
    fn new(path: PathBuf, bound: u64, written: u64, kept: u64) -> Self {
        Self {
            path,
            bound,
            written: AtomicU64::new(written),
            kept: AtomicU64::new(kept),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub(crate) fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn truncated(&self) -> bool {
        self.written() > self.kept.load(Ordering::Acquire)
    }
}

/// Both streams of one cell.
#[derive(Debug)]
pub(crate) struct OutputFiles {
    pub(crate) stdout: Arc<Stream>,
    pub(crate) stderr: Arc<Stream>,
}

fn paths(dir: &Path, cell_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{cell_id}.stdout")),
        dir.join(format!("{cell_id}.stderr")),
    )
}

impl OutputFiles {
    /// Creates (truncating) both files of `cell_id` in `dir`.
    pub(crate) fn create(
        dir: &Path,
        cell_id: &str,
        bound: u64,
    ) -> std::io::Result<(Self, [std::fs::File; 2])> {
        std::fs::create_dir_all(dir)?;
        let (out, err) = paths(dir, cell_id);
        let files = [std::fs::File::create(&out)?, std::fs::File::create(&err)?];
        let this = Self {
            stdout: Arc::new(Stream::new(out, bound, 0, 0)),
            stderr: Arc::new(Stream::new(err, bound, 0, 0)),
        };
        Ok((this, files))
    }

    /// Writes output that came with a migrated cell.
    pub(crate) fn restore(
        dir: &Path,
        cell_id: &str,
        carried: &CellOutput,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (out, err) = paths(dir, cell_id);
        std::fs::write(&out, &carried.stdout)?;
        std::fs::write(&err, &carried.stderr)?;
        let len = |b: &Bytes| b.len() as u64;
        Ok(Self {
            stdout: Arc::new(Stream::new(
                out,
                u64::MAX,
                carried.stdout_bytes,
                len(&carried.stdout),
            )),
            stderr: Arc::new(Stream::new(
                err,
                u64::MAX,
                carried.stderr_bytes,
                len(&carried.stderr),
            )),
        })
    }

    /// Takes over the files of `cell_id` in `dir` where they are (written
    /// by the node's previous process), with the counters in `counts`
    /// (its content is not used). A missing file reads as empty.
    pub(crate) fn reopen(dir: &Path, cell_id: &str, counts: &CellOutput) -> Self {
        let (out, err) = paths(dir, cell_id);
        let kept = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        Self {
            stdout: Arc::new(Stream::new(
                out.clone(),
                u64::MAX,
                counts.stdout_bytes,
                kept(&out),
            )),
            stderr: Arc::new(Stream::new(
                err.clone(),
                u64::MAX,
                counts.stderr_bytes,
                kept(&err),
            )),
        }
    }

    /// Reads both files back.
    pub(crate) fn read(&self) -> std::io::Result<CellOutput> {
        let read = |s: &Stream| -> std::io::Result<Bytes> {
            match std::fs::read(&s.path) {
                Ok(b) => Ok(Bytes::from(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Bytes::new()),
                Err(e) => Err(e),
            }
        };
        Ok(CellOutput {
            stdout: read(&self.stdout)?,
            stderr: read(&self.stderr)?,
            stdout_bytes: self.stdout.written(),
            stderr_bytes: self.stderr.written(),
            truncated: self.stdout.truncated() || self.stderr.truncated(),
        })
    }

    /// Up to `max` bytes of each file from the given offsets, reading only
    /// those bytes.
    pub(crate) fn read_range(
        &self,
        stdout_from: u64,
        stderr_from: u64,
        max: u64,
    ) -> std::io::Result<OutputRange> {
        let (stdout, stdout_len) = read_at(&self.stdout.path, stdout_from, max)?;
        let (stderr, stderr_len) = read_at(&self.stderr.path, stderr_from, max)?;
        Ok(OutputRange {
            chunk: CellOutput {
                stdout,
                stderr,
                stdout_bytes: self.stdout.written(),
                stderr_bytes: self.stderr.written(),
                truncated: self.stdout.truncated() || self.stderr.truncated(),
            },
            stdout_len,
            stderr_len,
        })
    }

    /// Deletes both files.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_file(&self.stdout.path);
        let _ = std::fs::remove_file(&self.stderr.path);
    }
}

/// Copies `reader` into `file` up to the stream's bound, counting the rest,
/// until the reader ends (every writer of the pipe closed it).
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    reader: Option<R>,
    file: std::fs::File,
    stream: Arc<Stream>,
) {
    let Some(mut reader) = reader else {
        stream.closed.store(true, Ordering::Release);
        return;
    };
    let mut file = tokio::fs::File::from_std(file);
    let mut buf = vec![0u8; 64 * 1024];
    // After a failed write the pipe is still drained, so the command never
    // blocks on a full pipe; what it writes is counted and dropped.
    let mut broken = false;
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let kept = stream.kept.load(Ordering::Acquire);
        let room = usize::try_from(stream.bound.saturating_sub(kept)).unwrap_or(usize::MAX);
        let take = if broken { 0 } else { n.min(room) };
        if take > 0 {
            match file.write_all(&buf[..take]).await {
                Ok(()) => {
                    stream.kept.fetch_add(take as u64, Ordering::AcqRel);
                }
                Err(e) => {
                    tracing::warn!(file = %stream.path.display(), error = %e, "cell output not written");
                    broken = true;
                }
            }
        }
        stream.written.fetch_add(n as u64, Ordering::AcqRel);
    }
    let _ = file.flush().await;
    stream.closed.store(true, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The chunk a peer asks for (`host::output::CHUNK_BYTES`).
    const CHUNK: u64 = 1 << 20;

    fn pattern(len: u64) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_ranged_read_returns_exactly_the_chunk_asked_for() {
        let dir =
            std::env::temp_dir().join(format!("cellmesh-output-range-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (files, [out, err]) = OutputFiles::create(&dir, "c", u64::MAX).unwrap();
        let stdout_len = 2 * CHUNK + 100;
        let stdout = pattern(stdout_len);
        std::fs::write(&files.stdout.path, &stdout).unwrap();
        std::fs::write(&files.stderr.path, b"oops").unwrap();
        drop((out, err));
        let full = files.read().unwrap();
        let at = |from: u64| usize::try_from(from).unwrap();

        // Offsets: the start, a middle chunk, the last partial chunk, the
        // very end and past it.
        for (from, want) in [
            (0, CHUNK),
            (CHUNK, CHUNK),
            (2 * CHUNK, 100),
            (stdout_len - 1, 1),
            (stdout_len, 0),
            (stdout_len + 5, 0),
            (u64::MAX, 0),
        ] {
            let range = files.read_range(from, 0, CHUNK).unwrap();
            assert_eq!(range.chunk.stdout.len() as u64, want, "from {from}");
            if want > 0 {
                assert_eq!(&range.chunk.stdout[..], &stdout[at(from)..at(from + want)]);
            }
            assert_eq!(&range.chunk.stderr[..], b"oops");
            assert_eq!((range.stdout_len, range.stderr_len), (stdout_len, 4));
            // The same answer as cutting the range out of the whole output.
            assert_eq!(
                range,
                OutputRange::cut(&full, from, 0, CHUNK),
                "from {from}"
            );
        }
        // A smaller chunk, and none at all.
        let range = files.read_range(3, 4, 2).unwrap();
        assert_eq!(&range.chunk.stdout[..], &stdout[3..5]);
        assert!(range.chunk.stderr.is_empty());
        assert!(files.read_range(0, 0, 0).unwrap().chunk.stdout.is_empty());

        // Files not there (yet, or removed) read as empty.
        files.remove();
        let range = files.read_range(0, 0, CHUNK).unwrap();
        assert!(range.chunk.stdout.is_empty() && range.chunk.stderr.is_empty());
        assert_eq!((range.stdout_len, range.stderr_len), (0, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_reopened_where_they_are_read_back_with_the_counters_handed() {
        let dir =
            std::env::temp_dir().join(format!("cellmesh-output-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (files, [out, err]) = OutputFiles::create(&dir, "c", u64::MAX).unwrap();
        std::fs::write(&files.stdout.path, b"kept").unwrap();
        drop((out, err));
        // What the previous process's counters said: 10 bytes written to
        // stdout (6 dropped by its bound), none to stderr.
        let counts = files.read_range(0, 0, 0).unwrap().chunk;
        assert!(counts.stdout.is_empty() && counts.stderr.is_empty());
        let counts = CellOutput {
            stdout_bytes: 10,
            ..counts
        };
        let again = OutputFiles::reopen(&dir, "c", &counts);
        let read = again.read().unwrap();
        assert_eq!(&read.stdout[..], b"kept");
        assert!(read.stderr.is_empty());
        assert_eq!(read.stdout_bytes, 10);
        assert!(read.truncated, "10 written, 4 kept");
        // A file gone reads as empty.
        let none = OutputFiles::reopen(&dir, "missing", &counts);
        assert!(none.read().unwrap().stdout.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
