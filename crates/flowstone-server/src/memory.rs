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
//!
//! `malloc_trim` cannot give back the free top of a thread's arena below
//! glibc's trim threshold, and glibc raises that threshold (up to 64 MiB)
//! and the size from which it maps a block of its own (up to 32 MiB) each
//! time a large mapped block is freed: after a big page (the 8,760 hourly cells of
//! `raw_weather`) an idle `serve` kept 7 to 16 MiB of such pages instead of
//! 4. [`tune_allocator`] fixes both when the server starts.

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

/// Blocks of at least this size get pages of their own, returned to the
/// system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: std::ffi::c_int = 1 << 20;
/// Free space at the top of an arena beyond this goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: std::ffi::c_int = 128 << 10;

/// Fixes glibc's trim and mmap thresholds for this process (see the module
/// docs), unless the user chose them: `MALLOC_TRIM_THRESHOLD_`,
/// `MALLOC_MMAP_THRESHOLD_` or a `glibc.malloc` tunable in
/// `GLIBC_TUNABLES` leaves them alone. Costs a backfill through the
/// server a few percent (crates/flowstone-bench/README.md, idle memory).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune_allocator() {
    if user_tuned_malloc(|name| std::env::var(name).ok()) {
        return;
    }
    unsafe extern "C" {
        fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
    }
    // glibc's malloc.h: M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
    const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
    const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
    // SAFETY: mallopt takes two integers and changes glibc's own settings
    // under its lock; it may be called at any time from any thread.
    unsafe {
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune_allocator() {}

/// Whether the environment (read through `var`) sets glibc's malloc
/// thresholds or tunables, which [`tune_allocator`] then leaves alone.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn user_tuned_malloc(var: impl Fn(&str) -> Option<String>) -> bool {
    var("MALLOC_TRIM_THRESHOLD_").is_some()
        || var("MALLOC_MMAP_THRESHOLD_").is_some()
        || var("GLIBC_TUNABLES").is_some_and(|t| t.contains("glibc.malloc."))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_malloc_settings_are_kept() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(!user_tuned_malloc(env(&[])));
        assert!(!user_tuned_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.pthread.rseq=0"
        )])));
        assert!(user_tuned_malloc(env(&[(
            "GLIBC_TUNABLES",
            "glibc.malloc.arena_max=1"
        )])));
        assert!(user_tuned_malloc(env(&[("MALLOC_TRIM_THRESHOLD_", "0")])));
        assert!(user_tuned_malloc(env(&[(
            "MALLOC_MMAP_THRESHOLD_",
            "65536"
        )])));
        // Setting the thresholds twice (two servers in one process) is harmless.
        tune_allocator();
        tune_allocator();
    }
}
