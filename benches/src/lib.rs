//! Benchmarks of the milter crates: see benches/README.md.

/// What the benchmark programs read from `/proc`.
pub mod proc {
    use std::process::Command;

    /// Clock ticks per second, the unit of `/proc/*/stat` times.
    fn clock_ticks() -> f64 {
        static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
        *TICKS.get_or_init(|| {
            Command::new("getconf")
                .arg("CLK_TCK")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(100.0)
        })
    }

    /// utime + stime of a `stat` file (`/proc/PID/stat`,
    /// `/proc/thread-self/stat`), in seconds.
    pub fn cpu_seconds(stat_path: &str) -> Option<f64> {
        let s = std::fs::read_to_string(stat_path).ok()?;
        let rest = s.get(s.rfind(')')? + 2..)?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ") ": state is field 3; utime and stime are fields 14 and 15.
        let ut: f64 = f.get(11)?.parse().ok()?;
        let st: f64 = f.get(12)?.parse().ok()?;
        Some((ut + st) / clock_ticks())
    }

    /// The number on the `key:` line of a `status` file (`VmRSS` in kB,
    /// `voluntary_ctxt_switches`, ...).
    pub fn status_field(status_path: &str, key: &str) -> Option<u64> {
        let s = std::fs::read_to_string(status_path).ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    }
}
