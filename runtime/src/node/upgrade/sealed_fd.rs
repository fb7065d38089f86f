//! The daemons' state travels in a sealed `memfd`: the incumbent writes
//! it, then seals it against writing, shrinking and growing; the successor
//! maps it read-only and decodes and restores the daemons from the mapping
//! itself, so that a large state is not copied out of it first. A mapping
//! of a sealed memfd cannot change or shrink under the reader (no torn
//! read, no `SIGBUS`); a descriptor without the seals is read into memory
//! instead.

use std::io::{Read, Seek, SeekFrom, Write};
use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;

use bytes::Bytes;
use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use zeroize::Zeroize;

/// The seals that make a memfd safe to map and read in place.
fn seals() -> SealFlag {
    SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW
}

/// A memfd for the daemons' state, its memory allocated ahead of the
/// freeze (the kernel's page allocation costs about as much as the copy
/// itself), then written and sealed.
pub(crate) struct StateFile {
    file: std::fs::File,
}

/// The most memory reserved ahead of a freeze: allocating it takes about
/// a quarter of a second, and the session is silent meanwhile.
const RESERVE_MAX: u64 = 1 << 30;

/// How much of an estimated `hint` to reserve when the system has
/// `available` bytes of memory free (if known): at most [`RESERVE_MAX`]
/// and a quarter of what is free, so that an estimate too large (a
/// daemon's own) cannot push the machine out of memory.
fn reservation(hint: u64, available: Option<u64>) -> u64 {
    let cap = available.map_or(RESERVE_MAX, |free| (free / 4).min(RESERVE_MAX));
    hint.min(cap)
}

/// The memory this process may still use: `MemAvailable` of
/// `/proc/meminfo`, or less if its cgroup (or one above it) has a memory
/// limit closer (a memfd's pages are charged to it).
fn memory_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    let free = kib.checked_mul(1024)?;
    Some(cgroup_headroom().map_or(free, |room| room.min(free)))
}

/// How far this process's memory cgroup and those above it are from
/// their limit, the least of them; `None` without a limit. Version 2
/// (`memory.max`, `memory.current`) or version 1 (`memory.limit_in_bytes`,
/// `memory.usage_in_bytes`).
fn cgroup_headroom() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let v1 = own.lines().find_map(|l| {
        let (_, rest) = l.split_once(':')?;
        let (controllers, path) = rest.split_once(':')?;
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let (root, path, files) = match v1 {
        Some(path) => (
            "/sys/fs/cgroup/memory",
            path,
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ),
        None => (
            "/sys/fs/cgroup",
            own.lines().find_map(|l| l.strip_prefix("0::"))?,
            ("memory.max", "memory.current"),
        ),
    };
    let root = std::path::Path::new(root);
    let mut dir = root.join(path.trim_start_matches('/'));
    let mut least: Option<u64> = None;
    loop {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .ok()
                .and_then(|t| t.trim().parse::<u64>().ok())
        };
        // "max" (v2) or a page-rounded i64::MAX (v1) parse as no limit.
        if let (Some(max), Some(used)) = (read(files.0), read(files.1)) {
            if max < i64::MAX as u64 / 2 {
                let room = max.saturating_sub(used);
                least = Some(least.map_or(room, |l| l.min(room)));
            }
        }
        if dir == root || !dir.pop() {
            return least;
        }
    }
}

impl StateFile {
    /// A memfd with about `hint` bytes allocated (none for 0; bounded,
    /// see [`reservation`]). A failed allocation is not an error: the
    /// write allocates what it needs.
    pub(crate) fn reserve(hint: u64) -> std::io::Result<Self> {
        let reserve = if hint == 0 {
            0
        } else {
            reservation(hint, memory_available())
        };
        let fd = memfd_create(
            c"cellmesh-handoff",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let file = std::fs::File::from(fd);
        if let Ok(len) = i64::try_from(reserve) {
            if len > 0 {
                if let Err(e) = fallocate(&file, FallocateFlags::empty(), 0, len) {
                    tracing::debug!(error = %e, bytes = reserve, "cannot reserve the handoff memfd ahead");
                    file.set_len(0)?;
                }
            }
        }
        Ok(Self { file })
    }

    /// Writes the memfd from its start with `write` (handed a buffered
    /// writer; returns the bytes written), trims what was reserved beyond
    /// it, then seals it. The buffer is wiped afterwards: what passes
    /// through it includes the daemons' secret keys.
    pub(crate) fn write_sealed(
        mut self,
        write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
    ) -> std::io::Result<(OwnedFd, u64)> {
        self.file.seek(SeekFrom::Start(0))?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut self.file);
        let written = write(&mut out).and_then(|n| out.flush().map(|()| n));
        if let (_, Ok(mut buffer)) = out.into_parts() {
            buffer.zeroize();
        }
        let written = written?;
        self.file.set_len(written)?;
        fcntl(
            &self.file,
            FcntlArg::F_ADD_SEALS(seals() | SealFlag::F_SEAL_SEAL),
        )?;
        Ok((OwnedFd::from(self.file), written))
    }
}

