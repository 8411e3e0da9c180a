//! The shards of one worker hand each other connections: a request that
//! waited behind its shard's busy thread while another shard sat idle moves,
//! with its connection, to that shard (docs/architecture.md, "Moving
//! connections"). Each shard has an inbox here; whether a peer is idle is
//! read from the scoreboard, where every shard's thread says when it waits in
//! the kernel. Nothing here runs on the fast path: only a late request asks.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures_util::StreamExt;
use futures_util::future::Either;

use super::Shard;
use crate::http::conn::{Handoff, Start};
use crate::runtime;
use crate::scoreboard::Scoreboard;

/// How long a shard must have waited with nothing to do to take a
/// connection, in nanoseconds: a shard whose clients all answer at once is
/// only between two of their requests, and one moved there would queue
/// behind them (measured: p99 at 4 connections of CPU-bound requests went
/// from 46 to 81 ms when such gaps counted as idle).
const IDLE_FOR: u64 = 1_000_000;

/// Where a worker's shards send each other connections.
pub struct Peers {
    /// Shard numbers, by position in the worker.
    ids: Vec<usize>,
    inboxes: Vec<UnboundedSender<Box<Handoff>>>,
    board: Arc<Scoreboard>,
}

/// A shard's own end: the connections its peers hand it.
pub type Inbox = UnboundedReceiver<Box<Handoff>>;

impl Peers {
    /// Inboxes for the worker's shards, numbered `ids` in worker order; None
    /// for a worker with one shard, which has nobody to hand work to.
    pub fn new(ids: Vec<usize>, board: Arc<Scoreboard>) -> Option<(Arc<Peers>, Vec<Inbox>)> {
        if ids.len() < 2 {
            return None;
        }
        let (inboxes, ends) = ids.iter().map(|_| unbounded()).unzip();
        let peers = Peers {
            ids,
            inboxes,
            board,
        };
        Some((Arc::new(peers), ends))
    }

    /// Among the shards other than `me` whose thread has waited in the
    /// kernel for IDLE_FOR at least, with no request in flight, the one with
    /// the fewest connections, claimed for one connection: its wait stops
    /// counting as idle until its thread waits again. Without the claim, a
    /// shard whose pass ended with several waiting requests would send them
    /// all to the one idle peer, which has not woken yet, and then sit idle
    /// itself while they queue there.
    pub fn idle(&self, me: usize) -> Option<usize> {
        let idle_since = runtime::stamp(Instant::now()).saturating_sub(IDLE_FOR);
        let mut best: Option<(u32, usize, u64)> = None;
        for (local, inbox) in self.inboxes.iter().enumerate() {
            let counts = self.board.counts(local);
            let since = counts.waiting_since.load(Ordering::Relaxed);
            if local == me
                || inbox.is_closed()
                || since == 0
                || since > idle_since
                || counts.in_flight.load(Ordering::Relaxed) != 0
            {
                continue;
            }
            let connections = counts.connections.load(Ordering::Relaxed);
            if best.is_none_or(|(fewest, ..)| connections < fewest) {
                best = Some((connections, local, since));
            }
        }
        let (_, local, since) = best?;
        // Another shard may have claimed it, or it woke, since it was read.
        self.board
            .counts(local)
            .waiting_since
            .compare_exchange(since, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| local)
    }

    /// Sends a connection from shard `from` to shard `to`, and wakes `to`.
    pub fn send(&self, from: usize, to: usize, handoff: Box<Handoff>) -> Result<(), Box<Handoff>> {
        // Built only for the log line, which is off unless debugging.
        let client = log::log_enabled!(log::Level::Debug).then(|| handoff.peer_host());
        self.inboxes[to]
            .unbounded_send(handoff)
            .map_err(|e| e.into_inner())?;
        self.board
            .counts(from)
            .moved_out
            .fetch_add(1, Ordering::Relaxed);
        if let Some(client) = client {
            log::debug!(
                "Shard {}: a request from {client} waited behind a busy app call; its connection moves to idle shard {}",
                self.ids[from],
                self.ids[to]
            );
        }
        Ok(())
    }
}

/// Serves what peers hand this shard until it drains. Once draining, the
/// inbox closes, so a peer keeps what it would have sent, and what was
/// already sent is still served.
pub async fn take_in(shard: Rc<Shard>, mut inbox: Inbox) {
    loop {
        let next = inbox.next();
        let drain = shard.host.drain.started();
        match futures_util::future::select(next, std::pin::pin!(drain)).await {
            Either::Left((Some(handoff), _)) => super::accept::spawn(&shard, Start::Moved(handoff)),
            Either::Left((None, _)) => return,
            Either::Right(_) => break,
        }
    }
    // After close, next() yields what is queued (or being queued) and then
    // ends.
    inbox.close();
    while let Some(handoff) = inbox.next().await {
        super::accept::spawn(&shard, Start::Moved(handoff));
    }
}
