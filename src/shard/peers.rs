//! Shards hand each other connections: a request that waited behind its
//! shard's busy thread while another shard sat idle moves, with its
//! connection, to that shard (docs/architecture.md, "Moving connections").
//! Whether a shard is idle is read from the roster, where every shard's
//! thread says when it waits in the kernel. A shard of the same worker gets
//! the connection through its inbox, a channel; a shard of another worker
//! process (one worker per shard, `--isolation process`) through its
//! mailbox, a unix socket. Nothing here runs on the fast path: only a late
//! request asks.

use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use compio::runtime::fd::PollFd;
use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures_util::StreamExt;
use futures_util::future::Either;

use super::Shard;
use super::mailbox::{self, Mailboxes, Received};
use crate::http::conn::Start;
use crate::http::handoff::Handoff;
use crate::runtime;
use crate::scoreboard::Scoreboard;

/// How long a shard must have waited with nothing to do to take a
/// connection, in nanoseconds: a shard whose clients all answer at once is
/// only between two of their requests, and one moved there would queue
/// behind them (measured: p99 at 4 connections of CPU-bound requests went
/// from 46 to 81 ms when such gaps counted as idle).
const IDLE_FOR: u64 = 1_000_000;

/// Where a worker's shards send connections.
pub struct Peers {
    /// This worker's shard numbers, by position in the worker.
    ids: Vec<usize>,
    inboxes: Vec<UnboundedSender<Box<Handoff>>>,
    /// Every shard's mailbox, for shards of other workers.
    mailboxes: Mailboxes,
    /// Shards, numbered 0 to this, that may take a connection.
    shards: usize,
    board: Arc<Scoreboard>,
}

/// An idle shard claimed for one connection (`Peers::idle`).
#[derive(Clone, Copy)]
pub struct Claim {
    pub shard: usize,
    /// Its wait's stamp, which the claim took.
    since: u64,
}

/// A shard's own end: the connections its peers hand it.
pub struct Inbox {
    /// From shards of its worker.
    local: UnboundedReceiver<Box<Handoff>>,
    /// From shards of other workers, where there are any.
    mailbox: Option<OwnedFd>,
    /// Its line in the roster, where it says it waits idle.
    line: &'static crate::roster::Line,
}

impl Peers {
    /// Inboxes for the worker's shards, numbered `ids` in worker order; None
    /// where no shard but these exists, and they are fewer than two: nobody
    /// to hand work to.
    pub fn new(
        ids: Vec<usize>,
        board: Arc<Scoreboard>,
        mailboxes: Mailboxes,
    ) -> Option<(Arc<Peers>, Vec<Inbox>)> {
        let elsewhere = (0..mailboxes.len()).any(|shard| !ids.contains(&shard));
        if ids.len() < 2 && !elsewhere {
            return None;
        }
        let mut inboxes = Vec::new();
        let mut ends = Vec::new();
        for &id in &ids {
            let (send, local) = unbounded();
            inboxes.push(send);
            ends.push(Inbox {
                local,
                mailbox: elsewhere.then(|| mailboxes.inbox(id)).flatten(),
                line: crate::roster::line(id)?,
            });
        }
        let shards = mailboxes
            .len()
            .max(ids.iter().map(|id| id + 1).max().unwrap_or(0));
        let peers = Peers {
            ids,
            inboxes,
            mailboxes,
            shards,
            board,
        };
        Some((Arc::new(peers), ends))
    }

    /// Among the shards other than `me` (this worker's `me`-th) whose
    /// thread has waited in the kernel for IDLE_FOR at least with no request
    /// in flight, the one with the fewest connections, claimed for one
    /// connection: its wait stops counting as idle until its thread waits
    /// again, or until `unclaim`. Without the claim, a shard whose pass ended
    /// with several waiting requests would send them all to the one idle
    /// peer, which has not woken yet, and then sit idle itself while they
    /// queue there.
    pub fn idle(&self, me: usize) -> Option<Claim> {
        let idle_since = runtime::stamp_now().saturating_sub(IDLE_FOR);
        let mut best: Option<(u32, Claim)> = None;
        for shard in 0..self.shards {
            if shard == self.ids[me] {
                continue;
            }
            let Some(line) = crate::roster::line(shard) else {
                break;
            };
            let since = line.waiting_since.load(Ordering::Relaxed);
            if since == 0 || since > idle_since {
                continue;
            }
            let connections = line.connections.load(Ordering::Relaxed);
            if best.is_none_or(|(fewest, _)| connections < fewest) {
                best = Some((connections, Claim { shard, since }));
            }
        }
        let (_, claim) = best?;
        // Another shard may have claimed it, or it woke, since it was read.
        crate::roster::line(claim.shard)?
            .waiting_since
            .compare_exchange(claim.since, 0, Ordering::Relaxed, Ordering::Relaxed)
            .ok()
            .map(|_| claim)
    }

