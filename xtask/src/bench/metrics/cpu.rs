//! CPU time of the whole machine from /proc/stat. The packet path of these
//! labs runs in softirq and in the senders' and receivers' system calls on
//! every CPU, so per-process accounting would miss most of it; the machine
//! totals catch all of it (and, on a busy machine, other work too, which is
//! why cells are interleaved).
use anyhow::Context;

/// Cumulative busy CPU time over all CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq + steal, in clock ticks.
    busy_ticks: u64,
}

impl CpuTimes {
    /// Reads the `cpu` line of /proc/stat.
    pub fn now() -> anyhow::Result<CpuTimes> {
        let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        parse(&text).context("no `cpu` totals line in /proc/stat")
    }

    /// Busy CPU time since `earlier`, in nanoseconds.
    pub fn busy_ns_since(&self, earlier: &CpuTimes) -> f64 {
        // SAFETY: plain libc call.
        let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 * 1e9 / ticks_per_second
    }
}

fn parse(text: &str) -> Option<CpuTimes> {
    let line = text.lines().find(|line| line.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already part of user time.
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(CpuTimes { busy_ticks: field(0) + field(1) + field(2) + field(5) + field(6) + field(7) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let text = "cpu  100 5 50 1000 7 3 40 2 9 0\ncpu0 1 2 3 4 5 6 7 8 9 0\n";
        assert_eq!(parse(text), Some(CpuTimes { busy_ticks: 100 + 5 + 50 + 3 + 40 + 2 }));
    }
}
