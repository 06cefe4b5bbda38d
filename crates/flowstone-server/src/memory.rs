//! Giving memory back to the operating system after a peak.
//!
//! Computing the status of every asset allocates tens of MiB for a moment
//! (rows read from the store, on the store's threads and the runtime's).
//! glibc keeps what was freed in its per-thread arenas, so an idle `serve`
//! on the flights store held 60-90 MiB of which about 4 MiB were in use.
//! `malloc_trim` hands the free pages back; the status cache asks for it
//! after each computation or update and the router after every request,
//! and it runs once the server has been quiet for a second, then again
//! five seconds later, when the store's threads have let their rows go.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first and the latest request for a trim since the last one, while
/// a trim is on its way; `None` when none is.
static WANTED: Mutex<Option<(Instant, Instant)>> = Mutex::new(None);

/// Quiet time before a trim, and the longest a busy server waits for one.
const QUIET: Duration = Duration::from_secs(1);
const AT_MOST: Duration = Duration::from_secs(10);

/// Returns free heap pages to the operating system once the server has
/// been quiet for a second (at most ten seconds on), and again five
/// seconds later, where the C library can (glibc); elsewhere does nothing.
/// Must be called within a Tokio runtime.
pub(crate) fn trim_soon() {
    let now = Instant::now();
    {
        let mut wanted = WANTED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, latest)) = wanted.as_mut() {
            *latest = now;
            return;
        }
        *wanted = Some((now, now));
    }
    tokio::spawn(async {
        // Wait for a quiet second, or until the first request is old.
        loop {
            let (first, latest) = WANTED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or((Instant::now(), Instant::now()));
            let due = (latest + QUIET).min(first + AT_MOST);
            if Instant::now() >= due {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        *WANTED.lock().unwrap_or_else(|e| e.into_inner()) = None;

        // A second trim a few seconds on finds more: buffers the store's
        // threads keep a while after a read.
        for wait in [Duration::ZERO, Duration::from_secs(5)] {
            tokio::time::sleep(wait).await;
            let started = Instant::now();
            release();
            tracing::debug!(target: "flowstone::server",
                            ms = started.elapsed().as_secs_f64() * 1e3, "memory trimmed");
        }
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
