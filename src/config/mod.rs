//! The configuration: every setting is declared once in `settings.rs`, and
//! read, lowest precedence first, from its default, the environment ($PORT,
//! $WEB_CONCURRENCY), `GUNICORN_CMD_ARGS` and the command line, as Gunicorn
//! does. `Config` is the typed result every part of the server reads.

pub mod file;
pub mod settings;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Command};
use log::LevelFilter;

use crate::http::parse::Limits;

use settings::{Kind, SETTINGS};

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

/// `--io-engine`: the kernel interface under every shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoEngine {
    /// io_uring where the kernel allows it, else epoll.
    Auto,
    Uring,
    Epoll,
}

/// `--send-zerocopy`: when large lent bodies go out by send_zc.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SendZerocopy {
    /// To clients that are not on loopback.
    Auto,
    Always,
    Never,
}

impl From<SendZerocopy> for crate::http::output::Zerocopy {
    fn from(when: SendZerocopy) -> Self {
        match when {
            SendZerocopy::Auto => Self::Auto,
            SendZerocopy::Always => Self::Always,
            SendZerocopy::Never => Self::Never,
        }
    }
}

/// A logging configuration for Python's logging, which then carries turbo's
/// log lines and access records.
#[derive(Clone, Debug)]
pub enum LogConfig {
    /// `logconfig`: a logging.config.fileConfig file.
    File(PathBuf),
    /// `logconfig_json`: a dictConfig in a JSON file.
    Json(PathBuf),
    /// `logconfig_dict`, from the config file.
    Dict(std::sync::Arc<crate::python::Held<pyo3::types::PyDict>>),
}

/// The validated configuration every part of the server reads.
#[derive(Clone, Debug)]
pub struct Config {
    pub app: AppSpec,
    pub binds: Vec<Bind>,
    /// Refuse a TCP port that another process already listens on with
    /// SO_REUSEPORT, unless this is set (`reuse_port`).
    pub reuse_port: bool,
    pub cores: usize,
    pub threads: usize,
    pub backlog: u32,
    pub keep_alive: Duration,
    pub header_timeout: Duration,
    /// The most connections a shard holds (`worker_connections`).
    pub worker_connections: usize,
    /// Where large request bodies are spooled (`tmp_upload_dir`).
    pub tmp_upload_dir: Option<PathBuf>,
    /// How long a client may take no response bytes (`send_timeout`).
    pub send_timeout: Duration,
    pub limits: Limits,
    pub log_level: LevelFilter,
    pub isolation: IsolationMode,
    pub interface: InterfaceMode,
    pub lifespan: LifespanMode,
    pub ws_max_size: usize,
    /// Zero when off.
    pub timeout: Duration,
    pub graceful_timeout: Duration,
    /// How long a SIGTERM'd server keeps serving before it drains.
    pub shutdown_delay: Duration,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub preload: bool,
    /// Files go out by sendfile(2) (`sendfile`, SENDFILE).
    pub sendfile: bool,
    pub pidfile: Option<std::path::PathBuf>,
    /// None for standard error.
    pub error_logfile: Option<std::path::PathBuf>,
    /// Standard output goes to the error log file too.
    pub capture_output: bool,
    pub chdir: Option<std::path::PathBuf>,
    /// Directories put at the front of every interpreter's sys.path.
    pub pythonpath: Vec<String>,
    pub raw_env: Vec<(String, String)>,
    /// `--reload`: the app's modules and these files are watched.
    pub reload: Option<Vec<PathBuf>>,
    pub umask: u32,
    /// The uid and gid worker processes switch to.
    pub user: Option<u32>,
    pub group: Option<u32>,
    pub daemon: bool,
    pub forwarded_allow_ips: crate::http::proxy::Allow,
    pub proxy_protocol: crate::http::proxy_protocol::Mode,
    pub io_engine: IoEngine,
    pub send_zerocopy: SendZerocopy,
    /// HTTPS (`certfile`): every TCP bind speaks TLS.
    pub tls: Option<std::sync::Arc<crate::http::tls::Tls>>,
    pub proxy_allow_ips: crate::http::proxy::Allow,
    pub secure_scheme_headers: crate::http::proxy::SchemeHeaders,
    /// The access log's file (`-` for standard output), if there is one.
    pub access_log: Option<String>,
    pub logconfig: Option<LogConfig>,
    /// The operations port (`metrics_bind`): /metrics, /livez, /readyz.
    pub metrics_bind: Option<std::net::SocketAddr>,
    /// `statsd_host`, with `statsd_prefix` and `dogstatsd_tags`.
    pub statsd: Option<(crate::statsd::Address, String, String)>,
    pub access_log_format: crate::access_log::Format,
    /// What reading the configuration found worth a warning, logged at start.
    pub warnings: Vec<String>,
    /// The config file's namespace, when it defines server hooks.
    pub hooks: Option<std::sync::Arc<crate::python::Held<pyo3::types::PyDict>>>,
    /// The config file, when it defines pre_request or post_request.
    pub request_hooks: Option<String>,
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

/// One place to listen, as `bind` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A listening socket already open on this descriptor, from whoever started
    /// turbo (`fd://N`).
    Fd(RawFd),
}

