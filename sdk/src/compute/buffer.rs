//! Buffers for large states. A fresh 64 MiB allocation costs more in page
//! faults and in the kernel zeroing its pages than in the copy that fills
//! it, so large state buffers come from a small process-wide pool of
//! recycled allocations (already mapped, nothing to zero), and a fresh
//! one is backed by huge pages where the OS offers them on request.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes};

/// Buffers at least this large are pooled and ask for huge pages.
const LARGE: usize = 4 << 20;
/// Large buffers are sized in whole huge pages, so that buffers of about
/// the same size (a snapshot and the same snapshot received) are
/// interchangeable.
const HUGE_PAGE: usize = 2 << 20;
/// The default of [`set_state_pool_limit`]: 256 MiB.
pub const STATE_POOL_BYTES: usize = 256 << 20;

/// The most memory the pool keeps for reuse.
static LIMIT: AtomicUsize = AtomicUsize::new(STATE_POOL_BYTES);

/// Sets the most memory this process keeps in idle state buffers for
/// reuse (default [`STATE_POOL_BYTES`]); `0` turns the pool off. Idle
/// buffers above the new limit are freed at once, the oldest first.
pub fn set_state_pool_limit(bytes: usize) {
    LIMIT.store(bytes, Ordering::Relaxed);
    let evicted = lock_pool().evict_to(bytes);
    drop(evicted);
}

/// The current limit of the state buffer pool.
pub fn state_pool_limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Idle large buffers, the most recently returned last, and their total
/// capacity.
static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: VecDeque::new(),
    bytes: 0,
});

struct Pool {
    free: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Pool {
    /// Takes out the buffers returned longest ago until at most `limit`
    /// bytes are kept; the caller frees them outside the lock.
    fn evict_to(&mut self, limit: usize) -> Vec<Vec<u8>> {
        let mut evicted = Vec::new();
        while self.bytes > limit {
            let Some(old) = self.free.pop_front() else {
                break;
            };
            self.bytes -= old.capacity();
            evicted.push(old);
        }
        evicted
    }
}

fn lock_pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A writable buffer for a daemon's state, to build a snapshot in
/// [`MeshDaemon::snapshot`](super::MeshDaemon::snapshot); the target of a
/// migration receives large states into one too.
///
/// A buffer of 4 MiB or more comes from a process-wide pool of recycled
/// allocations when one fits, and goes back to it when the last `Bytes`
/// made from it by [`freeze`](Self::freeze) is dropped; the pool keeps at
/// most [`state_pool_limit`] bytes (by default [`STATE_POOL_BYTES`]; see
/// [`set_state_pool_limit`]), the buffers returned longest ago making room
/// for newer ones. A fresh large buffer is backed by huge pages
/// where the OS offers them (Linux transparent huge pages in `madvise` or
/// `always` mode). Smaller buffers are ordinary allocations.
///
/// ```
/// use bytes::BufMut;
/// use cellmesh::compute::StateBuf;
///
/// let mut state = StateBuf::with_capacity(8 << 20);
/// state.put_u64_le(42);
/// state.put_bytes(0, 1024);
/// let state = state.freeze();
/// assert_eq!(state.len(), 8 + 1024);
/// assert_eq!(state[..8], 42u64.to_le_bytes());
/// ```
pub struct StateBuf {
    vec: Vec<u8>,
}

impl StateBuf {
    /// An empty buffer with room for at least `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        if capacity < LARGE {
            return Self {
                vec: Vec::with_capacity(capacity),
            };
        }
        let size = capacity.next_multiple_of(HUGE_PAGE);
        let reused = {
            let mut pool = lock_pool();
            let fit = pool
                .free
                .iter()
                .rposition(|v| v.capacity() >= size && v.capacity() <= size * 2);
            fit.and_then(|i| pool.free.remove(i)).inspect(|vec| {
                pool.bytes -= vec.capacity();
            })
        };
        let vec = reused.unwrap_or_else(|| {
            let mut vec = Vec::with_capacity(size);
            advise_huge(vec.spare_capacity_mut());
            vec
        });
        Self { vec }
    }

    /// Makes room for `more` bytes, growing at least geometrically but
    /// never past `cap` unless `more` needs it (a receive buffer grows as
    /// the bytes arrive, up to the size its sender announced).
    pub(crate) fn grow_for(&mut self, more: usize, cap: usize) {
        let need = self.vec.len().saturating_add(more);
        if need <= self.vec.capacity() {
            return;
        }
        let want = need
            .max(self.vec.capacity().saturating_mul(2))
            .min(cap.max(need));
        self.vec.reserve_exact(want - self.vec.len());
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.vec.extend_from_slice(bytes);
    }

    /// The bytes it can hold without growing.
    pub fn capacity(&self) -> usize {
        self.vec.capacity()
    }

    /// The buffer as shared, immutable bytes, without a copy. A large
    /// buffer returns to the pool when the last clone or slice of them is
    /// dropped.
    pub fn freeze(self) -> Bytes {
        if self.vec.capacity() < LARGE {
            return Bytes::from(self.vec);
        }
        Bytes::from_owner(Pooled(self.vec))
    }
}

