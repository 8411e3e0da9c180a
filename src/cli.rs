//! The command line: Gunicorn's flag names and defaults for everything turbo shares
//! with it, so a Gunicorn user changes only the command name.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use log::LevelFilter;

/// Serve a Python WSGI application from thread-per-core io_uring shards.
///
/// Each core runs one shard: an OS thread pinned to that CPU with its own io_uring
/// ring, its own SO_REUSEPORT listener and its own Python sub-interpreter (its own
/// GIL on Python 3.12+). The flags follow Gunicorn's names and defaults.
#[derive(Parser, Debug)]
#[command(
    name = "turbo",
    version,
    about,
    long_about = None,
    after_help = "Example:\n  turbo myproject.wsgi:application --bind 0.0.0.0:8000 --cores 4"
)]
struct Args {
    /// The app as MODULE:CALLABLE, imported from the working directory.
    /// MODULE:factory() calls a factory; CALLABLE defaults to `application`.
    #[arg(value_name = "APP")]
    app: String,

    /// The socket to bind, as HOST:PORT or [IPV6]:PORT. Repeatable.
    /// Default: 127.0.0.1:8000, or 0.0.0.0:$PORT when $PORT is set.
    #[arg(short, long = "bind", value_name = "ADDRESS")]
    bind: Vec<String>,

    /// Number of shards, one per CPU. Default: the CPUs this process may run on.
    #[arg(
        long,
        value_name = "N",
        visible_short_alias = 'w',
        visible_alias = "workers"
    )]
    cores: Option<usize>,

    /// Python threads per shard, for apps that block on I/O.
    #[arg(long, value_name = "T", default_value_t = 1)]
    threads: usize,

    /// The maximum number of pending connections per listening socket.
    #[arg(long, value_name = "INT", default_value_t = 2048)]
    backlog: u32,

    /// Seconds to wait for the next request on an idle keep-alive connection.
    #[arg(
        long = "keep-alive",
        visible_alias = "keepalive",
        value_name = "SECONDS",
        default_value_t = 2
    )]
    keep_alive: u64,

    /// Seconds a client may take to send a complete request head, and the longest
    /// pause allowed while it sends a body (slow-client protection).
    #[arg(long = "header-timeout", value_name = "SECONDS", default_value_t = 10)]
    header_timeout: u64,

    /// The maximum size of the request line in bytes (0 means 8190).
    #[arg(
        long = "limit-request-line",
        value_name = "INT",
        default_value_t = 4094
    )]
    limit_request_line: usize,

    /// The maximum number of header fields in a request (at most 32768).
    #[arg(
        long = "limit-request-fields",
        value_name = "INT",
        default_value_t = 100
    )]
    limit_request_fields: usize,

    /// The maximum size of one request header field in bytes (0 means unlimited).
    #[arg(
        long = "limit-request-field_size",
        visible_alias = "limit-request-field-size",
        value_name = "INT",
        default_value_t = 8190
    )]
    limit_request_field_size: usize,

    /// The app's interface: `wsgi`, `asgi`, or `auto` (a coroutine function,
    /// or an object whose __call__ is async, means ASGI 3).
    #[arg(long, value_name = "INTERFACE", default_value = "auto")]
    interface: InterfaceMode,

    /// Gunicorn's worker class, mapped to an interface: `sync` and `gthread`
    /// mean WSGI; `asgi`, `uvicorn.workers.UvicornWorker` and
    /// `uvicorn_worker.UvicornWorker` mean ASGI.
    #[arg(short = 'k', long = "worker-class", value_name = "CLASS")]
    worker_class: Option<String>,

    /// ASGI lifespan events: `on` requires them, `off` never sends them, `auto`
    /// sends them and carries on if the app does not support them.
    #[arg(long, value_name = "MODE", default_value = "auto")]
    lifespan: LifespanMode,

    /// The largest WebSocket message accepted, in bytes; larger ones close
    /// the connection with code 1009.
    #[arg(long = "ws-max-size", value_name = "BYTES", default_value_t = 16 * 1024 * 1024)]
    ws_max_size: usize,

    /// How shards are isolated: `subinterpreter` (one worker process, one
    /// own-GIL sub-interpreter per shard), `process` (one worker process per
    /// shard) or `auto` (sub-interpreters where Python and the app allow them).
    #[arg(long, value_name = "MODE", default_value = "auto")]
    isolation: IsolationMode,

    /// Workers stuck in one request for more than this many seconds are killed
    /// and replaced (0 disables).
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,

    /// Seconds a stopping worker may take to finish its requests before it is
    /// killed.
    #[arg(
        long = "graceful-timeout",
        value_name = "SECONDS",
        default_value_t = 30
    )]
    graceful_timeout: u64,

    /// Replace a worker after it has served this many requests (0 disables).
    #[arg(long = "max-requests", value_name = "INT", default_value_t = 0)]
    max_requests: u64,

    /// Add a random number of requests, up to this, to each worker's
    /// --max-requests, so workers do not all restart at once.
    #[arg(long = "max-requests-jitter", value_name = "INT", default_value_t = 0)]
    max_requests_jitter: u64,

    /// Import the app in the supervisor before starting workers.
    #[arg(long = "preload", visible_alias = "preload-app")]
    preload: bool,

    /// Write the supervisor's process id to this file.
    #[arg(short = 'p', long = "pid", value_name = "FILE")]
    pid: Option<std::path::PathBuf>,

    /// The error log file; `-` is standard error. USR1 reopens it.
    #[arg(
        long = "error-logfile",
        visible_alias = "log-file",
        value_name = "FILE",
        default_value = "-"
    )]
    error_logfile: String,

    /// The error log level: debug, info, warning, error or critical.
    #[arg(long = "log-level", value_name = "LEVEL", default_value = "info")]
    log_level: String,
}

