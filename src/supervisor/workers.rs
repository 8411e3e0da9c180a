//! Worker processes as the supervisor sees them: forking one, its report pipe,
//! its scoreboard, signalling it and describing how it ended.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use super::sockets::Sockets;
use crate::config::Config;
use crate::hooks::Hooks;
use crate::metrics::Restart;
use crate::python::app::Loaded;
use crate::python::{self, Isolation};
use crate::scoreboard::Scoreboard;
use crate::shard::mailbox::Mailboxes;
use crate::signals;
use crate::worker;

pub struct Worker {
    pub pid: libc::pid_t,
    /// Shard numbers, in the worker's order.
    pub shards: Vec<usize>,
    pub board: Arc<Scoreboard>,
    report: Option<std::fs::File>,
    partial: Vec<u8>,
    /// It reported that all its shards serve.
    pub ready: bool,
    /// To be stopped once successors serve its shards (reload, recycling, resize).
    pub retiring: bool,
    /// Why it is retiring, for `turbo_worker_restarts_total`.
    pub replaced_for: Restart,
    /// When it was told to stop.
    pub stopped_at: Option<Instant>,
    /// When it was sent SIGABRT for a timeout.
    pub aborted_at: Option<Instant>,
    /// Its request budget (`--max-requests` plus jitter); 0 for none.
    pub max_requests: u64,
    /// It ended on purpose (the sub-interpreter probe refused the app).
    pub gone_quietly: bool,
    pub age: u64,
}

/// What a fork needs from the supervisor.
pub struct Fork<'a> {
    pub config: &'a Arc<Config>,
    pub sockets: &'a mut Sockets,
    pub shards: Vec<usize>,
    pub isolation: Isolation,
    pub preloaded: Option<Arc<Loaded>>,
    /// Supervisor descriptors the worker must not keep.
    pub close_in_child: &'a [RawFd],
    pub hooks: &'a Hooks,
    /// The worker's number, counting every worker started (Gunicorn's age).
    pub age: u64,
    pub mailboxes: &'a mut Mailboxes,
}

fn random_below(bound: u64) -> u64 {
    if bound == 0 {
        return 0;
    }
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills the 8-byte buffer it is given.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, 0) };
    u64::from_ne_bytes(bytes) % (bound + 1)
}

pub fn spawn(fork: Fork<'_>) -> std::io::Result<Worker> {
    let config = fork.config;
    let board = Arc::new(Scoreboard::new(fork.shards.len(), config.threads)?);
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned here.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    let supervisor = std::process::id() as libc::pid_t;
    fork.hooks.call("pre_fork", &[fork.age as i64]);
    use std::io::Write;
    let _ = std::io::stderr().flush();
    let quiet = crate::logging::python::quiet();
    let pid = python::fork_with_python();
    drop(quiet);
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        // The worker. It ends with the supervisor, even one killed by SIGKILL.
        // SAFETY: prctl and close on this process's own state.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            if libc::getppid() != supervisor {
                libc::_exit(0);
            }
            for &fd in fork.close_in_child {
                libc::close(fd);
            }
        }
        switch_user(config);
        fork.hooks.call("post_fork", &[fork.age as i64]);
        drop(read_end);
        let shards = fork.sockets.take_for(&fork.shards);
        // The child's copy of the supervisor's mailboxes becomes the worker's.
        let mailboxes = std::mem::replace(fork.mailboxes, Mailboxes::new());
        worker::run(worker::Spec {
            config: config.clone(),
            shards,
            isolation: fork.isolation,
            board,
            report: write_end,
            preloaded: fork.preloaded,
            hooks: fork.hooks.clone(),
            age: fork.age,
            mailboxes,
        });
    }
    drop(write_end);
    // SAFETY: sets O_NONBLOCK on our own pipe end.
    unsafe {
        let flags = libc::fcntl(read_end.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(
            read_end.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_NONBLOCK,
        );
    }
    let max_requests = match config.max_requests {
        0 => 0,
        n => n + random_below(config.max_requests_jitter),
    };
    Ok(Worker {
        pid,
        shards: fork.shards,
        board,
        report: Some(read_end),
        partial: Vec::new(),
        ready: false,
        retiring: false,
        replaced_for: Restart::Crash,
        stopped_at: None,
        aborted_at: None,
        max_requests,
        gone_quietly: false,
        age: fork.age,
    })
}

/// `--group` and `--user`, in a new worker: the group first, while it may
/// still be changed.
fn switch_user(config: &Config) {
    // SAFETY: identity changes in this single-threaded child.
    unsafe {
        if let Some(gid) = config.group {
            if libc::setgroups(0, std::ptr::null()) != 0 && libc::geteuid() == 0 {
                log::error!(
                    "Cannot clear supplementary groups: {}",
                    std::io::Error::last_os_error()
                );
            }
            if libc::setgid(gid) != 0 {
                log::error!(
                    "Cannot switch to group {gid}: {}",
                    std::io::Error::last_os_error()
                );
                libc::_exit(worker::WORKER_BOOT_ERROR);
            }
        }
        if let Some(uid) = config.user
            && libc::setuid(uid) != 0
        {
            log::error!(
                "Cannot switch to user {uid}: {}",
                std::io::Error::last_os_error()
            );
            libc::_exit(worker::WORKER_BOOT_ERROR);
        }
    }
}

impl Worker {
    pub fn report_fd(&self) -> Option<RawFd> {
        self.report.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whole lines the worker has reported since the last call.
    pub fn read_reports(&mut self) -> Vec<String> {
        let Some(pipe) = self.report.as_mut() else {
            return Vec::new();
        };
        let mut buf = [0u8; 512];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    // The worker has exited or is exiting.
                    self.report = None;
                    break;
                }
                Ok(n) => self.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let mut lines = Vec::new();
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        lines
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Tells the worker to stop: TERM drains, QUIT leaves at once.
    pub fn stop(&mut self, sig: i32) {
        self.signal(sig);
        self.stopped_at.get_or_insert_with(Instant::now);
    }

    pub fn log_exit(&self, status: i32) {
        let pid = self.pid;
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            if sig == libc::SIGKILL && self.aborted_at.is_none() && self.stopped_at.is_none() {
                log::error!("Worker (pid:{pid}) was sent SIGKILL! Perhaps out of memory?");
            } else {
                log::error!("Worker (pid:{pid}) was sent {}!", signals::full_name(sig));
            }
        } else {
            let code = libc::WEXITSTATUS(status);
            if code == 0 {
                log::info!("Worker (pid:{pid}) exited");
            } else {
                log::error!("Worker (pid:{pid}) exited with code {code}");
            }
        }
    }
}

/// Forks and executes a new supervisor with the same arguments, passing it
/// the listening sockets.
pub fn exec_successor(
    sockets: &[RawFd],
    extra_env: &[(String, String)],
    close: &[RawFd],
) -> std::io::Result<libc::pid_t> {
    let exe = CString::new("/proc/self/exe").map_err(std::io::Error::other)?;
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.into_encoded_bytes()).ok())
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !extra_env.iter().any(|(name, _)| k == name.as_str()))
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .chain(
            extra_env
                .iter()
                .filter_map(|(k, v)| CString::new(format!("{k}={v}")).ok()),
        )
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: the child only adjusts descriptors and the signal mask, then execs
    // with arguments prepared before the fork.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            for &fd in close {
                libc::close(fd);
            }
            for &fd in sockets {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127);
        }
        Ok(pid)
    }
}
