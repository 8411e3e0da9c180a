//! The listening sockets, owned by the supervisor for the life of the service.
//! A TCP bind gets one SO_REUSEPORT socket per shard, so the kernel spreads
//! connections between shards; a unix socket, or one handed over as a
//! descriptor (`fd://N`, systemd's `LISTEN_FDS`), is one socket that every
//! shard accepts from. Workers inherit the sockets across fork, so a worker
//! restart leaves every queued connection in place, and a new supervisor
//! started by USR2 inherits them across exec (`TURBO_FDS`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::config::{Bind, Config};
use crate::shard::Listener;

/// The environment variable that passes sockets to a re-executed supervisor.
const INHERIT_VAR: &str = "TURBO_FDS";
/// Passes systemd's sockets on to a re-executed supervisor, which no longer
/// sees `LISTEN_FDS`.
const SYSTEMD_VAR: &str = "TURBO_SYSTEMD_FDS";
/// systemd's first passed descriptor (sd_listen_fds(3)).
const LISTEN_FDS_START: RawFd = 3;

/// The user and group that own unix socket files (`user`, `group`).
type Owner = (Option<u32>, Option<u32>);

pub struct Sockets {
    binds: Vec<Bind>,
    backlog: u32,
    reuse_port: bool,
    owner: Owner,
    /// `per_shard[shard][bind]`.
    per_shard: Vec<Vec<Listener>>,
    /// Inherited sockets by what they listen on, not yet given to a shard.
    spare: HashMap<String, Vec<Socket>>,
    /// The binds came from systemd.
    systemd: bool,
    /// Unix socket files this supervisor answers for, removed when it exits.
    unix_paths: Vec<PathBuf>,
}

/// What a socket listens on, to match inherited sockets with binds.
fn key_of(addr: &SockAddr) -> Option<String> {
    match (addr.as_socket(), addr.as_pathname()) {
        (Some(inet), _) => Some(format!("tcp:{inet}")),
        (None, Some(path)) => Some(format!("unix:{}", path.display())),
        _ => None,
    }
}

/// Sockets systemd passed to this process (socket activation), in order.
fn systemd_fds() -> Option<Vec<RawFd>> {
    if let Ok(list) = std::env::var(SYSTEMD_VAR) {
        // SAFETY: removing our own variable before any thread exists.
        unsafe { std::env::remove_var(SYSTEMD_VAR) };
        return Some(list.split(',').filter_map(|f| f.parse().ok()).collect());
    }
    let count: RawFd = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    // SAFETY: as above; the variables are meant for this process only.
    unsafe {
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    // With none passed, the configured binds apply, as in Gunicorn.
    (pid == std::process::id() && count > 0)
        .then(|| (LISTEN_FDS_START..LISTEN_FDS_START + count).collect())
}

fn tcp_listener(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Every shard has its own socket on the address; the kernel balances new
    // connections between them.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

/// Fails when another process listens on `addr`: binding without SO_REUSEPORT
/// is refused whenever anything is bound there.
fn check_free(addr: SocketAddr) -> std::io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())
}

