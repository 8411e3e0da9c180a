//! The error log, in Gunicorn's line format, so existing log parsers keep working:
//! `[2026-11-21 15:39:00 +0000] [1234] [INFO] message`. With a Python logging
//! configuration, lines go through Python's `logging` instead (`python`).

pub mod python;
pub mod sink;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct ErrorLog;

static LOGGER: ErrorLog = ErrorLog;

/// Parses a Gunicorn log level name (`debug`, `info`, `warning`, `error`, `critical`).
pub fn parse_level(name: &str) -> Result<LevelFilter, String> {
    match name.to_ascii_lowercase().as_str() {
        "debug" => Ok(LevelFilter::Debug),
        "info" => Ok(LevelFilter::Info),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "error" | "critical" => Ok(LevelFilter::Error),
        _ => Err(format!(
            "invalid log level '{name}' (expected debug, info, warning, error or critical)"
        )),
    }
}

pub fn init(level: LevelFilter) {
    // set_logger fails only when called twice; the first logger stays.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Points standard error at the error log file (`--error-logfile`), so the
/// log and anything else written to stderr land there; workers inherit it.
/// With `capture_output`, standard output goes there too, as in Gunicorn.
/// Called again on USR1 to reopen the file after log rotation.
pub fn open_error_log(path: Option<&std::path::Path>, capture_output: bool) -> std::io::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut targets = vec![libc::STDERR_FILENO];
    if capture_output {
        targets.push(libc::STDOUT_FILENO);
    }
    for target in targets {
        // SAFETY: dup2 onto our own standard descriptors.
        if unsafe { libc::dup2(file.as_raw_fd(), target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Local time as Gunicorn prints it: `%Y-%m-%d %H:%M:%S %z`.
fn timestamp() -> String {
    // SAFETY: time(NULL) and localtime_r only write to the struct we pass.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        let offset = tm.tm_gmtoff / 60;
        let sign = if offset < 0 { '-' } else { '+' };
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} {}{:02}{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            sign,
            offset.abs() / 60,
            offset.abs() % 60
        )
    }
}

impl Log for ErrorLog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if let Some(statsd) = crate::statsd::get() {
            match record.level() {
                Level::Error => statsd.increment("gunicorn.log.error"),
                Level::Warn => statsd.increment("gunicorn.log.warning"),
                _ => {}
            }
        }
        if python::active() {
            let entry = python::Entry::Error(record.level(), record.args().to_string());
            if python::send(entry).is_ok() {
                return;
            }
        }
        let level = match record.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARNING",
            Level::Info => "INFO",
            Level::Debug | Level::Trace => "DEBUG",
        };
        let line = format!(
            "[{}] [{}] [{}] {}\n",
            timestamp(),
            std::process::id(),
            level,
            record.args()
        );
        sink::write(sink::Target::Stderr, line.into_bytes());
    }

    fn flush(&self) {}
}

/// Writes `text` to standard error as a line of its own (a traceback, a
/// fatal error), never failing: see `sink`.
pub fn print_error(text: &str) {
    let mut line = text.trim_end().as_bytes().to_vec();
    line.push(b'\n');
    sink::write(sink::Target::Stderr, line);
}

/// USR1: reopens `--error-logfile` after rotation, if there is one.
pub fn reopen_error_log(path: Option<&std::path::Path>, capture_output: bool) {
    let _ = python::send(python::Entry::Reopen);
    if path.is_none() {
        return;
    }
    match open_error_log(path, capture_output) {
        Ok(()) => log::info!("Reopened the error log"),
        Err(e) => log::error!("Cannot reopen the error log: {e}"),
    }
}
