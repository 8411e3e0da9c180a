//! The I/O seam: how a shard's event loop is built and driven. Everything above
//! it uses compio's socket types; only this file knows which kernel interface
//! (io_uring today, epoll later) runs underneath.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};
use std::time::Duration;

use compio::driver::ProactorBuilder;
use compio::runtime::{Runtime, RuntimeBuilder};

/// A ring for one thread that alone submits to it. COOP_TASKRUN, TASKRUN_FLAG,
/// SINGLE_ISSUER and DEFER_TASKRUN together cut the CPU per request by about a
/// third on this kernel (DESIGN.md).
pub fn build() -> std::io::Result<Runtime> {
    let mut proactor = ProactorBuilder::new();
    proactor
        .capacity(1024)
        .coop_taskrun(true)
        .taskrun_flag(true)
        .single_issuer(true)
        .defer_taskrun(true);
    RuntimeBuilder::new().with_proactor(proactor).build()
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
