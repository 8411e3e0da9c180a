//! The supervisor, Gunicorn's arbiter: it owns the configuration, the listening
//! sockets and the signals, forks the worker processes and keeps the service up.
//! It replaces workers that die, kills workers stuck in a request
//! (`--timeout`), recycles them (`--max-requests`), reloads on HUP with new
//! workers up before the old ones drain, resizes on TTIN/TTOU and re-executes
//! itself on USR2. It imports no app code unless `--preload` is given.

mod ops;
mod sockets;
mod workers;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::config::{Config, IoEngine, IsolationMode};
use crate::hooks::Hooks;
use crate::metrics::{self, Counts, Restart};
use crate::python::app::{LoadError, Loaded};
use crate::python::{self, Isolation};
use crate::shard::{self, mailbox::Mailboxes};
use crate::signals::{self, exit_now};
use crate::worker::{APP_LOAD_ERROR, WORKER_BOOT_ERROR};
use ops::{Answer, Ops, Page};
use sockets::Sockets;
use workers::Worker;

/// How long a worker gets between SIGABRT and SIGKILL after a timeout.
const ABORT_GRACE: Duration = Duration::from_secs(2);
/// In sub-interpreter mode a request past `--timeout` first gets a
/// TimeoutError raised in it by the worker's watchdog; the worker is killed
/// only if the request has not unwound this much later (python::watchdog).
const UNWIND_GRACE: Duration = Duration::from_secs(3);
/// A worker that dies while booting is replaced after this, doubled for each
/// further failure in a row up to BOOT_BACKOFF_MAX, so a broken C extension
/// or a dead log pipe never becomes a fork loop.
const BOOT_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BOOT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// After this many workers in a row died while booting, the supervisor
/// stops, as Gunicorn halts on a worker's boot error.
const BOOT_FAILURES_MAX: u32 = 8;

struct Supervisor {
    config: Arc<Config>,
    sockets: Sockets,
    signals: OwnedFd,
    isolation: Isolation,
    /// `auto` chose sub-interpreters and no worker has proven them yet.
    probing: bool,
    /// A request met a module that refuses sub-interpreters (`refused_late`).
    met_refusal: bool,
    cores: usize,
    workers: Vec<Worker>,
    /// The app preloaded in this process (`--preload`).
    preloaded: Option<Arc<Loaded>>,
    /// Set once TERM, INT or QUIT arrived: the time by which workers must be gone.
    stopping: Option<Instant>,
    /// Set when TERM arrived with a `--shutdown-delay`: workers serve on
    /// until then, and are told to drain at that moment.
    drain_at: Option<Instant>,
    /// The operations port, `--metrics-bind`.
    ops: Option<Ops>,
    /// Every shard has been served by a ready worker at least once.
    booted: bool,
    /// Workers replaced, indexed by `Restart`.
    restarts: [u64; metrics::RESTARTS.len()],
    /// What the workers that exited counted, by shard.
    retired: Vec<Counts>,
    /// A new supervisor started by USR2.
    successor: Option<libc::pid_t>,
    /// Whether every shard was served by a ready worker at the last check.
    all_ready: bool,
    hooks: Hooks,
    /// Workers started so far.
    age: u64,
    /// Workers in a row that died before they were ready.
    boot_failures: u32,
    /// Every shard's mailbox, through which workers hand each other
    /// connections (docs/architecture.md, "Moving connections").
    mailboxes: Mailboxes,
    /// No worker starts before this, after a boot failure.
    respawn_at: Option<Instant>,
}

/// The process-wide settings, applied before anything else: umask, chdir,
/// raw_env, daemon, then the error log.
fn prepare_process(config: &Config) {
    // SAFETY: umask only changes this process's mask.
    unsafe { libc::umask(config.umask as libc::mode_t) };
    if let Some(dir) = &config.chdir
        && let Err(e) = std::env::set_current_dir(dir)
    {
        crate::logging::print_error(&format!(
            "turbo: error: cannot change to {}: {e}",
            dir.display()
        ));
        exit_now(1);
    }
    for (key, value) in &config.raw_env {
        // SAFETY: the supervisor has no other threads yet.
        unsafe { std::env::set_var(key, value) };
    }
    if config.daemon {
        daemonize();
    }
    crate::logging::init(config.log_level);
    if let Err(e) =
        crate::logging::open_error_log(config.error_logfile.as_deref(), config.capture_output)
    {
        crate::logging::print_error(&format!("turbo: error: cannot open the error log: {e}"));
        exit_now(1);
    }
    if let Err(e) = crate::logging::python::configure(config) {
        crate::logging::print_error(&format!("turbo: error: {e}"));
        exit_now(1);
    }
    if let Some((address, prefix, tags)) = &config.statsd
        && let Err(e) = crate::statsd::install(address, prefix, tags)
    {
        // Gunicorn carries on without metrics when the address fails.
        log::warn!("Cannot send metrics to statsd at {address:?}: {e}");
    }
}

