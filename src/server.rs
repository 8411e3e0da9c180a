//! Start-up and the life of the server process: bind the listening sockets, start
//! Python, boot the shards one by one, then wait for a signal.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::mpsc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::Config;
use crate::python::{self, Isolation};
use crate::shard::{self, Ready};

/// Gunicorn's exit status when the app cannot be loaded.
const APP_LOAD_ERROR: i32 = 4;

fn listener(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Every shard binds its own socket to the address; the kernel balances
    // new connections between them.
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Blocks the signals the server handles, in this thread and every thread it
/// starts, so that only `wait_for_signal` sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGQUIT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    loop {
        // SAFETY: waits on a set built by block_signals.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// Leaves the process without finalising Python, which CPython 3.12 cannot do
/// safely with live sub-interpreters (DESIGN.md).
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process immediately; nothing is left to clean up.
    unsafe { libc::_exit(code) }
}

pub fn run(config: Config) -> ! {
    let signals = block_signals();
    log::info!("Starting turbo {}", env!("CARGO_PKG_VERSION"));

    let mut per_shard: Vec<Vec<TcpListener>> = (0..config.cores).map(|_| Vec::new()).collect();
    for &addr in &config.binds {
        for listeners in &mut per_shard {
            match listener(addr, config.backlog) {
                Ok(l) => listeners.push(l),
                Err(e) => {
                    log::error!("Connection in use: {addr} ({e})");
                    exit_now(1);
                }
            }
        }
    }
    for &addr in &config.binds {
        log::info!("Listening at: http://{addr} ({})", std::process::id());
    }

    if let Err(e) = python::initialize() {
        log::error!("{e}");
        exit_now(1);
    }
    let mut isolation = if python::supports_own_gil() {
        Isolation::Subinterpreter
    } else {
        log::info!(
            "Python {} has no per-interpreter GIL; all shards share the main interpreter",
            python::LINKED_VERSION
        );
        Isolation::SharedMain
    };

    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let config = Arc::new(config);
    // Shards boot one at a time: CPython 3.12 is unsafe when two interpreters
    // initialise the same extension module at once.
    for (id, listeners) in per_shard.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        loop {
            let (tx, rx) = mpsc::channel();
            let cfg = config.clone();
            let socks = match listeners.iter().map(TcpListener::try_clone).collect() {
                Ok(socks) => socks,
                Err(e) => {
                    log::error!("Cannot share a listening socket with shard {id}: {e}");
                    exit_now(1);
                }
            };
            let spawned = std::thread::Builder::new()
                .name(format!("turbo-shard-{id}"))
                .spawn(move || shard::run(id, cpu, cfg, socks, isolation, tx));
            if let Err(e) = spawned {
                log::error!("Cannot start shard {id}: {e}");
                exit_now(1);
            }
            match rx.recv() {
                Ok(Ready::Serving(chosen)) => {
                    let mode = match chosen {
                        Isolation::Subinterpreter => "own sub-interpreter",
                        Isolation::SharedMain => "main interpreter",
                    };
                    let on = cpu.map_or("any CPU".to_string(), |c| format!("CPU {}", c.id));
                    log::info!("Booting shard {id} on {on} ({mode})");
                    break;
                }
                Ok(Ready::RefusesSubinterpreter(reason)) => {
                    log::info!(
                        "The app cannot load in a sub-interpreter ({reason}); \
                         all shards share the main interpreter"
                    );
                    isolation = Isolation::SharedMain;
                }
                Ok(Ready::Failed(msg)) => {
                    eprintln!("{}", msg.trim_end());
                    log::error!("App failed to load: {}", config.app.module);
                    exit_now(APP_LOAD_ERROR);
                }
                Err(_) => {
                    log::error!("Shard {id} stopped while starting");
                    exit_now(1);
                }
            }
        }
    }
    log::info!(
        "Ready: {} shard(s), {} thread(s) each",
        config.cores,
        config.threads
    );

    let sig = wait_for_signal(&signals);
    let name = match sig {
        libc::SIGINT => "int",
        libc::SIGTERM => "term",
        libc::SIGQUIT => "quit",
        _ => "hup",
    };
    log::info!("Handling signal: {name}");
    log::info!("Shutting down: Master");
    exit_now(0);
}
