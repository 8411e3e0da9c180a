//! Where the kernel puts a new connection: each TCP bind's SO_REUSEPORT group
//! runs an eBPF program that picks the shard with the fewest connections,
//! then the fewest requests in flight, from counts the shards keep in a BPF
//! array map mapped into every process (docs/architecture.md, "Placement").
//! Connections spread evenly whatever their hash, and of shards that hold as
//! many, one busy in a CPU-bound handler gets no new connection while another
//! is idle. Ties go to a shard picked at random per connection. Connections
//! come first because a keep-alive connection stays where it lands: placing
//! by the requests of one moment would pile a burst of them on whichever
//! shard happened to be idle.
//!
//! The counts cost a shard no system call: they are atomics in the shared
//! mapping, which the program reads at each new connection. The program also
//! counts a connection it placed as queued on its shard until that shard
//! accepts it, so a burst of connects spreads before any is accepted.
//! Where eBPF is refused (no CAP_BPF), the group falls back to a classic BPF
//! program that picks a shard at random.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The most shards the program places between: its straight-line code grows
/// with the shard count, and the kernel's verifier (on Linux 6.18) refuses it
/// past about 200 shards for the work it takes to check. Past this a group
/// is steered at random.
pub const MAX_SHARDS: usize = 128;

/// One shard's counts, on a cache line of its own. The program reads them at
/// offsets fixed here (`IN_FLIGHT`...), so the layout is part of its code.
#[repr(C, align(64))]
pub struct ShardLoad {
    /// Requests being answered.
    pub in_flight: AtomicU32,
    /// Open connections.
    pub connections: AtomicU32,
    /// Connections the program placed here that the shard has not accepted.
    pub queued: AtomicU32,
    /// Large while no worker serves the shard, so nothing is placed there.
    pub down: AtomicU32,
}

const IN_FLIGHT: i16 = 0;
const CONNECTIONS: i16 = 4;
const QUEUED: i16 = 8;
const DOWN: i16 = 12;
const STRIDE: usize = std::mem::size_of::<ShardLoad>();

/// What `down` holds while a shard has no worker: its score's top bit.
pub const DOWN_WEIGHT: u32 = 1;

/// The map and its mapping, made once by the supervisor before any fork, so
/// every worker shares the same pages.
pub struct Placement {
    map: OwnedFd,
    base: *const ShardLoad,
}

// SAFETY: the mapping is shared memory reached only through atomics, and it
// is never unmapped.
unsafe impl Send for Placement {}
unsafe impl Sync for Placement {}

static PLACEMENT: OnceLock<Option<Placement>> = OnceLock::new();

/// The process's placement map: made on first use (by the supervisor, before
/// it forks), None where the kernel refuses BPF maps.
pub fn get() -> Option<&'static Placement> {
    PLACEMENT
        .get_or_init(|| match Placement::new() {
            Ok(placement) => Some(placement),
            Err(e) => {
                log::info!("Connections are placed at random: no BPF map ({e})");
                None
            }
        })
        .as_ref()
}

/// The counts of global shard `shard`, where there is a map.
pub fn shard(shard: usize) -> Option<&'static ShardLoad> {
    get()?.load(shard)
}

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> std::io::Result<RawFd> {
    // SAFETY: bpf(2) reads (and for some commands writes) the attribute union
    // we pass with its size; the buffer is zeroed beyond what we set.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd as RawFd)
    }
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const SO_ATTACH_REUSEPORT_EBPF: libc::c_int = 52;

