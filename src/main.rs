//! turbo: serve Python WSGI apps from thread-per-core io_uring shards.
//!
//! `cli` reads the Gunicorn-compatible command line, `server` starts Python and
//! the shards, `shard` runs one core's event loop, `http` speaks HTTP/1.1, `python`
//! manages interpreters and `wsgi` bridges requests to the app.

mod cli;
mod http;
mod logging;
mod python;
mod server;
mod shard;
mod wsgi;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let config = cli::from_args();
    logging::init(config.log_level);
    server::run(config);
}