impl std::fmt::Display for Bind {
    /// The form `bind` accepts back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Tcp(addr) => write!(f, "{addr}"),
            Bind::Unix(path) => write!(f, "unix:{}", path.display()),
            Bind::Fd(fd) => write!(f, "fd://{fd}"),
        }
    }
}

/// Resolves `unix:PATH`, `fd://N`, `HOST:PORT`, `[V6]:PORT`, `HOST` or `:PORT`
/// (port 8000 when omitted, as Gunicorn does).
pub fn parse_bind(bind: &str) -> Result<Vec<Bind>, String> {
    if let Some(path) = bind.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("invalid bind '{bind}': no path"));
        }
        return Ok(vec![Bind::Unix(PathBuf::from(path))]);
    }
    if let Some(fd) = bind.strip_prefix("fd://") {
        return match fd.parse::<RawFd>() {
            Ok(fd) if fd >= 0 => Ok(vec![Bind::Fd(fd)]),
            _ => Err(format!("invalid bind '{bind}': bad descriptor '{fd}'")),
        };
    }
    parse_inet(bind).map(|addrs| addrs.into_iter().map(Bind::Tcp).collect())
}

fn parse_inet(bind: &str) -> Result<Vec<SocketAddr>, String> {
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

/// The default number of shards: the CPUs in this process's affinity mask, or
/// fewer when a cgroup CPU quota (a container's `--cpus`) allows fewer.
pub fn available_cores() -> usize {
    let mask = affinity_cores();
    match cpu_quota() {
        Some(quota) if quota > 0.0 => mask.min(quota.ceil() as usize).max(1),
        _ => mask,
    }
}

/// CPUs in this process's affinity mask.
pub fn affinity_cores() -> usize {
    core_affinity::get_core_ids().map_or(1, |ids| ids.len().max(1))
}

/// The CPUs a cgroup v2 quota (`cpu.max`) allows this process, if it sets one.
pub fn cpu_quota() -> Option<f64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.max")).ok()?;
    let mut fields = max.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (period > 0.0).then(|| quota / period)
}

/// The values chosen for the settings that were given, by setting name.
#[derive(Default, Debug, Clone)]
pub struct Values {
    app: Option<String>,
    given: BTreeMap<&'static str, Vec<String>>,
}

