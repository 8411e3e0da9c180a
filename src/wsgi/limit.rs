//! How many of a `--threads` pool's threads run a request at once.
//!
//! The threads share one GIL, so more of them at once pay only where a
//! request waits: on the network, a database on other CPUs, a sleep. Where
//! the threads instead wait for a CPU (the host's CPUs are full, as with a
//! database on the same CPUs), each extra request in flight adds GIL
//! hand-offs and context switches, and a busy database backend more, and the
//! rate falls (bench/README.md, "Database: TechEmpower's test types").
//!
//! So the pool measures, on a sample of requests, the share of a request's
//! time its thread spent neither running nor waiting for a CPU
//! (`/proc/thread-self/schedstat`): blocked, on I/O or on the GIL. Over each
//! window in which requests queued for a thread, a low share steps the limit
//! down by one and a high share steps it up, never past `--threads`. A step
//! down is a trial: if the rate of the next two windows falls by a tenth, the
//! step is taken back and none is tried for a while.
//!
//! A limit must never leave a request waiting behind a long one, which is
//! what `--threads` is for: a request that has run for four times the last
//! window's mean gives its place up, so one more runs (docs/architecture.md,
//! "Threads at once").

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::roster::{self, Line};
use crate::runtime::{PoolLoad, stamp_now};
use crate::scoreboard::Scoreboard;

/// Windows end on the half seconds of the monotonic clock, the same in every
/// worker, so that every pool of a server that steps down does so in the
/// same window: alone, a pool that runs fewer requests at once would lose
/// CPU time to the others, and take its step back. A window with fewer
/// sampled requests than this goes on to the next half second.
const WINDOW: Duration = Duration::from_millis(500);
const WINDOW_SAMPLES: u32 = 8;
/// Steps down start in one window in this many.
const STEP_DOWN_EVERY: u64 = 3;
/// Below this blocked share, the threads mostly wait for a CPU: one fewer.
const STEP_DOWN_BELOW: f64 = 0.1;
/// Above it, they mostly wait on something a CPU does not speed up: one more.
const STEP_UP_ABOVE: f64 = 0.5;
/// A step down whose next window's rate fell below this share of the rate
/// before it is taken back...
const KEEP_RATE: f64 = 0.9;
/// The windows a step down is judged on, after it and before it.
const TRIAL_WINDOWS: usize = 2;
/// ...and no step down is tried again for this long, twice as long after
/// each step taken back in a row, up to the longest.
const HOLD: Duration = Duration::from_secs(5);
const HOLD_LONGEST: Duration = Duration::from_secs(60);
/// A thread times one request in this many.
const SAMPLE_EVERY: u32 = 4;
/// A request gives its place up after this many times the mean request's
/// time, bounded by these.
const STALL_MEANS: u64 = 4;
const STALL_MIN_NS: u64 = 10_000_000;
const STALL_MAX_NS: u64 = 1_000_000_000;

/// The pool's limit, shared by its threads.
pub struct Limit {
    threads: usize,
    state: Mutex<State>,
    freed: Condvar,
    /// Where the shard reads the limit, and how many requests it handed over.
    load: Arc<PoolLoad>,
    /// When each thread's request began (`stamp_now()`); 0 while it has none.
    began: Box<[AtomicU64]>,
    /// The shard's line in the roster, where it counts what it served, and
    /// the server's shards, whose counts a step down is judged on.
    line: Option<&'static Line>,
    shards: usize,
    /// Where the supervisor reads the limit for /metrics, and the shard's
    /// place on it.
    board: Arc<Scoreboard>,
    local: usize,
}

struct State {
    /// Places taken: threads running a request or waiting for the next.
    running: usize,
    /// Threads whose long request gave its place up.
    excused: Vec<bool>,
    /// How long a request runs before it gives its place up, in nanoseconds.
    stall_ns: u64,
    closing: bool,
    limit: usize,
    window: Window,
    /// Requests finished per second in the last two windows.
    rates: [f64; 2],
    /// After a step down, until it is kept or taken back.
    trial: Option<Trial>,
    /// No step down before this.
    hold_until: Option<Instant>,
    /// How long the next step taken back holds.
    hold: Duration,
}

/// A step down on trial: the limit and the rate before it, and the
/// windows since.
struct Trial {
    from: usize,
    before: f64,
    rates: Vec<f64>,
}