fn unix_listener(path: &Path, backlog: u32, owner: Owner) -> std::io::Result<Socket> {
    // A socket file left by an earlier run is replaced, as Gunicorn does; any
    // other file is not.
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket.bind(&SockAddr::unix(path)?)?;
    // The workers' user and group may connect to it, as with Gunicorn.
    if owner != (None, None) {
        std::os::unix::fs::chown(path, owner.0, owner.1)?;
    }
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

impl Sockets {
    /// Takes the sockets systemd or a previous supervisor passed on, if any; the
    /// rest are bound by `ensure`.
    pub fn new(config: &Config) -> Sockets {
        let (mut binds, systemd) = match systemd_fds() {
            Some(fds) => (fds.into_iter().map(Bind::Fd).collect::<Vec<_>>(), true),
            None => (config.binds.clone(), false),
        };
        // One descriptor adopted twice would be closed twice.
        let mut seen = Vec::new();
        binds.retain(|b| match b {
            Bind::Fd(fd) if seen.contains(fd) => false,
            Bind::Fd(fd) => {
                seen.push(*fd);
                true
            }
            _ => true,
        });
        let mut spare: HashMap<String, Vec<Socket>> = HashMap::new();
        if let Ok(list) = std::env::var(INHERIT_VAR) {
            // SAFETY: removing our own variable before any thread exists.
            unsafe { std::env::remove_var(INHERIT_VAR) };
            for fd in list.split(',').filter_map(|f| f.parse::<RawFd>().ok()) {
                if binds.contains(&Bind::Fd(fd)) {
                    // Still open under its own number; `ensure` adopts it.
                    continue;
                }
                // SAFETY: the previous supervisor passed these descriptors to us.
                let sock = unsafe { Socket::from_raw_fd(fd) };
                if let Some(key) = sock.local_addr().ok().as_ref().and_then(key_of) {
                    spare.entry(key).or_default().push(sock);
                }
            }
        }
        Sockets {
            binds,
            backlog: config.backlog,
            reuse_port: config.reuse_port,
            owner: (config.user, config.group),
            per_shard: Vec::new(),
            spare,
            systemd,
            unix_paths: Vec::new(),
        }
    }

    /// Where this supervisor listens, as Gunicorn's "Listening at" lines say it.
    pub fn describe(&self, tls: bool) -> Vec<String> {
        let Some(first) = self.per_shard.first() else {
            return Vec::new();
        };
        first
            .iter()
            .map(|l| match l.socket.local_addr().ok() {
                Some(addr) if l.unix => match addr.as_pathname() {
                    Some(path) => format!("unix:{}", path.display()),
                    None => "unix:(unnamed)".to_string(),
                },
                Some(addr) => match addr.as_socket() {
                    Some(inet) if tls => format!("https://{inet}"),
                    Some(inet) => format!("http://{inet}"),
                    None => "(unknown)".to_string(),
                },
                None => "(unknown)".to_string(),
            })
            .collect()
    }

    /// A TCP socket the previous supervisor passed on for `addr` that is not
    /// an app bind (the operations port); call before `ensure`, which
    /// closes the spares it does not use.
    pub fn take_spare(&mut self, addr: SocketAddr) -> Option<Socket> {
        let found = self.spare.get_mut(&format!("tcp:{addr}"))?;
        (!found.is_empty()).then(|| found.remove(0))
    }

    /// Whether the binds came from systemd, so the configured ones do not apply.
    pub fn systemd_activated(&self) -> bool {
        self.systemd
    }

    /// Makes sure shards `0..shards` have their sockets.
    pub fn ensure(&mut self, shards: usize) -> Result<(), String> {
        while self.per_shard.len() < shards {
            let first = self.per_shard.first();
            let mut socks = Vec::new();
            for (i, bind) in self.binds.iter().enumerate() {
                let listener = match (bind, first) {
                    (Bind::Tcp(addr), _) => {
                        let socket = match self.spare.get_mut(&format!("tcp:{addr}")) {
                            Some(found) if !found.is_empty() => found.remove(0),
                            _ => {
                                if first.is_none() && !self.reuse_port {
                                    check_free(*addr)
                                        .map_err(|e| format!("Connection in use: {addr} ({e})"))?;
                                }
                                tcp_listener(*addr, self.backlog)
                                    .map_err(|e| format!("Connection in use: {addr} ({e})"))?
                            }
                        };
                        Listener {
                            socket,
                            unix: false,
                            shared: false,
                        }
                    }
                    (_, Some(first)) => first[i]
                        .dup()
                        .map_err(|e| format!("Cannot share the socket {bind}: {e}"))?,
                    (Bind::Unix(path), None) => {
                        let key = format!("unix:{}", path.display());
                        let socket = match self.spare.get_mut(&key) {
                            Some(found) if !found.is_empty() => found.remove(0),
                            _ => unix_listener(path, self.backlog, self.owner)
                                .map_err(|e| format!("Cannot listen at {bind}: {e}"))?,
                        };
                        self.unix_paths.push(path.clone());
                        Listener {
                            socket,
                            unix: true,
                            shared: true,
                        }
                    }
                    (Bind::Fd(fd), None) => adopt(*fd).map_err(|e| format!("{bind}: {e}"))?,
                };
                socks.push(listener);
            }
            self.per_shard.push(socks);
        }
        self.spare.clear();
        Ok(())
    }

    /// Closes the sockets of shards `shards..` once no worker serves them.
    pub fn truncate(&mut self, shards: usize) {
        self.per_shard.truncate(shards.max(1));
    }

    /// In a new worker: the sockets of `shards`, closing every other one.
    pub fn take_for(&mut self, shards: &[usize]) -> Vec<(usize, Vec<Listener>)> {
        let mut all = std::mem::take(&mut self.per_shard);
        let taken = shards
            .iter()
            .map(|&id| (id, all.get_mut(id).map(std::mem::take).unwrap_or_default()))
            .collect();
        drop(all);
        taken
    }

    /// What a re-executed supervisor needs: every descriptor, `extra` ones
    /// (the operations port) included, and the environment that tells it
    /// where they came from.
    pub fn handover(&self, extra: &[RawFd]) -> (Vec<RawFd>, Vec<(String, String)>) {
        let fds: Vec<RawFd> = self
            .per_shard
            .iter()
            .flatten()
            .map(|l| l.socket.as_raw_fd())
            .chain(extra.iter().copied())
            .collect();
        let list = |fds: &[RawFd]| {
            fds.iter()
                .map(RawFd::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut env = vec![(INHERIT_VAR.to_string(), list(&fds))];
        if self.systemd {
            let own: Vec<RawFd> = self
                .binds
                .iter()
                .filter_map(|b| match b {
                    Bind::Fd(fd) => Some(*fd),
                    _ => None,
                })
                .collect();
            env.push((SYSTEMD_VAR.to_string(), list(&own)));
        }
        (fds, env)
    }

    /// Sends new connections on each TCP bind to the sockets of shards
    /// `0..shards` only: to the least loaded (`placement`), or where eBPF is
    /// refused, at random. Called whenever the shard count changes: a shard
    /// about to retire stops getting connections first, so none can be
    /// queued on a socket that then closes (which would reset it).
    pub fn steer(&self, shards: usize) {
        // With reuse_port the group may hold another server's sockets too.
        let Some(first) = self.per_shard.first().filter(|_| !self.reuse_port) else {
            return;
        };
        for (bind, listener) in self.binds.iter().zip(first) {
            if !matches!(bind, Bind::Tcp(_)) {
                continue;
            }
            let placed =
                crate::placement::get().map(|p| p.steer(listener.socket.as_raw_fd(), shards));
            match placed {
                Some(Ok(())) => {
                    log::debug!("{bind}: new connections go to the least loaded of {shards} shards")
                }
                placed => {
                    if let Some(Err(e)) = placed {
                        log::info!("{bind}: connections are placed at random ({e})");
                    }
                    if let Err(e) = steer_group(&listener.socket, shards) {
                        log::debug!("Cannot steer connections on {bind}: {e}");
                    }
                }
            }
        }
    }

    /// Removes the unix socket files this supervisor created; called at exit
    /// unless a successor took the sockets over.
    pub fn remove_unix_files(&self) {
        for path in &self.unix_paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Attaches to `socket`'s SO_REUSEPORT group a classic BPF program that
/// returns `random % shards`: the index of the socket to take the connection,
/// in the order the group's sockets started listening (shard order).
fn steer_group(socket: &Socket, shards: usize) -> std::io::Result<()> {
    #[repr(C)]
    struct Instruction {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct Program {
        len: u16,
        filter: *const Instruction,
    }
    // BPF_LD | BPF_W | BPF_ABS, BPF_ALU | BPF_MOD | BPF_K, BPF_RET | BPF_A.
    const LD_W_ABS: u16 = 0x20;
    const ALU_MOD_K: u16 = 0x94;
    const RET_A: u16 = 0x16;
    const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;
    let random = (libc::SKF_AD_OFF + libc::SKF_AD_RANDOM) as u32;
    let code = [
        Instruction {
            code: LD_W_ABS,
            jt: 0,
            jf: 0,
            k: random,
        },
        Instruction {
            code: ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: u32::try_from(shards.max(1)).unwrap_or(u32::MAX),
        },
        Instruction {
            code: RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let program = Program {
        len: code.len() as u16,
        filter: code.as_ptr(),
    };
    // SAFETY: the program and its instructions outlive the call, which copies them.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&raw const program).cast(),
            std::mem::size_of::<Program>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A listening socket someone else opened on `fd`.
fn adopt(fd: RawFd) -> std::io::Result<Listener> {
    // SAFETY: fstat on a descriptor number only reads its state.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(std::io::Error::other("not a socket"));
    }
    // SAFETY: the descriptor is open and a socket; from here it is ours.
    let socket = unsafe { Socket::from_raw_fd(fd) };
    let unix = socket.local_addr()?.domain() == Domain::UNIX;
    socket.set_cloexec(true)?;
    Ok(Listener {
        socket,
        unix,
        shared: true,
    })
}