impl Values {
    /// Lays `over` on top: each setting it gives replaces this one's.
    fn merge(&mut self, over: Values) {
        if over.app.is_some() {
            self.app = over.app;
        }
        self.given.extend(over.given);
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.given
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    fn is_set(&self, name: &str) -> bool {
        self.one(name).is_some_and(|v| v == "true")
    }
}

fn command() -> Command {
    let mut cmd = Command::new("turbo")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Serve a Python WSGI or ASGI application from thread-per-core io_uring shards.")
        .long_about(
            "Serve a Python WSGI or ASGI application from thread-per-core io_uring shards.\n\n\
             Each core runs one shard: an OS thread pinned to that CPU with its own io_uring \
             ring, its own SO_REUSEPORT listener and its own Python sub-interpreter (its own GIL \
             on Python 3.12+). The flags follow Gunicorn's names and defaults; \
             GUNICORN_CMD_ARGS is read too.",
        )
        .after_help("Example:\n  turbo myproject.wsgi:application --bind 0.0.0.0:8000 --cores 4")
        .arg(Arg::new("APP").value_name("APP").help(
            "The app as MODULE:CALLABLE, imported from the working directory. \
                     MODULE:factory() calls a factory; CALLABLE defaults to `application`.",
        ));
    for s in SETTINGS.iter().filter(|s| !s.flags.is_empty()) {
        let mut arg = Arg::new(s.name).help(s.help).help_heading(s.section);
        let mut long_named = false;
        for flag in s.flags {
            if let Some(long) = flag.strip_prefix("--") {
                arg = if long_named {
                    arg.visible_alias(long)
                } else {
                    long_named = true;
                    arg.long(long)
                };
            } else if let Some(short) = flag.strip_prefix('-').and_then(|f| f.chars().next()) {
                arg = arg.short(short);
            }
        }
        arg = match s.kind {
            Kind::Bool | Kind::Off => arg.action(ArgAction::SetTrue),
            Kind::List => arg.action(ArgAction::Append).value_name(s.meta),
            Kind::Value => arg.action(ArgAction::Set).value_name(s.meta),
            Kind::Optional(bare) => arg
                .action(ArgAction::Set)
                .value_name(s.meta)
                .num_args(0..=1)
                .default_missing_value(bare),
        };
        if !s.default.is_empty() {
            arg = arg.default_value(s.default);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

/// The settings given explicitly in `args` (without the program name).
fn given(matches: &ArgMatches) -> Values {
    let mut values = Values {
        app: matches.get_one::<String>("APP").cloned(),
        ..Values::default()
    };
    for s in SETTINGS.iter().filter(|s| !s.flags.is_empty()) {
        if matches.value_source(s.name) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        let list = match s.kind {
            Kind::Bool => vec![matches.get_flag(s.name).to_string()],
            Kind::Off => vec!["false".to_string()],
            _ => matches
                .get_many::<String>(s.name)
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
        };
        values.given.insert(s.name, list);
    }
    values
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Values, clap::Error> {
    command().try_get_matches_from(args).map(|m| given(&m))
}

/// Splits `GUNICORN_CMD_ARGS` as a POSIX shell would: whitespace separates,
/// quotes group, a backslash escapes.
pub fn shell_split(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unterminated \" quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                if let Some(c) = chars.next() {
                    w.push(c);
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// What the process was asked to do.
pub enum Action {
    Serve(Box<Config>),
    /// `--print-config`: the resolved settings, one per line.
    Print(String),
    /// `--check-config` found the configuration valid.
    CheckPassed(Box<Config>),
    /// `--check-system`, with the backlog asked for.
    CheckSystem(u32),
}

/// Reads every source; any error is one line and exit code 2.
/// Why the sources could not be read.
enum Failure {
    /// clap's help or version text, to print with exit status 0.
    Display(clap::Error),
    /// A config file that raised, with its traceback: exit status 1.
    FileRaised(String),
    /// Anything else: one line, exit status 2.
    Usage(String),
}

fn first_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_string()
}

/// The command line turbo was started with, its program name first: read
/// again at each reload.
static COMMAND_LINE: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Records the command line, once, before `load`.
pub fn set_command_line(argv: Vec<String>) {
    let _ = COMMAND_LINE.set(argv);
}

/// Every source merged, lowest precedence first: the config file,
/// GUNICORN_CMD_ARGS, the command line. (The environment's $PORT and
/// $WEB_CONCURRENCY apply in `Config::from_values` when nothing else did.)
fn gather() -> Result<(Values, file::FileValues), Failure> {
    let argv = COMMAND_LINE.get().cloned().unwrap_or_default();
    let command_line = parse(argv).map_err(|err| {
        use clap::error::ErrorKind;
        match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Failure::Display(err),
            _ => Failure::Usage(first_line(&err)),
        }
    })?;
    let env_args = match std::env::var("GUNICORN_CMD_ARGS") {
        Ok(text) => {
            let words = shell_split(&text)
                .map_err(|e| Failure::Usage(format!("GUNICORN_CMD_ARGS: {e}")))?;
            parse(std::iter::once("turbo".to_string()).chain(words))
                .map_err(|err| Failure::Usage(format!("GUNICORN_CMD_ARGS: {}", first_line(&err))))?
        }
        Err(_) => Values::default(),
    };
    let explicit = command_line
        .one("config")
        .or(env_args.one("config"))
        .map(str::to_string);
    let location = explicit.or_else(|| {
        std::path::Path::new(file::DEFAULT)
            .exists()
            .then(|| file::DEFAULT.to_string())
    });
    let mut values = Values::default();
    let mut extras = file::FileValues::default();
    if let Some(location) = location {
        let file = file::read(&location).map_err(|msg| {
            if msg.contains('\n') {
                Failure::FileRaised(msg)
            } else {
                Failure::Usage(msg)
            }
        })?;
        extras = file;
        values.merge(std::mem::take(&mut extras.values));
    }
    values.merge(env_args);
    values.merge(command_line);
    Ok((values, extras))
}

/// Reads every source at start-up; errors end the process (exit status 2,
/// or 1 for a config file that raised).
pub fn load() -> Action {
    let (values, extras) = match gather() {
        Ok(gathered) => gathered,
        Err(Failure::Display(err)) => {
            let _ = err.print();
            std::process::exit(0);
        }
        Err(Failure::FileRaised(msg)) => {
            crate::logging::print_error(&format!("turbo: error: {msg}"));
            std::process::exit(1);
        }
        Err(Failure::Usage(msg)) => usage_error(&msg),
    };
    if values.is_set("check_system") {
        return match value(&values, "backlog", "an integer") {
            Ok(backlog) => Action::CheckSystem(backlog),
            Err(msg) => usage_error(&msg),
        };
    }
    let checking = values.is_set("check_config");
    let built = Config::build(&values, extras);
    match built {
        Ok(config) if values.is_set("print_config") => Action::Print(print(&values, &config)),
        Ok(config) if checking => Action::CheckPassed(Box::new(config)),
        Ok(config) => Action::Serve(Box::new(config)),
        Err(msg) if checking => {
            crate::logging::print_error(&format!("turbo: error: {msg}"));
            std::process::exit(1);
        }
        Err(msg) => usage_error(&msg),
    }
}

/// Reads every source again (HUP), reporting errors instead of exiting.
pub fn reload() -> Result<Config, String> {
    let (values, extras) = gather().map_err(|failure| match failure {
        Failure::Display(err) => first_line(&err),
        Failure::FileRaised(msg) | Failure::Usage(msg) => msg,
    })?;
    Config::build(&values, extras)
}

/// `--print-config`: every setting with its resolved value, sorted by name,
/// laid out as Gunicorn lays it out.
fn print(values: &Values, config: &Config) -> String {
    let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
    names.sort_unstable();
    let width = names.iter().map(|n| n.len()).max().unwrap_or(0);
    let mut out = String::new();
    for name in names {
        let value = match name {
            "bind" => {
                let quoted: Vec<String> = config.binds.iter().map(|b| format!("'{b}'")).collect();
                format!("[{}]", quoted.join(", "))
            }
            "workers" => config.cores.to_string(),
            "forwarded_allow_ips" => values
                .one(name)
                .map(str::to_string)
                .or_else(|| std::env::var("FORWARDED_ALLOW_IPS").ok())
                .unwrap_or_else(|| "127.0.0.1,::1".to_string()),
            "secure_scheme_headers" => {
                let pairs: Vec<String> = config
                    .secure_scheme_headers
                    .iter()
                    .map(|(n, v)| format!("'{n}': '{v}'"))
                    .collect();
                format!("{{{}}}", pairs.join(", "))
            }
            _ => match settings::find(name) {
                Some(s) if s.kind == Kind::Bool => {
                    if values.is_set(name) { "True" } else { "False" }.to_string()
                }
                Some(s) if s.kind == Kind::Off => match values.one(name) {
                    Some("true") => "True",
                    Some(_) => "False",
                    None => "None",
                }
                .to_string(),
                Some(s) => match values.one(name).unwrap_or(s.default) {
                    "" => "None".to_string(),
                    v => v.to_string(),
                },
                None => continue,
            },
        };
        out.push_str(&format!("{name:<width$} = {value}\n"));
    }
    out
}

/// `--umask`: 0o22, 0x12, 18, or 022 with the leading zero meaning octal.
fn parse_umask(text: &str) -> Result<u32, String> {
    let t = text.trim();
    let parsed = if let Some(oct) = t.strip_prefix("0o") {
        u32::from_str_radix(oct, 8)
    } else if let Some(hex) = t.strip_prefix("0x") {
        u32::from_str_radix(hex, 16)
    } else if t.len() > 1 && t.starts_with('0') {
        u32::from_str_radix(&t[1..], 8)
    } else {
        t.parse()
    };
    parsed
        .ok()
        .filter(|&m| m <= 0o777)
        .ok_or_else(|| format!("invalid value '{text}' for --umask"))
}

/// A user name or uid, as `--user` takes it.
fn user_id(name: &str) -> Result<u32, String> {
    // SAFETY: getpwnam reads a NUL-terminated name; the entry is read at once.
    account_id(name, "user", |c| unsafe {
        let pw = libc::getpwnam(c);
        (!pw.is_null()).then(|| (*pw).pw_uid)
    })
}

/// A group name or gid, as `--group` takes it.
fn group_id(name: &str) -> Result<u32, String> {
    // SAFETY: getgrnam reads a NUL-terminated name; the entry is read at once.
    account_id(name, "group", |c| unsafe {
        let gr = libc::getgrnam(c);
        (!gr.is_null()).then(|| (*gr).gr_gid)
    })
}

/// A number as it is, or a name looked up with `lookup`.
fn account_id(
    name: &str,
    what: &str,
    lookup: impl FnOnce(*const libc::c_char) -> Option<u32>,
) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let c = std::ffi::CString::new(name).map_err(|_| format!("invalid {what} '{name}'"))?;
    lookup(c.as_ptr()).ok_or_else(|| format!("no such {what} '{name}'"))
}

fn usage_error(msg: &str) -> ! {
    crate::logging::print_error(&format!("turbo: error: {msg} (see 'turbo --help')"));
    std::process::exit(2);
}

fn value<T: std::str::FromStr>(values: &Values, name: &str, expected: &str) -> Result<T, String> {
    let default = settings::find(name).map_or("", |s| s.default);
    let text = values.one(name).unwrap_or(default);
    text.parse().map_err(|_| {
        format!(
            "invalid value '{text}' for {} (expected {expected})",
            flag_of(name)
        )
    })
}

/// The setting's main long flag, for error messages.
fn flag_of(name: &str) -> String {
    settings::find(name)
        .and_then(|s| s.flags.iter().find(|f| f.starts_with("--")))
        .map_or_else(|| name.to_string(), |f| f.to_string())
}

fn choice<T: clap::ValueEnum>(values: &Values, name: &str) -> Result<T, String> {
    let default = settings::find(name).map_or("", |s| s.default);
    let text = values.one(name).unwrap_or(default);
    T::from_str(text, true).map_err(|_| {
        let options: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_string()))
            .collect();
        format!(
            "invalid value '{text}' for {} (expected {})",
            flag_of(name),
            options.join(", ")
        )
    })
}

impl Config {
    /// The settings the HTTP driver follows, derived from this configuration.
    pub fn http(&self) -> crate::http::conn::Settings {
        crate::http::conn::Settings {
            keep_alive: self.keep_alive,
            header_timeout: self.header_timeout,
            limits: self.limits,
            proxy_protocol: self.proxy_protocol,
            proxy_allow_ips: self.proxy_allow_ips.clone(),
            forwarded_allow_ips: self.forwarded_allow_ips.clone(),
            secure_scheme_headers: self.secure_scheme_headers.clone(),
            zerocopy: self.send_zerocopy.into(),
            sendfile: self.sendfile,
            tmp_upload_dir: self.tmp_upload_dir.clone(),
        }
    }

