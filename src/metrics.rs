//! Prometheus metrics (`--metrics-bind`). Each shard counts its requests,
//! their durations, its bytes and its WebSockets in `Meters`, which live in
//! the scoreboard's shared memory: plain relaxed stores by the shard's own
//! thread on its own cache lines, no lock and no system call. The supervisor reads every
//! worker's meters, adds what exited workers had counted (so counters survive
//! restarts), and writes them in the text format, version 0.0.4
//! (docs/architecture.md, "Operations port").

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `method` label's values; any other method counts as `other`.
pub const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other",
];
/// The `status` label's values, by the status's first digit.
pub const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
/// The duration histogram's upper bounds, in microseconds: 1 ms to 30 s.
pub const BOUNDS_US: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;
/// The GIL wait histogram's upper bounds, in microseconds: 100 us to 100 ms,
/// finer around CPython's switch interval (5 ms): a thread that runs
/// bytecode lets a waiting one have the GIL after that long, and the
/// hand-off itself takes a little more.
pub const GIL_BOUNDS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 5_500, 6_000, 10_000, 25_000, 50_000, 100_000,
];
const GIL_BUCKETS: usize = GIL_BOUNDS_US.len() + 1;
/// The statuses turbo refuses requests with itself, before or instead of
/// the app (`turbo_requests_refused_total`); any other counts as `other`.
pub const REFUSALS: [u16; 9] = [400, 403, 408, 413, 414, 431, 500, 501, 505];

/// The index of a method in `METHODS`.
pub fn method_index(method: &[u8]) -> u8 {
    METHODS[..METHODS.len() - 1]
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len() - 1) as u8
}

/// One shard's counters, written by the shard's thread only; zeroed memory
/// is a valid, empty set. Every field only grows: a gauge is the difference of
/// two of them, so a reader never sees one go below zero.
#[repr(C, align(64))]
#[derive(Default)]
pub struct Meters {
    requests: [[AtomicU64; CLASSES.len()]; METHODS.len()],
    /// Requests by duration: one count per bucket (not cumulative), the last
    /// past every bound.
    durations: [AtomicU64; BUCKETS],
    duration_us: AtomicU64,
    /// Requests turbo refused itself, by `REFUSALS`, the last for others.
    refused: [AtomicU64; REFUSALS.len() + 1],
    received: AtomicU64,
    sent: AtomicU64,
    websockets_opened: AtomicU64,
    websockets_closed: AtomicU64,
    /// The shard thread's waits for the GIL (`runtime::wait`,
    /// `runtime::python`), by duration, as `durations`.
    gil_waits: [AtomicU64; GIL_BUCKETS],
    gil_wait_us: AtomicU64,
}

/// Only the shard's own thread writes its meters (the driver, the handlers
/// and the WebSocket loop all run there), so a plain load and store do: no
/// locked instruction on the request path.
fn add(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// Counts `elapsed` in a histogram: in the bucket of the first of `bounds`
/// (microseconds) it does not pass, or in the last, and in `sum_us`.
fn observe(buckets: &[AtomicU64], bounds: &[u64], sum_us: &AtomicU64, elapsed: Duration) {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    add(&buckets[bounds.partition_point(|&bound| bound < us)], 1);
    add(sum_us, us);
}

impl Meters {
    /// A request answered with `status` after `elapsed` in the app. One
    /// that got no response (status 0: the client left first) is not counted.
    pub fn request(&self, method: u8, status: u16, elapsed: Duration) {
        if status < 100 {
            return;
        }
        let class = usize::from(status / 100).clamp(1, CLASSES.len()) - 1;
        let method = usize::from(method).min(METHODS.len() - 1);
        add(&self.requests[method][class], 1);
        observe(&self.durations, &BOUNDS_US, &self.duration_us, elapsed);
    }

    /// A request turbo refused with `status`, without the app's answer.
    pub fn refused(&self, status: u16) {
        let i = REFUSALS
            .iter()
            .position(|&s| s == status)
            .unwrap_or(REFUSALS.len());
        add(&self.refused[i], 1);
    }

    /// Bytes read from clients.
    pub fn received(&self, bytes: usize) {
        add(&self.received, bytes as u64);
    }

    /// Bytes written to clients.
    pub fn sent(&self, bytes: usize) {
        add(&self.sent, bytes as u64);
    }

    /// The shard's thread waited `elapsed` for the GIL, which the app's
    /// Python threads held (`--threads`, or threads the app started).
    pub fn gil_wait(&self, elapsed: Duration) {
        observe(&self.gil_waits, &GIL_BOUNDS_US, &self.gil_wait_us, elapsed);
    }

    /// A WebSocket connection opens; it counts until the guard drops.
    pub fn websocket(&self) -> WebSocketOpen<'_> {
        add(&self.websockets_opened, 1);
        WebSocketOpen(self)
    }
}