/// The `gunicorn.workers` gauge: turbo's shards stand for Gunicorn's workers.
fn workers_gauge(shards: usize) {
    if let Some(statsd) = crate::statsd::get() {
        statsd.gauge("gunicorn.workers", shards);
    }
}

/// `--daemon`: leaves the terminal's session, as Gunicorn does (fork, setsid,
/// fork), with standard input and output on /dev/null.
fn daemonize() {
    for step in 0..2 {
        let pid = python::fork_with_python();
        match pid {
            -1 => {
                crate::logging::print_error(&format!(
                    "turbo: error: cannot fork: {}",
                    std::io::Error::last_os_error()
                ));
                exit_now(1);
            }
            0 if step == 0 => {
                // SAFETY: a new session for this child.
                unsafe { libc::setsid() };
            }
            0 => {}
            _ => exit_now(0),
        }
    }
    // SAFETY: opening /dev/null and duplicating it onto our own stdio.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                libc::dup2(null, fd);
            }
            libc::close(null);
        }
    }
}

/// Raises the soft limit on open files to the hard one, as servers that hold
/// many connections do: workers inherit it. Says what it got.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if soft != limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            limit.rlim_cur = soft;
        }
    }
    log::info!("Open files limit: {}", limit.rlim_cur);
}

pub fn run(mut config: Config) -> ! {
    // First, while this is the only thread: it takes the sockets (and their
    // variables) that systemd or a previous supervisor passed on.
    let mut sockets = Sockets::new(&config);
    prepare_process(&config);
    let hooks = Hooks::new(&config);
    hooks.call("nworkers_changed", &[config.cores as i64, -1]);
    workers_gauge(config.cores);
    hooks.call("on_starting", &[]);
    let signal_fd = match signals::supervisor() {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("Cannot set up signal handling: {e}");
            exit_now(1);
        }
    };
    log::info!("Starting turbo {}", env!("CARGO_PKG_VERSION"));
    raise_open_files();
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    config.io_engine = match crate::runtime::resolve(config.io_engine) {
        Ok(engine) => engine,
        Err(e) => {
            log::error!("{e}");
            exit_now(1);
        }
    };
    // A successor (USR2) takes over the operations port's socket, before
    // `ensure` closes what it does not use.
    let inherited_ops = config.metrics_bind.and_then(|a| sockets.take_spare(a));
    if let Err(e) = sockets.ensure(config.cores) {
        log::error!("{e}");
        exit_now(1);
    }
    sockets.steer(config.cores);
    if sockets.systemd_activated() {
        log::info!("Using sockets passed by systemd (LISTEN_FDS); binds are ignored");
    }
    for place in sockets.describe(config.tls.is_some()) {
        log::info!("Listening at: {place} ({})", std::process::id());
    }
    if let Some(path) = &config.pidfile
        && let Err(e) = std::fs::write(path, format!("{}\n", std::process::id()))
    {
        log::error!("Cannot write the pidfile {}: {e}", path.display());
        exit_now(1);
    }

    let (isolation, probing) = match choose_isolation(&config) {
        Ok(chosen) => chosen,
        Err(e) => {
            log::error!("{e}");
            exit_now(2);
        }
    };

    // Bound before the app is imported, so a probe waits in the backlog
    // rather than being refused while a --preload runs.
    let ops = config
        .metrics_bind
        .map(|address| match Ops::bind(address, inherited_ops) {
            Ok(ops) => {
                log::info!("Serving /metrics, /livez and /readyz at: http://{address}");
                ops
            }
            Err(e) => {
                log::error!("Cannot listen at {address} (--metrics-bind): {e}");
                exit_now(1);
            }
        });
    let config = Arc::new(config);
    // raw_env added variables, and the sockets' setup took systemd's and
    // turbo's own away: the host's os.environ, a snapshot, follows, for an
    // app preloaded here or served by a worker's main interpreter.
    python::sync_environ();
    let preloaded = config.preload.then(|| preload(&config));
    if isolation == Isolation::Main {
        if preloaded.is_none() {
            Python::attach(python::import_common_stdlib);
        }
        Python::attach(|py| shard::precompile(py, &config, preloaded.as_deref()));
    }
    hooks.call("when_ready", &[]);
    let mut supervisor = Supervisor {
        cores: config.cores,
        config,
        sockets,
        signals: signal_fd,
        isolation,
        probing,
        met_refusal: false,
        workers: Vec::new(),
        preloaded,
        stopping: None,
        drain_at: None,
        ops,
        booted: false,
        restarts: [0; metrics::RESTARTS.len()],
        retired: Vec::new(),
        successor: None,
        all_ready: false,
        hooks,
        age: 0,
        boot_failures: 0,
        respawn_at: None,
        mailboxes: Mailboxes::new(),
    };
    supervisor.run()
}

