//! Memory shared between the supervisor and one worker process, mapped before
//! the fork. Each thread that runs app code owns one slot, on its own cache line,
//! where it records when its current app call began and how many requests it
//! has served. The supervisor reads the slots to kill workers stuck in a request
//! (`--timeout`) and to recycle workers (`--max-requests`); the request path
//! only ever writes its own slot. Each shard also counts its open connections
//! and the requests it is answering, which the supervisor takes back from the
//! placement map when the worker dies.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::metrics::Meters;

#[repr(C, align(64))]
struct Slot {
    /// Milliseconds on CLOCK_MONOTONIC when the current app call began; 0 when idle.
    busy_since: AtomicU64,
    requests: AtomicU64,
    /// The `busy_since` of the app call the worker's watchdog interrupted
    /// for running past `--timeout`; 0 for none.
    interrupted: AtomicU64,
}

/// One shard's load, as its worker counts it.
#[repr(C, align(64))]
pub struct ShardCounts {
    pub in_flight: AtomicU32,
    pub connections: AtomicU32,
    /// Connections this shard handed to a peer.
    pub moved_out: AtomicU32,
    /// Requests its `--threads` pool runs at once (`wsgi::limit`); 0
    /// without a pool.
    pub threads_limit: AtomicU32,
}

#[repr(C, align(64))]
struct Header {
    /// Set by the supervisor when the shard's sockets die with this worker
    /// (`TTOU`): the shard accepts what is queued and then stops listening.
    retire: [AtomicBool; 64],
    /// Set by the worker when it starts a graceful stop, so responses still in
    /// the making say `Connection: close`.
    stopping: AtomicBool,
}

/// The shared mapping; the supervisor and the worker each hold one after the fork.
pub struct Scoreboard {
    base: *mut u8,
    len: usize,
    slots: usize,
    per_shard: usize,
    shards: usize,
}

// SAFETY: the mapping is only accessed through atomics.
unsafe impl Send for Scoreboard {}
unsafe impl Sync for Scoreboard {}

/// Milliseconds on CLOCK_MONOTONIC, which the supervisor and workers share.
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only to `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

/// `len` zeroed bytes of anonymous memory that a fork shares with its
/// parent, never unmapped; zero bytes are valid atomics.
pub fn map_shared(len: usize) -> std::io::Result<*mut u8> {
    // SAFETY: a fresh mapping of our own; nothing else is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(base.cast())
}

impl Scoreboard {
    /// A zeroed board for `shards` shards of `threads` app threads each.
    pub fn new(shards: usize, threads: usize) -> std::io::Result<Scoreboard> {
        let slots = shards * threads;
        let len = std::mem::size_of::<Header>()
            + slots * std::mem::size_of::<Slot>()
            + shards * std::mem::size_of::<ShardCounts>()
            + shards * std::mem::size_of::<Meters>();
        Ok(Scoreboard {
            base: map_shared(len)?,
            len,
            slots,
            per_shard: threads,
            shards,
        })
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a Header and lives as long as self.
        unsafe { &*self.base.cast::<Header>() }
    }

    fn slot(&self, index: usize) -> &Slot {
        assert!(index < self.slots);
        // SAFETY: index is in bounds of the slots that follow the header.
        unsafe {
            &*self
                .base
                .add(std::mem::size_of::<Header>())
                .cast::<Slot>()
                .add(index)
        }
    }

    /// The counts of the worker's `shard`-th shard.
    pub fn counts(&self, shard: usize) -> &ShardCounts {
        assert!(shard < self.shards);
        // SAFETY: in bounds of the counts that follow the slots.
        unsafe {
            &*self
                .base
                .add(std::mem::size_of::<Header>() + self.slots * std::mem::size_of::<Slot>())
                .cast::<ShardCounts>()
                .add(shard)
        }
    }

    /// The request meters of the worker's `shard`-th shard.
    pub fn meters(&self, shard: usize) -> &Meters {
        assert!(shard < self.shards);
        // SAFETY: in bounds of the meters that follow the counts.
        unsafe {
            &*self
                .base
                .add(
                    std::mem::size_of::<Header>()
                        + self.slots * std::mem::size_of::<Slot>()
                        + self.shards * std::mem::size_of::<ShardCounts>(),
                )
                .cast::<Meters>()
                .add(shard)
        }
    }

    /// The slot of thread `thread` of the worker's `shard`-th shard.
    pub fn slot_index(&self, shard: usize, thread: usize) -> usize {
        shard * self.per_shard + thread
    }

    /// Marks an app call as running in `slot` until the guard drops.
    pub fn busy(&self, slot: usize) -> Busy<'_> {
        self.mark_busy(slot);
        Busy(self.slot(slot))
    }

    /// Python code runs in `slot` from now on (an event loop between waits).
    pub fn mark_busy(&self, slot: usize) {
        self.slot(slot)
            .busy_since
            .store(now_ms().max(1), Ordering::Relaxed);
    }

    pub fn mark_idle(&self, slot: usize) {
        self.slot(slot).busy_since.store(0, Ordering::Relaxed);
    }

    /// Counts a request; only the slot's own thread writes it.
    pub fn count_request(&self, slot: usize) {
        let requests = &self.slot(slot).requests;
        requests.store(requests.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// App-call slots on the board.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// When the app call in `slot` began (`now_ms`), 0 when idle.
    pub fn busy_since(&self, slot: usize) -> u64 {
        self.slot(slot).busy_since.load(Ordering::Relaxed)
    }

    /// Records that the app call of `slot` that began at `since` is being
    /// interrupted; false if it already was.
    pub fn interrupt(&self, slot: usize, since: u64) -> bool {
        self.slot(slot).interrupted.swap(since, Ordering::Relaxed) != since
    }

    /// The longest-running app call, in milliseconds, if any is running.
    pub fn longest_busy(&self, now: u64) -> Option<u64> {
        (0..self.slots)
            .map(|i| self.slot(i).busy_since.load(Ordering::Relaxed))
            .filter(|&since| since != 0)
            .map(|since| now.saturating_sub(since))
            .max()
    }

    /// Requests served by the whole worker.
    pub fn requests(&self) -> u64 {
        (0..self.slots)
            .map(|i| self.slot(i).requests.load(Ordering::Relaxed))
            .sum()
    }

    pub fn set_stopping(&self) {
        self.header().stopping.store(true, Ordering::Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.header().stopping.load(Ordering::Relaxed)
    }

    pub fn set_retire(&self, shard: usize) {
        if let Some(flag) = self.header().retire.get(shard) {
            flag.store(true, Ordering::Release);
        }
    }

    pub fn retiring(&self, shard: usize) -> bool {
        self.header()
            .retire
            .get(shard)
            .is_some_and(|f| f.load(Ordering::Acquire))
    }
}

impl Drop for Scoreboard {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// An app call in progress; dropping it marks the slot idle.
pub struct Busy<'a>(&'a Slot);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}
