//! Deadlines that lose ties. compio's `timeout` picks at random between a
//! future and its timer when both are ready, as both are after a shard's
//! thread was busy past the deadline (a long app call): a request that had
//! arrived in time, or a write that had finished, would be thrown away. Here
//! the future is polled first, so only one still pending at the deadline
//! times out.

use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use futures_util::future::{Either, select};

/// The deadline passed first.
#[derive(Debug)]
pub struct TimedOut;

/// `future`'s output, unless it is still pending at `until`.
pub async fn timeout_at<F: Future>(until: Instant, future: F) -> Result<F::Output, TimedOut> {
    // select polls its first future first, every time.
    match select(pin!(future), pin!(compio::time::sleep_until(until))).await {
        Either::Left((out, _)) => Ok(out),
        Either::Right(_) => Err(TimedOut),
    }
}

/// `future`'s output, unless it is still pending after `limit`.
pub async fn timeout<F: Future>(limit: Duration, future: F) -> Result<F::Output, TimedOut> {
    timeout_at(Instant::now() + limit, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_beats_a_passed_deadline() {
        let rt = compio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let past = Instant::now() - Duration::from_secs(1);
            assert_eq!(timeout_at(past, async { 7 }).await.ok(), Some(7));
            let pending = std::future::pending::<()>();
            assert!(timeout(Duration::from_millis(1), pending).await.is_err());
        });
    }
}