/// The isolation the workers take, logged in one line, and whether auto is
/// still to see the app load in a sub-interpreter (an app that refuses while
/// it loads still turns the workers into processes: `read_reports`).
fn choose_isolation(config: &Config) -> Result<(Isolation, bool), String> {
    match config.isolation {
        IsolationMode::Process => {
            log::info!("{}", isolation_report(config).trim_end());
            Ok((Isolation::Main, false))
        }
        IsolationMode::Subinterpreter if python::supports_own_gil() => {
            log::info!("{}", isolation_report(config).trim_end());
            Ok((Isolation::Subinterpreter, false))
        }
        IsolationMode::Subinterpreter => Err(format!(
            "--isolation subinterpreter needs Python 3.12 or newer; this turbo is built for \
             Python {}",
            python::LINKED_VERSION
        )),
        IsolationMode::Auto => {
            let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            let verdict = auto_isolation(config, &cwd);
            log::info!("{}", verdict.line);
            Ok(match verdict.subinterpreters {
                true => (Isolation::Subinterpreter, true),
                false => (Isolation::Main, false),
            })
        }
    }
}

/// What `--isolation auto` takes, and why: a sub-interpreter per shard only
/// where every compiled module the app could import supports them
/// (docs/architecture.md, "Choosing the isolation").
fn auto_isolation(config: &Config, cwd: &std::path::Path) -> python::probe::Verdict {
    if !python::supports_own_gil() {
        return python::probe::Verdict {
            subinterpreters: false,
            line: format!(
                "Isolation: one worker process per shard: Python {} has no per-interpreter GIL",
                python::LINKED_VERSION
            ),
            refused: Vec::new(),
        };
    }
    python::probe::decide(config, cwd)
}

/// `--check-config`: the isolation the server would take, and why, with
/// every refusing module where auto found some.
pub fn isolation_report(config: &Config) -> String {
    match config.isolation {
        IsolationMode::Process => {
            "Isolation: one worker process per shard (--isolation process)\n".into()
        }
        IsolationMode::Subinterpreter => {
            "Isolation: one sub-interpreter per shard (--isolation subinterpreter)\n".into()
        }
        IsolationMode::Auto => {
            // The server changes to --chdir before it decides; this check does not.
            let mut cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
            if let Some(dir) = &config.chdir {
                cwd = cwd.join(dir);
            }
            let verdict = auto_isolation(config, &cwd);
            let mut out = format!("{}\n", verdict.line);
            for (module, reason) in &verdict.refused {
                out.push_str(&format!("  {module}: {reason}\n"));
            }
            out
        }
    }
}

/// Imports the app in this process's main interpreter, before any fork.
fn preload(config: &Config) -> Arc<Loaded> {
    let loaded = Python::attach(|py| {
        python::shared_after_fork(py, || {
            Loaded::load(py, &config.app, Isolation::Main, &config.pythonpath)
        })
    });
    match loaded {
        Ok(loaded) => Arc::new(loaded),
        Err(LoadError::Failed(msg)) => {
            crate::logging::print_error(&msg);
            log::error!("App failed to load: {}", config.app.module);
            exit_now(APP_LOAD_ERROR);
        }
        Err(LoadError::RefusesSubinterpreter(reason)) => {
            log::error!("App failed to load: {reason}");
            exit_now(APP_LOAD_ERROR);
        }
    }
}

impl Supervisor {
    fn run(&mut self) -> ! {
        loop {
            self.reconcile();
            if self.stopping.is_some() && self.workers.is_empty() {
                self.shut_down();
            }
            self.wait();
            while let Some(sig) = signals::read(&self.signals) {
                self.on_signal(sig);
            }
            self.read_reports();
            self.reap();
            self.check_workers();
            if self.drain_at.is_some_and(|at| Instant::now() >= at) {
                self.drain_at = None;
                self.stop(libc::SIGTERM);
            }
            self.serve_ops();
        }
    }

    /// Answers what the operations port has been asked.
    fn serve_ops(&mut self) {
        let Some(mut ops) = self.ops.take() else {
            return;
        };
        ops.serve(|page| self.answer(page));
        self.ops = Some(ops);
    }

