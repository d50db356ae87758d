//! What the store knows about its own health, and the faults a test can
//! switch on to prove that a failure is never acknowledged.
//!
//! Health: whether chunk installs are failing (the head then grows until
//! the writer stops taking appends), how often the compactor was
//! restarted after a panic, and whether free disk space is under the
//! reserve (new telemetry is refused then, so compaction, the final flush
//! and the next start always have room). `/ready` and `/metrics` read it.
//!
//! Faults are plain switches read on the store's own paths (a relaxed
//! atomic load each); nothing outside tests sets them.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Switches for injected failures. Each stays on until switched off.
#[derive(Default)]
pub struct Faults {
    /// Every group commit fails as an I/O error would.
    pub commit: AtomicBool,
    /// Every chunk install fails.
    pub install: AtomicBool,
    /// A flush install takes no step after its first while set (the
    /// writer goes on committing): lets tests see a flush half installed.
    pub install_hold: AtomicBool,
    /// The next compaction round panics (the switch turns itself off).
    pub compactor_panic: AtomicBool,
    /// Free space reads as zero, as on a full disk.
    pub disk_full: AtomicBool,
}

impl Faults {
    pub fn set(flag: &AtomicBool, on: bool) {
        flag.store(on, Ordering::SeqCst);
    }

    pub(crate) fn on(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    pub(crate) fn injected(what: &str) -> super::StoreError {
        super::StoreError::Io(std::io::Error::other(format!("injected fault: {what}")))
    }
}

/// The store's view of itself for `/ready` and `/metrics`.
pub struct Health {
    /// Consecutive failed flushes (0: the last one succeeded).
    pub flush_failures: AtomicU64,
    pub flush_failures_total: AtomicU64,
    pub compactor_restarts: AtomicU64,
    /// Free bytes on the data directory's file system at the last look.
    pub free_bytes: AtomicU64,
    /// Below this many free bytes, telemetry is refused.
    pub reserve_bytes: AtomicU64,
    pub low_space: AtomicBool,
    /// Appends refused for lack of space.
    pub refused_low_space: AtomicU64,
    last_error: Mutex<Option<String>>,
    checked_at: Mutex<Option<Instant>>,
    injected_last: AtomicBool,
    /// Epoch µs of the last successful flush (0: none yet).
    pub last_flush_us: AtomicI64,
    /// PostgreSQL ended the writer's connection and another node holds
    /// the store's writer lock now: this node must stop writing.
    pub writer_lock_lost: AtomicBool,
}

/// How often free space is measured on the write path.
const SPACE_CHECK: Duration = Duration::from_millis(250);

impl Health {
    pub fn new() -> Health {
        Health {
            flush_failures: AtomicU64::new(0),
            writer_lock_lost: AtomicBool::new(false),
            flush_failures_total: AtomicU64::new(0),
            compactor_restarts: AtomicU64::new(0),
            free_bytes: AtomicU64::new(u64::MAX),
            reserve_bytes: AtomicU64::new(0),
            low_space: AtomicBool::new(false),
            refused_low_space: AtomicU64::new(0),
            last_error: Mutex::new(None),
            checked_at: Mutex::new(None),
            injected_last: AtomicBool::new(false),
            last_flush_us: AtomicI64::new(0),
        }
    }

    pub fn flush_ok(&self, now_us: i64) {
        self.flush_failures.store(0, Ordering::SeqCst);
        self.last_flush_us.store(now_us, Ordering::Relaxed);
    }

    pub fn flush_failed(&self, error: &str) {
        self.flush_failures.fetch_add(1, Ordering::SeqCst);
        self.flush_failures_total.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("health") = Some(error.to_string());
    }

    pub fn flushing_ok(&self) -> bool {
        self.flush_failures.load(Ordering::SeqCst) == 0
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("health").clone()
    }