    /// Gives back a claim whose connection could not be sent: the shard
    /// counts as idle again, unless its thread woke meanwhile.
    pub fn unclaim(&self, claim: Claim) {
        if let Some(line) = crate::roster::line(claim.shard) {
            let _ = line.waiting_since.compare_exchange(
                0,
                claim.since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Sends a connection from this worker's shard `from` to shard `to`,
    /// and wakes `to`.
    pub fn send(&self, from: usize, to: usize, handoff: Box<Handoff>) -> Result<(), Box<Handoff>> {
        // Built only for the log line, which is off unless debugging.
        let client = log::log_enabled!(log::Level::Debug).then(|| handoff.peer_host());
        match self.ids.iter().position(|&id| id == to) {
            Some(local) => self.inboxes[local]
                .unbounded_send(handoff)
                .map_err(|e| e.into_inner())?,
            None => self.mailboxes.send(to, handoff)?,
        }
        self.board
            .counts(from)
            .moved_out
            .fetch_add(1, Ordering::Relaxed);
        if let Some(client) = client {
            log::debug!(
                "Shard {}: a request from {client} waited behind a busy app call; its connection moves to idle shard {to}",
                self.ids[from],
            );
        }
        Ok(())
    }
}

/// Serves what peers hand this shard until it drains. Its thread's idle
/// waits show in the roster meanwhile. Once draining, it takes no more: it
/// leaves the roster and its inbox closes, so a peer keeps what it would
/// have sent, and what was already sent is still served. Its mailbox is read
/// until the drain ends, for a peer in another worker that claimed the shard
/// just before; what comes later waits there for the shard's next worker.
pub async fn take_in(shard: Rc<Shard>, inbox: Inbox) {
    let Inbox {
        local: mut inbox,
        mailbox,
        line,
    } = inbox;
    let mut mailbox = mailbox.and_then(|fd| PollFd::new(fd).ok());
    let mut buf = Vec::new();
    runtime::publish_waits(shard.board.clone(), shard.local, line);
    loop {
        let woke = {
            let next = inbox.next();
            let drain = std::pin::pin!(shard.host.drain.started());
            let readable = std::pin::pin!(mail(&mailbox));
            match futures_util::future::select(next, futures_util::future::select(drain, readable))
                .await
            {
                Either::Left((Some(handoff), _)) => Woke::Handoff(handoff),
                Either::Left((None, _)) | Either::Right((Either::Left(_), _)) => break,
                Either::Right((Either::Right((ready, _)), _)) => Woke::Mail(ready),
            }
        };
        match woke {
            Woke::Handoff(handoff) => super::accept::spawn(&shard, Start::Moved(handoff)),
            Woke::Mail(ready) => take_mail(&shard, &mut mailbox, ready, &mut buf),
        }
    }
    runtime::unpublish_waits();
    // After close, next() yields what is queued (or being queued) and then
    // ends.
    inbox.close();
    while let Some(handoff) = inbox.next().await {
        super::accept::spawn(&shard, Start::Moved(handoff));
    }
    while mailbox.is_some() {
        let ready = {
            let finished = std::pin::pin!(shard.host.drain.finished());
            let readable = std::pin::pin!(mail(&mailbox));
            match futures_util::future::select(finished, readable).await {
                Either::Left(_) => break,
                Either::Right((ready, _)) => ready,
            }
        };
        take_mail(&shard, &mut mailbox, ready, &mut buf);
    }
}

/// What woke a shard's `take_in`.
enum Woke {
    Handoff(Box<Handoff>),
    Mail(std::io::Result<()>),
}

/// Resolves when the mailbox, if any, has something to read.
async fn mail(mailbox: &Option<PollFd<OwnedFd>>) -> std::io::Result<()> {
    match mailbox {
        Some(mailbox) => mailbox.read_ready().await,
        None => std::future::pending().await,
    }
}

/// Serves every connection queued in the shard's mailbox. A mailbox that
/// fails is no longer read (rather than polled in a loop): the shard then
/// takes connections from its own worker only.
fn take_mail(
    shard: &Rc<Shard>,
    mailbox: &mut Option<PollFd<OwnedFd>>,
    ready: std::io::Result<()>,
    buf: &mut Vec<u8>,
) {
    let Some(inbox) = mailbox.as_ref() else {
        return;
    };
    let failed = match ready {
        Err(e) => e,
        Ok(()) => loop {
            match mailbox::receive(inbox, buf) {
                Received::Handoff(handoff) => super::accept::spawn(shard, Start::Moved(handoff)),
                Received::Malformed(why) => {
                    log::warn!(
                        "Shard {}: a connection from another worker is lost: {why}",
                        shard.id
                    )
                }
                Received::Empty => return,
                Received::Failed(e) => break e,
            }
        },
    };
    log::error!(
        "Shard {}: its mailbox failed ({failed}); it takes connections from its own worker only",
        shard.id
    );
    *mailbox = None;
}