impl Placement {
    fn new() -> std::io::Result<Placement> {
        let size = MAX_SHARDS * STRIDE;
        let mut attr = [0u64; 16];
        // map_type, key_size, value_size, max_entries, map_flags: u32 each.
        attr[0] = u64::from(BPF_MAP_TYPE_ARRAY) | (4u64 << 32);
        attr[1] = size as u64 | (1u64 << 32);
        attr[2] = u64::from(BPF_F_MMAPABLE);
        let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
        // SAFETY: a descriptor bpf(2) just returned to us.
        let map = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: mapping the map's own value area, shared, for its whole size.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Placement {
            map,
            base: base.cast(),
        })
    }

    pub fn load(&self, shard: usize) -> Option<&'static ShardLoad> {
        // SAFETY: within the mapping, which lives as long as the process;
        // zeroed memory is valid atomics.
        (shard < MAX_SHARDS).then(|| unsafe { &*self.base.add(shard) })
    }

    /// Attaches the program for `shards` shards to `socket`'s group.
    pub fn steer(&self, socket: RawFd, shards: usize) -> std::io::Result<()> {
        if shards == 0 || shards > MAX_SHARDS {
            return Err(std::io::Error::other(format!(
                "{shards} shards: the map holds {MAX_SHARDS}"
            )));
        }
        let code = program(self.map.as_raw_fd(), shards);
        let license = c"Dual MIT/GPL";
        let load = |log: Option<&mut [u8]>| {
            let mut attr = [0u64; 16];
            // prog_type, insn_cnt; insns; license; log_level, log_size; log_buf.
            attr[0] = u64::from(BPF_PROG_TYPE_SOCKET_FILTER) | ((code.len() as u64) << 32);
            attr[1] = code.as_ptr() as u64;
            attr[2] = license.as_ptr() as u64;
            if let Some(log) = log {
                attr[3] = 1 | ((log.len() as u64) << 32);
                attr[4] = log.as_mut_ptr() as u64;
            }
            bpf(BPF_PROG_LOAD, &mut attr)
        };
        // Without a log first: the verifier's log of a large group could
        // overflow any buffer, and an overflow fails the load.
        let prog = match load(None) {
            // SAFETY: a descriptor bpf(2) just returned to us.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(e) => {
                let mut log = vec![0u8; 1 << 20];
                let _ = load(Some(&mut log));
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let said = String::from_utf8_lossy(&log[..end]);
                log::debug!("The placement program was refused: {e}\n{said}");
                return Err(e);
            }
        };
        let fd = prog.as_raw_fd();
        // SAFETY: setsockopt copies the descriptor number it is given; the
        // group keeps its own reference to the program.
        let done = unsafe {
            libc::setsockopt(
                socket,
                libc::SOL_SOCKET,
                SO_ATTACH_REUSEPORT_EBPF,
                (&raw const fd).cast(),
                std::mem::size_of::<RawFd>() as libc::socklen_t,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl ShardLoad {
    /// The shard accepted a connection the program placed here.
    pub fn accepted(&self) {
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// The shard found its accept queue empty: whatever the program counted
    /// as queued here has been accepted, or never completed its handshake.
    pub fn queue_empty(&self) {
        self.queued.store(0, Ordering::Relaxed);
    }

    /// Takes away what a worker that exited left counted here: its requests
    /// and connections are gone.
    pub fn release(&self, in_flight: u32, connections: u32) {
        let sub = |counter: &AtomicU32, n: u32| {
            let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                Some(c.saturating_sub(n))
            });
        };
        sub(&self.in_flight, in_flight);
        sub(&self.connections, connections);
    }

    /// No worker serves the shard: nothing is placed here while another
    /// shard serves, until a worker accepts here again.
    pub fn mark_down(&self) {
        self.down.store(DOWN_WEIGHT, Ordering::Relaxed);
    }
}

/// The counts as the debug log shows them.
impl std::fmt::Display for ShardLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let load = |c: &AtomicU32| c.load(Ordering::Relaxed);
        write!(
            f,
            "{} connections, {} queued, {} in flight",
            load(&self.connections),
            load(&self.queued),
            load(&self.in_flight)
        )
    }
}

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    /// dst_reg in the low four bits, src_reg in the high four.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

// Opcodes (linux/bpf.h, bpf_common.h).
const MOV64_K: u8 = 0xb7;
const MOV64_X: u8 = 0xbf;
const ADD64_K: u8 = 0x07;
const ADD64_X: u8 = 0x0f;
const LSH64_K: u8 = 0x67;
const OR64_X: u8 = 0x4f;
const XOR32_K: u8 = 0xa4;
const MUL32_K: u8 = 0x24;
const RSH32_K: u8 = 0x74;
const LDX_W: u8 = 0x61;
const STX_W: u8 = 0x63;
const ATOMIC_ADD_W: u8 = 0xc3;
const LD_IMM64: u8 = 0x18;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JLE_K: u8 = 0xb5;
const JGE_X: u8 = 0x3d;
const PSEUDO_MAP_FD: u8 = 1;
const MAP_LOOKUP_ELEM: i32 = 1;
const GET_PRANDOM_U32: i32 = 7;

/// The largest count (of connections, of requests) a score tells apart.
const COUNT_MAX: i32 = (1 << 20) - 1;

