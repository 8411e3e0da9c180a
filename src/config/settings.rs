//! Every setting, declared once, as Gunicorn's `config.py` does: its name
//! (the config-file name), flags, kind, default, help and section. The command
//! line, `GUNICORN_CMD_ARGS`, `--print-config` and the docs are derived from
//! this table; `super::Config` turns the chosen values into typed settings.

/// What a setting's values look like on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One value.
    Value,
    /// Repeatable; each use adds a value.
    List,
    /// A flag without a value.
    Bool,
    /// A flag without a value that turns off what is on by default
    /// (`--no-sendfile`); a config file sets it True or False.
    Off,
    /// One value, which may be left out: the flag alone (or `True` in a
    /// config file) means the value given here.
    Optional(&'static str),
}

pub struct Setting {
    /// The name in a config file and in `--print-config`.
    pub name: &'static str,
    pub section: &'static str,
    /// Short flags as `-b`, long ones as `--bind`; the first long one is the
    /// name in `--help`, the rest are aliases. None: config file only.
    pub flags: &'static [&'static str],
    pub kind: Kind,
    /// The default as text, parsed like a command-line value; "" for none.
    pub default: &'static str,
    pub meta: &'static str,
    pub help: &'static str,
}

const fn setting(
    name: &'static str,
    section: &'static str,
    flags: &'static [&'static str],
    kind: Kind,
    default: &'static str,
    meta: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        name,
        section,
        flags,
        kind,
        default,
        meta,
        help,
    }
}

use Kind::{Bool, List, Off, Optional, Value};

