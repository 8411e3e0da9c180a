//! The I/O seam: how a shard's event loop is built and driven. Everything above
//! it uses compio's socket types; only this file knows which kernel interface
//! runs underneath: io_uring, or epoll where io_uring is refused (compio's
//! polling driver, chosen at run time).

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};

use crate::config::IoEngine;

/// The runtime for one shard's thread. With io_uring, a ring that one thread
/// alone submits to: COOP_TASKRUN, TASKRUN_FLAG, SINGLE_ISSUER and
/// DEFER_TASKRUN together cut the CPU per request by about a third on this
/// kernel (docs/architecture.md, "Facts").
pub fn build(engine: IoEngine) -> std::io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor
        .capacity(1024)
        .coop_taskrun(true)
        .taskrun_flag(true)
        .single_issuer(true)
        .defer_taskrun(true)
        .driver_type(match engine {
            IoEngine::Epoll => DriverType::Poll,
            IoEngine::Uring | IoEngine::Auto => DriverType::IoUring,
        });
    RuntimeBuilder::new().with_proactor(proactor).build()
}

/// Settles `auto` once, in the supervisor: io_uring if a ring can be made
/// here, else epoll, with one warning that says why.
pub fn resolve(engine: IoEngine) -> Result<IoEngine, String> {
    match (engine, build(IoEngine::Uring)) {
        (IoEngine::Epoll, _) => Ok(IoEngine::Epoll),
        (_, Ok(_)) => Ok(IoEngine::Uring),
        (IoEngine::Auto, Err(e)) => {
            log::warn!(
                "io_uring is not available ({e}); serving through epoll. See \
                 tuning/README.md for enabling io_uring."
            );
            Ok(IoEngine::Epoll)
        }
        (_, Err(e)) => Err(format!(
            "--io-engine uring: io_uring is not available ({e})"
        )),
    }
}

/// Drives `future` to completion on `rt`, releasing the GIL whenever the thread
/// waits for the kernel, so an idle shard never holds its interpreter.
pub fn block_on<F: Future>(rt: &Runtime, future: F) -> F::Output {
    rt.enter(|| {
        let waker = rt.waker();
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            // Even a non-blocking poll releases the GIL: the shard's Python
            // threads (--threads) get their turn at every pass of the loop.
            let timeout = if rt.run() {
                Some(Duration::ZERO)
            } else {
                rt.current_timeout()
            };
            crate::python::without_gil(|| rt.poll_with(timeout));
        }
    })
}