/// `--interface`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InterfaceMode {
    Auto,
    Wsgi,
    Asgi,
}

/// `--lifespan`, as in Uvicorn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LifespanMode {
    Auto,
    On,
    Off,
}

/// `--isolation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IsolationMode {
    Auto,
    Subinterpreter,
    Process,
}

/// Limits on a request head, after Gunicorn's semantics for 0.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub request_line: usize,
    pub fields: usize,
    pub field_size: usize,
}

/// The validated configuration every part of the server reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub app: AppSpec,
    pub binds: Vec<SocketAddr>,
    pub cores: usize,
    pub threads: usize,
    pub backlog: u32,
    pub keep_alive: Duration,
    pub header_timeout: Duration,
    pub limits: Limits,
    pub log_level: LevelFilter,
    pub isolation: IsolationMode,
    pub interface: InterfaceMode,
    pub lifespan: LifespanMode,
    pub ws_max_size: usize,
    /// Zero when off.
    pub timeout: Duration,
    pub graceful_timeout: Duration,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub preload: bool,
    pub pidfile: Option<std::path::PathBuf>,
    /// None for standard error.
    pub error_logfile: Option<std::path::PathBuf>,
}

/// `module:expression`, split; the expression is checked again in Python.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    pub module: String,
    pub expr: String,
}

impl AppSpec {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (module, expr) = match spec.split_once(':') {
            Some((m, e)) => (m, e),
            None => (spec, "application"),
        };
        let is_ident = |s: &str| {
            let mut chars = s.chars();
            matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
                && chars.all(|c| c == '_' || c.is_alphanumeric())
        };
        if module.is_empty() || !module.split('.').all(is_ident) {
            return Err(format!("invalid app '{spec}': expected MODULE:CALLABLE"));
        }
        let name = expr.split_once('(').map_or(expr, |(name, _)| name);
        let call_ok = !expr.contains('(') || expr.ends_with(')');
        if !name.split('.').all(is_ident) || !call_ok {
            return Err(format!(
                "invalid app '{spec}': '{expr}' is neither an attribute name nor a call"
            ));
        }
        Ok(AppSpec {
            module: module.to_string(),
            expr: expr.to_string(),
        })
    }
}

/// Resolves `HOST:PORT`, `[V6]:PORT`, `HOST` or `:PORT` (port 8000 when omitted, as
/// Gunicorn does).
pub fn parse_bind(bind: &str) -> Result<Vec<SocketAddr>, String> {
    let (host, port) = if let Some(rest) = bind.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("invalid bind '{bind}': missing ']'"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p,
            None if after.is_empty() => "8000",
            None => return Err(format!("invalid bind '{bind}'")),
        };
        (host, port)
    } else {
        match bind.rsplit_once(':') {
            Some((host, port)) => (host, port),
            None => (bind, "8000"),
        }
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("invalid bind '{bind}': bad port '{port}'"))?;
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("invalid bind '{bind}': {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("invalid bind '{bind}': no address"));
    }
    Ok(addrs)
}