impl Deref for StateBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.vec
    }
}

impl DerefMut for StateBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.vec
    }
}

impl std::fmt::Debug for StateBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBuf")
            .field("len", &self.vec.len())
            .field("capacity", &self.vec.capacity())
            .finish()
    }
}

// SAFETY: every method forwards to `Vec<u8>`'s own `BufMut`
// implementation, which upholds the trait's contract.
unsafe impl BufMut for StateBuf {
    fn remaining_mut(&self) -> usize {
        self.vec.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller's guarantee (cnt bytes of `chunk_mut` are
        // initialised) is passed on unchanged.
        unsafe { self.vec.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.vec.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        self.vec.extend_from_slice(src);
    }
}

/// A frozen large buffer; dropping it returns the allocation to the pool
/// (or frees it when the pool is full).
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut vec = std::mem::take(&mut self.0);
        let limit = state_pool_limit();
        if vec.capacity() > limit {
            return;
        }
        vec.clear();
        // The buffers returned longest ago make room: the newest are the
        // likeliest to fit the next migration.
        let mut pool = lock_pool();
        let evicted = pool.evict_to(limit - vec.capacity());
        pool.bytes += vec.capacity();
        pool.free.push_back(vec);
        drop(pool);
        drop(evicted);
    }
}

#[cfg(target_os = "linux")]
fn advise_huge(region: &mut [std::mem::MaybeUninit<u8>]) {
    let start = region.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE_PAGE);
    let end = (start + region.len()) / HUGE_PAGE * HUGE_PAGE;
    if end > first {
        // SAFETY: [first, end) lies inside `region`, which the caller owns
        // exclusively; MADV_HUGEPAGE changes only how the kernel backs the
        // pages, never their contents or validity. A refusal (no THP) is
        // harmless and ignored.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge(_region: &mut [std::mem::MaybeUninit<u8>]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_holds_what_is_written() {
        let mut buf = StateBuf::with_capacity(6 << 20);
        assert!(buf.capacity() >= 6 << 20);
        for i in 0..(6u32 << 18) {
            buf.put_u32_le(i);
        }
        let buf = buf.freeze();
        assert_eq!(buf.len(), 6 << 20);
        assert_eq!(&buf[4 * 1000..4 * 1001], &1000u32.to_le_bytes());
        assert_eq!(&buf[buf.len() - 4..], &((6u32 << 18) - 1).to_le_bytes());
    }

    #[test]
    fn a_small_buffer_is_ordinary() {
        let mut buf = StateBuf::with_capacity(16);
        buf.put_slice(b"sixteen bytes ok");
        assert_eq!(&buf[..], b"sixteen bytes ok");
        assert_eq!(&buf.freeze()[..], b"sixteen bytes ok");
    }

    #[test]
    fn a_dropped_buffer_is_reused_empty_and_the_pool_stays_bounded() {
        // An odd size no other test uses, so the reuse is this test's own.
        let size = (13 << 20) + 123;
        let mut first = StateBuf::with_capacity(size);
        first.put_bytes(0xEE, size);
        let first = first.freeze();
        let address = first.as_ptr() as usize;
        let slice = first.slice(10..20);
        drop(first);
        assert_eq!(&slice[..], &[0xEE; 10], "a slice keeps the buffer alive");
        drop(slice);
        let again = StateBuf::with_capacity(size);
        assert_eq!(again.len(), 0, "a reused buffer starts empty");
        assert_eq!(
            again.as_ptr() as usize,
            address,
            "the allocation was reused"
        );
        drop(again);
        // More than the pool keeps: the oldest are freed, the newest kept.
        let many: Vec<Bytes> = (0..(STATE_POOL_BYTES / (64 << 20)) + 2)
            .map(|_| StateBuf::with_capacity(64 << 20).freeze())
            .collect();
        let newest = many.last().unwrap().as_ptr() as usize;
        drop(many);
        {
            let pool = POOL.lock().unwrap();
            assert!(pool.bytes <= STATE_POOL_BYTES);
            assert_eq!(
                pool.bytes,
                pool.free.iter().map(Vec::capacity).sum::<usize>()
            );
            assert_eq!(pool.free.back().unwrap().as_ptr() as usize, newest);
        }
        // A lower limit frees the surplus at once; 0 turns pooling off.
        set_state_pool_limit(64 << 20);
        assert!(POOL.lock().unwrap().bytes <= 64 << 20);
        set_state_pool_limit(0);
        assert_eq!(POOL.lock().unwrap().bytes, 0);
        drop(StateBuf::with_capacity(size).freeze());
        assert_eq!(POOL.lock().unwrap().bytes, 0, "nothing kept when off");
        set_state_pool_limit(STATE_POOL_BYTES);
        assert_eq!(state_pool_limit(), STATE_POOL_BYTES);
    }
}
