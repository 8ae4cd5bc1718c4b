//! The coordinator's Prometheus metrics (`--metrics-listen`): one registry, the series it holds
//! and the small calls the actor makes to keep them. Gauges (jobs and tasks by state, queue
//! depth, live and busy slots per region, the lease) are recomputed from the actor's state when
//! a scrape asks, so they cost nothing between scrapes; counters and histograms (latencies,
//! failures by reason class, retries, redeliveries, bytes, cost, energy, carbon) follow every
//! task record change through [`Metrics::task_changed`], the one hook in `set_task`. Labels are
//! bounded sets (state, region, renderer kind, reason class, currency): never a job, task,
//! worker or frame. Counters count since this coordinator started, as Prometheus expects.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use suanli_shared::protocol::{
    Failure, JobState, RegionFigures, TaskRecord, TaskState, WorkerInfo, WorkerState,
};
use suanli_shared::regions::RegionCatalog;
use suanli_shared::JobId;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionLabel {
    pub region: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RendererRegion {
    pub renderer: String,
    pub region: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionDirection {
    pub region: String,
    pub direction: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegionCurrency {
    pub region: String,
    pub currency: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type Histograms = Family<RendererRegion, Histogram, fn() -> Histogram>;

/// Release to start: a queue wait, from tens of milliseconds to minutes.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.025, 2.0, 16))
}

/// A task's render: from a quarter second to hours.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 16))
}

/// Release times of tasks queued and not started, kept for the latency histogram; bounded so a
/// farm whose tasks never start cannot grow it without end.
const MAX_RELEASES_TRACKED: usize = 1 << 20;

/// Every series the coordinator serves, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    jobs: Family<StateLabel, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    queue_depth: Family<RegionLabel, Gauge>,
    slots: Family<RegionLabel, Gauge>,
    busy_slots: Family<RegionLabel, Gauge>,
    workers: Family<RegionLabel, Gauge>,
    lease_holder: Gauge,
    release_to_start: Histograms,
    task_duration: Histograms,
    tasks_completed: Family<RendererRegion, Counter>,
    failures: Family<ReasonLabel, Counter>,
    retries: Counter,
    redeliveries: Counter,
    rereleases: Family<ReasonLabel, Counter>,
    transfer_bytes: Family<RegionDirection, Counter>,
    cost: Family<RegionCurrency, FloatCounter>,
    energy: Family<RegionLabel, FloatCounter>,
    carbon: Family<RegionLabel, FloatCounter>,
    released_at: Mutex<HashMap<(JobId, u32), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("suanli"),
            jobs: Family::default(),
            tasks: Family::default(),
            queue_depth: Family::default(),
            slots: Family::default(),
            busy_slots: Family::default(),
            workers: Family::default(),
            lease_holder: Gauge::default(),
            release_to_start: Family::new_with_constructor(latency_histogram),
            task_duration: Family::new_with_constructor(duration_histogram),
            tasks_completed: Family::default(),
            failures: Family::default(),
            retries: Counter::default(),
            redeliveries: Counter::default(),
            rereleases: Family::default(),
            transfer_bytes: Family::default(),
            cost: Family::default(),
            energy: Family::default(),
            carbon: Family::default(),
            released_at: Mutex::new(HashMap::new()),
        };
        let r = &mut m.registry;
        r.register(
            "jobs",
            "Jobs the coordinator holds, by state",
            m.jobs.clone(),
        );
        r.register(
            "tasks",
            "Tasks of the jobs the coordinator holds, by state (done: rendered; cached: from the cache)",
            m.tasks.clone(),
        );
        r.register(
            "queue_depth",
            "Tasks released to a region's queue and not started",
            m.queue_depth.clone(),
        );
        r.register(
            "region_slots",
            "Render slots of a region's live workers",
            m.slots.clone(),
        );
        r.register(
            "region_busy_slots",
            "Render slots of a region's live workers that are rendering",
            m.busy_slots.clone(),
        );
        r.register(
            "region_workers",
            "Live workers of a region",
            m.workers.clone(),
        );
        r.register(
            "lease_holder",
            "1 while this coordinator holds the lease and serves, 0 while it stands by",
            m.lease_holder.clone(),
        );
        r.register(
            "task_release_to_start_seconds",
            "Time from a task's release onto its region's queue to its start on a worker",
            m.release_to_start.clone(),
        );
        r.register(
            "task_duration_seconds",
            "Wall time of rendered tasks, from start to commit",
            m.task_duration.clone(),
        );
        r.register(
            "tasks_completed",
            "Tasks rendered and committed",
            m.tasks_completed.clone(),
        );
        r.register(
            "task_failures",
            "Failed task runs, by reason class",
            m.failures.clone(),
        );
        r.register(
            "task_retries",
            "Failed runs put back in the backlog as a new attempt",
            m.retries.clone(),
        );
        r.register(
            "task_redeliveries",
            "Runs started again by the queue without a new attempt (a worker went silent past the ack wait)",
            m.redeliveries.clone(),
        );
        r.register(
            "task_rereleases",
            "Running or queued tasks taken back and released again, by reason (worker_restart, region_lost)",
            m.rereleases.clone(),
        );
        r.register(
            "transfer_bytes",
            "Bytes moved per region: in (inputs downloaded into the region), out (frames uploaded from it)",
            m.transfer_bytes.clone(),
        );
        r.register(
            "cost",
            "Cost of committed tasks at the ledger's prices, in the catalog's currency",
            m.cost.clone(),
        );
        r.register(
            "energy_joules",
            "Facility energy of committed tasks (the ledger's kWh, in joules)",
            m.energy.clone(),
        );
        r.register(
            "carbon_grams",
            "Carbon of committed tasks (the ledger's kg CO2e, in grams)",
            m.carbon.clone(),
        );
        // Bounded label sets are shown whole, at 0, so a dashboard finds every series at once.
        for reason in REASON_CLASSES {
            let _ = m.failures.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        for reason in ["worker_restart", "region_lost"] {
            let _ = m.rereleases.get_or_create(&ReasonLabel {
                reason: reason.into(),
            });
        }
        m
    }

    /// The page a scrape gets, in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    pub fn set_lease_holder(&self, holding: bool) {
        self.lease_holder.set(i64::from(holding));
    }

    /// Whether this coordinator serves (its actor answers refresh requests).
    pub fn is_serving(&self) -> bool {
        self.lease_holder.get() == 1
    }

    /// Sets the gauges from the actor's state: job and task counts per state, queue depth per
    /// region, live workers and their slots per region.
    pub fn refresh<'a>(
        &self,
        jobs: impl Iterator<Item = &'a crate::state::Job>,
        workers: impl Iterator<Item = &'a WorkerInfo>,
        now_ms: u64,
        worker_lost_after_ms: u64,
    ) {
        let mut by_job_state: HashMap<&'static str, i64> = HashMap::new();
        let mut by_task_state: HashMap<&'static str, i64> = HashMap::new();
        let mut depth: HashMap<String, i64> = HashMap::new();
        for job in jobs {
            *by_job_state.entry(job.rec.rec.state.as_str()).or_default() += 1;
            let (t, _) = job.counts();
            for (state, n) in [
                ("pending", t.pending),
                ("queued", t.queued),
                ("running", t.running),
                ("done", t.done.saturating_sub(t.cached)),
                ("cached", t.cached),
                ("failed", t.failed),
                ("canceled", t.canceled),
            ] {
                *by_task_state.entry(state).or_default() += i64::from(n);
            }
            for region in job.in_flight_by_region().keys() {
                *depth.entry(region.to_string()).or_default() += i64::from(job.queued_in(region));
            }
        }
        for state in [
            JobState::Queued,
            JobState::Running,
            JobState::Done,
            JobState::Failed,
            JobState::Canceled,
        ] {
            let n = by_job_state.get(state.as_str()).copied().unwrap_or(0);
            self.jobs
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(n);
        }
        for (state, n) in by_task_state {
            self.tasks
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        }
        let mut live: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for w in workers {
            let state = w.observed_state(now_ms, worker_lost_after_ms);
            let entry = live.entry(w.region.to_string()).or_default();
            if state != WorkerState::Lost {
                entry.0 += 1;
                entry.1 += i64::from(w.slots);
                entry.2 += i64::from(w.busy);
            }
        }
        // Regions that no longer have workers or queued tasks show 0, not their last value.
        for family in [
            &self.slots,
            &self.busy_slots,
            &self.workers,
            &self.queue_depth,
        ] {
            family.clear();
        }
        for region in live.keys() {
            depth.entry(region.clone()).or_default();
        }
        for (region, (n, slots, busy)) in live {
            let label = RegionLabel { region };
            self.workers.get_or_create(&label).set(n);
            self.slots.get_or_create(&label).set(slots);
            self.busy_slots.get_or_create(&label).set(busy);
        }
        for (region, n) in depth {
            self.queue_depth
                .get_or_create(&RegionLabel { region })
                .set(n);
        }
    }

    /// Follows one task record change: `renderer` is the job's renderer kind.
    pub fn task_changed(
        &self,
        old: &TaskRecord,
        new: &TaskRecord,
        renderer: &str,
        catalog: &RegionCatalog,
        now_ms: u64,
    ) {
        let key = (new.job.clone(), new.task);
        let region = new
            .region
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default();
        let labels = || RendererRegion {
            renderer: renderer.to_string(),
            region: region.clone(),
        };
        let mut released = self.released_at.lock().unwrap_or_else(|p| p.into_inner());
        if new.state == TaskState::Queued && old.state != TaskState::Queued {
            if released.len() >= MAX_RELEASES_TRACKED {
                released.clear();
            }
            released.insert(key.clone(), now_ms);
        } else if new.state == TaskState::Running {
            if let Some(at) = released.remove(&key) {
                let started = new.started_ms.unwrap_or(now_ms);
                self.release_to_start
                    .get_or_create(&labels())
                    .observe(started.saturating_sub(at) as f64 / 1000.0);
            }
            // Started again without a new attempt: the queue gave the run to a worker again.
            if old.state == TaskState::Running
                && old.attempt == new.attempt
                && old.started_ms != new.started_ms
            {
                self.redeliveries.inc();
            }
        } else if new.state != TaskState::Queued {
            released.remove(&key);
        }
        drop(released);

        if new.failures.len() != old.failures.len() || new.failures.last() != old.failures.last() {
            if let Some(f) = new.failures.last() {
                self.failures
                    .get_or_create(&ReasonLabel {
                        reason: reason_class(f).into(),
                    })
                    .inc();
            }
            if new.state == TaskState::Pending && new.attempt > old.attempt {
                self.retries.inc();
            }
        }

        if new.state == TaskState::Done && old.state != TaskState::Done {
            if let (Some(start), Some(end)) = (new.started_ms, new.finished_ms) {
                self.task_duration
                    .get_or_create(&labels())
                    .observe(end.saturating_sub(start) as f64 / 1000.0);
            }
            self.tasks_completed.get_or_create(&labels()).inc();
            let out: u64 = new.outputs.iter().map(|f| f.size).sum();
            for (direction, n) in [("in", new.bytes_in), ("out", out)] {
                self.transfer_bytes
                    .get_or_create(&RegionDirection {
                        region: region.clone(),
                        direction: direction.into(),
                    })
                    .inc_by(n);
            }
            if let Some(r) = &new.region {
                let mut figures = RegionFigures {
                    core_seconds: new.core_seconds,
                    bytes_in: new.bytes_in,
                    ..Default::default()
                };
                figures.price(&catalog.profile(r));
                self.cost
                    .get_or_create(&RegionCurrency {
                        region: region.clone(),
                        currency: catalog.currency.clone(),
                    })
                    .inc_by(figures.cost);
                let label = RegionLabel {
                    region: region.clone(),
                };
                self.energy
                    .get_or_create(&label)
                    .inc_by(figures.energy_kwh * 3.6e6);
                self.carbon
                    .get_or_create(&label)
                    .inc_by(figures.carbon_kg * 1000.0);
            }
        }
    }

    /// Counts the bytes a finished pre-staging moved into `region`, and their egress, as a
    /// task's `bytes_in` is counted (its tasks then move none).
    pub fn staged(&self, region: &suanli_shared::Region, bytes: u64, catalog: &RegionCatalog) {
        if bytes == 0 {
            return;
        }
        self.transfer_bytes
            .get_or_create(&RegionDirection {
                region: region.to_string(),
                direction: "in".into(),
            })
            .inc_by(bytes);
        let mut figures = RegionFigures {
            bytes_in: bytes,
            ..Default::default()
        };
        figures.price(&catalog.profile(region));
        self.cost
            .get_or_create(&RegionCurrency {
                region: region.to_string(),
                currency: catalog.currency.clone(),
            })
            .inc_by(figures.cost);
    }

    /// Counts tasks taken back from where they were and released again.
    pub fn rereleased(&self, reason: &str, n: u64) {
        self.rereleases
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc_by(n);
    }
}