pub static SETTINGS: &[Setting] = &[
    setting(
        "config",
        "Config File",
        &["-c", "--config"],
        Value,
        "./gunicorn.conf.py",
        "CONFIG",
        "The configuration file: a Python file, or python:MODULE. Read when present \
         even without -c, as Gunicorn does.",
    ),
    setting(
        "check_system",
        "Config File",
        &["--check-system"],
        Bool,
        "",
        "",
        "Print what on this host limits turbo (io_uring, CPUs, kernel queues, open \
         files) and how to fix it, and exit: 0 if nothing does, 1 if something does.",
    ),
    setting(
        "check_config",
        "Config File",
        &["--check-config"],
        Bool,
        "",
        "",
        "Check the configuration and exit: 0 if it is valid, 1 if not.",
    ),
    setting(
        "print_config",
        "Config File",
        &["--print-config"],
        Bool,
        "",
        "",
        "Print the configuration settings as fully resolved, and exit.",
    ),
    setting(
        "bind",
        "Server Socket",
        &["-b", "--bind"],
        List,
        "",
        "ADDRESS",
        "The socket to bind: HOST:PORT, [IPV6]:PORT, HOST, :PORT, unix:PATH or \
         fd://FD. Repeatable. Default: 127.0.0.1:8000, or 0.0.0.0:$PORT when $PORT is \
         set. Sockets passed by systemd (LISTEN_FDS) replace every bind.",
    ),
    setting(
        "reuse_port",
        "Server Socket",
        &["--reuse-port"],
        Bool,
        "",
        "",
        "Let other processes listen on the same TCP port (SO_REUSEPORT). turbo's \
         own shards always share their port; without this, a port another process \
         already holds is refused.",
    ),
    setting(
        "backlog",
        "Server Socket",
        &["--backlog"],
        Value,
        "2048",
        "INT",
        "The maximum number of pending connections per listening socket.",
    ),
    setting(
        "worker_connections",
        "Worker Processes",
        &["--worker-connections"],
        Value,
        "1000",
        "INT",
        "The most connections one shard holds at once. Past it the shard stops \
         accepting, and new connections wait in the listening socket's backlog.",
    ),
    setting(
        "tmp_upload_dir",
        "Server Mechanics",
        &["--tmp-upload-dir"],
        Value,
        "",
        "DIR",
        "Where request bodies over 1 MiB are spooled while they arrive (an unlinked \
         file), when the app has one thread per shard; $TMPDIR or /tmp by default.",
    ),
    setting(
        "workers",
        "Worker Processes",
        &["-w", "--workers", "--cores"],
        Value,
        "",
        "INT",
        "The number of shards, one per CPU. Default: $WEB_CONCURRENCY, or the CPUs \
         this process may run on (fewer when a cgroup CPU quota allows fewer).",
    ),
    setting(
        "worker_class",
        "Worker Processes",
        &["-k", "--worker-class"],
        Value,
        "",
        "STRING",
        "Gunicorn's worker class, mapped to an interface: sync and gthread mean WSGI; \
         asgi, uvicorn.workers.UvicornWorker and uvicorn_worker.UvicornWorker mean ASGI.",
    ),
    setting(
        "threads",
        "Worker Processes",
        &["--threads"],
        Value,
        "1",
        "INT",
        "Python threads per shard, for WSGI apps that block on I/O.",
    ),
    setting(
        "io_engine",
        "Worker Processes",
        &["--io-engine"],
        Value,
        "auto",
        "ENGINE",
        "The kernel interface under the shards: uring (io_uring), epoll, or auto \
         (io_uring, or epoll with one warning where io_uring is refused: Docker's \
         default seccomp profile, gVisor, kernel.io_uring_disabled).",
    ),
    setting(
        "send_zerocopy",
        "Worker Processes",
        &["--send-zerocopy"],
        Value,
        "auto",
        "WHEN",
        "When large response bodies (64 KiB and more of a Python bytes object) go out \
         by MSG_ZEROCOPY (io_uring send_zc) instead of being copied into the kernel: \
         auto (to clients over a real network; on loopback the kernel copies anyway), \
         always, or never. A kernel without send_zc copies.",
    ),
    setting(
        "isolation",
        "Worker Processes",
        &["--isolation"],
        Value,
        "auto",
        "MODE",
        "How shards are isolated: subinterpreter (one worker process, one own-GIL \
         sub-interpreter per shard), process (one worker process per shard) or auto \
         (sub-interpreters where Python and the app allow them).",
    ),
    setting(
        "max_requests",
        "Worker Processes",
        &["--max-requests"],
        Value,
        "0",
        "INT",
        "Replace a worker after it has served this many requests (0 disables).",
    ),
    setting(
        "max_requests_jitter",
        "Worker Processes",
        &["--max-requests-jitter"],
        Value,
        "0",
        "INT",
        "Add a random number of requests, up to this, to each worker's --max-requests.",
    ),
    setting(
        "timeout",
        "Worker Processes",
        &["-t", "--timeout"],
        Value,
        "30",
        "INT",
        "Workers stuck in one request for more than this many seconds are killed and \
         replaced (0 disables).",
    ),
    setting(
        "graceful_timeout",
        "Worker Processes",
        &["--graceful-timeout"],
        Value,
        "30",
        "INT",
        "Seconds a stopping worker may take to finish its requests before it is killed.",
    ),
    setting(
        "shutdown_delay",
        "Worker Processes",
        &["--shutdown-delay"],
        Value,
        "0",
        "INT",
        "Seconds to keep accepting and serving after SIGTERM, with /readyz already \
         answering 503, so a load balancer (Kubernetes' endpoints) stops sending new \
         requests before the drain begins. The drain then takes up to \
         --graceful-timeout.",
    ),
    setting(
        "keepalive",
        "Worker Processes",
        &["--keep-alive", "--keepalive"],
        Value,
        "2",
        "INT",
        "Seconds to wait for the next request on an idle keep-alive connection.",
    ),
    setting(
        "header_timeout",
        "Worker Processes",
        &["--header-timeout"],
        Value,
        "10",
        "INT",
        "Seconds a client may take to send a complete request head, and the longest \
         pause allowed while it sends a body.",
    ),
    setting(
        "send_timeout",
        "Worker Processes",
        &["--send-timeout"],
        Value,
        "30",
        "INT",
        "Seconds a client may go without taking any response bytes before its \
         connection is closed, as nginx's send_timeout. A slow but steady reader \
         is never cut: the clock restarts whenever it takes some.",
    ),
    setting(
        "interface",
        "Worker Processes",
        &["--interface"],
        Value,
        "auto",
        "INTERFACE",
        "The app's interface: wsgi, asgi, or auto (a coroutine function, or an object \
         whose __call__ is async, means ASGI 3).",
    ),
    setting(
        "lifespan",
        "Worker Processes",
        &["--lifespan"],
        Value,
        "auto",
        "MODE",
        "ASGI lifespan events: on requires them, off never sends them, auto carries on \
         when the app does not support them.",
    ),
    setting(
        "ws_max_size",
        "Worker Processes",
        &["--ws-max-size"],
        Value,
        "16777216",
        "BYTES",
        "The largest WebSocket message; a larger one closes the connection with 1009.",
    ),
    setting(
        "limit_request_line",
        "Security",
        &["--limit-request-line"],
        Value,
        "4094",
        "INT",
        "The maximum size of the request line in bytes (0 means 8190).",
    ),
    setting(
        "limit_request_fields",
        "Security",
        &["--limit-request-fields"],
        Value,
        "100",
        "INT",
        "The maximum number of header fields in a request (at most 32768; 0 means 32768).",
    ),
    setting(
        "limit_request_field_size",
        "Security",
        &["--limit-request-field_size", "--limit-request-field-size"],
        Value,
        "8190",
        "INT",
        "The maximum size of one request header field in bytes (0 means no limit on \
         one field; the whole head stays within the field count times 8190 bytes).",
    ),
    setting(
        "limit_request_body",
        "Security",
        &["--limit-request-body"],
        Value,
        "0",
        "BYTES",
        "The largest request body in bytes; a larger one is answered 413 before the \
         app runs (0 means unlimited).",
    ),
    setting(
        "chdir",
        "Server Mechanics",
        &["--chdir"],
        Value,
        "",
        "DIR",
        "Change to this directory before loading the app.",
    ),
    setting(
        "pythonpath",
        "Server Mechanics",
        &["--pythonpath"],
        Value,
        "",
        "STRING",
        "Directories to add to the Python path, comma-separated, in every interpreter.",
    ),
    setting(
        "raw_env",
        "Server Mechanics",
        &["-e", "--env"],
        List,
        "",
        "ENV",
        "An environment variable for the app, as KEY=VALUE. Repeatable.",
    ),
    setting(
        "umask",
        "Server Mechanics",
        &["-m", "--umask"],
        Value,
        "0",
        "INT",
        "The file mode creation mask of the server's processes (0o22, 022 or 18).",
    ),
    setting(
        "user",
        "Server Mechanics",
        &["-u", "--user"],
        Value,
        "",
        "USER",
        "Switch worker processes to this user (a name or a uid).",
    ),
    setting(
        "group",
        "Server Mechanics",
        &["-g", "--group"],
        Value,
        "",
        "GROUP",
        "Switch worker processes to this group (a name or a gid).",
    ),
    setting(
        "reload",
        "Debugging",
        &["--reload"],
        Bool,
        "",
        "",
        "Start fresh workers when the app's source files change (polled every \
         second). For development.",
    ),
    setting(
        "reload_engine",
        "Debugging",
        &["--reload-engine"],
        Value,
        "auto",
        "STRING",
        "How --reload notices changes: auto, poll or inotify. turbo always polls.",
    ),
    setting(
        "reload_extra_files",
        "Debugging",
        &["--reload-extra-file"],
        List,
        "",
        "FILES",
        "Further files whose change makes --reload start fresh workers (templates, \
         configuration). Repeatable.",
    ),
    setting(
        "daemon",
        "Server Mechanics",
        &["-D", "--daemon"],
        Bool,
        "",
        "",
        "Detach from the terminal and run in the background.",
    ),
    setting(
        "forwarded_allow_ips",
        "Server Mechanics",
        &["--forwarded-allow-ips"],
        Value,
        "127.0.0.1,::1",
        "STRING",
        "Proxies trusted to set secure_scheme_headers: addresses and CIDR networks, \
         comma-separated, or *. Default: $FORWARDED_ALLOW_IPS, or 127.0.0.1,::1.",
    ),
    setting(
        "secure_scheme_headers",
        "Server Mechanics",
        &[],
        List,
        "",
        "",
        "Headers from a trusted proxy that mean https, with the value that means it \
         (config file only, a dict). Default: X-FORWARDED-PROTOCOL: ssl, \
         X-FORWARDED-PROTO: https, X-FORWARDED-SSL: on.",
    ),
    setting(
        "proxy_protocol",
        "Server Mechanics",
        &["--proxy-protocol"],
        Optional("auto"),
        "off",
        "MODE",
        "Read the PROXY protocol header a load balancer puts before the first request: \
         off, v1, v2 or auto (the flag alone). The client's address then comes from it.",
    ),
    setting(
        "proxy_allow_ips",
        "Server Mechanics",
        &["--proxy-allow-from"],
        Value,
        "127.0.0.1,::1",
        "ADDRESSES",
        "Peers whose PROXY headers are believed: addresses or CIDR networks, \
         comma-separated, or *. Others get 403. Unix sockets are always allowed.",
    ),
    setting(
        "certfile",
        "SSL",
        &["--certfile"],
        Value,
        "",
        "FILE",
        "Serve HTTPS with this PEM certificate (chain, leaf first).",
    ),
    setting(
        "keyfile",
        "SSL",
        &["--keyfile"],
        Value,
        "",
        "FILE",
        "The certificate's PEM private key (PKCS#8, PKCS#1 or SEC1); default: the \
         certificate file.",
    ),
    setting(
        "ca_certs",
        "SSL",
        &["--ca-certs"],
        Value,
        "",
        "FILE",
        "PEM certificates of the CAs that sign client certificates.",
    ),
    setting(
        "cert_reqs",
        "SSL",
        &["--cert-reqs"],
        Value,
        "0",
        "INT",
        "Client certificates: 0 not asked for, 1 optional, 2 required (Python's \
         ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED).",
    ),
    setting(
        "ciphers",
        "SSL",
        &["--ciphers"],
        Value,
        "",
        "CIPHERS",
        "TLS 1.2 ciphers, as an OpenSSL cipher list of names turbo supports; TLS 1.3 \
         suites are always on, as with OpenSSL.",
    ),
    setting(
        "ssl_version",
        "SSL",
        &["--ssl-version"],
        Value,
        "",
        "VERSION",
        "Ignored, as in Gunicorn: TLS 1.2 and 1.3 are offered.",
    ),
    setting(
        "do_handshake_on_connect",
        "SSL",
        &["--do-handshake-on-connect"],
        Bool,
        "",
        "",
        "Accepted for Gunicorn's sake: turbo always completes the handshake first.",
    ),
    setting(
        "suppress_ragged_eofs",
        "SSL",
        &["--suppress-ragged-eofs"],
        Bool,
        "",
        "",
        "Accepted for Gunicorn's sake: a connection closed without close_notify \
         simply ends.",
    ),
    setting(
        "preload_app",
        "Server Mechanics",
        &["--preload"],
        Bool,
        "",
        "",
        "Import the app in the supervisor before starting workers.",
    ),
    setting(
        "sendfile",
        "Server Mechanics",
        &["--no-sendfile"],
        Off,
        "",
        "",
        "Send wsgi.file_wrapper and ASGI pathsend files with sendfile(2), from the \
         page cache straight to the socket. On unless turned off here, or by \
         SENDFILE=0 in the environment when neither the command line nor the config \
         file says. TLS connections read and write the file instead.",
    ),
    setting(
        "pidfile",
        "Server Mechanics",
        &["-p", "--pid"],
        Value,
        "",
        "FILE",
        "Write the supervisor's process id to this file.",
    ),
    setting(
        "accesslog",
        "Logging",
        &["--access-logfile"],
        Value,
        "",
        "FILE",
        "The access log file; - is standard output. Off unless set. USR1 reopens it.",
    ),
    setting(
        "metrics_bind",
        "Logging",
        &["--metrics-bind"],
        Value,
        "",
        "ADDRESS",
        "Serve GET /metrics (Prometheus), /livez and /readyz at HOST:PORT, from the \
         supervisor, without entering Python. Off unless set.",
    ),
    setting(
        "statsd_host",
        "Logging",
        &["--statsd-host"],
        Value,
        "",
        "STATSD_ADDR",
        "Send metrics, under Gunicorn's names, to the StatsD server at HOST:PORT or \
         unix://PATH.",
    ),
    setting(
        "statsd_prefix",
        "Logging",
        &["--statsd-prefix"],
        Value,
        "",
        "STATSD_PREFIX",
        "Prefix for the StatsD metric names (a trailing . is added if missing).",
    ),
    setting(
        "dogstatsd_tags",
        "Logging",
        &["--dogstatsd-tags"],
        Value,
        "",
        "DOGSTATSD_TAGS",
        "Comma-separated DogStatsD tags added to every metric (tag1:value1,tag2:value2).",
    ),
    setting(
        "access_log_format",
        "Logging",
        &["--access-logformat"],
        Value,
        crate::access_log::DEFAULT_FORMAT,
        "STRING",
        "The access log format, in Gunicorn's atoms: h l u t r m U q H s B b f a T M D L p \
         {header}i {header}o {var}e.",
    ),
    setting(
        "access_log_json",
        "Logging",
        &["--access-log-json"],
        Bool,
        "",
        "",
        "Write the access log as one JSON object per line (time, remote, method, path, \
         query, protocol, status, bytes, duration_ms, referer, user_agent, request_id \
         from X-Request-ID), escaped whatever the request carries, instead of \
         access_log_format. Lines go to standard output unless --access-logfile says \
         otherwise.",
    ),
    setting(
        "errorlog",
        "Logging",
        &["--error-logfile", "--log-file"],
        Value,
        "-",
        "FILE",
        "The error log file; - is standard error. USR1 reopens it.",
    ),
    setting(
        "logconfig",
        "Logging",
        &["--log-config"],
        Value,
        "",
        "FILE",
        "A logging.config.fileConfig file; turbo's log lines then go through \
         Python's logging (gunicorn.error and gunicorn.access loggers).",
    ),
    setting(
        "logconfig_json",
        "Logging",
        &["--log-config-json"],
        Value,
        "",
        "FILE",
        "A JSON file for logging.config.dictConfig, over Gunicorn's defaults.",
    ),
    setting(
        "capture_output",
        "Logging",
        &["--capture-output"],
        Bool,
        "",
        "",
        "Send the app's standard output to the error log file too.",
    ),
    setting(
        "loglevel",
        "Logging",
        &["--log-level"],
        Value,
        "info",
        "LEVEL",
        "The error log level: debug, info, warning, error or critical.",
    ),
];

