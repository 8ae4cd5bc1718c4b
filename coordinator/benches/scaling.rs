//! How the coordinator's CPU cost per task grows with the size of a job.
//!
//! Drives the actor's in-memory code paths through whole jobs of 1,000, 10,000 and 100,000
//! tasks, without NATS: the dispatch round the actor runs after every message
//! ([`release::plan_round`], with the same view building and [`dispatch::plan`]), task records
//! changed through [`Job::set_task`] (released, then folded with [`state::apply_event`] for a
//! start and a completion), the job state derived after each event, and a heartbeat between
//! events that changes nothing but is followed by a dispatch round, as in production. Twelve
//! workers of four slots in three regions render every task; each runs until the job is done.
//!
//! Time is `std::time::Instant` around the whole job in this single thread (the workload is
//! pure CPU: no I/O, no other threads), so it is the coordinator's CPU time; each figure is
//! the best of [`RUNS`] runs, so that other work on the machine does not count.
//!
//! The "full walk" column runs the same workload but recounts each job's index from its task
//! records before every dispatch round ([`Job::reindex`]): what every message cost before the
//! index was kept incrementally. It is capped at 10,000 tasks (100,000 would take minutes).
//!
//! Run: `cargo bench -p suanli-coordinator --bench scaling`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use suanli_coordinator::learned::Learned;
use suanli_coordinator::release::{self, Capacity};
use suanli_coordinator::state::{self, Applied, Job, Versioned};
use suanli_shared::protocol::{
    InputManifest, JobRecord, JobSpec, JobState, TaskEvent, TaskEventKind, WorkerInfo, WorkerState,
};
use suanli_shared::regions::RegionCatalog;
use suanli_shared::{ContentHash, FrameChunk, JobId, Region, WorkerId};

const SIZES: [u32; 3] = [1_000, 10_000, 100_000];
/// Runs per figure (the fastest counts); the full walk of the largest size runs once.
const RUNS: usize = 5;
/// The largest job the full-walk mode runs.
const FULL_WALK_MAX: u32 = 10_000;
const REGIONS: [&str; 3] = ["guian", "wulan", "qingyang"];
const WORKERS_PER_REGION: u32 = 4;
const SLOTS_PER_WORKER: u32 = 4;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The index as the actor keeps it.
    Incremental,
    /// The index recounted from every task record before each dispatch round.
    FullWalk,
}

fn workers() -> Vec<WorkerInfo> {
    let mut out = Vec::new();
    for region in REGIONS {
        for w in 0..WORKERS_PER_REGION {
            out.push(WorkerInfo {
                id: format!("{region}-w{w}").parse().expect("worker id"),
                region: region.parse().expect("region"),
                slots: SLOTS_PER_WORKER,
                busy: 0,
                state: WorkerState::Idle,
                renderers: BTreeMap::new(),
                profiles: Vec::new(),
                host: "bench".into(),
                pid: 1,
                started_ms: 0,
                heartbeat_ms: 0,
                tasks_done: 0,
                core_seconds: 0.0,
                current: Vec::new(),
                resources: None,
                gpus_busy: 0,
            });
        }
    }
    out
}

fn job(n_tasks: u32) -> Job {
    let id = JobId::generate();
    let spec: JobSpec = serde_json::from_value(serde_json::json!({
        "name": "scaling",
        "frames": format!("1-{n_tasks}"),
        "chunk": 1,
        "max_retries": 2,
        "task_timeout_secs": 60,
        "renderer": { "kind": "builtin", "width": 8, "height": 8, "samples": 1 },
        "inputs": InputManifest::default().hash(),
        "output": "f_####",
    }))
    .expect("a valid job spec");
    let rec = JobRecord {
        id: id.clone(),
        spec,
        state: JobState::Queued,
        n_tasks,
        created_ms: 0,
        finished_ms: None,
        reason: None,
        blocklist: vec![],
        input_bytes: 0,
    };
    let tasks = (0..n_tasks)
        .map(|i| {
            let key = ContentHash::of(&i.to_le_bytes());
            let rec = state::new_task(&id, i, key, FrameChunk::single(i + 1), None);
            Versioned { rec, rev: 1 }
        })
        .collect();
    Job::new(Versioned { rec, rev: 1 }, tasks)
}

/// The in-memory coordinator: its jobs, placement memory and the live workers' capacity.
struct Farm {
    jobs: BTreeMap<JobId, Job>,
    learned: Learned,
    /// The live workers, as their heartbeats state them.
    workers: Vec<WorkerInfo>,
    catalog: RegionCatalog,
    now: u64,
    mode: Mode,
    /// Tasks released and not started, per region, in release order.
    queued: BTreeMap<Region, VecDeque<(JobId, u32)>>,
    /// Tasks started, in start order.
    running: VecDeque<(JobId, u32)>,
}

