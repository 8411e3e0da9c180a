//! A worker process, forked by the supervisor: it starts Python (unless the
//! supervisor preloaded it), boots its shards one by one, tells the supervisor
//! it is ready, then waits for a signal. TERM drains the shards gracefully; INT
//! and QUIT leave at once.

use std::os::fd::IntoRawFd;
use std::sync::Arc;
use std::sync::mpsc;

use futures_channel::oneshot;

use crate::access_log::AccessLog;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::python::app::Loaded;
use crate::python::{self, Isolation};
use crate::scoreboard::Scoreboard;
use crate::shard::{self, Ready};
use crate::signals;

/// Gunicorn's exit status for a worker that could not boot.
pub const WORKER_BOOT_ERROR: i32 = 3;
/// Gunicorn's exit status when the app cannot be loaded.
pub const APP_LOAD_ERROR: i32 = 4;

/// What the supervisor hands a new worker process.
pub struct Spec {
    pub config: Arc<Config>,
    /// Shard numbers with their listening sockets, one per bind.
    pub shards: Vec<(usize, Vec<crate::shard::Listener>)>,
    pub isolation: Isolation,
    pub board: Arc<Scoreboard>,
    /// The pipe on which the worker reports to the supervisor.
    pub report: std::fs::File,
    /// The app the supervisor imported (`--preload`), for main-interpreter shards.
    pub preloaded: Option<Arc<Loaded>>,
    pub hooks: Hooks,
    /// Workers started before this one (Gunicorn's `worker.age`).
    pub age: u64,
    /// Every shard's mailbox, for connections between workers.
    pub mailboxes: shard::mailbox::Mailboxes,
}

