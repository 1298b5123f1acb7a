//! Server-side resource accounting from /proc (proc(5)): CPU seconds of a process tree
//! (utime+stime of every live process under the root, all threads included) and memory
//! (VmHWM of each process, and the proportional set size summed over the tree, which
//! counts pages shared between Kamailio's forked children once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// `root` and all its live descendants.
pub fn tree_pids(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(st) = stat_fields(pid) {
                if let Some(ppid) = st.get(1).and_then(|s| s.parse::<u32>().ok()) {
                    children.entry(ppid).or_default().push(pid);
                }
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c);
        }
        i += 1;
    }
    out
}

/// Fields of /proc/pid/stat after the `(comm)`: index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) consumed so far by `pid` (all its threads).
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid)
        .and_then(|f| {
            // utime is field 14, stime 15 → indices 11, 12 after the comm.
            let u: u64 = f.get(11)?.parse().ok()?;
            let s: u64 = f.get(12)?.parse().ok()?;
            Some((u + s) as f64 / clk_tck())
        })
        .unwrap_or(0.0)
}

/// CPU seconds of the whole process tree under `root`.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    tree_pids(root).into_iter().map(cpu_seconds).sum()
}

/// Seconds the threads of `pid` have spent runnable but waiting for a CPU (the second field
/// of `/proc/<pid>/task/<tid>/schedstat`, in ns; needs CONFIG_SCHED_INFO, else 0). For a
/// pinned, busy worker this is the time other tasks on its core took from it.
pub fn runqueue_wait_seconds(pid: u32) -> f64 {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    rd.flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>() as f64
        / 1e9
}

fn status_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident set (VmHWM) of one process, KiB.
pub fn hwm_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

/// Proportional set size of one process, KiB (shared pages divided among sharers).
pub fn pss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Current memory of the tree: sum of PSS (the honest total for forked servers).
pub fn tree_pss_kb(root: u32) -> u64 {
    tree_pids(root).into_iter().map(pss_kb).sum()
}

/// Samples the tree's PSS sum in the background and keeps the peak.
pub struct MemMonitor {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MemMonitor {
    pub fn start(root: u32, every: Duration) -> MemMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Relaxed) {
                p.fetch_max(tree_pss_kb(root), Relaxed);
                let mut slept = Duration::ZERO;
                while slept < every && !s.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    slept += Duration::from_millis(20);
                }
            }
        });
        MemMonitor {
            stop,
            peak,
            handle: Some(handle),
        }
    }

    pub fn peak_kb(&self) -> u64 {
        self.peak.load(Relaxed)
    }

    /// Stops sampling (after one last sample) and returns the peak.
    pub fn finish(mut self, root: u32) -> u64 {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.peak.fetch_max(tree_pss_kb(root), Relaxed);
        self.peak_kb()
    }
}

impl Drop for MemMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_measurable() {
        let me = std::process::id();
        // Burn a little CPU so utime is visibly non-zero at 100 Hz ticks.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(60) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me) > 0.0);
        assert!(hwm_kb(me) > 0);
        assert!(pss_kb(me) > 0);
        assert!(tree_pids(me).contains(&me));
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
    }
}
