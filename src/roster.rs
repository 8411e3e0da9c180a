//! Which shards sit idle, for every process of the server to read. A shard
//! whose request waited behind its busy thread hands the connection to an
//! idle shard, in its own worker or in another worker process
//! (docs/architecture.md, "Moving connections"); each shard's thread says
//! here when it waits in the kernel with no request in flight, and how many
//! connections it holds then. One cache line per shard, in a shared mapping
//! the supervisor makes before its first fork, so every worker reads the
//! same pages.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Shards past this take no connections from other shards; 64 KiB of lines.
pub const MAX_SHARDS: usize = 1024;

/// One shard's line.
#[repr(C, align(64))]
pub struct Line {
    /// Since when (`runtime::stamp_now`) the shard's thread waits in the kernel
    /// with no request in flight; 0 while it runs, and while the shard takes
    /// no connections from others (booting, draining, its worker gone). A
    /// shard that hands it a connection claims it by setting it to 0.
    pub waiting_since: AtomicU64,
    /// Its open connections as that wait began.
    pub connections: AtomicU32,
    /// The worker process whose shard thread stamps the line: the last one
    /// that began to take connections for the shard; 0 for none.
    owner: AtomicU32,
    /// Requests the shard's `--threads` pool has finished, ever: what every
    /// pool of the server weighs its steps by (`wsgi::limit`).
    pub served: AtomicU64,
}

impl Line {
    /// Worker `pid` stamps the line from now on; a stamp of the previous
    /// owner's no longer counts.
    pub fn take(&self, pid: u32) {
        self.owner.store(pid, Ordering::Relaxed);
        self.waiting_since.store(0, Ordering::Relaxed);
    }

    pub fn owned_by(&self, pid: u32) -> bool {
        self.owner.load(Ordering::Relaxed) == pid
    }

    /// Worker `pid` takes no more connections for the shard; a later owner
    /// keeps the line.
    pub fn release(&self, pid: u32) {
        if self
            .owner
            .compare_exchange(pid, 0, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.waiting_since.store(0, Ordering::Relaxed);
        }
    }
}

struct Roster {
    base: *const Line,
}

// SAFETY: the mapping is shared memory reached only through atomics, and it
// is never unmapped.
unsafe impl Send for Roster {}
unsafe impl Sync for Roster {}

static ROSTER: OnceLock<Option<Roster>> = OnceLock::new();

fn roster() -> Option<&'static Roster> {
    ROSTER
        .get_or_init(|| {
            let size = MAX_SHARDS * std::mem::size_of::<Line>();
            match crate::scoreboard::map_shared(size) {
                Ok(base) => Some(Roster { base: base.cast() }),
                Err(e) => {
                    log::warn!("Connections stay on their shard: cannot map the roster ({e})");
                    None
                }
            }
        })
        .as_ref()
}

/// Makes the mapping. The supervisor calls this before it forks, so that
/// every worker shares it; a process that first calls it after a fork sees
/// only its own shards.
pub fn share() {
    roster();
}

/// Shard `shard`'s line, where there is one.
pub fn line(shard: usize) -> Option<&'static Line> {
    let roster = roster()?;
    // SAFETY: within the mapping, which lives as long as the process.
    (shard < MAX_SHARDS).then(|| unsafe { &*roster.base.add(shard) })
}

/// Requests the pools of shards `0..shards` have finished, ever.
pub fn served(shards: usize) -> Option<u64> {
    roster()?;
    Some(
        (0..shards.min(MAX_SHARDS))
            .filter_map(line)
            .map(|line| line.served.load(Ordering::Relaxed))
            .sum(),
    )
}

/// The shards of worker `pid`, which is gone, take nothing until another
/// worker takes them; a successor that already did keeps its lines.
pub fn forget(pid: u32, shards: &[usize]) {
    for &shard in shards {
        if let Some(line) = line(shard) {
            line.release(pid);
        }
    }
}
