//! What the benchmarks read about a proxy process from `/proc`: CPU time (utime and stime from
//! `/proc/PID/stat`) and resident memory (`VmRSS` and `RssAnon` from `/proc/PID/status`); and
//! about the whole machine (`/proc/stat`): the busy CPU time of all its processes, pgbench and
//! PostgreSQL included, and its context switches.

use std::time::Duration;

/// CPU time a process has used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTime {
    /// User and system time.
    pub total: Duration,
    /// User time: the process's own code (the rest is the kernel's work in its syscalls).
    pub user: Duration,
}

impl CpuTime {
    /// What was used between `self` and the later reading `after`.
    pub fn until(self, after: CpuTime) -> CpuTime {
        CpuTime {
            total: after.total.saturating_sub(self.total),
            user: after.user.saturating_sub(self.user),
        }
    }
}

/// CPU time the process has used so far, or `None` when it cannot be read.
pub fn cpu_time(pid: u32) -> Option<CpuTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (user, system) = parse_stat_cpu_ticks(&stat)?;
    let hz = clock_ticks_per_second();
    Some(CpuTime {
        total: ticks_to_duration(user + system, hz),
        user: ticks_to_duration(user, hz),
    })
}

/// The busy CPU time of every core so far (user, nice, system, irq, softirq and steal) and the
/// context switches since boot: between two readings, what a run cost the machine as a whole.
/// A proxy can cost its neighbours too (how it wakes pgbench and PostgreSQL), so a TPS ratio
/// follows this figure more than the proxy's own CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTime {
    pub busy: Duration,
    pub switches: u64,
}

impl MachineTime {
    /// What was used between `self` and the later reading `after`.
    pub fn until(self, after: MachineTime) -> MachineTime {
        MachineTime {
            busy: after.busy.saturating_sub(self.busy),
            switches: after.switches.saturating_sub(self.switches),
        }
    }
}

/// The machine's busy time and context switches so far, or `None` when `/proc/stat` cannot be
/// read.
pub fn machine_time() -> Option<MachineTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, switches) = parse_proc_stat(&stat)?;
    Some(MachineTime {
        busy: ticks_to_duration(busy, clock_ticks_per_second()),
        switches,
    })
}

/// `(busy ticks, context switches)` from the text of `/proc/stat`: the first `cpu` line's user,
/// nice, system, irq, softirq and steal (idle and iowait are not busy; guest time is already in
/// user), and the `ctxt` line.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let mut lines = stat.lines();
    let cpu = lines.next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = cpu
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| ticks.get(i).copied().unwrap_or(0))
        .sum();
    let switches = lines.find_map(|l| l.strip_prefix("ctxt ")?.trim().parse().ok())?;
    Some((busy, switches))
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "VmRSS")
}

/// The anonymous part of the resident set in KiB (`RssAnon`): the heap and stacks, what the
/// process itself allocated. The rest of `VmRSS` is mostly the binary's code pages, which
/// grow with the binary and are shared between processes running it.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_field_kib(pid, "RssAnon")
}

fn status_field_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, field)
}

/// `(utime, stime)` in clock ticks from the text of `/proc/PID/stat`. The command name (field
/// 2) is in parentheses and may itself hold spaces or parentheses, so fields are counted from
/// the last `)`: utime and stime are fields 14 and 15.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field n is fields[n - 3].
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some((utime, stime))
}

/// A `Name:  123 kB` line of `/proc/PID/status`, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = rest.split_whitespace();
        let value = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(value)
    })
}

fn ticks_to_duration(ticks: u64, per_second: u64) -> Duration {
    let per_second = per_second.max(1);
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// `sysconf(_SC_CLK_TCK)`, the unit of the times in `/proc/PID/stat` (100 on Linux).
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (shard gate) (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 75 0 0 20 0 5 0 123456 1000000 2000 18446744073709551615";

    #[test]
    fn stat_cpu_ticks_after_odd_comm() {
        assert_eq!(parse_stat_cpu_ticks(STAT), Some((250, 75)));
        assert_eq!(parse_stat_cpu_ticks("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tshardgate\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(10240));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20480));
        assert_eq!(parse_status_kib(status, "Threads"), None);
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_used_between_two_readings() {
        let at = |total, user| CpuTime {
            total: Duration::from_millis(total),
            user: Duration::from_millis(user),
        };
        assert_eq!(at(100, 40).until(at(350, 90)), at(250, 50));
    }

    #[test]
    fn machine_busy_time_and_switches() {
        let stat = "cpu  100 5 40 9000 7 1 2 3 0 0\ncpu0 50 2 20 4500 3 0 1 1 0 0\n\
                    intr 1 2 3\nctxt 123456\nbtime 1\n";
        assert_eq!(parse_proc_stat(stat), Some((151, 123456)));
        assert_eq!(parse_proc_stat("cpu  1 2 3\n"), None);
        assert_eq!(parse_proc_stat("intr 1\nctxt 5\n"), None);
        assert!(machine_time().is_some());
    }

    #[test]
    fn ticks_convert() {
        assert_eq!(ticks_to_duration(250, 100), Duration::from_millis(2500));
        assert_eq!(ticks_to_duration(3, 1000), Duration::from_millis(3));
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|k| k > 0));
        assert!(cpu_time(pid).is_some_and(|t| t.user <= t.total));
    }
}
