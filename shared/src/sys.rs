//! Facts about this host that several roles record: its name (in worker records and the
//! coordinator lease) and whether a process id is alive here (to take over a dead holder's
//! record at once instead of waiting for it to expire).

/// This host's name, or `unknown` when the kernel does not say.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether a process with this pid runs on this host (it may be an unrelated one that reused
/// the pid).
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_the_host_has_a_name() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX));
        assert!(!hostname().is_empty());
    }
}