/// Every class [`reason_class`] gives.
pub const REASON_CLASSES: [&str; 8] = [
    "render", "timeout", "output", "inputs", "store", "refused", "worker", "other",
];

/// A failure's class, from a fixed set (a label must never carry free text): `render` (the
/// renderer exited non-zero or by a signal), `timeout`, `output` (no or an empty frame),
/// `inputs`, `store` (upload, commit or manifest), `refused` (a renderer or profile the worker
/// does not allow), `worker` (its own disk or folders), `other`.
pub fn reason_class(f: &Failure) -> &'static str {
    let r = f.reason.to_ascii_lowercase();
    if r.contains("timed out") {
        "timeout"
    } else if f.exit_code.is_some() || r.starts_with("renderer exited") || r.contains("signal") {
        if r.contains("wrote no frame")
            || r.contains("empty file")
            || r.contains("not a regular file")
        {
            "output"
        } else {
            "render"
        }
    } else if r.contains("input") {
        "inputs"
    } else if r.contains("upload") || r.contains("commit") || r.contains("output manifest") {
        "store"
    } else if r.contains("not allow") || r.contains("refused") || r.contains("profile") {
        "refused"
    } else if r.contains("folder") || r.contains("disk") {
        "worker"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(exit_code: Option<i32>, reason: &str) -> Failure {
        Failure {
            exit_code,
            reason: reason.into(),
            stderr_tail: String::new(),
            worker: "w".parse().unwrap(),
            region: "guian".parse().unwrap(),
            attempt: 0,
            at_ms: 0,
        }
    }

    #[test]
    fn failures_fall_into_a_fixed_set_of_classes() {
        let cases = [
            (Some(2), "renderer exited with code 2", "render"),
            (None, "render timed out after 5s", "timeout"),
            (
                Some(0),
                "renderer exited 0 but wrote no frame 3 (expected 'f')",
                "output",
            ),
            (None, "cannot fetch inputs: blob missing", "inputs"),
            (None, "cannot upload frame 1: store down", "store"),
            (
                None,
                "renderer 'blender' is not allowed on this worker",
                "refused",
            ),
            (
                None,
                "cannot create a work folder in /x: no space",
                "worker",
            ),
            (None, "something nobody foresaw", "other"),
        ];
        for (code, reason, class) in cases {
            assert_eq!(reason_class(&failure(code, reason)), class, "{reason}");
            assert!(REASON_CLASSES.contains(&class));
        }
    }

    #[test]
    fn an_empty_registry_encodes_every_family_header() {
        let m = Metrics::new();
        m.set_lease_holder(true);
        let text = m.encode();
        assert!(
            text.contains("# TYPE suanli_task_failures_total counter"),
            "{text}"
        );
        assert!(text.contains("suanli_lease_holder 1\n"), "{text}");
    }
}
