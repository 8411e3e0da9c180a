//! `turbo --check-system`: what on this host limits turbo, and how to fix
//! it. Each check reads the kernel or the process limits directly; the reasons
//! behind them are in tuning/README.md.

use crate::config::IoEngine;

/// One finding: fine, or a limit with what to do about it.
struct Check {
    ok: bool,
    text: String,
}

fn ok(text: String) -> Check {
    Check { ok: true, text }
}

fn warn(text: String) -> Check {
    Check { ok: false, text }
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// (major, minor) of a release such as `6.18.44-fc`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn limit(resource: libc::__rlimit_resource_t) -> Option<(u64, u64)> {
    // SAFETY: getrlimit fills the struct it is given.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    (unsafe { libc::getrlimit(resource, &mut rl) } == 0).then_some((rl.rlim_cur, rl.rlim_max))
}

fn checks(backlog: u32) -> Vec<Check> {
    let mut out = Vec::new();
    let release = kernel_release();
    let version = kernel_version(&release);

    let disabled = read_number("/proc/sys/kernel/io_uring_disabled");
    out.push(match crate::runtime::build(IoEngine::Uring) {
        Ok(_) => ok("io_uring: available".into()),
        Err(e) => warn(format!(
            "io_uring: refused ({e}){}; turbo serves through epoll, at more CPU per \
             request. Allow io_uring_setup/enter/register in the seccomp profile, or \
             set kernel.io_uring_disabled = 0",
            match disabled {
                Some(n) if n > 0 => format!(", kernel.io_uring_disabled = {n}"),
                _ => String::new(),
            }
        )),
    });

    let mask = crate::config::affinity_cores();
    let shards = crate::config::available_cores();
    out.push(match crate::config::cpu_quota() {
        Some(quota) if shards < mask => ok(format!(
            "CPUs: {mask} in the affinity mask, a cgroup quota of {quota:.1}: {shards} \
             shard(s) by default; a cpuset (--cpuset-cpus) would pin them without sharing"
        )),
        _ => ok(format!(
            "CPUs: {mask} in the affinity mask, one shard each by default"
        )),
    });

    match read_number("/proc/sys/net/core/somaxconn") {
        Some(max) if max < u64::from(backlog) => out.push(warn(format!(
            "net.core.somaxconn = {max} caps the backlog of {backlog}: \
             sysctl -w net.core.somaxconn={}",
            backlog.max(4096)
        ))),
        Some(max) => out.push(ok(format!("net.core.somaxconn = {max}"))),
        None => {}
    }
    match read_number("/proc/sys/net/ipv4/tcp_max_syn_backlog") {
        Some(n) if n < 4096 => out.push(warn(format!(
            "net.ipv4.tcp_max_syn_backlog = {n}: sysctl -w net.ipv4.tcp_max_syn_backlog=8192"
        ))),
        Some(n) => out.push(ok(format!("net.ipv4.tcp_max_syn_backlog = {n}"))),
        None => {}
    }

    if let Some((soft, hard)) = limit(libc::RLIMIT_NOFILE) {
        out.push(if soft < 65536 {
            warn(format!(
                "open files: {soft} (hard {hard}), one per connection: ulimit -n 65536, \
                 or LimitNOFILE=65536 in the systemd unit"
            ))
        } else {
            ok(format!("open files: {soft}"))
        });
    }
    if version < (5, 12)
        && let Some((soft, _)) = limit(libc::RLIMIT_MEMLOCK)
        && soft < 64 << 20
    {
        out.push(warn(format!(
            "locked memory: {} KiB; before Linux 5.12 io_uring rings count against it: \
             LimitMEMLOCK=infinity",
            soft >> 10
        )));
    }

    out.push(if crate::python::supports_own_gil() {
        ok(format!(
            "Python {}: one sub-interpreter per shard",
            crate::python::LINKED_VERSION
        ))
    } else {
        warn(format!(
            "Python {}: no per-interpreter GIL, so one worker process per shard (more \
             memory); build turbo against Python 3.12 or newer",
            crate::python::LINKED_VERSION
        ))
    });
    out.insert(0, ok(format!("Linux {release}")));
    out
}

/// The report, and whether every check passed.
pub fn report(backlog: u32) -> (String, bool) {
    let found = checks(backlog);
    let mut text = format!("turbo {}\n", env!("CARGO_PKG_VERSION"));
    for check in &found {
        let mark = if check.ok { "ok  " } else { "WARN" };
        text.push_str(&format!("[{mark}] {}\n", check.text));
    }
    let all_ok = found.iter().all(|c| c.ok);
    text.push_str(if all_ok {
        "Nothing here limits turbo.\n"
    } else {
        "See tuning/README.md for why each of these matters.\n"
    });
    (text, all_ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_versions() {
        assert_eq!(super::kernel_version("6.18.44-fc-v595"), (6, 18));
        assert_eq!(super::kernel_version("5.4.0-150-generic"), (5, 4));
    }
}