/// CPUs in this process's affinity mask.
pub fn available_cores() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

/// Parses the command line; any error is one line and exit code 2.
pub fn from_args() -> Config {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(err) => {
            use clap::error::ErrorKind;
            if matches!(
                err.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = err.print();
                std::process::exit(0);
            }
            let text = err.to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            usage_error(first.trim_start_matches("error: "));
        }
    };
    args.validate().unwrap_or_else(|msg| usage_error(&msg))
}

fn usage_error(msg: &str) -> ! {
    eprintln!("turbo: error: {msg} (see 'turbo --help')");
    std::process::exit(2);
}

impl Args {
    fn validate(self) -> Result<Config, String> {
        let app = AppSpec::parse(&self.app)?;
        let mut binds = Vec::new();
        if self.bind.is_empty() {
            match std::env::var("PORT") {
                Ok(port) => binds.extend(parse_bind(&format!("0.0.0.0:{port}"))?),
                Err(_) => binds.extend(parse_bind("127.0.0.1:8000")?),
            }
        }
        for bind in &self.bind {
            binds.extend(parse_bind(bind)?);
        }
        let cores = self.cores.unwrap_or_else(available_cores);
        if cores == 0 {
            return Err("--cores must be at least 1".into());
        }
        if self.threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        if self.limit_request_line > 8190 {
            return Err("--limit-request-line must be at most 8190".into());
        }
        if self.limit_request_fields > 32768 {
            return Err("--limit-request-fields must be at most 32768".into());
        }
        Ok(Config {
            app,
            binds,
            cores,
            threads: self.threads,
            backlog: self.backlog,
            keep_alive: Duration::from_secs(self.keep_alive),
            header_timeout: Duration::from_secs(self.header_timeout.max(1)),
            limits: Limits {
                request_line: match self.limit_request_line {
                    0 => 8190,
                    n => n,
                },
                fields: self.limit_request_fields,
                field_size: match self.limit_request_field_size {
                    0 => usize::MAX / 4,
                    n => n,
                },
            },
            log_level: crate::logging::parse_level(&self.log_level)?,
            isolation: self.isolation,
            interface: match self.worker_class.as_deref() {
                None => self.interface,
                Some("sync" | "gthread") => InterfaceMode::Wsgi,
                Some("asgi" | "uvicorn.workers.UvicornWorker" | "uvicorn_worker.UvicornWorker") => {
                    InterfaceMode::Asgi
                }
                Some(other) => {
                    return Err(format!(
                        "unsupported worker class '{other}' (turbo accepts sync, gthread, asgi \
                         and uvicorn.workers.UvicornWorker)"
                    ));
                }
            },
            lifespan: self.lifespan,
            ws_max_size: self.ws_max_size,
            timeout: Duration::from_secs(self.timeout),
            graceful_timeout: Duration::from_secs(self.graceful_timeout),
            max_requests: self.max_requests,
            max_requests_jitter: self.max_requests_jitter,
            preload: self.preload,
            pidfile: self.pid,
            error_logfile: (self.error_logfile != "-").then(|| self.error_logfile.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_specs() {
        let s = AppSpec::parse("pkg.mod:app").unwrap();
        assert_eq!((s.module.as_str(), s.expr.as_str()), ("pkg.mod", "app"));
        assert_eq!(AppSpec::parse("wsgi").unwrap().expr, "application");
        assert_eq!(
            AppSpec::parse("m:create_app('x', 1)").unwrap().expr,
            "create_app('x', 1)"
        );
        for bad in ["", ":app", "a b:app", "m:", "m:1x", "m:f(", "m..n:app"] {
            assert!(AppSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn binds() {
        assert_eq!(
            parse_bind("127.0.0.1:9000").unwrap(),
            vec!["127.0.0.1:9000".parse().unwrap()]
        );
        assert_eq!(
            parse_bind("[::1]:9000").unwrap(),
            vec!["[::1]:9000".parse().unwrap()]
        );
        assert_eq!(parse_bind("127.0.0.1").unwrap()[0].port(), 8000);
        assert_eq!(
            parse_bind(":9001").unwrap(),
            vec!["0.0.0.0:9001".parse().unwrap()]
        );
        assert!(parse_bind("127.0.0.1:http").is_err());
        assert!(parse_bind("[::1").is_err());
    }
}