pub fn find(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// The settings reference, docs/settings.md, made from this table by the
/// unit test that keeps the file current.
#[cfg(test)]
pub fn markdown() -> String {
    let mut out = String::from(
        "# Settings\n\n\
         Every turbo setting, generated from `src/config/settings.rs` (run \
         `UPDATE_DOCS=1 cargo test settings_doc` after changing it). The name is the \
         config-file name, as in Gunicorn; `GUNICORN_CMD_ARGS` takes the flags. \
         Settings with no flag are read from the config file only. \
         docs/migration.md says where each Gunicorn setting stands.\n",
    );
    let mut sections: Vec<&str> = Vec::new();
    for s in SETTINGS {
        if !sections.contains(&s.section) {
            sections.push(s.section);
        }
    }
    for section in sections {
        out.push_str(&format!(
            "\n## {section}\n\n| setting | flags | default | meaning |\n|---|---|---|---|\n"
        ));
        for s in SETTINGS.iter().filter(|s| s.section == section) {
            let flags = s
                .flags
                .iter()
                .map(|f| match s.kind {
                    Bool | Off => format!("`{f}`"),
                    Optional(_) => format!("`{f} [{}]`", s.meta),
                    _ => format!("`{f} {}`", s.meta),
                })
                .collect::<Vec<_>>()
                .join(", ");
            let default = if s.default.is_empty() {
                String::new()
            } else {
                format!("`{}`", s.default)
            };
            out.push_str(&format!(
                "| `{}` | {} | {default} | {} |\n",
                s.name,
                if flags.is_empty() {
                    "config file only".to_string()
                } else {
                    flags
                },
                s.help.replace('|', "\\|")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_doc_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/settings.md");
        let made = super::markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &made).expect("docs/settings.md is writable");
        }
        let current = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            current == made,
            "docs/settings.md is stale: run UPDATE_DOCS=1 cargo test settings_doc"
        );
    }
}
