//! Synthetic no-op workloads for measuring FlowStone's own overhead.
//!
//! Every asset here returns `Ok(())` at once, so what a workload measures is
//! the engine: planning, the SQLite store's queue and record, the worker loop
//! and the in-memory I/O manager. Nothing is asserted; the binaries print
//! figures (see the crate's README).
//!
//! Peak memory is per process, so each workload runs in a process of its own:
//! the `flowstone-bench` binary re-executes itself once per workload and reads
//! the child's figures from its standard output.

pub mod cluster;
pub mod timed;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// This process's peak resident set size in KiB (`VmHWM`), or 0 when
/// `/proc/self/status` cannot be read (not Linux).
pub fn peak_rss_kib() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A directory under the system's temporary directory, removed with
/// everything in it when dropped.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates a new, empty directory whose name starts with `label`.
    ///
    /// # Errors
    ///
    /// When the directory cannot be created.
    pub fn new(label: &str) -> std::io::Result<ScratchDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "flowstone-bench-{label}-{}-{nanos}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of a SQLite database file inside the directory, as
    /// `SqliteStore::open` takes it.
    pub fn store_location(&self) -> String {
        self.path.join("flowstone.db").display().to_string()
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Best effort: a leftover directory in /tmp harms nothing.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The middle value of `values` (the upper one of the two middles for an
/// even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_of_sorted_values() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(3.0));
    }

    #[test]
    fn peak_rss_reads_a_positive_figure_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_kib() > 0);
        }
    }

    #[test]
    fn scratch_dirs_are_distinct_and_removed() {
        let a = ScratchDir::new("t").unwrap();
        let b = ScratchDir::new("t").unwrap();
        assert_ne!(a.path(), b.path());
        let path = a.path().to_path_buf();
        std::fs::write(path.join("x"), b"x").unwrap();
        drop(a);
        assert!(!path.exists());
    }
}