/// The program for a group of `shards` sockets, one per shard in shard order:
/// it returns the index of the shard whose score is lowest. A score is, from
/// the high bits down: one bit for `down`, connections plus queued ones, and
/// requests in flight (each up to 2^20), then 8 bits mixed from one random
/// number per connection, so ties fall at random. It then counts the
/// connection as queued on that shard. Straight-line code with constant
/// offsets, so the verifier need not track any index.
fn program(map_fd: RawFd, shards: usize) -> Vec<Insn> {
    let mut code = vec![
        // key = 0, on the stack; r0 = the map's one value.
        insn(MOV64_K, 1, 0, 0, 0),
        insn(STX_W, 10, 1, -4, 0),
        insn(MOV64_X, 2, 10, 0, 0),
        insn(ADD64_K, 2, 0, 0, -4),
        insn(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0),
        insn(CALL, 0, 0, 0, MAP_LOOKUP_ELEM),
    ];
    let check_at = code.len();
    code.push(insn(JEQ_K, 0, 0, 0, 0));
    code.extend([
        insn(MOV64_X, 7, 0, 0, 0),
        insn(CALL, 0, 0, 0, GET_PRANDOM_U32),
        insn(MOV64_X, 9, 0, 0, 0),
        // r6: the best score so far; r8: its shard.
        insn(MOV64_K, 6, 0, 0, -1),
        insn(MOV64_K, 8, 0, 0, 0),
    ]);
    for i in 0..shards {
        let base = (i * STRIDE) as i16;
        // A fixed, distinct odd multiplier per shard mixes the random number.
        let salt = (i as u32).wrapping_mul(0x9e37_79b9) as i32;
        code.extend([
            // r1 = down (0 or 1), r2 = connections + queued, r3 = in flight.
            insn(LDX_W, 1, 7, base + DOWN, 0),
            insn(JLE_K, 1, 0, 1, 1),
            insn(MOV64_K, 1, 0, 0, 1),
            insn(LDX_W, 2, 7, base + CONNECTIONS, 0),
            insn(LDX_W, 3, 7, base + QUEUED, 0),
            insn(ADD64_X, 2, 3, 0, 0),
            insn(JLE_K, 2, 0, 1, COUNT_MAX),
            insn(MOV64_K, 2, 0, 0, COUNT_MAX),
            insn(LDX_W, 3, 7, base + IN_FLIGHT, 0),
            insn(JLE_K, 3, 0, 1, COUNT_MAX),
            insn(MOV64_K, 3, 0, 0, COUNT_MAX),
            insn(LSH64_K, 1, 0, 0, 20),
            insn(OR64_X, 1, 2, 0, 0),
            insn(LSH64_K, 1, 0, 0, 20),
            insn(OR64_X, 1, 3, 0, 0),
            insn(LSH64_K, 1, 0, 0, 8),
            insn(MOV64_X, 2, 9, 0, 0),
            insn(XOR32_K, 2, 0, 0, salt),
            insn(MUL32_K, 2, 0, 0, 0x85eb_ca6bu32 as i32),
            insn(RSH32_K, 2, 0, 0, 24),
            insn(OR64_X, 1, 2, 0, 0),
            insn(JGE_X, 1, 6, 2, 0),
            insn(MOV64_X, 6, 1, 0, 0),
            insn(MOV64_K, 8, 0, 0, i as i32),
        ]);
    }
    // queued[r8] += 1, through one block per shard (constant offsets again).
    code.push(insn(MOV64_K, 1, 0, 0, 1));
    for i in 0..shards {
        let base = (i * STRIDE) as i16;
        let rest = ((shards - 1 - i) * 3) as i16;
        code.extend([
            insn(JNE_K, 8, 0, 2, i as i32),
            insn(ATOMIC_ADD_W, 7, 1, base + QUEUED, 0),
            insn(JA, 0, 0, rest, 0),
        ]);
    }
    code.extend([insn(MOV64_X, 0, 8, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
    // No map value: an index past the group, so the kernel picks by hash.
    let fallback = code.len();
    code[check_at].off = (fallback - check_at - 1) as i16;
    code.extend([insn(MOV64_K, 0, 0, 0, -1), insn(EXIT, 0, 0, 0, 0)]);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's verifier takes the program for every group size up to
    /// the map's room, where the kernel allows eBPF at all; a group past it
    /// is refused before loading.
    #[test]
    fn the_verifier_takes_the_program() {
        let Ok(placement) = Placement::new() else {
            return;
        };
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .and_then(|s| {
                s.set_reuse_port(true)?;
                s.bind(
                    &"127.0.0.1:0"
                        .parse::<std::net::SocketAddr>()
                        .map_err(std::io::Error::other)?
                        .into(),
                )?;
                s.listen(8)?;
                Ok(s)
            });
        let Ok(socket) = socket else {
            return;
        };
        for shards in [1, 2, 3, 64, MAX_SHARDS] {
            assert!(
                placement.steer(socket.as_raw_fd(), shards).is_ok(),
                "{shards} shards"
            );
        }
        assert!(placement.steer(socket.as_raw_fd(), MAX_SHARDS + 1).is_err());
    }
}
