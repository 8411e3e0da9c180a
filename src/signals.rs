//! Signals, as Gunicorn uses them. The supervisor reads its signals from a
//! signalfd in its event loop; a worker's main thread waits for its few with
//! sigwait. Both block them first, so no thread (Python's included) is
//! interrupted by them.

use std::os::fd::{FromRawFd, OwnedFd};

/// Signals the supervisor handles.
pub const SUPERVISOR: [i32; 10] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
];

fn set_of(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks the supervisor's signals and returns a signalfd that reads them.
pub fn supervisor() -> std::io::Result<OwnedFd> {
    let set = set_of(&SUPERVISOR);
    // SAFETY: blocks signals for this (only) thread, then opens a signalfd on
    // the same set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads one pending signal from a signalfd, if any.
pub fn read(fd: &OwnedFd) -> Option<i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: reads one signalfd_siginfo into a zeroed struct of that size.
    unsafe {
        let mut info: libc::signalfd_siginfo = std::mem::zeroed();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        let n = libc::read(fd.as_raw_fd(), (&raw mut info).cast(), size);
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

/// In a new worker: blocks the signals it waits for and unblocks the rest of
/// the supervisor's, so child processes the app starts see the usual defaults.
pub fn worker() -> libc::sigset_t {
    let waits = set_of(&[
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGABRT,
    ]);
    // SAFETY: signal mask and disposition changes in a single-threaded child.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &waits, std::ptr::null_mut());
        for sig in [
            libc::SIGHUP,
            libc::SIGTTIN,
            libc::SIGTTOU,
            libc::SIGUSR2,
            libc::SIGWINCH,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    waits
}

/// Waits for one of the blocked signals in `set`.
pub fn wait(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    loop {
        // SAFETY: waits on a set whose signals this thread blocks.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

/// Gunicorn's lower-case name of a signal, for "Handling signal: ..." lines.
pub fn name(sig: i32) -> String {
    match sig {
        libc::SIGHUP => "hup".into(),
        libc::SIGINT => "int".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGTERM => "term".into(),
        libc::SIGTTIN => "ttin".into(),
        libc::SIGTTOU => "ttou".into(),
        libc::SIGUSR1 => "usr1".into(),
        libc::SIGUSR2 => "usr2".into(),
        libc::SIGWINCH => "winch".into(),
        libc::SIGCHLD => "chld".into(),
        other => other.to_string(),
    }
}

/// The conventional name of a signal that ended a process (`SIGSEGV`).
pub fn full_name(sig: i32) -> String {
    // SAFETY: strsignal returns a static or thread-local string.
    let description = unsafe {
        let p = libc::strsignal(sig);
        if p.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    let name = match sig {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        _ => return format!("signal {sig} ({description})"),
    };
    name.to_string()
}

/// Ends the process by `sig`'s default action, so the supervisor sees it.
pub fn die_of(sig: i32) -> ! {
    // SAFETY: restores the default action, unblocks and raises the signal.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let set = set_of(&[sig]);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    exit_now(128 + sig)
}

/// Leaves the process without finalising Python, which CPython 3.12 cannot do
/// safely with live sub-interpreters (docs/architecture.md, "Facts").
pub fn exit_now(code: i32) -> ! {
    use std::io::Write;
    crate::logging::python::flush();
    crate::logging::sink::flush(std::time::Duration::from_secs(1));
    let _ = std::io::stderr().flush();
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process immediately; nothing is left to clean up.
    unsafe { libc::_exit(code) }
}
