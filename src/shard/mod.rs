//! A shard: one OS thread pinned to one CPU, with its own ring, its own listening
//! sockets and its own Python interpreter. Shards share nothing on the request
//! path; the kernel spreads connections between their SO_REUSEPORT sockets.

pub mod runtime;

use std::cell::RefCell;
use std::net::TcpListener as StdListener;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use compio::net::TcpListener;
use pyo3::prelude::*;

use crate::cli::Config;
use crate::http::encode::DateCache;
use crate::python::{self, Isolation};
use crate::wsgi::environ::HeaderKeys;
use crate::wsgi::pool::Pool;
use crate::wsgi::{LoadError, Wsgi};

/// What a shard reports once its app is loaded (or failed to load).
pub enum Ready {
    Serving(Isolation),
    /// The app refused to load in a sub-interpreter, for the reason given; the
    /// shard's thread has ended and must be started again in the main interpreter.
    RefusesSubinterpreter(String),
    Failed(String),
}

/// Per-shard state shared by all of the shard's connections.
pub struct Shard {
    pub id: usize,
    pub config: Arc<Config>,
    pub wsgi: Arc<Wsgi>,
    /// Python threads for app calls when `--threads` is above 1.
    pub pool: Option<Pool>,
    pub header_keys: HeaderKeys,
    pub date: RefCell<DateCache>,
}

/// Runs shard `id` on the current thread; never returns while the server runs.
pub fn run(
    id: usize,
    cpu: Option<core_affinity::CoreId>,
    config: Arc<Config>,
    listeners: Vec<StdListener>,
    isolation: Isolation,
    ready: Sender<Ready>,
) {
    if let Some(cpu) = cpu {
        core_affinity::set_for_current(cpu);
    }
    let attachment = match isolation {
        Isolation::Subinterpreter => match python::attach_subinterpreter() {
            Ok(a) => a,
            Err(e) => {
                let _ = ready.send(Ready::Failed(e));
                return;
            }
        },
        Isolation::SharedMain => python::attach_main(),
    };
    // One attachment for the thread's life: pyo3 sees the GIL held throughout,
    // and the event loop releases it only around kernel waits.
    Python::attach(|py| {
        let multithread =
            config.threads > 1 || (isolation == Isolation::SharedMain && config.cores > 1);
        let wsgi = match Wsgi::load(py, &config.app, attachment.isolation, multithread) {
            Ok(wsgi) => Arc::new(wsgi),
            Err(LoadError::RefusesSubinterpreter(reason)) => {
                // Ending the sub-interpreter crashes CPython 3.12, so it is left
                // behind, unused, and this thread ends.
                let _ = ready.send(Ready::RefusesSubinterpreter(reason));
                return;
            }
            Err(LoadError::Failed(msg)) => {
                let _ = ready.send(Ready::Failed(msg));
                return;
            }
        };
        let rt = match runtime::build() {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Ready::Failed(format!("cannot set up io_uring: {e}")));
                return;
            }
        };
        let pool = if config.threads > 1 {
            match Pool::start(id, config.threads, wsgi.clone()) {
                Ok(pool) => Some(pool),
                Err(e) => {
                    let _ = ready.send(Ready::Failed(format!("cannot start Python threads: {e}")));
                    return;
                }
            }
        } else {
            None
        };
        let _ = ready.send(Ready::Serving(attachment.isolation));
        let shard = Rc::new(Shard {
            id,
            config,
            wsgi,
            pool,
            header_keys: HeaderKeys::default(),
            date: RefCell::new(DateCache::default()),
        });
        runtime::block_on(&rt, serve(shard, listeners));
    });
}

async fn serve(shard: Rc<Shard>, listeners: Vec<StdListener>) {
    let mut tasks = Vec::new();
    for std_listener in listeners {
        match TcpListener::from_std(std_listener) {
            Ok(listener) => {
                tasks.push(compio::runtime::spawn(accept_loop(shard.clone(), listener)))
            }
            Err(e) => log::error!("Shard {}: cannot use a listening socket: {e}", shard.id),
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                compio::runtime::spawn(crate::http::conn::serve(shard.clone(), stream, peer))
                    .detach();
            }
            Err(e) => {
                // Out of descriptors or memory: back off briefly instead of spinning.
                log::error!("Shard {}: accept failed: {e}", shard.id);
                compio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}