/// Writes a memfd with `write` (nothing reserved ahead), then seals it.
pub(crate) fn write_sealed(
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<u64>,
) -> std::io::Result<(OwnedFd, u64)> {
    StateFile::reserve(0)?.write_sealed(write)
}

/// The whole content of a handed memfd: mapped in place if it is sealed,
/// read into memory otherwise.
pub(crate) fn read_handed(fd: OwnedFd) -> std::io::Result<Bytes> {
    let mut file = std::fs::File::from(fd);
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    let Some(length) = NonZeroUsize::new(len) else {
        return Ok(Bytes::new());
    };
    let sealed = fcntl(&file, FcntlArg::F_GET_SEALS)
        .map(SealFlag::from_bits_truncate)
        .is_ok_and(|have| have.contains(seals()));
    if !sealed {
        return read_from(&mut file, len).map(Bytes::from);
    }
    // SAFETY: a fresh private read-only mapping of `len` bytes of a memfd
    // sealed against writing, shrinking and growing: its content cannot
    // change and every page stays backed while it is mapped (the mapping
    // outlives the descriptor). `Mapping` unmaps it exactly once, on drop.
    let ptr = unsafe {
        mmap(
            None,
            length,
            ProtFlags::PROT_READ,
            MapFlags::MAP_PRIVATE | MapFlags::MAP_POPULATE,
            &file,
            0,
        )
    }?;
    Ok(Bytes::from_owner(Mapping { ptr, len }))
}

/// Reads a handed memfd whole into memory, in one read of its size.
pub(crate) fn read_all(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    read_from(&mut file, len)
}

fn read_from(file: &mut std::fs::File, len: usize) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::with_capacity(len);
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut raw)?;
    Ok(raw)
}

/// A read-only mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value alone; reading
// it from any thread is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared access is read-only.
unsafe impl Sync for Mapping {}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until `drop`, and the
        // borrow cannot outlive `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped by `read_handed` with this length, unmapped once.
        if let Err(e) = unsafe { munmap(self.ptr, self.len) } {
            tracing::warn!(error = %e, "unmapping the handed state failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_memfd_reads_back_whole_and_refuses_writes() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (fd, n) =
            write_sealed(|out| out.write_all(&data).map(|()| data.len() as u64)).expect("write");
        assert_eq!(n, data.len() as u64);
        let mut file = std::fs::File::from(fd.try_clone().expect("dup"));
        assert!(file.write_all(b"x").is_err(), "a sealed memfd took a write");
        assert!(file.set_len(1).is_err(), "a sealed memfd shrank");
        let read = read_handed(fd).expect("read");
        assert_eq!(&read[..], &data[..]);
        // Slices share the mapping and outlive the descriptor.
        let tail = read.slice(data.len() - 10..);
        drop(read);
        assert_eq!(&tail[..], &data[data.len() - 10..]);
    }

    #[test]
    fn an_unsealed_descriptor_is_read_into_memory() {
        let fd = memfd_create(c"plain", MFdFlags::MFD_CLOEXEC).expect("memfd");
        let mut file = std::fs::File::from(fd);
        file.write_all(b"hello").expect("write");
        let read = read_handed(OwnedFd::from(file)).expect("read");
        assert_eq!(&read[..], b"hello");
    }

    #[test]
    fn a_reservation_is_bounded_by_free_memory_and_a_ceiling() {
        assert_eq!(reservation(64 << 20, Some(16 << 30)), 64 << 20);
        assert_eq!(reservation(u64::MAX, Some(16 << 30)), RESERVE_MAX);
        assert_eq!(reservation(u64::MAX, Some(1 << 30)), 256 << 20);
        assert_eq!(reservation(u64::MAX, None), RESERVE_MAX);
        assert_eq!(reservation(100, Some(0)), 0);
        assert!(memory_available().is_some_and(|free| free > 0));
    }

    #[test]
    fn a_reserved_memfd_is_trimmed_to_what_was_written() {
        for reserve in [0u64, 100, 1 << 20] {
            let file = StateFile::reserve(reserve).expect("reserve");
            let (fd, n) = file
                .write_sealed(|out| out.write_all(b"state").map(|()| 5))
                .expect("write");
            assert_eq!(n, 5);
            assert_eq!(
                &read_handed(fd).expect("read")[..],
                b"state",
                "reserve {reserve}"
            );
        }
    }

    #[test]
    fn an_empty_memfd_is_empty() {
        let (fd, n) = write_sealed(|_| Ok(0)).expect("write");
        assert_eq!(n, 0);
        assert!(read_handed(fd).expect("read").is_empty());
    }
}