impl Farm {
    /// The round the actor runs after every message; releases what it plans.
    fn dispatch(&mut self) {
        self.now += 1;
        if self.mode == Mode::FullWalk {
            for job in self.jobs.values_mut() {
                job.reindex(self.now);
            }
        }
        let capacity = Capacity::of(&self.workers);
        let planned = release::plan_round(
            &mut self.jobs,
            &capacity,
            &mut self.learned,
            &self.catalog,
            release::Tenancy::open(),
            1,
            self.now,
        );
        for p in planned {
            let job = self.jobs.get_mut(&p.job).expect("job");
            let rec = state::released(&job.tasks()[p.task as usize].rec, &p.region);
            job.set_task(Versioned { rec, rev: 1 });
            self.queued
                .entry(p.region)
                .or_default()
                .push_back((p.job, p.task));
        }
    }

    /// One task event, handled as the actor does: folded, recorded, the job settled.
    fn event(&mut self, id: &JobId, task: u32, kind: TaskEventKind) {
        let job = self.jobs.get_mut(id).expect("job");
        let rec = &job.tasks()[task as usize].rec;
        let region = rec.region.clone().expect("released tasks have a region");
        let ev = TaskEvent {
            job: id.clone(),
            task,
            key: rec.key,
            attempt: rec.attempt,
            worker: worker_of(&region, task),
            region: region.clone(),
            at_ms: self.now,
            kind,
        };
        let max_retries = job.rec.rec.spec.max_retries;
        let applied = state::apply_event(rec, &ev, max_retries, job.rec.rec.state, self.now);
        if let Applied::Changed(next) = applied {
            job.set_task(Versioned { rec: *next, rev: 1 });
            if let TaskEventKind::Completed { core_seconds, .. } = ev.kind {
                self.learned
                    .record(&job.rec.rec, &region, 0.01, core_seconds);
            }
            let state = job.derived_state();
            if state != job.rec.rec.state {
                job.rec.rec.state = state;
            }
        }
    }

    /// A worker heartbeat: changes nothing, then the dispatch round that follows every input.
    fn heartbeat(&mut self) {
        self.dispatch();
    }

    /// Runs every job to the end: each started task then completes, one event per message.
    fn run(&mut self) {
        self.dispatch();
        loop {
            // A worker in each region starts the next task of its queue.
            let regions: Vec<Region> = self.queued.keys().cloned().collect();
            for region in regions {
                if let Some((id, task)) = self.queued.get_mut(&region).and_then(|q| q.pop_front()) {
                    self.event(&id, task, TaskEventKind::Started);
                    self.running.push_back((id, task));
                    self.dispatch();
                }
                self.heartbeat();
            }
            // The oldest running task completes.
            let Some((id, task)) = self.running.pop_front() else {
                break;
            };
            let started_ms = self.now;
            self.event(
                &id,
                task,
                TaskEventKind::Completed {
                    cached: false,
                    started_ms,
                    core_seconds: 1.0,
                    outputs: vec![],
                    bytes_in: 0,
                    gpu: None,
                },
            );
            self.dispatch();
            self.heartbeat();
        }
    }
}

fn worker_of(region: &Region, task: u32) -> WorkerId {
    format!("{region}-w{}", task % WORKERS_PER_REGION)
        .parse()
        .expect("worker id")
}

/// Milliseconds of CPU for one whole job of `n_tasks` in `mode`.
fn measure(n_tasks: u32, mode: Mode) -> f64 {
    let job = job(n_tasks);
    let id = job.rec.rec.id.clone();
    let mut farm = Farm {
        jobs: BTreeMap::from([(id.clone(), job)]),
        learned: Learned::default(),
        workers: workers(),
        catalog: RegionCatalog::default(),
        now: 1_000,
        mode,
        queued: BTreeMap::new(),
        running: VecDeque::new(),
    };
    let start = Instant::now();
    farm.run();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let job = &farm.jobs[&id];
    let (tasks, _) = job.counts();
    assert_eq!(
        (tasks.done, job.rec.rec.state),
        (n_tasks, JobState::Done),
        "every task is rendered and the job is done"
    );
    ms
}

fn best_of(runs: usize, mut f: impl FnMut() -> f64) -> f64 {
    (0..runs).map(|_| f()).fold(f64::INFINITY, f64::min)
}

fn main() {
    // Warm up allocators and caches once, untimed.
    measure(1_000, Mode::Incremental);
    println!("coordinator CPU per task (std::time::Instant, one thread, best of {RUNS})");
    println!(
        "{:>8} | {:>10} {:>9} {:>6} | {:>14} {:>12} {:>6}",
        "tasks", "total ms", "µs/task", "ratio", "full-walk ms", "µs/task", "ratio"
    );
    let mut base = None;
    let mut base_walk = None;
    for n in SIZES {
        let ms = best_of(RUNS, || measure(n, Mode::Incremental));
        let per = ms * 1000.0 / f64::from(n);
        let ratio = per / *base.get_or_insert(per);
        let walk = if n <= FULL_WALK_MAX {
            let runs = if n < FULL_WALK_MAX { RUNS } else { 1 };
            let ms = best_of(runs, || measure(n, Mode::FullWalk));
            let per = ms * 1000.0 / f64::from(n);
            let ratio = per / *base_walk.get_or_insert(per);
            format!("{ms:>14.1} {per:>12.1} {ratio:>6.2}")
        } else {
            format!("{:>14} {:>12} {:>6}", "(skipped)", "", "")
        };
        println!("{n:>8} | {ms:>10.1} {per:>9.2} {ratio:>6.2} | {walk}");
    }
}
