//! The listening sockets: one SO_REUSEPORT socket per shard and bind, owned by
//! the supervisor for the life of the service. Workers inherit them across
//! fork, so a worker restart leaves every queued connection in place, and a new
//! supervisor started by USR2 inherits them across exec (`TURBO_FDS`).

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// The environment variable that passes sockets to a re-executed supervisor.
pub const INHERIT_VAR: &str = "TURBO_FDS";

pub struct Sockets {
    binds: Vec<SocketAddr>,
    backlog: u32,
    /// `per_shard[shard][bind]`.
    per_shard: Vec<Vec<TcpListener>>,
    /// Inherited sockets not yet given to a shard, per bind.
    spare: Vec<Vec<TcpListener>>,
}

fn listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
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
    Ok(socket.into())
}

impl Sockets {
    /// Takes the sockets a previous supervisor passed on, if any; the rest are
    /// bound by `ensure`.
    pub fn new(binds: &[SocketAddr], backlog: u32) -> Sockets {
        let mut spare: Vec<Vec<TcpListener>> = binds.iter().map(|_| Vec::new()).collect();
        if let Ok(list) = std::env::var(INHERIT_VAR) {
            // SAFETY: removing our own variable before any thread exists.
            unsafe { std::env::remove_var(INHERIT_VAR) };
            for fd in list.split(',').filter_map(|f| f.parse::<RawFd>().ok()) {
                // SAFETY: the previous supervisor passed these descriptors to us.
                let sock = unsafe { TcpListener::from_raw_fd(fd) };
                let addr = sock.local_addr().ok();
                match binds.iter().position(|b| Some(*b) == addr) {
                    Some(i) => spare[i].push(sock),
                    None => drop(sock),
                }
            }
        }
        Sockets {
            binds: binds.to_vec(),
            backlog,
            per_shard: Vec::new(),
            spare,
        }
    }

    /// Makes sure shards `0..shards` have their sockets.
    pub fn ensure(&mut self, shards: usize) -> Result<(), String> {
        while self.per_shard.len() < shards {
            let mut socks = Vec::new();
            for (i, &addr) in self.binds.iter().enumerate() {
                let sock = match self.spare[i].pop() {
                    Some(sock) => sock,
                    None => listener(addr, self.backlog)
                        .map_err(|e| format!("Connection in use: {addr} ({e})"))?,
                };
                socks.push(sock);
            }
            self.per_shard.push(socks);
        }
        self.spare.iter_mut().for_each(Vec::clear);
        Ok(())
    }

    /// Closes the sockets of shards `shards..` once no worker serves them.
    pub fn truncate(&mut self, shards: usize) {
        self.per_shard.truncate(shards.max(1));
    }

    /// In a new worker: the sockets of `shards`, closing every other one.
    pub fn take_for(&mut self, shards: &[usize]) -> Vec<(usize, Vec<TcpListener>)> {
        let mut all = std::mem::take(&mut self.per_shard);
        let taken = shards
            .iter()
            .map(|&id| (id, all.get_mut(id).map(std::mem::take).unwrap_or_default()))
            .collect();
        drop(all);
        taken
    }

    /// Every descriptor, for a re-executed supervisor.
    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.per_shard
            .iter()
            .flatten()
            .map(AsRawFd::as_raw_fd)
            .collect()
    }
}