    fn answer(&self, page: Page) -> Answer {
        match page {
            Page::Live if self.live() => Answer::text(200, "ok"),
            Page::Live => Answer::text(503, "a worker is stuck past --timeout"),
            Page::Ready if self.ready() => Answer::text(200, "ok"),
            Page::Ready if self.terminating() => Answer::text(503, "shutting down"),
            Page::Ready if !self.booted => Answer::text(503, "starting"),
            Page::Ready => Answer::text(503, "no worker is serving"),
            Page::Metrics => Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.metrics(),
            },
        }
    }

    /// /readyz: every shard has booted (ASGI lifespan startup included: a
    /// shard reports ready after it), some worker serves, and no TERM has
    /// arrived.
    fn ready(&self) -> bool {
        self.booted
            && !self.terminating()
            && self
                .workers
                .iter()
                .any(|w| w.ready && w.stopped_at.is_none())
    }

    /// /livez: no worker's request has run past `--timeout` for longer than
    /// the supervisor takes to replace it (the unwind and abort graces,
    /// and a second to notice).
    fn live(&self) -> bool {
        if self.config.timeout.is_zero() {
            return true;
        }
        let limit = self.config.timeout + UNWIND_GRACE + ABORT_GRACE + Duration::from_secs(1);
        let now = crate::scoreboard::now_ms();
        !self.workers.iter().any(|w| {
            w.board
                .longest_busy(now)
                .is_some_and(|ms| ms > limit.as_millis() as u64)
        })
    }

    /// /metrics: the counters of every worker that served each shard, the
    /// exited ones' included, and the gauges of the live ones.
    fn metrics(&self) -> String {
        let served = self
            .workers
            .iter()
            .flat_map(|w| w.shards.iter().map(|&s| s + 1))
            .max()
            .unwrap_or(0);
        let count = self.cores.max(served).max(self.retired.len());
        let mut shards: Vec<metrics::Shard> = (0..count)
            .map(|s| metrics::Shard {
                counts: self.retired.get(s).cloned().unwrap_or_default(),
                queued: crate::placement::shard(s)
                    .map_or(0, |l| u64::from(l.queued.load(Ordering::Relaxed))),
                ..metrics::Shard::default()
            })
            .collect();
        for w in &self.workers {
            for (local, &shard) in w.shards.iter().enumerate() {
                let counts = w.board.counts(local);
                let live = worker_counts(w, local);
                let view = &mut shards[shard];
                view.websockets += live.websockets_open();
                view.counts.add(&live);
                view.in_flight += u64::from(counts.in_flight.load(Ordering::Relaxed));
                view.connections += u64::from(counts.connections.load(Ordering::Relaxed));
                view.threads_limit = view
                    .threads_limit
                    .max(u64::from(counts.threads_limit.load(Ordering::Relaxed)));
            }
        }
        metrics::Report {
            shards: &shards,
            restarts: &self.restarts,
            workers: self.workers.len(),
            cores: self.cores,
            ready: self.ready(),
        }
        .render()
    }

    /// Sleeps until a signal, a worker report, or the next periodic check.
    fn wait(&self) {
        let mut fds = vec![libc::pollfd {
            fd: self.signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        fds.extend(
            self.workers
                .iter()
                .filter_map(Worker::report_fd)
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                }),
        );
        // Recycling needs a closer look than timeouts do.
        let mut tick = if self.config.max_requests > 0 || self.stopping.is_some() {
            100
        } else {
            500
        };
        if let Some(at) = self.respawn_at {
            let left = at.saturating_duration_since(Instant::now()).as_millis();
            tick = tick.min(i32::try_from(left).unwrap_or(i32::MAX));
        }
        if let Some(ops) = &self.ops {
            fds.extend(ops.poll_fds().into_iter().map(|(fd, events)| libc::pollfd {
                fd,
                events,
                revents: 0,
            }));
        }
        let deadlines = [
            self.drain_at,
            self.ops.as_ref().and_then(Ops::next_deadline),
        ];
        for at in deadlines.into_iter().flatten() {
            let left = at.saturating_duration_since(Instant::now()).as_millis() + 1;
            tick = tick.min(i32::try_from(left).unwrap_or(i32::MAX));
        }
        // SAFETY: polls an array of valid pollfd structs of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, tick) };
    }

    fn on_signal(&mut self, sig: i32) {
        if sig != libc::SIGCHLD {
            log::info!("Handling signal: {}", signals::name(sig));
        }
        match sig {
            libc::SIGCHLD => {}
            libc::SIGTERM => self.terminate(),
            libc::SIGINT | libc::SIGQUIT => {
                self.drain_at = None;
                self.stop(libc::SIGQUIT);
            }
            // The delay still serves: its logs may be rotated.
            libc::SIGUSR1 if self.stopping.is_none() => self.reopen_logs(),
            _ if self.terminating() => {}
            libc::SIGHUP => {
                log::info!("Hang up: Master");
                // As in Gunicorn: the configuration first, then the hooks.
                let before = self.cores;
                self.reload_config();
                self.hooks
                    .call("nworkers_changed", &[self.cores as i64, before as i64]);
                workers_gauge(self.cores);
                self.hooks.call("on_reload", &[]);
                self.replace_all();
            }
            libc::SIGTTIN => {
                if let Err(e) = self.sockets.ensure(self.cores + 1) {
                    log::error!("Cannot add a shard: {e}");
                    return;
                }
                self.cores += 1;
                self.sockets.steer(self.cores);
                log::info!("Shards: {}", self.cores);
                self.hooks.call(
                    "nworkers_changed",
                    &[self.cores as i64, self.cores as i64 - 1],
                );
                workers_gauge(self.cores);
                if self.isolation == Isolation::Subinterpreter {
                    self.replace_all();
                }
            }
            libc::SIGTTOU => {
                if self.cores == 1 {
                    log::info!("Shards: 1 (already the fewest)");
                    return;
                }
                self.cores -= 1;
                self.sockets.steer(self.cores);
                // The retiring worker keeps its own copy; a later TTIN gets a
                // fresh socket, not this one once it is shut down.
                self.sockets.truncate(self.cores);
                log::info!("Shards: {}", self.cores);
                self.hooks.call(
                    "nworkers_changed",
                    &[self.cores as i64, self.cores as i64 + 1],
                );
                workers_gauge(self.cores);
                match self.isolation {
                    Isolation::Subinterpreter => self.replace_all(),
                    Isolation::Main => {
                        let cores = self.cores;
                        for w in self.workers.iter_mut().filter(|w| w.shards[0] >= cores) {
                            w.retiring = true;
                            w.replaced_for = Restart::Reload;
                        }
                    }
                }
            }
            libc::SIGUSR2 => self.reexec(),
            _ => {}
        }
    }

    /// USR1: the error log is reopened here and in every worker.
    fn reopen_logs(&self) {
        crate::logging::reopen_error_log(
            self.config.error_logfile.as_deref(),
            self.config.capture_output,
        );
        for w in &self.workers {
            w.signal(libc::SIGUSR1);
        }
    }

    /// HUP: reads the configuration again, as Gunicorn does; new workers get
    /// it. The sockets stay: a changed bind needs a new supervisor (USR2).
    fn reload_config(&mut self) {
        let mut config = match crate::config::reload() {
            Ok(config) => config,
            Err(e) => {
                log::error!("The configuration could not be reloaded, so it stays as it was: {e}");
                return;
            }
        };
        for warning in &config.warnings {
            log::warn!("{warning}");
        }
        config.io_engine = match config.io_engine {
            IoEngine::Auto => self.config.io_engine,
            asked => match crate::runtime::resolve(asked) {
                Ok(engine) => engine,
                Err(e) => {
                    log::error!("The configuration stays as it was: {e}");
                    return;
                }
            },
        };
        if config.binds != self.config.binds {
            log::warn!("A changed bind takes effect in a new supervisor (USR2), not on HUP");
            config.binds.clone_from(&self.config.binds);
        }
        if config.metrics_bind != self.config.metrics_bind {
            log::warn!(
                "A changed metrics_bind takes effect in a new supervisor (USR2), not on HUP"
            );
            config.metrics_bind = self.config.metrics_bind;
        }
        if let Err(e) = self.sockets.ensure(config.cores) {
            log::error!("Cannot open sockets for {} shards: {e}", config.cores);
            return;
        }
        // A deploy may have installed or removed packages: the isolation is
        // decided again, except that a refusal seen in a request keeps auto
        // on processes, as the probe cannot see what refused.
        let chosen = if self.met_refusal && config.isolation == IsolationMode::Auto {
            log::info!(
                "Isolation: one worker process per shard: a request met a module that refuses \
                 sub-interpreters"
            );
            Ok((Isolation::Main, false))
        } else {
            choose_isolation(&config)
        };
        match chosen {
            Ok(chosen) => (self.isolation, self.probing) = chosen,
            Err(e) => {
                log::error!("The configuration stays as it was: {e}");
                return;
            }
        }
        log::set_max_level(config.log_level);
        self.cores = config.cores;
        self.sockets.steer(self.cores);
        self.sockets.truncate(self.cores);
        self.hooks = Hooks::new(&config);
        self.config = Arc::new(config);
    }

    /// New workers for every shard; the current ones stop once those are ready.
    fn replace_all(&mut self) {
        for w in self.workers.iter_mut().filter(|w| w.stopped_at.is_none()) {
            w.retiring = true;
            w.replaced_for = Restart::Reload;
        }
    }

    /// TERM, INT or QUIT has arrived: in the shutdown delay or stopping.
    fn terminating(&self) -> bool {
        self.stopping.is_some() || self.drain_at.is_some()
    }

    /// TERM: /readyz fails at once; the workers serve on for
    /// `--shutdown-delay`, so the load balancer stops sending requests
    /// before any is refused, and then drain.
    fn terminate(&mut self) {
        if self.terminating() {
            return;
        }
        let delay = self.config.shutdown_delay;
        if delay.is_zero() {
            self.stop(libc::SIGTERM);
        } else {
            log::info!(
                "Serving for {} s more (--shutdown-delay), then draining",
                delay.as_secs()
            );
            self.drain_at = Some(Instant::now() + delay);
        }
    }

    fn stop(&mut self, sig: i32) {
        if self.stopping.is_none() {
            self.stopping = Some(Instant::now() + self.config.graceful_timeout);
        }
        for w in self.workers.iter_mut() {
            w.stop(sig);
        }
    }

    fn shut_down(&self) -> ! {
        // Files first, so whoever reads the last line finds them gone.
        self.remove_files();
        log::info!("Shutting down: Master");
        self.hooks.call("on_exit", &[]);
        exit_now(0);
    }

    /// Removes the pidfile and unix socket files, unless a new supervisor
    /// (USR2) has taken them over.
    fn remove_files(&self) {
        if self.successor.is_none() {
            self.sockets.remove_unix_files();
        }
        if let Some(path) = &self.config.pidfile {
            let ours = std::fs::read_to_string(path)
                .is_ok_and(|s| s.trim() == std::process::id().to_string());
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// Starts workers for shards no live worker serves, and stops retiring
    /// workers whose shards are now served by ready successors.
    fn reconcile(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        let cores = self.cores;
        let serving = |workers: &[Worker], shard: usize, ready: bool| {
            workers.iter().any(|w| {
                !w.retiring
                    && w.stopped_at.is_none()
                    && (w.ready || !ready)
                    && w.shards.contains(&shard)
            })
        };
        let backing_off = self.respawn_at.is_some_and(|at| Instant::now() < at);
        match self.isolation {
            _ if backing_off => {}
            Isolation::Subinterpreter => {
                if (0..cores).any(|s| !serving(&self.workers, s, false)) {
                    self.spawn((0..cores).collect());
                }
            }
            Isolation::Main => {
                for shard in 0..cores {
                    if !serving(&self.workers, shard, false) {
                        self.spawn(vec![shard]);
                    }
                }
            }
        }
        let covered: Vec<bool> = (0..cores)
            .map(|s| serving(&self.workers, s, true))
            .collect();
        for w in self.workers.iter_mut() {
            if w.retiring
                && w.stopped_at.is_none()
                && w.shards.iter().all(|&s| s >= cores || covered[s])
            {
                for (local, &shard) in w.shards.iter().enumerate() {
                    if shard >= cores {
                        w.board.set_retire(local);
                    }
                }
                log::info!("Stopping worker (pid:{}) gracefully", w.pid);
                w.stop(libc::SIGTERM);
            }
        }
        self.booted |= covered.iter().all(|&c| c);
        let all_ready = covered.iter().all(|&c| c) && self.workers.iter().all(|w| !w.retiring);
        if all_ready && !self.all_ready {
            let mode = match self.isolation {
                Isolation::Subinterpreter => "one sub-interpreter per shard in one worker process",
                Isolation::Main => "one worker process per shard",
            };
            let engine = match self.config.io_engine {
                IoEngine::Epoll => "epoll",
                _ => "io_uring",
            };
            log::info!(
                "Ready: {} shard(s), {} thread(s) each, {mode}, {engine}",
                cores,
                self.config.threads
            );
        }
        self.all_ready = all_ready;
        if self
            .workers
            .iter()
            .all(|w| w.shards.iter().all(|&s| s < cores))
        {
            self.sockets.truncate(cores);
        }
    }

    fn spawn(&mut self, shards: Vec<usize>) {
        // Before the fork, so that every worker shares them: the roster, and
        // a mailbox for each shard there is.
        crate::roster::share();
        let count = shards.iter().map(|s| s + 1).max().unwrap_or(0);
        if let Err(e) = self.mailboxes.ensure(self.cores.max(count)) {
            log::warn!("Connections stay in their worker: cannot make a mailbox ({e})");
        }
        let others: Vec<i32> = self
            .workers
            .iter()
            .filter_map(Worker::report_fd)
            .chain([self.signals.as_raw_fd()])
            .chain(self.ops.iter().flat_map(Ops::fds))
            .collect();
        let spawned = workers::spawn(workers::Fork {
            config: &self.config,
            sockets: &mut self.sockets,
            shards,
            isolation: self.isolation,
            preloaded: self.preloaded.clone(),
            close_in_child: &others,
            hooks: &self.hooks,
            age: self.age + 1,
            mailboxes: &mut self.mailboxes,
        });
        self.age += 1;
        match spawned {
            Ok(worker) => {
                log::info!(
                    "Started worker (pid:{}) for shard(s) {:?}",
                    worker.pid,
                    worker.shards
                );
                self.workers.push(worker);
            }
            Err(e) => log::error!("Cannot start a worker: {e}"),
        }
    }

    fn read_reports(&mut self) {
        let mut refused = None;
        let mut refused_late = None;
        let mut reload = false;
        for w in self.workers.iter_mut() {
            for line in w.read_reports() {
                if line == "ready" {
                    w.ready = true;
                    self.boot_failures = 0;
                    self.respawn_at = None;
                } else if line == "reload" {
                    // One swap at a time; a change during a swap waits for the
                    // next poll of the new worker.
                    reload |= !w.retiring;
                } else if let Some(reason) = line.strip_prefix("refused ") {
                    refused = Some(reason.to_string());
                    w.gone_quietly = true;
                } else if let Some(reason) = line.strip_prefix("refused-late ") {
                    refused_late.get_or_insert_with(|| reason.to_string());
                }
            }
        }
        if reload && !self.terminating() && !self.workers.iter().any(|w| w.retiring) {
            self.replace_all();
        }
        if self.probing && self.workers.iter().any(|w| w.ready) {
            self.probing = false;
        }
        if let Some(reason) = refused_late {
            self.refused_late(&reason);
        }
        if let Some(reason) = refused {
            if self.probing {
                log::info!(
                    "The app cannot load in a sub-interpreter ({reason}); \
                     one worker process per shard"
                );
                self.isolation = Isolation::Main;
                self.probing = false;
            } else if self.isolation == Isolation::Subinterpreter {
                log::error!(
                    "The app cannot load in a sub-interpreter ({reason}); \
                     use --isolation process or auto"
                );
                self.halt(APP_LOAD_ERROR, "App failed to load.");
            }
        }
    }

    /// A request imported a module that refuses sub-interpreters (it cost
    /// that request a 500). Under auto, every worker becomes a process now:
    /// the new workers start, and the old ones drain at once (the one that
    /// refused has begun already), so no other request meets the refusal;
    /// new connections wait in the backlog meanwhile. An explicit
    /// `--isolation subinterpreter` stays.
    fn refused_late(&mut self, reason: &str) {
        if self.config.isolation != IsolationMode::Auto
            || self.isolation != Isolation::Subinterpreter
            || self.terminating()
        {
            return;
        }
        log::warn!(
            "A request imported a module that refuses sub-interpreters ({reason}); \
             replacing the workers with one worker process per shard \
             (--isolation process starts that way)"
        );
        self.isolation = Isolation::Main;
        self.probing = false;
        self.met_refusal = true;
        for w in self.workers.iter_mut().filter(|w| w.stopped_at.is_none()) {
            w.retiring = true;
            w.replaced_for = Restart::Isolation;
            w.stop(libc::SIGTERM);
        }
    }

    /// Takes back from the placement map what a worker that exited still
    /// counted there; a shard no other worker serves is down until its next
    /// worker accepts.
    fn release_placement(&self, gone: &Worker) {
        for (local, &shard) in gone.shards.iter().enumerate() {
            let Some(load) = crate::placement::shard(shard) else {
                continue;
            };
            let counts = gone.board.counts(local);
            load.release(
                counts.in_flight.load(std::sync::atomic::Ordering::Relaxed),
                counts
                    .connections
                    .load(std::sync::atomic::Ordering::Relaxed),
            );
            if !self.workers.iter().any(|w| w.shards.contains(&shard)) {
                load.mark_down();
            }
        }
    }

    /// Connections sent to a shard that was removed (TTOU) while its last
    /// worker drained go on to a shard that is served; a shard still served
    /// reads its own mailbox.
    fn forward_mail(&self, gone: &Worker) {
        for &shard in &gone.shards {
            if shard >= self.cores
                && self.cores > 0
                && !self.workers.iter().any(|w| w.shards.contains(&shard))
            {
                self.mailboxes.forward(shard, shard % self.cores);
            }
        }
    }

    /// Keeps what an exited worker counted, so the counters of /metrics
    /// survive it.
    fn retire_counts(&mut self, gone: &Worker) {
        for (local, &shard) in gone.shards.iter().enumerate() {
            if self.retired.len() <= shard {
                self.retired.resize_with(shard + 1, Counts::default);
            }
            self.retired[shard].add(&worker_counts(gone, local));
        }
    }

    /// Collects exited children and decides what their exit means.
    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: non-blocking wait for any child, writing only `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            if Some(pid) == self.successor {
                log::info!("The new supervisor (pid:{pid}) exited");
                self.successor = None;
                self.restore_pidfile();
                continue;
            }
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let w = self.workers.swap_remove(i);
            w.log_exit(status);
            self.release_placement(&w);
            crate::roster::forget(w.pid as u32, &w.shards);
            self.forward_mail(&w);
            self.retire_counts(&w);
            self.hooks
                .call("child_exit", &[i64::from(pid), w.age as i64]);
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            let expected = w.stopped_at.is_some() || w.gone_quietly;
            if !w.gone_quietly && self.stopping.is_none() {
                let reason = if w.aborted_at.is_some() {
                    Restart::Timeout
                } else if w.stopped_at.is_some() {
                    w.replaced_for
                } else {
                    Restart::Crash
                };
                self.restarts[reason as usize] += 1;
            }
            if expected || self.stopping.is_some() {
                continue;
            }
            if !w.ready && matches!(code, Some(APP_LOAD_ERROR | WORKER_BOOT_ERROR)) {
                let reason = if code == Some(APP_LOAD_ERROR) {
                    "App failed to load."
                } else {
                    "Worker failed to boot."
                };
                let old_serving = self.workers.iter().any(|o| o.ready && o.retiring);
                if old_serving {
                    // A reload with a broken app: keep the workers that run.
                    log::error!(
                        "{reason} The running workers keep serving; fix the app and send HUP."
                    );
                    for o in self.workers.iter_mut() {
                        if o.stopped_at.is_none() {
                            o.retiring = false;
                        }
                    }
                    self.workers.retain(|o| o.ready || o.stopped_at.is_some());
                    continue;
                }
                self.halt(code.unwrap_or(1), reason);
            }
            if !w.ready {
                self.boot_failed(pid);
                continue;
            }
            if !w.retiring {
                log::info!("Replacing worker (pid:{pid}) for shard(s) {:?}", w.shards);
            }
        }
    }

    /// Enforces --timeout, --max-requests and --graceful-timeout.
    fn check_workers(&mut self) {
        let now = Instant::now();
        let timeout = match self.isolation {
            Isolation::Subinterpreter if !self.config.timeout.is_zero() => {
                self.config.timeout + UNWIND_GRACE
            }
            _ => self.config.timeout,
        };
        for w in self.workers.iter_mut() {
            if let Some(aborted) = w.aborted_at {
                if now.duration_since(aborted) > ABORT_GRACE {
                    w.signal(libc::SIGKILL);
                }
                continue;
            }
            if !timeout.is_zero() {
                let busy = w.board.longest_busy(crate::scoreboard::now_ms());
                if busy.is_some_and(|ms| ms > timeout.as_millis() as u64) {
                    log::error!("WORKER TIMEOUT (pid:{})", w.pid);
                    w.signal(libc::SIGABRT);
                    w.aborted_at = Some(now);
                    continue;
                }
            }
            let grace_over = self.stopping.map_or_else(
                || {
                    w.stopped_at
                        .is_some_and(|t| now.duration_since(t) > self.config.graceful_timeout)
                },
                |deadline| now > deadline,
            );
            if grace_over {
                w.signal(libc::SIGKILL);
                continue;
            }
            if w.ready && !w.retiring && w.max_requests > 0 && w.board.requests() >= w.max_requests
            {
                log::info!(
                    "Worker (pid:{}) served its {} requests (--max-requests); replacing it",
                    w.pid,
                    w.max_requests
                );
                w.retiring = true;
                w.replaced_for = Restart::MaxRequests;
            }
        }
    }

    /// A worker died before it was ready: the next one waits, longer each
    /// time, and a long enough run of them stops the server.
    fn boot_failed(&mut self, pid: libc::pid_t) {
        self.boot_failures += 1;
        let n = self.boot_failures;
        // While older workers still serve (a reload), they keep serving.
        if n >= BOOT_FAILURES_MAX && !self.workers.iter().any(|w| w.ready) {
            log::error!("{n} workers in a row died while booting; stopping");
            self.halt(WORKER_BOOT_ERROR, "Worker failed to boot.");
        }
        let delay = BOOT_BACKOFF_FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(BOOT_BACKOFF_MAX);
        log::warn!(
            "Worker (pid:{pid}) died while booting ({n} in a row); the next starts in {} ms",
            delay.as_millis()
        );
        self.respawn_at = Some(Instant::now() + delay);
    }

    fn halt(&self, code: i32, reason: &str) -> ! {
        log::error!("Reason: {reason}");
        for w in &self.workers {
            w.signal(libc::SIGKILL);
        }
        self.remove_files();
        self.hooks.call("on_exit", &[]);
        exit_now(code);
    }

    /// USR2: starts a new supervisor from the binary on disk, handing it the
    /// listening sockets, as Gunicorn does. Both serve until this one is told
    /// to stop.
    fn reexec(&mut self) {
        if self.successor.is_some() {
            log::warn!("USR2 ignored: a new supervisor is already running");
            return;
        }
        let ops: Vec<RawFd> = self.ops.iter().map(Ops::listener_fd).collect();
        let (fds, env) = self.sockets.handover(&ops);
        if let Some(path) = &self.config.pidfile {
            let _ = std::fs::rename(path, oldbin(path));
        }
        self.hooks.call("pre_exec", &[]);
        match workers::exec_successor(&fds, &env, &[self.signals.as_raw_fd()]) {
            Ok(pid) => {
                log::info!("Started a new supervisor (pid:{pid})");
                self.successor = Some(pid);
            }
            Err(e) => {
                log::error!("Cannot start a new supervisor: {e}");
                self.restore_pidfile();
            }
        }
    }

    fn restore_pidfile(&self) {
        if let Some(path) = &self.config.pidfile
            && oldbin(path).exists()
        {
            let _ = std::fs::rename(oldbin(path), path);
        }
    }
}

/// What one worker counted for its `local`-th shard.
fn worker_counts(w: &Worker, local: usize) -> Counts {
    let mut counts = Counts::of(w.board.meters(local));
    counts.moved = u64::from(w.board.counts(local).moved_out.load(Ordering::Relaxed));
    counts
}

fn oldbin(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".oldbin");
    name.into()
}