struct Window {
    start: Instant,
    /// The server's count of requests served as the window began.
    served_from: Option<u64>,
    /// Requests the rate is taken from: the server's, or this pool's.
    served: u64,
    /// Its number: half seconds of the monotonic clock.
    slot: u64,
    done: u32,
    /// Releases that found as many requests in the pool as the limit, or more.
    full: u32,
    samples: u32,
    /// Summed over the sampled requests: wall time, and time running or
    /// waiting for a CPU, in nanoseconds.
    wall: u64,
    on_cpu: u64,
}

impl Window {
    fn new(start: Instant) -> Window {
        Window {
            start,
            served_from: None,
            served: 0,
            slot: window_slot(),
            done: 0,
            full: 0,
            samples: 0,
            wall: 0,
            on_cpu: 0,
        }
    }
}

/// What one sampled request spent.
pub struct Sample {
    wall: u64,
    on_cpu: u64,
}

impl Limit {
    /// The limit of shard `shard`'s pool, among `shards`; `local` is its
    /// place on the worker's `board`.
    pub fn new(
        threads: usize,
        load: Arc<PoolLoad>,
        (shard, shards): (usize, usize),
        board: Arc<Scoreboard>,
        local: usize,
    ) -> Limit {
        publish(&board, local, threads);
        Limit {
            threads,
            state: Mutex::new(State {
                running: 0,
                excused: vec![false; threads],
                stall_ns: STALL_MAX_NS / 10,
                closing: false,
                limit: threads,
                window: Window::new(Instant::now()),
                rates: [0.0; 2],
                trial: None,
                hold_until: None,
                hold: HOLD,
            }),
            freed: Condvar::new(),
            load,
            began: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            line: roster::line(shard),
            shards,
            board,
            local,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for one of the limit's places; a thread keeps its place from
    /// request to request (`finished`), so that at a limit of one, one
    /// thread (with its database connection) serves them all. A request
    /// that has run too long gives its place up to the waiter. The caller
    /// has let the GIL go. Returns at once once the pool is closing.
    pub fn acquire(&self) {
        let mut state = self.lock();
        while state.running >= state.limit && !state.closing {
            let now = stamp_now();
            let oldest = (0..self.threads)
                .filter(|&n| !state.excused[n])
                .filter_map(|n| {
                    let began = self.began[n].load(Ordering::Acquire);
                    (began != 0).then(|| (n, now.saturating_sub(began)))
                })
                .max_by_key(|&(_, ran)| ran);
            state = match oldest {
                Some((n, ran)) if ran >= state.stall_ns => {
                    state.excused[n] = true;
                    state.running -= 1;
                    state
                }
                Some((_, ran)) => {
                    let left = Duration::from_nanos(state.stall_ns - ran);
                    self.freed
                        .wait_timeout(state, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.freed.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
        }
        state.running += 1;
    }

    /// Thread `n` starts a request.
    pub fn begin(&self, n: usize) {
        self.began[n].store(stamp_now(), Ordering::Release);
    }

    /// The pool is going: threads waiting for a place stop waiting.
    pub fn close(&self) {
        self.lock().closing = true;
        self.freed.notify_all();
    }

    /// A thread's request ended (still counted in the pool's load). Ends
    /// the window when it is due. Returns whether the thread keeps its
    /// place: not when the limit went below the places taken.
    pub fn finished(&self, n: usize, sample: Option<Sample>) -> bool {
        let in_pool = self.load.busy.load(Ordering::Relaxed);
        let mut state = self.lock();
        self.began[n].store(0, Ordering::Release);
        let placed = !std::mem::take(&mut state.excused[n]);
        if let Some(line) = self.line {
            line.served.fetch_add(1, Ordering::Relaxed);
        }
        let limit = state.limit;
        let window = &mut state.window;
        window.done += 1;
        window.served += 1;
        if in_pool >= limit {
            window.full += 1;
        }
        if let Some(sample) = sample {
            window.samples += 1;
            window.wall += sample.wall;
            window.on_cpu += sample.on_cpu;
        }
        // A window short of samples goes on into the next half second.
        if window_slot() != window.slot && window.samples >= WINDOW_SAMPLES {
            let now = Instant::now();
            let served = roster::served(self.shards);
            let mut ended = std::mem::replace(&mut state.window, Window::new(now));
            state.window.served_from = served;
            // The server's requests over the window, where every shard's
            // count can be read; else this pool's.
            if let (Some(from), Some(to)) = (ended.served_from, served) {
                ended.served = to.saturating_sub(from);
            }
            let may_step_down = window_slot().is_multiple_of(STEP_DOWN_EVERY);
            state.decide(&ended, now, self.threads, may_step_down);
            self.load.limit.store(state.limit, Ordering::Relaxed);
            publish(&self.board, self.local, state.limit);
            if state.limit > limit {
                self.freed.notify_all();
            }
        }
        if !placed {
            return false;
        }
        if state.running > state.limit {
            state.running -= 1;
            return false;
        }
        true
    }
}

impl State {
    fn decide(&mut self, window: &Window, now: Instant, threads: usize, may_step_down: bool) {
        let mean = window.wall / u64::from(window.samples.max(1));
        self.stall_ns = (mean * STALL_MEANS).clamp(STALL_MIN_NS, STALL_MAX_NS);
        let seconds = now.duration_since(window.start).as_secs_f64();
        let rate = window.served as f64 / seconds.max(1e-3);
        // The rate before this window, once two windows are known.
        let before = (self.rates[1] > 0.0).then(|| (self.rates[0] + self.rates[1]) / 2.0);
        self.rates = [rate, self.rates[0]];
        if let Some(trial) = &mut self.trial {
            trial.rates.push(rate);
            if trial.rates.len() < TRIAL_WINDOWS {
                return;
            }
            let after = trial.rates.iter().sum::<f64>() / trial.rates.len() as f64;
            // Running fewer at once can lower the rate at most in their
            // proportion (were every request waiting on I/O); a larger fall
            // is the load changing, and judges nothing.
            let floor = trial.before * self.limit as f64 / trial.from as f64;
            if after < floor * KEEP_RATE {
                self.limit = trial.from;
            } else if after < trial.before * KEEP_RATE {
                self.limit = trial.from;
                self.hold_until = Some(now + self.hold);
                self.hold = (self.hold * 2).min(HOLD_LONGEST);
            } else {
                self.hold = HOLD;
            }
            self.trial = None;
            return;
        }
        // The limit bound only if requests queued for it most of the window.
        if window.full * 4 < window.done * 3 {
            return;
        }
        let blocked = 1.0 - window.on_cpu as f64 / (window.wall as f64).max(1.0);
        let held = self.hold_until.is_some_and(|until| now < until);
        if let Some(before) = before
            && may_step_down
            && blocked < STEP_DOWN_BELOW
            && self.limit > 1
            && !held
        {
            let from = self.limit;
            self.limit -= 1;
            self.trial = Some(Trial {
                from,
                before,
                rates: Vec::with_capacity(TRIAL_WINDOWS),
            });
        } else if blocked > STEP_UP_ABOVE && self.limit < threads {
            self.limit += 1;
        }
    }
}

fn publish(board: &Scoreboard, local: usize, limit: usize) {
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    board
        .counts(local)
        .threads_limit
        .store(limit, Ordering::Relaxed);
}

/// The number of the monotonic clock's current half second.
fn window_slot() -> u64 {
    stamp_now() / WINDOW.as_nanos() as u64
}

/// Times a thread's requests, one in `SAMPLE_EVERY`, from the kernel's
/// account of the thread: time on a CPU and time waiting for one.
pub struct Sampler {
    schedstat: Option<File>,
    count: u32,
}

/// A sampled request's start.
pub struct Stamp {
    at: Instant,
    on_cpu: u64,
}

impl Sampler {
    /// For the calling thread: `/proc/thread-self` names the thread that opens it.
    pub fn for_this_thread() -> Sampler {
        Sampler {
            schedstat: File::open("/proc/thread-self/schedstat").ok(),
            count: 0,
        }
    }

    pub fn start(&mut self) -> Option<Stamp> {
        self.count = self.count.wrapping_add(1);
        if !self.count.is_multiple_of(SAMPLE_EVERY) {
            return None;
        }
        Some(Stamp {
            at: Instant::now(),
            on_cpu: self.on_cpu()?,
        })
    }

    pub fn end(&self, stamp: Option<Stamp>) -> Option<Sample> {
        let stamp = stamp?;
        let on_cpu = self.on_cpu()?.checked_sub(stamp.on_cpu)?;
        let wall = u64::try_from(stamp.at.elapsed().as_nanos()).ok()?;
        Some(Sample { wall, on_cpu })
    }

    /// Nanoseconds the thread has run (its CPU clock, exact to now) plus
    /// waited to run (schedstat's second field, which the kernel brings up
    /// to date each time the thread gets a CPU).
    fn on_cpu(&self) -> Option<u64> {
        let mut buf = [0u8; 96];
        let n = self.schedstat.as_ref()?.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(buf.get(..n)?).ok()?;
        let waited = text.split_ascii_whitespace().nth(1)?.parse::<u64>().ok()?;
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes only to `ts`.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
            return None;
        }
        let ran = u64::try_from(ts.tv_sec).ok()?.checked_mul(1_000_000_000)?
            + u64::try_from(ts.tv_nsec).ok()?;
        Some(ran.saturating_add(waited))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `s` windows of (finished, finished with the pool full,
    /// blocked share), from `t0` on, and gives the limit after each.
    fn feed(s: &mut State, t0: Instant, windows: &[(u32, u32, f64)]) -> Vec<usize> {
        windows
            .iter()
            .enumerate()
            .map(|(n, &(done, full, blocked))| {
                let start = t0 + WINDOW * n as u32;
                let window = Window {
                    start,
                    served_from: None,
                    served: u64::from(done),
                    slot: n as u64,
                    done,
                    full,
                    samples: done / 4,
                    wall: 1_000_000,
                    on_cpu: ((1.0 - blocked) * 1_000_000.0) as u64,
                };
                s.decide(&window, start + WINDOW, 4, true);
                s.limit
            })
            .collect()
    }

    fn state(limit: usize) -> State {
        State {
            running: 0,
            excused: vec![false; 4],
            stall_ns: STALL_MIN_NS,
            closing: false,
            limit,
            window: Window::new(Instant::now()),
            rates: [0.0; 2],
            trial: None,
            hold_until: None,
            hold: HOLD,
        }
    }

    #[test]
    fn threads_that_wait_for_a_cpu_step_down_one_at_a_time_to_one() {
        // Two windows to know the rate, then each step down is judged on
        // the two windows after it, and kept: the rate did not fall.
        let limits = feed(&mut state(4), Instant::now(), &[(100, 100, 0.05); 12]);
        assert_eq!(limits, [4, 4, 3, 3, 3, 2, 2, 2, 1, 1, 1, 1]);
    }

    #[test]
    fn threads_that_wait_on_io_step_back_up_to_the_threads_and_no_further() {
        let limits = feed(&mut state(1), Instant::now(), &[(100, 100, 0.9); 4]);
        assert_eq!(limits, [2, 3, 4, 4]);
    }

    #[test]
    fn a_step_down_waits_for_a_window_every_pool_steps_in() {
        let t0 = Instant::now();
        let mut s = state(4);
        let cpu_bound = (100, 100, 0.05);
        feed(&mut s, t0, &[cpu_bound, cpu_bound]);
        let window = Window {
            start: t0 + WINDOW * 2,
            served_from: None,
            served: 100,
            slot: 2,
            done: 100,
            full: 100,
            samples: 25,
            wall: 1_000_000,
            on_cpu: 950_000,
        };
        s.decide(&window, t0 + WINDOW * 3, 4, false);
        assert_eq!(s.limit, 4);
        s.decide(&window, t0 + WINDOW * 3, 4, true);
        assert_eq!(s.limit, 3);
    }

    #[test]
    fn nothing_moves_while_requests_do_not_queue_for_the_limit() {
        assert_eq!(
            feed(&mut state(4), Instant::now(), &[(100, 50, 0.05); 4]),
            [4; 4]
        );
        assert_eq!(
            feed(&mut state(2), Instant::now(), &[(100, 50, 0.9); 4]),
            [2; 4]
        );
    }

    #[test]
    fn a_step_down_that_cost_a_tenth_of_the_rate_is_taken_back_and_held() {
        let t0 = Instant::now();
        let mut s = state(4);
        let cpu_bound = (100, 100, 0.05);
        // The two windows after the step served 88 and 86 where the two
        // before it served 100: back to 4, then held.
        let limits = feed(
            &mut s,
            t0,
            &[
                cpu_bound,
                cpu_bound,
                cpu_bound,
                (88, 88, 0.05),
                (86, 86, 0.05),
                cpu_bound,
            ],
        );
        assert_eq!(limits, [4, 4, 3, 3, 4, 4]);
        // Once the hold is over, a step down is tried again; taken back
        // again, it holds twice as long.
        let later = t0 + HOLD + WINDOW * 6;
        assert_eq!(
            feed(&mut s, later, &[cpu_bound, (80, 80, 0.05), (80, 80, 0.05)]),
            [3, 3, 4]
        );
        assert_eq!(s.hold, HOLD * 4);
    }

    /// The limits over three windows of threads waiting for a CPU (the
    /// third steps down), then `after`.
    fn after_a_step(after: &[(u32, u32, f64)]) -> Vec<usize> {
        let mut windows = vec![(100, 100, 0.05); 3];
        windows.extend_from_slice(after);
        feed(&mut state(4), Instant::now(), &windows)
    }

    #[test]
    fn a_fall_larger_than_the_step_could_cause_is_the_load_changing() {
        // From 4 to 3 could cost a quarter of the rate at most: a fall to a
        // third puts the limit back, and a step is tried again at once.
        let limits = after_a_step(&[(30, 30, 0.05), (35, 35, 0.05), (34, 34, 0.05)]);
        assert_eq!(limits, [4, 4, 3, 3, 4, 3]);
    }

    #[test]
    fn a_step_down_that_kept_the_rate_stays() {
        let limits = after_a_step(&[(95, 95, 0.3), (96, 96, 0.3)]);
        assert_eq!(limits, [4, 4, 3, 3, 3]);
    }

    fn limited(threads: usize, limit: usize) -> Arc<Limit> {
        let board = Arc::new(Scoreboard::new(1, threads).expect("a shared mapping"));
        let limit_ = Limit::new(threads, Arc::new(PoolLoad::new(threads)), (0, 1), board, 0);
        limit_.lock().limit = limit;
        Arc::new(limit_)
    }

    #[test]
    fn a_thread_keeps_its_place_until_the_limit_drops_below_the_places() {
        let limit = limited(2, 2);
        limit.acquire();
        limit.acquire();
        assert!(limit.finished(0, None));
        limit.lock().limit = 1;
        assert!(!limit.finished(1, None));
        assert!(limit.finished(0, None));
    }

    #[test]
    fn a_long_request_gives_its_place_up_to_a_waiting_thread() {
        let limit = limited(2, 1);
        limit.acquire();
        limit.begin(0);
        let (placed, waiter_placed) = std::sync::mpsc::channel();
        let waiter = limit.clone();
        std::thread::spawn(move || {
            waiter.acquire();
            let _ = placed.send(());
        });
        // The limit is one and thread 0 still runs: only its giving up the
        // place (after the stall time, 100 ms at first) lets the waiter in.
        assert!(waiter_placed.recv_timeout(Duration::from_secs(10)).is_ok());
        // Its request over, thread 0 has no place to keep.
        assert!(!limit.finished(0, None));
    }

    #[test]
    fn closing_lets_every_waiting_thread_go() {
        let limit = limited(2, 1);
        limit.acquire();
        let (gone, waiter_gone) = std::sync::mpsc::channel();
        let waiter = limit.clone();
        std::thread::spawn(move || {
            waiter.acquire();
            let _ = gone.send(());
        });
        limit.close();
        assert!(waiter_gone.recv_timeout(Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_sampler_reads_this_threads_time() {
        let mut sampler = Sampler::for_this_thread();
        let stamps: Vec<_> = (0..SAMPLE_EVERY).map(|_| sampler.start()).collect();
        assert_eq!(stamps.iter().filter(|s| s.is_some()).count(), 1);
        let stamp = stamps.into_iter().flatten().next();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        let sample = sampler.end(stamp).expect("schedstat is readable");
        assert!(sample.wall >= 20_000_000);
        // Spinning is on a CPU, or waiting for one: nothing blocked.
        assert!(
            sample.on_cpu as f64 >= sample.wall as f64 * 0.9,
            "{} of {}",
            sample.on_cpu,
            sample.wall
        );
    }
}
