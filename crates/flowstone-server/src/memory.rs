//! Giving memory back to the operating system after a peak.
//!
//! Computing the status of every asset allocates tens of MiB for a moment
//! (rows read from the store, on the store's threads and the runtime's), and
//! a backfill fills the store's page caches. glibc keeps what was freed in
//! its arenas, so an idle `serve` on the flights store held 60-90 MiB of
//! which about 4 MiB were in use. Once the server has been quiet for a
//! second, and again five seconds later, the [`Trimmer`] asks the store to
//! let go of its caches ([`Store::release_memory`]) and then `malloc_trim`
//! hands the free pages back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowstone_core::store::Store;

/// Quiet time before a trim, and the longest a busy server waits for one.
const QUIET: Duration = Duration::from_secs(1);
const AT_MOST: Duration = Duration::from_secs(10);

/// Trims the memory of one server's process and store when it goes quiet.
pub(crate) struct Trimmer {
    store: Arc<dyn Store>,
    /// The first and the latest request for a trim since the last one,
    /// while a trim is on its way; `None` when none is.
    wanted: Mutex<Option<(Instant, Instant)>>,
}

impl Trimmer {
    pub(crate) fn new(store: Arc<dyn Store>) -> Arc<Trimmer> {
        Arc::new(Trimmer {
            store,
            wanted: Mutex::new(None),
        })
    }

    /// Gives memory back once the server has been quiet for a second (at
    /// most ten seconds on), and again five seconds later. Must be called
    /// within a Tokio runtime.
    pub(crate) fn trim_soon(self: &Arc<Self>) {
        let now = Instant::now();
        {
            let mut wanted = self.wanted();
            if let Some((_, latest)) = wanted.as_mut() {
                *latest = now;
                return;
            }
            *wanted = Some((now, now));
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Wait for a quiet second, or until the first request is old.
            loop {
                let (first, latest) = this.wanted().unwrap_or((Instant::now(), Instant::now()));
                let due = (latest + QUIET).min(first + AT_MOST);
                if Instant::now() >= due {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
            }
            *this.wanted() = None;

            // A second trim a few seconds on finds more: buffers the store's
            // threads keep a while after a read.
            for wait in [Duration::ZERO, Duration::from_secs(5)] {
                tokio::time::sleep(wait).await;
                let started = Instant::now();
                this.store.release_memory().await;
                release();
                tracing::debug!(target: "flowstone::server",
                                ms = started.elapsed().as_secs_f64() * 1e3, "memory trimmed");
            }
        });
    }

    fn wanted(&self) -> std::sync::MutexGuard<'_, Option<(Instant, Instant)>> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }
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
