//! Resident-set figures of this process, from `/proc/self/status` (Linux).

/// Peak resident set (`VmHWM`) in MiB, if readable.
pub fn peak_rss_mb() -> Option<f64> {
    field_kb("VmHWM").map(|kb| kb as f64 / 1024.0)
}

/// Current resident set (`VmRSS`) in MiB, if readable.
pub fn rss_mb() -> Option<f64> {
    field_kb("VmRSS").map(|kb| kb as f64 / 1024.0)
}

fn field_kb(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Resets the peak (`VmHWM`) to the current resident set, so a measurement's own buffers do not
/// count in what follows; false where the kernel does not allow it.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
