//! What every long transfer shares, uploads at submit and downloads on workers alike: a rate
//! cap (`--max-upload-rate`, `--max-download-rate`) and the progress figures people watch
//! (bytes, rate, time left). How progress is shown is the caller's (a terminal line, a log).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A cap on bytes per second shared by every transfer that holds a clone: each transfer of
/// `n` bytes books the link for `n / rate` seconds after the previous booking and waits until
/// its booking ends before it goes. So `total` bytes through one cap take at least
/// `total / rate`, and transfers running at once share the cap instead of each taking it.
#[derive(Debug, Clone)]
pub struct RateLimit {
    bytes_per_sec: u64,
    /// When the link is next free.
    next: Arc<Mutex<Option<Instant>>>,
}

impl RateLimit {
    /// A cap of `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            next: Arc::default(),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `n` more bytes fit under the cap.
    pub async fn acquire(&self, n: u64) {
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let until = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // An idle link does not save up: a booking starts no earlier than now.
            let start = next.filter(|t| *t > now).unwrap_or(now);
            let end = start + cost;
            *next = Some(end);
            end
        };
        tokio::time::sleep_until(until).await;
    }
}

/// A limit that may be absent: `None` means no cap.
pub async fn acquire(limit: Option<&RateLimit>, n: u64) {
    if let Some(limit) = limit {
        limit.acquire(n).await;
    }
}

/// Parses a rate such as `20MiB`, `500KiB`, `1GiB`, `100MB` or a plain number of bytes, per
/// second. Refuses 0 (say nothing for no cap).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim().trim_end_matches("/s");
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("bad rate '{text}': give a number and a unit like 20MiB or 500KB"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "bad rate '{text}': unknown unit '{other}' (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let rate = (num * mult) as u64;
    if rate == 0 {
        return Err(format!(
            "bad rate '{text}': must be above zero (leave the flag out for no cap)"
        ));
    }
    Ok(rate)
}

/// A transfer's figures from one start instant, shared by the tasks that move the bytes:
/// bytes done (checked, skipped because the other side has them, or moved) of the total, and
/// bytes actually moved, whose rate is the link's. What a progress line shows.
#[derive(Debug)]
pub struct Progress {
    start: Instant,
    total: AtomicU64,
    done: AtomicU64,
    moved: AtomicU64,
}

impl Progress {
    pub fn new(total: u64) -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            moved: AtomicU64::new(0),
        })
    }

    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes dealt with without moving them (the other side had them).
    pub fn skipped(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` bytes moved over the link.
    pub fn moved(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.moved.fetch_add(n, Ordering::Relaxed);
    }

    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn moved_bytes(&self) -> u64 {
        self.moved.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Bytes moved per second since the start.
    pub fn rate(&self) -> f64 {
        let secs = self.start.elapsed().as_secs_f64();
        if secs <= 0.0 {
            0.0
        } else {
            self.moved_bytes() as f64 / secs
        }
    }

    /// `1.2 GiB of 2.0 GiB, 12.0 MiB moved at 30.1 MiB/s, 1m07s left`.
    pub fn line(&self) -> String {
        let (done, total) = (self.done(), self.total());
        let secs = self.start.elapsed().as_secs_f64();
        let eta = if done > 0 && total > done && secs > 0.0 {
            let per_sec = done as f64 / secs;
            format!(
                ", {} left",
                fmt_duration(Duration::from_secs_f64((total - done) as f64 / per_sec))
            )
        } else {
            String::new()
        };
        format!(
            "{} of {}, {} moved at {}/s{eta}",
            fmt_bytes(done),
            fmt_bytes(total),
            fmt_bytes(self.moved_bytes()),
            fmt_bytes(self.rate() as u64)
        )
    }
}

/// `512 B`, `3.0 KiB`, `12.5 MiB`, `2.0 GiB`.
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_capped_transfer_takes_at_least_size_over_rate() {
        let limit = RateLimit::new(1_000_000);
        let start = Instant::now();
        // Four transfers at once share the cap: 4 MB at 1 MB/s.
        let chunks = (0..4).map(|_| {
            let l = limit.clone();
            async move { l.acquire(1_000_000).await }
        });
        futures::future::join_all(chunks).await;
        assert!(
            start.elapsed() >= Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_link_saves_no_credit() {
        let limit = RateLimit::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        limit.acquire(2_000_000).await;
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[test]
    fn rates_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_rate("20MiB").unwrap(), 20 * 1024 * 1024);
        assert_eq!(parse_rate("500KB").unwrap(), 500_000);
        assert_eq!(parse_rate("1.5GB/s").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("4096").unwrap(), 4096);
        assert!(parse_rate("0").unwrap_err().contains("above zero"));
        assert!(parse_rate("fast").unwrap_err().contains("bad rate"));
        assert!(parse_rate("3 parsecs")
            .unwrap_err()
            .contains("unknown unit"));
    }

    #[test]
    fn progress_lines_show_bytes_rate_and_time_left() {
        let p = Progress::new(2 * 1024 * 1024 * 1024);
        p.skipped(256 * 1024 * 1024);
        p.moved(256 * 1024 * 1024);
        let line = p.line();
        assert!(
            line.starts_with("512.0 MiB of 2.0 GiB, 256.0 MiB moved at "),
            "{line}"
        );
        assert_eq!(fmt_bytes(1023), "1023 B");
    }
}