/// An open WebSocket connection, as `Meters::websocket` counted it.
pub struct WebSocketOpen<'a>(&'a Meters);

impl Drop for WebSocketOpen<'_> {
    fn drop(&mut self) {
        add(&self.0.websockets_closed, 1);
    }
}

/// A copy of one shard's counters, which the supervisor adds up.
#[derive(Clone, Default, Debug, PartialEq)]
pub struct Counts {
    pub requests: [[u64; CLASSES.len()]; METHODS.len()],
    pub durations: [u64; BUCKETS],
    pub duration_us: u64,
    pub refused: [u64; REFUSALS.len() + 1],
    pub received: u64,
    pub sent: u64,
    pub websockets_opened: u64,
    pub websockets_closed: u64,
    pub gil_waits: [u64; GIL_BUCKETS],
    pub gil_wait_us: u64,
    /// Connections handed to a peer shard (the scoreboard's `moved_out`).
    pub moved: u64,
}

impl Counts {
    /// What `meters` counted so far.
    pub fn of(meters: &Meters) -> Counts {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Counts {
            requests: meters
                .requests
                .each_ref()
                .map(|row| row.each_ref().map(load)),
            durations: meters.durations.each_ref().map(load),
            duration_us: load(&meters.duration_us),
            refused: meters.refused.each_ref().map(load),
            received: load(&meters.received),
            sent: load(&meters.sent),
            websockets_opened: load(&meters.websockets_opened),
            websockets_closed: load(&meters.websockets_closed),
            gil_waits: meters.gil_waits.each_ref().map(load),
            gil_wait_us: load(&meters.gil_wait_us),
            moved: 0,
        }
    }

    /// WebSocket connections open now.
    pub fn websockets_open(&self) -> u64 {
        self.websockets_opened
            .saturating_sub(self.websockets_closed)
    }

    pub fn add(&mut self, other: &Counts) {
        for (row, more) in self.requests.iter_mut().zip(&other.requests) {
            for (n, m) in row.iter_mut().zip(more) {
                *n += m;
            }
        }
        for (n, m) in self.durations.iter_mut().zip(&other.durations) {
            *n += m;
        }
        self.duration_us += other.duration_us;
        for (n, m) in self.refused.iter_mut().zip(&other.refused) {
            *n += m;
        }
        self.received += other.received;
        self.sent += other.sent;
        self.websockets_opened += other.websockets_opened;
        self.websockets_closed += other.websockets_closed;
        for (n, m) in self.gil_waits.iter_mut().zip(&other.gil_waits) {
            *n += m;
        }
        self.gil_wait_us += other.gil_wait_us;
        self.moved += other.moved;
    }
}

/// One shard as /metrics shows it: its counters over every worker that
/// served it, and its gauges over the live ones.
#[derive(Default, Debug)]
pub struct Shard {
    pub counts: Counts,
    pub in_flight: u64,
    pub connections: u64,
    /// Connections the kernel placed on the shard that it has not accepted.
    pub queued: u64,
    pub websockets: u64,
    /// Requests the shard's `--threads` pool runs at once; 0 without one.
    pub threads_limit: u64,
}

/// Why the supervisor replaced a worker (`turbo_worker_restarts_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// It died unasked: a signal, an exit, or a failed boot.
    Crash,
    /// It was killed for a request past `--timeout`.
    Timeout,
    /// It served its `--max-requests`.
    MaxRequests,
    /// HUP, `--reload`, or a change in the number of shards.
    Reload,
    /// Auto isolation turned sub-interpreter workers into processes: a
    /// request imported a module that refuses sub-interpreters.
    Isolation,
}

/// The `reason` label's values, in the order of `Restart`, which indexes
/// the counts.
pub const RESTARTS: [&str; 5] = ["crash", "timeout", "max_requests", "reload", "isolation"];

/// Everything /metrics reports.
pub struct Report<'a> {
    pub shards: &'a [Shard],
    pub restarts: &'a [u64; RESTARTS.len()],
    pub workers: usize,
    /// Shards configured (`shards` may hold more: ones a TTOU retired,
    /// whose counters stay).
    pub cores: usize,
    pub ready: bool,
}

/// A per-shard family: its name, type, help, and value.
type PerShard = (&'static str, &'static str, &'static str, fn(&Shard) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn per_shard(out: &mut String, report: &Report<'_>, name: &str, value: impl Fn(&Shard) -> u64) {
    for (i, shard) in report.shards.iter().enumerate() {
        let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", value(shard));
    }
}

