//! A shard: one OS thread pinned to one CPU, with its own ring, its own listening
//! sockets and its own Python interpreter. Shards share nothing on the request
//! path; the kernel spreads connections between their SO_REUSEPORT sockets, and
//! a request that waited behind a busy shard moves to an idle one (`peers`).

pub mod accept;
pub mod mailbox;
pub mod peers;

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use futures_channel::oneshot;
use pyo3::prelude::*;

use crate::access_log::AccessLog;
use crate::asgi::{self, Asgi};
use crate::config::{Config, InterfaceMode};
use crate::hooks::RequestHooks;
use crate::http::conn::{Host, Load};
use crate::http::handoff::Handoff;
use crate::observe::{Meter, Observers};
use crate::placement::ShardLoad;
use crate::python::app::{LoadError, Loaded};
use crate::python::{self, Isolation};
use crate::runtime;
use crate::scoreboard::Scoreboard;
use crate::scoreboard::ShardCounts;
use crate::wsgi::pool::Pool;
use crate::wsgi::{self, Wsgi};
pub use accept::Listener;
use peers::{Claim, Inbox, Peers};
use std::sync::atomic::{AtomicU32, Ordering};

/// What a shard reports once its app is loaded (or failed to load).
pub enum Ready {
    /// Serving; with `--reload`, shard 0 lists the source files it loaded.
    Serving(Vec<std::path::PathBuf>),
    /// The app refused to load in a sub-interpreter, for the reason given.
    RefusesSubinterpreter(String),
    Failed(String),
}

/// The app behind one of the two interfaces, as the HTTP driver's handler.
pub enum App {
    Wsgi(Rc<wsgi::handler::Bridge>),
    Asgi(Rc<asgi::handler::Bridge>),
}

/// Per-shard state shared by all of the shard's connections.
pub struct Shard {
    /// The shard's number in the server, which picks its CPU.
    pub id: usize,
    pub config: Arc<Config>,
    pub app: App,
    /// What the shard's connections share as HTTP sees them.
    pub host: Rc<Host>,
    /// Shared with the supervisor: busy times and request counts.
    pub board: Arc<Scoreboard>,
    /// This shard's position in its worker process.
    pub local: usize,
}

/// The shard's load, counted where its supervisor sees it (the scoreboard)
/// and where the kernel's placement program reads it.
struct Gauges {
    board: Arc<Scoreboard>,
    local: usize,
    kernel: Option<&'static ShardLoad>,
    /// The worker's other shards, which take requests that waited here.
    peers: Option<Arc<Peers>>,
    /// The idle shard `relief` claimed, until its connection is sent.
    claim: Cell<Option<Claim>>,
    /// Where bytes and refusals are counted for /metrics (`--metrics-bind`).
    meter: Option<Meter>,
}

impl Gauges {
    fn step(
        &self,
        count: fn(&ShardCounts) -> &AtomicU32,
        placed: fn(&ShardLoad) -> &AtomicU32,
        up: bool,
    ) {
        let step = |counter: &AtomicU32| {
            if up {
                counter.fetch_add(1, Ordering::Relaxed);
            } else {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
        };
        step(count(self.board.counts(self.local)));
        if let Some(load) = self.kernel {
            step(placed(load));
        }
    }
}

impl Load for Gauges {
    fn opened(&self) {
        self.step(|c| &c.connections, |k| &k.connections, true);
    }

    fn closed(&self) {
        self.step(|c| &c.connections, |k| &k.connections, false);
    }

    fn started(&self) {
        self.step(|c| &c.in_flight, |k| &k.in_flight, true);
    }

    fn finished(&self) {
        self.step(|c| &c.in_flight, |k| &k.in_flight, false);
        // The handler returned: what it wrote is queued, or soon will be.
        runtime::response_queued();
    }

    fn relief(&self, waiting_since: Instant) -> Option<usize> {
        if !runtime::waited_since(waiting_since) {
            return None;
        }
        let claim = self.peers.as_ref()?.idle(self.local)?;
        self.claim.set(Some(claim));
        Some(claim.shard)
    }

    fn hand_off(&self, to: usize, handoff: Box<Handoff>) -> Result<(), Box<Handoff>> {
        let claim = self.claim.take();
        let peers = match &self.peers {
            Some(peers) => peers,
            None => return Err(handoff),
        };
        peers.send(self.local, to, handoff).inspect_err(|_| {
            if let Some(claim) = claim.filter(|c| c.shard == to) {
                peers.unclaim(claim);
            }
        })
    }

    fn refused(&self, status: u16) {
        if let Some(meter) = &self.meter {
            meter.get().refused(status);
        }
    }

