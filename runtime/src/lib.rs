//! What Confidant's service binaries share, defined once: [`logging`] that cannot leak plaintext,
//! the tokio [`runtime`] they run on, and [`endpoint`] I/O over TCP, Unix sockets and vsock.

pub mod endpoint;
pub mod logging;

/// A multi-threaded tokio runtime with `workers` threads (`None`: one per core).
pub fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    builder.enable_all().build()
}
