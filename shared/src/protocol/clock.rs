//! The wall clock every record and event is stamped with, so all roles agree on its unit.

/// Milliseconds since the Unix epoch (wall clock, for records and events).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