    fn received(&self, bytes: usize) {
        if let Some(meter) = &self.meter {
            meter.get().received(bytes);
        }
    }

    fn sent(&self, bytes: usize) {
        if let Some(meter) = &self.meter {
            meter.get().sent(bytes);
        }
    }
}

/// An app loaded for one interface, before it becomes a handler.
enum Interface {
    Wsgi(Arc<Wsgi>, Option<Pool>),
    Asgi(Box<Asgi>),
}

/// Everything a shard thread starts from.
pub struct Spec {
    pub id: usize,
    pub local: usize,
    pub cpu: Option<core_affinity::CoreId>,
    pub config: Arc<Config>,
    pub listeners: Vec<Listener>,
    pub isolation: Isolation,
    pub board: Arc<Scoreboard>,
    /// Resolves once the worker's post_worker_init hook has run: accepting
    /// starts then, as in Gunicorn.
    pub go: oneshot::Receiver<()>,
    /// Resolves (or is dropped) when the worker stops gracefully.
    pub stop: oneshot::Receiver<()>,
    /// The app as the supervisor imported it (`--preload`, main interpreter).
    pub preloaded: Option<Arc<Loaded>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// The worker's age, for the hooks' `worker.age`.
    pub age: u64,
    /// The worker's other shards, and this shard's inbox from them.
    pub peers: Option<(Arc<Peers>, Inbox)>,
}

/// Whether a shard speaks ASGI: as configured, else as the app was detected
/// (`None` where the app is not loaded yet).
fn speaks_asgi(config: &Config, detected: Option<bool>) -> Option<bool> {
    match config.interface {
        InterfaceMode::Auto => detected,
        InterfaceMode::Asgi => Some(true),
        InterfaceMode::Wsgi => Some(false),
    }
}

/// Compiles, in the supervisor's main interpreter before it forks process
/// workers, the Python each of them runs before it serves: the loader, and
/// the shim of each interface the app may speak (`python::embedded`).
pub fn precompile(py: Python<'_>, config: &Config, preloaded: Option<&Loaded>) {
    python::app::LOADER.precompile(py);
    let asgi = speaks_asgi(config, preloaded.map(|loaded| loaded.asgi));
    if asgi != Some(true) {
        wsgi::SHIM.precompile(py);
    }
    if asgi != Some(false) {
        asgi::SHIM.precompile(py);
    }
}

/// Runs a shard on the current thread until it has drained after `stop`.
pub fn run(spec: Spec, ready: Sender<Ready>) {
    let Spec {
        id,
        local,
        cpu,
        config,
        listeners,
        isolation,
        board,
        go,
        stop,
        preloaded,
        access_log,
        age,
        peers,
    } = spec;
    if let Some(cpu) = cpu {
        core_affinity::set_for_current(cpu);
    }
    match isolation {
        Isolation::Subinterpreter => {
            if let Err(e) = python::attach_subinterpreter() {
                let _ = ready.send(Ready::Failed(e));
                return;
            }
        }
        Isolation::Main => python::attach_main(),
    }
    // One attachment for the thread's life: pyo3 sees the GIL held throughout,
    // and the event loop releases it only around kernel waits.
    Python::attach(|py| {
        let loaded = match preloaded {
            Some(loaded) => Ok(loaded),
            None => Loaded::load(py, &config.app, isolation, &config.pythonpath).map(Arc::new),
        };
        let loaded = match loaded {
            Ok(loaded) => loaded,
            Err(LoadError::RefusesSubinterpreter(reason)) => {
                // Ending the sub-interpreter crashes CPython 3.12, so it is left
                // behind, unused; the worker exits.
                let _ = ready.send(Ready::RefusesSubinterpreter(reason));
                return;
            }
            Err(LoadError::Failed(msg)) => {
                let _ = ready.send(Ready::Failed(msg));
                return;
            }
        };
        let rt = match runtime::build(config.io_engine) {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Ready::Failed(format!("cannot set up the I/O engine: {e}")));
                return;
            }
        };
        let asgi = speaks_asgi(&config, Some(loaded.asgi)) == Some(true);
        // This thread runs the app calls, unless a WSGI app has Python
        // threads for them (--threads), which register themselves.
        if asgi || config.threads == 1 {
            python::watchdog::register(board.slot_index(local, 0));
        }
        let app = if asgi {
            rt.enter(|| Asgi::new(py, &config, loaded).map(|a| Interface::Asgi(Box::new(a))))
        } else {
            wsgi_app(py, id, &config, loaded, &board, local)
        };
        let app = match app {
            Ok(app) => app,
            Err(msg) => {
                let _ = ready.send(Ready::Failed(msg));
                return;
            }
        };
        let request_hooks = match RequestHooks::load(py, &config, isolation, age) {
            Ok(hooks) => hooks,
            Err(msg) => {
                let _ = ready.send(Ready::Failed(msg));
                return;
            }
        };
        let config_reload = config.reload.is_some();
        let meter = config
            .metrics_bind
            .is_some()
            .then(|| Meter::new(board.clone(), local));
        if meter.is_some() {
            runtime::meter_gil_waits(board.clone(), local);
        }
        let observers = Observers {
            access_log,
            hooks: request_hooks,
            meter: meter.clone(),
        };
        let slot = board.slot_index(local, 0);
        let app = match app {
            Interface::Wsgi(wsgi, pool) => App::Wsgi(Rc::new(wsgi::handler::Bridge {
                wsgi,
                pool,
                header_keys: Default::default(),
                board: board.clone(),
                slot,
                observers,
            })),
            Interface::Asgi(asgi) => App::Asgi(Rc::new(asgi::handler::Bridge {
                asgi: *asgi,
                board: board.clone(),
                slot,
                observers,
                tls: config.tls.clone(),
            })),
        };
        let stopping = board.clone();
        let (peers, inbox) = peers.unzip();
        let gauges = Gauges {
            board: board.clone(),
            local,
            kernel: crate::placement::shard(id),
            peers,
            claim: Cell::new(None),
            meter,
        };
        let host = Host::new(
            config.http(),
            Box::new(move || stopping.stopping()),
            Box::new(gauges),
        );
        let shard = Rc::new(Shard {
            id,
            config,
            app,
            host: Rc::new(host),
            board,
            local,
        });
        let watch = if config_reload && id == 0 {
            crate::reloader::module_files(py)
        } else {
            Vec::new()
        };
        match &shard.app {
            App::Wsgi(bridge) => {
                let _ = ready.send(Ready::Serving(watch));
                if let Some(pool) = &bridge.pool {
                    runtime::run_python_on(pool.graveyard.clone(), pool.load.clone());
                }
                runtime::block_on(&rt, serve(shard.clone(), listeners, inbox, go, stop));
            }
            App::Asgi(bridge) => {
                let asgi = &bridge.asgi;
                // The event loop runs the shard; accepting starts once lifespan
                // startup has completed.
                let serving = ready.clone();
                let for_serve = shard.clone();
                let ran = rt.enter(|| {
                    asgi.reactor.set_board(shard.board.clone(), bridge.slot);
                    asgi.run(
                        py,
                        move || {
                            let _ = serving.send(Ready::Serving(watch));
                        },
                        move || Box::pin(serve(for_serve, listeners, inbox, go, stop)),
                    )
                });
                if let Err(msg) = ran {
                    let _ = ready.send(Ready::Failed(msg));
                }
            }
        }
    });
    // The thread leaves its interpreter: in process mode that is the main
    // interpreter, whose GIL the worker's last hooks still need.
    python::detach_thread();
}