/// Seconds from microseconds, as Prometheus writes floats.
fn seconds(us: u64) -> String {
    let text = format!("{:.6}", us as f64 / 1e6);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Report<'_> {
    /// Histogram family `name` over the shards: each shard's counts per
    /// bucket (not cumulative, the last past every bound) and their sum in
    /// microseconds, as `of` finds them; `bounds` in microseconds.
    fn histogram(
        &self,
        out: &mut String,
        name: &str,
        help: &str,
        bounds: &[u64],
        of: impl Fn(&Counts) -> (&[u64], u64),
    ) {
        family(out, name, "histogram", help);
        for (i, shard) in self.shards.iter().enumerate() {
            let (buckets, sum_us) = of(&shard.counts);
            let mut below = 0;
            for (b, &n) in buckets.iter().enumerate() {
                below += n;
                let le = bounds.get(b).map_or("+Inf".to_string(), |&us| seconds(us));
                let _ = writeln!(out, "{name}_bucket{{shard=\"{i}\",le=\"{le}\"}} {below}");
            }
            let _ = writeln!(
                out,
                "{name}_sum{{shard=\"{i}\"}} {}\n{name}_count{{shard=\"{i}\"}} {below}",
                seconds(sum_us)
            );
        }
    }

    /// The text format, version 0.0.4. A request series appears once it has
    /// counted something, as client libraries do with labelled counters.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096 + self.shards.len() * 2048);
        family(
            &mut out,
            "turbo_requests_total",
            "counter",
            "Requests answered, by shard, method and status class.",
        );
        for (i, shard) in self.shards.iter().enumerate() {
            for (m, row) in shard.counts.requests.iter().enumerate() {
                for (c, &n) in row.iter().enumerate().filter(|(_, n)| **n > 0) {
                    let _ = writeln!(
                        out,
                        "turbo_requests_total{{shard=\"{i}\",method=\"{}\",status=\"{}\"}} {n}",
                        METHODS[m], CLASSES[c]
                    );
                }
            }
        }
        self.histogram(
            &mut out,
            "turbo_request_duration_seconds",
            "Time from the app's start on a request to its response's end.",
            &BOUNDS_US,
            |c| (&c.durations, c.duration_us),
        );
        self.histogram(
            &mut out,
            "turbo_gil_wait_seconds",
            "Time a shard's thread waited for the GIL held by the app's Python threads: after \
             each wait for I/O when it runs the app itself, or, with --threads, before Python \
             of its own (request hooks).",
            &GIL_BOUNDS_US,
            |c| (&c.gil_waits, c.gil_wait_us),
        );
        family(
            &mut out,
            "turbo_requests_refused_total",
            "counter",
            "Requests turbo answered itself with an error, without the app's answer: \
             bad heads, bodies past the limit, slow clients.",
        );
        for (i, shard) in self.shards.iter().enumerate() {
            for (r, &n) in shard
                .counts
                .refused
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
            {
                let status = REFUSALS.get(r).map_or("other".to_string(), u16::to_string);
                let _ = writeln!(
                    out,
                    "turbo_requests_refused_total{{shard=\"{i}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let gauges: [PerShard; 9] = [
            (
                "turbo_requests_in_flight",
                "gauge",
                "Requests being answered.",
                |s| s.in_flight,
            ),
            (
                "turbo_connections",
                "gauge",
                "Open client connections.",
                |s| s.connections,
            ),
            (
                "turbo_connections_queued",
                "gauge",
                "Connections the kernel placed on the shard that it has not accepted yet.",
                |s| s.queued,
            ),
            (
                "turbo_connections_moved_total",
                "counter",
                "Keep-alive connections handed to an idle shard after a request waited.",
                |s| s.counts.moved,
            ),
            (
                "turbo_threads_limit",
                "gauge",
                "Requests the shard's --threads pool runs at once: --threads, or fewer while more \
                 would only wait for a CPU (0 without --threads).",
                |s| s.threads_limit,
            ),
            (
                "turbo_received_bytes_total",
                "counter",
                "Bytes read from clients (after TLS).",
                |s| s.counts.received,
            ),
            (
                "turbo_sent_bytes_total",
                "counter",
                "Bytes written to clients (before TLS).",
                |s| s.counts.sent,
            ),
            (
                "turbo_websocket_connections",
                "gauge",
                "Open WebSocket connections.",
                |s| s.websockets,
            ),
            (
                "turbo_websocket_connections_total",
                "counter",
                "WebSocket connections opened.",
                |s| s.counts.websockets_opened,
            ),
        ];
        for (name, kind, help, value) in gauges {
            family(&mut out, name, kind, help);
            per_shard(&mut out, self, name, value);
        }
        family(
            &mut out,
            "turbo_worker_restarts_total",
            "counter",
            "Worker processes replaced, by reason.",
        );
        for (reason, n) in RESTARTS.iter().zip(self.restarts) {
            let _ = writeln!(
                out,
                "turbo_worker_restarts_total{{reason=\"{reason}\"}} {n}"
            );
        }
        for (name, help, value) in [
            ("turbo_workers", "Live worker processes.", self.workers),
            ("turbo_shards", "Shards configured.", self.cores),
            (
                "turbo_ready",
                "1 while /readyz answers 200.",
                usize::from(self.ready),
            ),
        ] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_land_in_their_method_class_and_bucket() {
        let meters = Meters::default();
        meters.request(method_index(b"GET"), 200, Duration::from_micros(1_000));
        meters.request(method_index(b"PROPFIND"), 404, Duration::from_millis(40));
        meters.request(method_index(b"POST"), 599, Duration::from_secs(31));
        meters.request(method_index(b"POST"), 0, Duration::from_secs(1));
        let counts = Counts::of(&meters);
        assert_eq!(counts.requests[0][1], 1);
        assert_eq!(counts.requests[7][3], 1);
        assert_eq!(counts.requests[2][4], 1);
        assert_eq!(counts.requests[2].iter().sum::<u64>(), 1);
        assert_eq!((counts.durations[0], counts.durations[5]), (1, 1));
        assert_eq!(counts.durations[BUCKETS - 1], 1);
        assert_eq!(counts.duration_us, 31_041_000);
    }

    #[test]
    fn the_text_is_cumulative_and_labelled() {
        let meters = Meters::default();
        meters.request(0, 200, Duration::from_micros(1_500));
        meters.request(0, 503, Duration::from_micros(900));
        meters.refused(431);
        meters.refused(418);
        meters.gil_wait(Duration::from_micros(80));
        meters.gil_wait(Duration::from_micros(6_000));
        let open = meters.websocket();
        let mut counts = Counts::default();
        counts.add(&Counts::of(&meters));
        drop(open);
        assert_eq!(Counts::of(&meters).websockets_open(), 0);
        let shards = [Shard {
            counts,
            websockets: 1,
            ..Shard::default()
        }];
        let text = Report {
            shards: &shards,
            restarts: &[1, 0, 0, 2, 0],
            workers: 1,
            cores: 1,
            ready: true,
        }
        .render();
        for line in [
            "turbo_requests_total{shard=\"0\",method=\"GET\",status=\"2xx\"} 1",
            "turbo_requests_total{shard=\"0\",method=\"GET\",status=\"5xx\"} 1",
            "turbo_request_duration_seconds_bucket{shard=\"0\",le=\"0.001\"} 1",
            "turbo_request_duration_seconds_bucket{shard=\"0\",le=\"0.0025\"} 2",
            "turbo_request_duration_seconds_bucket{shard=\"0\",le=\"+Inf\"} 2",
            "turbo_request_duration_seconds_sum{shard=\"0\"} 0.0024",
            "turbo_request_duration_seconds_count{shard=\"0\"} 2",
            "turbo_gil_wait_seconds_bucket{shard=\"0\",le=\"0.0001\"} 1",
            "turbo_gil_wait_seconds_bucket{shard=\"0\",le=\"0.005\"} 1",
            "turbo_gil_wait_seconds_bucket{shard=\"0\",le=\"0.01\"} 2",
            "turbo_gil_wait_seconds_sum{shard=\"0\"} 0.00608",
            "turbo_gil_wait_seconds_count{shard=\"0\"} 2",
            "turbo_websocket_connections{shard=\"0\"} 1",
            "turbo_requests_refused_total{shard=\"0\",status=\"431\"} 1",
            "turbo_requests_refused_total{shard=\"0\",status=\"other\"} 1",
            "turbo_websocket_connections_total{shard=\"0\"} 1",
            "turbo_worker_restarts_total{reason=\"crash\"} 1",
            "turbo_worker_restarts_total{reason=\"reload\"} 2",
            "turbo_ready 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("status=\"4xx\""));
        for (reason, label) in [
            (Restart::Crash, "crash"),
            (Restart::Timeout, "timeout"),
            (Restart::MaxRequests, "max_requests"),
            (Restart::Reload, "reload"),
            (Restart::Isolation, "isolation"),
        ] {
            assert_eq!(RESTARTS[reason as usize], label);
        }
    }
}