pub fn run(spec: Spec) -> ! {
    let Spec {
        config,
        shards,
        isolation,
        board,
        report: report_pipe,
        preloaded,
        hooks,
        age,
        mailboxes,
    } = spec;
    // Held open for the worker's life; any thread may report.
    crate::report::set_pipe(report_pipe.into_raw_fd());
    if config.isolation == crate::config::IsolationMode::Auto {
        crate::report::drain_on_refusal();
    }
    // The logging threads, if any, did not survive the fork.
    crate::logging::sink::start();
    crate::logging::python::start();
    let waits = signals::worker();
    tune_malloc();
    crate::http::stream::set_write_stall(config.send_timeout);
    log::info!("Booting worker with pid: {}", std::process::id());
    let target = config.access_log.as_deref();
    let access_log = match AccessLog::open(target, config.access_log_format.clone()) {
        Ok(log) => log.map(Arc::new),
        Err(e) => {
            log::error!("Cannot open the access log {}: {e}", target.unwrap_or("-"));
            signals::exit_now(WORKER_BOOT_ERROR);
        }
    };
    let cpus = shard_cpus();
    let mut stops = Vec::new();
    let mut gos = Vec::new();
    let mut watch = Vec::new();
    // With --reload, the worker serving shard 0 watches for the whole server.
    let watcher = shards.iter().any(|(id, _)| *id == 0);
    let mut threads = Vec::new();
    // Shards hand each other requests that wait behind a busy thread, within
    // the worker and between workers (docs/architecture.md, "Moving
    // connections").
    let ids = shards.iter().map(|(id, _)| *id).collect();
    let (peers, inboxes) = shard::peers::Peers::new(ids, board.clone(), mailboxes).unzip();
    let mut inboxes = inboxes.into_iter().flatten();
    // Shards boot one at a time: CPython 3.12 is unsafe when two interpreters
    // initialise the same extension module at once.
    for (local, (id, listeners)) in shards.into_iter().enumerate() {
        let cpu = (!cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let (stop_tx, stop) = oneshot::channel();
        let (go_tx, go) = oneshot::channel();
        gos.push(go_tx);
        let (ready_tx, ready) = mpsc::channel();
        let spec = shard::Spec {
            id,
            local,
            cpu,
            config: config.clone(),
            listeners,
            isolation,
            board: board.clone(),
            go,
            stop,
            preloaded: preloaded.clone().filter(|_| isolation == Isolation::Main),
            access_log: access_log.clone(),
            age,
            peers: peers.clone().zip(inboxes.next()),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("turbo-shard-{id}"))
            .spawn(move || shard::run(spec, ready_tx));
        match spawned {
            Ok(handle) => threads.push(handle),
            Err(e) => {
                log::error!("Cannot start shard {id}: {e}");
                signals::exit_now(WORKER_BOOT_ERROR);
            }
        }
        stops.push(stop_tx);
        match ready.recv() {
            Ok(Ready::Serving(files)) => {
                watch.extend(files);
                let mode = match isolation {
                    Isolation::Subinterpreter => "own sub-interpreter",
                    Isolation::Main => "main interpreter",
                };
                let on = cpu.map_or("any CPU".to_string(), |c| format!("CPU {}", c.id));
                log::info!("Booting shard {id} on {on} ({mode})");
            }
            Ok(Ready::RefusesSubinterpreter(reason)) => {
                crate::report::send(&format!("refused {reason}"));
                signals::exit_now(0);
            }
            Ok(Ready::Failed(msg)) => {
                crate::logging::print_error(&msg);
                log::error!("App failed to load: {}", config.app.module);
                signals::exit_now(APP_LOAD_ERROR);
            }
            Err(_) => {
                log::error!("Shard {id} stopped while starting");
                signals::exit_now(WORKER_BOOT_ERROR);
            }
        }
    }
    if let Some(extra) = config.reload.as_ref().filter(|_| watcher) {
        watch.extend(extra.iter().cloned());
        let files = watch.len();
        match crate::reloader::spawn(watch) {
            Ok(()) => log::info!("Watching {files} files for changes (--reload)"),
            Err(e) => log::error!("Cannot watch the app's files (--reload): {e}"),
        }
    }
    // One stuck request must not cost the other shards their connections.
    if isolation == Isolation::Subinterpreter && !config.timeout.is_zero() {
        python::watchdog::start(board.clone(), config.timeout);
    }
    // As Gunicorn: post_worker_init, then serving.
    hooks.call("post_worker_init", &[]);
    for go in gos {
        let _ = go.send(());
    }
    crate::report::send("ready");

    loop {
        match signals::wait(&waits) {
            // A second TERM (the worker drained itself after a late
            // refusal, then the supervisor asked) changes nothing.
            libc::SIGTERM if stops.is_empty() => {}
            libc::SIGTERM => {
                log::info!("Worker exiting (pid: {})", std::process::id());
                board.set_stopping();
                for stop in stops.drain(..) {
                    let _ = stop.send(());
                }
                // Shards end once their connections have; INT or QUIT still
                // cut the wait short, and the supervisor kills after
                // --graceful-timeout.
                let joining = std::mem::take(&mut threads);
                let exiting = hooks.clone();
                let _ = std::thread::Builder::new()
                    .name("turbo-drain".into())
                    .spawn(move || {
                        for thread in joining {
                            let _ = thread.join();
                        }
                        exiting.call("worker_exit", &[]);
                        signals::exit_now(0);
                    });
            }
            libc::SIGINT | libc::SIGQUIT => {
                hooks.call("worker_int", &[]);
                hooks.call("worker_exit", &[]);
                signals::exit_now(0);
            }
            libc::SIGABRT => {
                // A timeout: run the hook, then die of the signal as before.
                hooks.call("worker_abort", &[]);
                signals::die_of(libc::SIGABRT);
            }
            libc::SIGUSR1 => {
                crate::logging::reopen_error_log(
                    config.error_logfile.as_deref(),
                    config.capture_output,
                );
                match access_log.as_ref().map(|l| l.reopen()) {
                    Some(Ok(true)) => log::info!("Reopened the access log"),
                    Some(Err(e)) => log::error!("Cannot reopen the access log: {e}"),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// The CPUs shards are pinned to, by shard number modulo their count; none
/// where a cgroup CPU quota allows fewer CPUs than the affinity mask holds.
/// That is a container under `docker run --cpus` or a Kubernetes CPU limit
/// without a cpuset: every such container on a host has the host's CPUs in
/// its mask, and pinning would crowd all their shards onto the mask's first
/// CPUs while the rest idle. The kernel's scheduler spreads them instead.
fn shard_cpus() -> Vec<core_affinity::CoreId> {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    let quota = crate::config::cpu_quota();
    if pins(cpus.len(), quota) {
        return cpus;
    }
    log::info!(
        "Shards are not pinned: the CPU quota ({:.1} CPUs) is below the {} CPUs this \
         process may run on, which other containers share",
        quota.unwrap_or(0.0),
        cpus.len()
    );
    Vec::new()
}

/// Whether shards are pinned, with `mask` CPUs in the affinity mask and a
/// cgroup CPU quota of `quota` CPUs.
fn pins(mask: usize, quota: Option<f64>) -> bool {
    quota.is_none_or(|q| q <= 0.0 || q >= mask as f64)
}

/// Python allocates bodies above 512 bytes with malloc. glibc hands freed heap
/// back to the kernel eagerly and moves its mmap threshold as blocks come and
/// go, so a request that allocates and frees a 100 KB body faults fresh,
/// zeroed pages in each time (measured: the WSGI 100 KB POST echo at 161 µs of
/// CPU per request instead of 116). Fixed thresholds keep blocks up to 4 MiB
/// in the heap and up to 16 MiB of free heap in the process. MALLOC_*_ set in
/// the environment still wins.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    for (param, name, value) in [
        (libc::M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 4 << 20),
        (libc::M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 16 << 20),
    ] {
        if std::env::var_os(name).is_none() {
            // SAFETY: mallopt only sets allocator parameters.
            unsafe { libc::mallopt(param, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shards_are_pinned_unless_a_quota_is_below_the_mask() {
        assert!(super::pins(2, None));
        assert!(super::pins(2, Some(2.0)));
        assert!(super::pins(2, Some(4.0)));
        assert!(!super::pins(16, Some(2.0)));
        assert!(!super::pins(2, Some(1.5)));
    }
}