fn wsgi_app(
    py: Python<'_>,
    id: usize,
    config: &Config,
    loaded: Arc<Loaded>,
    board: &Arc<Scoreboard>,
    local: usize,
) -> Result<Interface, String> {
    let wsgi = Arc::new(Wsgi::new(py, config, loaded)?);
    let pool = if config.threads > 1 {
        let pool = Pool::start(
            id,
            config.cores,
            config.threads,
            wsgi.clone(),
            board.clone(),
            local,
        )
        .map_err(|e| format!("cannot start Python threads: {e}"))?;
        Some(pool)
    } else {
        None
    };
    Ok(Interface::Wsgi(wsgi, pool))
}

async fn serve(
    shard: Rc<Shard>,
    listeners: Vec<Listener>,
    inbox: Option<Inbox>,
    go: oneshot::Receiver<()>,
    stop: oneshot::Receiver<()>,
) {
    // Connections wait in the backlog until the whole worker is up.
    let _ = go.await;
    let mut tasks = Vec::new();
    for listener in listeners {
        if let Err(e) = listener.socket.set_nonblocking(true) {
            log::error!("Shard {}: cannot use a listening socket: {e}", shard.id);
            continue;
        }
        tasks.push(compio::runtime::spawn(accept::accept_loop(
            shard.clone(),
            Rc::new(listener),
        )));
    }
    if let Some(inbox) = inbox {
        tasks.push(compio::runtime::spawn(peers::take_in(shard.clone(), inbox)));
    }
    // A dropped sender means the worker is going away: drain as well.
    let _ = stop.await;
    shard.host.drain.start();
    for task in tasks {
        let _ = task.await;
    }
    shard.host.drain.finished().await;
}
