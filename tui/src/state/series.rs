//! What the terminal remembers over time, since the farm reports only the present: slot
//! utilization and frames rendered per region in fixed buckets, and running means of task
//! durations (for ETAs).

use std::collections::VecDeque;

/// Width of one history bucket (utilization, throughput).
pub const BUCKET_MS: u64 = 5_000;
/// History kept: ten minutes of buckets.
pub const HISTORY_BUCKETS: usize = 120;
/// Buckets behind the utilization gauge and frames per minute: the last minute.
pub const MINUTE_BUCKETS: usize = 12;

/// One history bucket: two sums (busy and live slot samples, or frames and nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Bucket {
    pub id: u64,
    pub a: f64,
    pub b: f64,
}

/// A quantity summed per [`BUCKET_MS`], the last [`HISTORY_BUCKETS`] kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    buckets: VecDeque<Bucket>,
}

impl Series {
    pub fn add(&mut self, at_ms: u64, a: f64, b: f64) {
        let id = at_ms / BUCKET_MS;
        if let Some(bucket) = self.buckets.iter_mut().rev().find(|x| x.id == id) {
            bucket.a += a;
            bucket.b += b;
            return;
        }
        if self.buckets.back().is_some_and(|last| last.id > id) {
            // Older than the newest bucket and not kept: too late to count.
            if self.buckets.front().is_some_and(|first| first.id > id) {
                return;
            }
            let at = self.buckets.iter().position(|x| x.id > id).unwrap_or(0);
            self.buckets.insert(at, Bucket { id, a, b });
        } else {
            self.buckets.push_back(Bucket { id, a, b });
        }
        while self.buckets.len() > HISTORY_BUCKETS {
            self.buckets.pop_front();
        }
    }

    /// The last `n` buckets up to the one holding `now_ms`, oldest first; `None` where
    /// nothing was recorded.
    pub fn window(&self, now_ms: u64, n: usize) -> Vec<Option<Bucket>> {
        let last = now_ms / BUCKET_MS;
        let first = (last + 1).saturating_sub(n as u64);
        let mut out = vec![None; n];
        let offset = n as u64 - (last + 1 - first);
        for b in self.buckets.iter().rev() {
            if b.id < first {
                break;
            }
            if b.id <= last {
                out[(offset + b.id - first) as usize] = Some(*b);
            }
        }
        out
    }

    /// Sums of the last `n` buckets up to `now_ms`.
    pub fn sum(&self, now_ms: u64, n: usize) -> (f64, f64) {
        let last = now_ms / BUCKET_MS;
        let first = (last + 1).saturating_sub(n as u64);
        self.buckets
            .iter()
            .filter(|b| (first..=last).contains(&b.id))
            .fold((0.0, 0.0), |(a, b), x| (a + x.a, b + x.b))
    }
}

/// What the terminal remembers about a region between polls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegionHistory {
    /// One sample a second: `a` busy slots, `b` live slots.
    pub util: Series,
    /// Frames rendered (cache hits left out): `a`.
    pub frames: Series,
}

/// A running mean of task durations (seconds).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Mean {
    pub sum: f64,
    pub n: u32,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.sum += v;
        self.n += 1;
    }

    pub fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}