    /// Measures free space (at most every 250 ms unless `force`) and
    /// returns whether it is under the reserve.
    pub fn check_space(&self, dir: &Path, faults: &Faults, force: bool) -> bool {
        let injected = Faults::on(&faults.disk_full);
        if !injected {
            let mut at = self.checked_at.lock().expect("health");
            let fresh = at.is_some_and(|t| t.elapsed() < SPACE_CHECK);
            if !force && fresh && !self.injected_last.load(Ordering::Relaxed) {
                return self.low_space.load(Ordering::Relaxed);
            }
            *at = Some(Instant::now());
        }
        self.injected_last.store(injected, Ordering::Relaxed);
        let free = if injected {
            0
        } else {
            free_space(dir).unwrap_or(u64::MAX)
        };
        self.free_bytes.store(free, Ordering::Relaxed);
        let low = free < self.reserve_bytes.load(Ordering::Relaxed);
        let was = self.low_space.swap(low, Ordering::Relaxed);
        if low != was {
            if low {
                tracing::error!(
                    free_bytes = free,
                    reserve_bytes = self.reserve_bytes.load(Ordering::Relaxed),
                    "free disk space is under store.min_free: refusing new telemetry until space is freed"
                );
            } else {
                tracing::warn!(
                    free_bytes = free,
                    "free disk space is back over store.min_free: taking telemetry again"
                );
            }
        }
        low
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

/// `(available, total)` bytes of the file system holding `dir`, or of its
/// nearest existing ancestor (before the directory is created).
fn statvfs(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let dir = dir.ancestors().find(|d| d.exists())?;
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    let frsize = s.f_frsize as u64;
    (r == 0).then(|| (s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

/// Free bytes available to this process on the file system holding `dir`.
pub fn free_space(dir: &Path) -> Option<u64> {
    statvfs(dir).map(|(free, _)| free)
}

/// Total bytes of the file system holding `dir`.
pub fn total_space(dir: &Path) -> Option<u64> {
    statvfs(dir).map(|(_, total)| total)
}

/// `store.min_free`: bytes ("64MB", "1GB", a plain number) or a share of
/// the file system ("2%"). The larger of the two when both are given as
/// "64MB,2%".
pub fn parse_min_free(s: &str, total: Option<u64>) -> Result<u64, String> {
    let mut out = 0u64;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let v = if let Some(p) = part.strip_suffix('%') {
            let pct: f64 = p
                .trim()
                .parse()
                .map_err(|_| format!("`{part}` is not a percentage"))?;
            if !(0.0..=50.0).contains(&pct) {
                return Err(format!("`{part}` must be between 0% and 50%"));
            }
            total.map(|t| (t as f64 * pct / 100.0) as u64).unwrap_or(0)
        } else {
            parse_bytes(part)?
        };
        out = out.max(v);
    }
    Ok(out)
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 64MB or 2%)"))?;
    let mul: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" | "K" | "KIB" => 1 << 10,
        "MB" | "M" | "MIB" => 1 << 20,
        "GB" | "G" | "GIB" => 1 << 30,
        "TB" | "T" | "TIB" => 1 << 40,
        u => return Err(format!("`{u}` is not a size unit (B, KB, MB, GB, TB)")),
    };
    Ok((n * mul as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_free_takes_sizes_and_shares() {
        assert_eq!(parse_min_free("64MB", None).unwrap(), 64 << 20);
        assert_eq!(parse_min_free("0", None).unwrap(), 0);
        assert_eq!(parse_min_free("2%", Some(1000)).unwrap(), 20);
        assert_eq!(parse_min_free("64MB,2%", Some(100 << 30)).unwrap(), 2 << 30);
        assert!(parse_min_free("lots", None)
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_min_free("80%", None).unwrap_err().contains("between"));
        assert!(parse_min_free("3XB", None).unwrap_err().contains("unit"));
    }

    #[test]
    fn free_space_reads_the_file_system() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_space(d.path()).unwrap() > 0);
        assert!(total_space(d.path()).unwrap() >= free_space(d.path()).unwrap());
    }
}
