//! CPU time and memory of a process, read from Linux's `/proc`.
//!
//! Peak resident memory is the kernel's high-water mark (`VmHWM`), which can be reset by writing
//! `5` to `/proc/PID/clear_refs`, so a scenario can measure its run without its set-up.

use std::time::Duration;

/// Clock ticks per second for `/proc/PID/stat` times; 100 on every Linux Herald supports.
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time consumed by the process so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after it are space-separated.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Duration::from_secs_f64(ticks / TICKS_PER_SECOND))
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Current resident memory in bytes.
pub fn rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS").map(|kib| kib * 1024)
}

/// Peak resident memory in bytes since start or the last [`reset_peak`].
pub fn peak_rss(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM").map(|kib| kib * 1024)
}

/// Reset the peak to the current resident memory.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

pub fn own_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = own_pid();
        let busy: u64 = (0..5_000_000u64).map(|i| i ^ (i >> 3)).sum();
        assert!(busy > 0);
        assert!(cpu_time(pid).is_some());
        let rss = rss(pid).unwrap();
        assert!(rss > 1024 * 1024);
        assert!(peak_rss(pid).unwrap() >= rss);
    }
}