    /// The configuration from the gathered values and what only a config
    /// file can give (its hooks, its logging dict).
    fn build(values: &Values, extras: file::FileValues) -> Result<Config, String> {
        Config::from_values(values).map(|config| Config {
            warnings: extras.warnings,
            hooks: extras.hooks,
            request_hooks: extras.request_hooks,
            logconfig: extras
                .logconfig_dict
                .map(LogConfig::Dict)
                .or(config.logconfig),
            ..config
        })
    }

    fn from_values(values: &Values) -> Result<Config, String> {
        let app = AppSpec::parse(
            values
                .app
                .as_deref()
                .ok_or("no app given: turbo MODULE:CALLABLE")?,
        )?;
        let mut binds = Vec::new();
        match values.given.get("bind") {
            Some(list) => {
                for bind in list {
                    binds.extend(parse_bind(bind)?);
                }
            }
            None => match std::env::var("PORT") {
                Ok(port) => binds.extend(parse_bind(&format!("0.0.0.0:{port}"))?),
                Err(_) => binds.extend(parse_bind("127.0.0.1:8000")?),
            },
        }
        let cores = match values.one("workers") {
            Some(_) => value(values, "workers", "an integer")?,
            None => match std::env::var("WEB_CONCURRENCY") {
                Ok(n) => n
                    .trim()
                    .parse()
                    .map_err(|_| format!("invalid WEB_CONCURRENCY '{n}'"))?,
                Err(_) => available_cores(),
            },
        };
        if cores == 0 {
            return Err("--workers must be at least 1".into());
        }
        let threads: usize = value(values, "threads", "an integer")?;
        if threads == 0 {
            return Err("--threads must be at least 1".into());
        }
        let limit_request_line: usize = value(values, "limit_request_line", "an integer")?;
        if limit_request_line > 8190 {
            return Err("--limit-request-line must be at most 8190".into());
        }
        let limit_request_fields: usize = value(values, "limit_request_fields", "an integer")?;
        if limit_request_fields > 32768 {
            return Err("--limit-request-fields must be at most 32768".into());
        }
        let limit_request_field_size: usize =
            value(values, "limit_request_field_size", "an integer")?;
        let limit_request_body: u64 = value(values, "limit_request_body", "a number of bytes")?;
        let interface = match values.one("worker_class") {
            None => choice(values, "interface")?,
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
        };
        let metrics_bind = match values.one("metrics_bind") {
            Some(address) => Some(metrics_address(address, &binds)?),
            None => None,
        };
        let seconds = |name| value::<u64>(values, name, "a number of seconds");
        let errorlog = values.one("errorlog").unwrap_or("-");
        Ok(Config {
            app,
            binds,
            cores,
            threads,
            backlog: value(values, "backlog", "an integer")?,
            reuse_port: values.is_set("reuse_port"),
            keep_alive: Duration::from_secs(seconds("keepalive")?),
            header_timeout: Duration::from_secs(seconds("header_timeout")?.max(1)),
            send_timeout: Duration::from_secs(seconds("send_timeout")?.max(1)),
            worker_connections: value::<usize>(values, "worker_connections", "an integer")?.max(1),
            tmp_upload_dir: values.one("tmp_upload_dir").map(PathBuf::from),
            // Gunicorn's 0s: a request line of 8190, 32768 fields, no limit
            // on one field, no limit on the body.
            limits: Limits {
                request_line: match limit_request_line {
                    0 => 8190,
                    n => n,
                },
                fields: match limit_request_fields {
                    0 => 32768,
                    n => n,
                },
                field_size: (limit_request_field_size > 0).then_some(limit_request_field_size),
                body: (limit_request_body > 0).then_some(limit_request_body),
            },
            log_level: crate::logging::parse_level(values.one("loglevel").unwrap_or("info"))?,
            isolation: choice(values, "isolation")?,
            interface,
            lifespan: choice(values, "lifespan")?,
            ws_max_size: value(values, "ws_max_size", "a number of bytes")?,
            timeout: Duration::from_secs(seconds("timeout")?),
            graceful_timeout: Duration::from_secs(seconds("graceful_timeout")?),
            shutdown_delay: Duration::from_secs(seconds("shutdown_delay")?),
            max_requests: value(values, "max_requests", "an integer")?,
            max_requests_jitter: value(values, "max_requests_jitter", "an integer")?,
            preload: values.is_set("preload_app"),
            sendfile: match values.one("sendfile") {
                Some(v) => v == "true",
                None => !std::env::var("SENDFILE").is_ok_and(|v| {
                    ["0", "false", "no", "off"].contains(&v.trim().to_ascii_lowercase().as_str())
                }),
            },
            pidfile: values.one("pidfile").map(Into::into),
            error_logfile: (errorlog != "-").then(|| errorlog.into()),
            capture_output: values.is_set("capture_output"),
            chdir: values.one("chdir").map(Into::into),
            pythonpath: values
                .one("pythonpath")
                .map(|p| {
                    p.split(',')
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            reload: match values.one("reload_engine").unwrap_or("auto") {
                "auto" | "poll" | "inotify" => values.is_set("reload").then(|| {
                    values
                        .given
                        .get("reload_extra_files")
                        .map(|files| files.iter().map(PathBuf::from).collect())
                        .unwrap_or_default()
                }),
                other => {
                    return Err(format!(
                        "invalid value '{other}' for --reload-engine (expected auto, poll or inotify)"
                    ));
                }
            },
            raw_env: values
                .given
                .get("raw_env")
                .map(|list| {
                    list.iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .filter(|(k, _)| !k.is_empty())
                                .map(|(k, v)| (k.to_string(), v.to_string()))
                                .ok_or_else(|| format!("invalid --env '{kv}' (expected KEY=VALUE)"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?
                .unwrap_or_default(),
            umask: parse_umask(values.one("umask").unwrap_or("0"))?,
            user: values.one("user").map(user_id).transpose()?,
            group: values.one("group").map(group_id).transpose()?,
            daemon: values.is_set("daemon"),
            tls: match values.one("certfile") {
                Some(certfile) => Some(std::sync::Arc::new(crate::http::tls::Tls::load(
                    &crate::http::tls::Settings {
                        certfile: std::path::Path::new(certfile),
                        keyfile: values.one("keyfile").map(std::path::Path::new),
                        ca_certs: values.one("ca_certs").map(std::path::Path::new),
                        cert_reqs: value(values, "cert_reqs", "0, 1 or 2")?,
                        ciphers: values.one("ciphers"),
                    },
                )?)),
                None if values.one("keyfile").is_some() => {
                    return Err("keyfile needs certfile".into());
                }
                None => None,
            },
            io_engine: choice(values, "io_engine")?,
            send_zerocopy: choice(values, "send_zerocopy")?,
            proxy_protocol: crate::http::proxy_protocol::Mode::parse(
                values.one("proxy_protocol").unwrap_or("off"),
            )?,
            proxy_allow_ips: crate::http::proxy::Allow::parse(
                values.one("proxy_allow_ips").unwrap_or("127.0.0.1,::1"),
            )?,
            forwarded_allow_ips: crate::http::proxy::Allow::parse(
                &values
                    .one("forwarded_allow_ips")
                    .map(str::to_string)
                    .or_else(|| std::env::var("FORWARDED_ALLOW_IPS").ok())
                    .unwrap_or_else(|| "127.0.0.1,::1".to_string()),
            )?,
            secure_scheme_headers: match values.given.get("secure_scheme_headers") {
                Some(pairs) => pairs
                    .iter()
                    .map(|p| {
                        p.split_once('=')
                            .map(|(n, v)| (n.to_string(), v.to_string()))
                            .ok_or_else(|| format!("invalid secure_scheme_headers entry '{p}'"))
                    })
                    .collect::<Result<_, _>>()?,
                None => crate::http::proxy::default_scheme_headers(),
            },
            // JSON lines go to standard output when no file is named.
            access_log: values
                .one("accesslog")
                .or(values.is_set("access_log_json").then_some("-"))
                .map(str::to_string),
            // As Gunicorn: the dict first, then the JSON file, then the ini file.
            logconfig: match (values.one("logconfig_json"), values.one("logconfig")) {
                (Some(json), _) => Some(LogConfig::Json(json.into())),
                (None, Some(file)) => Some(LogConfig::File(file.into())),
                (None, None) => None,
            },
            metrics_bind,
            statsd: match values.one("statsd_host") {
                Some(host) => Some((
                    crate::statsd::Address::parse(host)?,
                    values.one("statsd_prefix").unwrap_or("").to_string(),
                    values.one("dogstatsd_tags").unwrap_or("").to_string(),
                )),
                None => None,
            },
            access_log_format: if values.is_set("access_log_json") {
                crate::access_log::Format::json()
            } else {
                crate::access_log::Format::parse(
                    values
                        .one("access_log_format")
                        .unwrap_or(crate::access_log::DEFAULT_FORMAT),
                )?
            },
            warnings: Vec::new(),
            hooks: None,
            request_hooks: None,
        })
    }
}

/// `metrics_bind`: HOST:PORT, resolved once at start (`[::1]:9000`,
/// `0.0.0.0:9000`, `localhost:9000`). An app bind's port is refused here,
/// with its reason, rather than as an address in use at start.
fn metrics_address(text: &str, binds: &[Bind]) -> Result<SocketAddr, String> {
    let invalid = |why: String| format!("invalid metrics_bind '{text}': {why}");
    if !text.contains(':') {
        return Err(invalid("it needs HOST:PORT".into()));
    }
    let address = text
        .to_socket_addrs()
        .map_err(|e| invalid(e.to_string()))?
        .next()
        .ok_or_else(|| invalid("no address".into()))?;
    let overlaps = |bind: &SocketAddr| {
        bind.port() == address.port()
            && (bind.ip() == address.ip()
                || bind.ip().is_unspecified()
                || address.ip().is_unspecified())
    };
    match binds
        .iter()
        .find(|b| matches!(b, Bind::Tcp(a) if overlaps(a)))
    {
        Some(Bind::Tcp(bind)) => Err(invalid(format!("the app listens there too ({bind})"))),
        _ => Ok(address),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_bind_needs_a_port_of_its_own() {
        let binds = [Bind::Tcp("0.0.0.0:8000".parse().unwrap())];
        let ok = metrics_address("127.0.0.1:9000", &binds).unwrap();
        assert_eq!(ok, "127.0.0.1:9000".parse().unwrap());
        assert!(metrics_address("9000", &binds).is_err());
        assert!(metrics_address("127.0.0.1:8000", &binds).is_err());
        let local = [Bind::Tcp("127.0.0.1:8000".parse().unwrap())];
        assert!(metrics_address("[::1]:8000", &local).is_ok());
        assert!(metrics_address("0.0.0.0:8000", &local).is_err());
    }

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
        let tcp = |s: &str| Bind::Tcp(s.parse().unwrap());
        assert_eq!(
            parse_bind("127.0.0.1:9000").unwrap(),
            vec![tcp("127.0.0.1:9000")]
        );
        assert_eq!(parse_bind("[::1]:9000").unwrap(), vec![tcp("[::1]:9000")]);
        assert_eq!(
            parse_bind("127.0.0.1").unwrap(),
            vec![tcp("127.0.0.1:8000")]
        );
        assert_eq!(parse_bind(":9001").unwrap(), vec![tcp("0.0.0.0:9001")]);
        assert_eq!(
            parse_bind("unix:/run/app.sock").unwrap(),
            vec![Bind::Unix("/run/app.sock".into())]
        );
        assert_eq!(parse_bind("fd://3").unwrap(), vec![Bind::Fd(3)]);
        assert_eq!(parse_bind("fd://3").unwrap()[0].to_string(), "fd://3");
        assert!(parse_bind("fd://x").is_err());
        assert!(parse_bind("unix:").is_err());
        assert!(parse_bind("127.0.0.1:http").is_err());
        assert!(parse_bind("[::1").is_err());
    }

    #[test]
    fn umask_forms() {
        assert_eq!(parse_umask("0o22"), Ok(0o22));
        assert_eq!(parse_umask("022"), Ok(0o22));
        assert_eq!(parse_umask("18"), Ok(18));
        assert_eq!(parse_umask("0x12"), Ok(0x12));
        assert_eq!(parse_umask("0"), Ok(0));
        assert!(parse_umask("0o1000").is_err());
        assert_eq!(user_id("0"), Ok(0));
        assert_eq!(user_id("root"), Ok(0));
        assert!(user_id("no-such-user-here").is_err());
    }

    #[test]
    fn gunicorn_cmd_args_split_like_a_shell() {
        assert_eq!(
            shell_split(r#"--bind '0.0.0.0:80' -w 3  --name "a \"b\" c" x\ y"#).unwrap(),
            [
                "--bind",
                "0.0.0.0:80",
                "-w",
                "3",
                "--name",
                "a \"b\" c",
                "x y"
            ]
        );
        assert_eq!(shell_split("").unwrap(), Vec::<String>::new());
        assert!(shell_split("'open").is_err());
    }

    #[test]
    fn every_setting_parses_its_default() {
        let values = parse(["turbo", "m:app"].map(String::from)).unwrap();
        let config = Config::from_values(&values).unwrap();
        assert_eq!(config.threads, 1);
        assert_eq!(config.backlog, 2048);
        assert_eq!(config.ws_max_size, 16 << 20);
        for s in SETTINGS.iter().filter(|s| !s.flags.is_empty()) {
            assert!(s.flags.iter().any(|f| f.starts_with("--")), "{}", s.name);
        }
    }
}
