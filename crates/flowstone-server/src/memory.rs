//! Giving memory back to the operating system after a peak.
//!
//! Computing the status of every asset allocates tens of MiB for a moment
//! (rows read from the store, on the store's threads and the runtime's).
//! glibc keeps what was freed in its per-thread arenas, so an idle `serve`
//! on the flights store held 60-90 MiB of which about 4 MiB were in use.
//! `malloc_trim` hands the free pages back; the status cache asks for it
//! after each computation or update and after every request, and it runs
//! a second later and again five seconds after that (once for all the
//! requests meanwhile), when the threads that read the rows have let go.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Whether a trim is already on its way.
static PENDING: AtomicBool = AtomicBool::new(false);

/// Returns free heap pages to the operating system a second from now,
/// where the C library can (glibc); elsewhere does nothing. Must be called
/// within a Tokio runtime.
pub(crate) fn trim_soon() {
    if PENDING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async {
        // A second trim a few seconds on finds more: buffers the store's
        // threads keep a while after a read.
        for wait in [1, 5] {
            tokio::time::sleep(Duration::from_secs(wait)).await;
            let started = Instant::now();
            release();
            tracing::debug!(target: "flowstone::server",
                            ms = started.elapsed().as_secs_f64() * 1e3, "memory trimmed");
        }
        PENDING.store(false, Ordering::Release);
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer and only walks glibc's own free
    // lists, under the arenas' locks; it is safe to call from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
