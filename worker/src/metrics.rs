//! The worker's Prometheus metrics (`--metrics-listen`): its input cache (hits, misses, bytes
//! downloaded, evictions, size), its transfers (bytes and seconds up and down, so a dashboard
//! divides one rate by the other for throughput), the tasks it ran by outcome and how long they
//! took, and its slots. One registry; the cache and the uploads count into counters they hold
//! (clones of the registered ones), the gauges are set when a scrape asks. No label names a
//! job, a task or a frame; a worker is told apart by the scrape target, not by a label.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type FloatCounter = Counter<f64, AtomicU64>;

/// What the input cache counts; the cache holds these, the registry holds clones.
#[derive(Debug, Clone, Default)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    /// Bytes downloaded from the store into the cache (misses).
    pub download_bytes: Counter,
    /// Seconds spent downloading them.
    pub download_seconds: FloatCounter,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// How a task run ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy)]
pub enum RunOutcome {
    /// Rendered and committed here.
    Completed,
    /// Its output was already committed: nothing rendered.
    Cached,
    Failed,
    /// Canceled or handed back.
    Stopped,
    /// Not run: settled already, blocklisted, or does not fit this worker.
    Skipped,
}

impl RunOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Completed => "completed",
            RunOutcome::Cached => "cached",
            RunOutcome::Failed => "failed",
            RunOutcome::Stopped => "stopped",
            RunOutcome::Skipped => "skipped",
        }
    }
}

fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 16))
}

/// Every series a worker serves.
pub struct WorkerMetrics {
    registry: Registry,
    upload_bytes: Counter,
    upload_seconds: FloatCounter,
    uploads: Counter,
    tasks: Family<OutcomeLabel, Counter>,
    task_seconds: Family<OutcomeLabel, Histogram, fn() -> Histogram>,
    slots: Gauge,
    busy_slots: Gauge,
    cache_used: Gauge,
    cache_max: Gauge,
}

impl WorkerMetrics {
    pub fn new(cache: &CacheCounters) -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("suanli_worker"),
            upload_bytes: Counter::default(),
            upload_seconds: FloatCounter::default(),
            uploads: Counter::default(),
            tasks: Family::default(),
            task_seconds: Family::new_with_constructor(run_histogram),
            slots: Gauge::default(),
            busy_slots: Gauge::default(),
            cache_used: Gauge::default(),
            cache_max: Gauge::default(),
        };
        let r = &mut m.registry;
        r.register(
            "cache_hits",
            "Input blobs found in the local cache",
            cache.hits.clone(),
        );
        r.register(
            "cache_misses",
            "Input blobs downloaded from the store",
            cache.misses.clone(),
        );
        r.register(
            "download_bytes",
            "Bytes downloaded from the store into the input cache",
            cache.download_bytes.clone(),
        );
        r.register(
            "download_seconds",
            "Seconds spent downloading inputs (throughput: rate of bytes over rate of seconds)",
            cache.download_seconds.clone(),
        );
        r.register(
            "cache_evictions",
            "Blobs evicted from the input cache",
            cache.evictions.clone(),
        );
        r.register(
            "cache_evicted_bytes",
            "Bytes evicted from the input cache",
            cache.evicted_bytes.clone(),
        );
        r.register(
            "cache_used_bytes",
            "Bytes the input cache holds",
            m.cache_used.clone(),
        );
        r.register(
            "cache_max_bytes",
            "The input cache's bound",
            m.cache_max.clone(),
        );
        r.register(
            "upload_bytes",
            "Bytes of rendered frames uploaded to the store",
            m.upload_bytes.clone(),
        );
        r.register(
            "upload_seconds",
            "Seconds spent uploading frames (throughput: rate of bytes over rate of seconds)",
            m.upload_seconds.clone(),
        );
        r.register("uploads", "Frames uploaded to the store", m.uploads.clone());
        r.register(
            "tasks",
            "Task messages this worker handled, by outcome (completed, cached, failed, stopped, skipped)",
            m.tasks.clone(),
        );
        r.register(
            "task_seconds",
            "Wall time of task runs on this worker, from start to report, by outcome",
            m.task_seconds.clone(),
        );
        r.register(
            "slots",
            "Tasks this worker renders at once",
            m.slots.clone(),
        );
        r.register(
            "busy_slots",
            "Tasks this worker is rendering now",
            m.busy_slots.clone(),
        );
        // Every outcome is shown from the start, at 0.
        for outcome in [
            RunOutcome::Completed,
            RunOutcome::Cached,
            RunOutcome::Failed,
            RunOutcome::Stopped,
            RunOutcome::Skipped,
        ] {
            let _ = m.tasks.get_or_create(&OutcomeLabel {
                outcome: outcome.as_str().into(),
            });
        }
        m
    }

    /// The page a scrape gets, with the gauges set to these figures.
    pub fn encode(&self, slots: u32, busy: usize, cache_used: u64, cache_max: u64) -> String {
        self.slots.set(i64::from(slots));
        self.busy_slots.set(busy as i64);
        self.cache_used.set(cache_used as i64);
        self.cache_max.set(cache_max as i64);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    pub fn uploaded(&self, bytes: u64, seconds: f64) {
        self.uploads.inc();
        self.upload_bytes.inc_by(bytes);
        self.upload_seconds.inc_by(seconds);
    }

    /// One task message handled; `seconds` is its run's wall time (none when it never ran).
    pub fn task_ended(&self, outcome: RunOutcome, seconds: Option<f64>) {
        let label = OutcomeLabel {
            outcome: outcome.as_str().into(),
        };
        self.tasks.get_or_create(&label).inc();
        if let Some(s) = seconds {
            self.task_seconds.get_or_create(&label).observe(s);
        }
    }
}
