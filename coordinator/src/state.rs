//! The coordinator's view of jobs and tasks: the in-memory mirror of the `suanli_jobs` and
//! `suanli_tasks` buckets, kept with each job's [`TaskIndex`], and the pure rules that change
//! task records (events, release, withdrawal). Nothing here does I/O, so every transition is
//! unit-tested; the actor persists what changes.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::index::TaskIndex;
pub use suanli_shared::fold::Applied;
use suanli_shared::fold::{self, AfterFailure};
use suanli_shared::protocol::{
    Blocklisted, FrameCounts, JobRecord, JobState, JobStatus, RegionFigures, TaskCounts, TaskEvent,
    TaskFailure, TaskRecord, TaskState, BLOCKLIST_AFTER, MAX_FAILURES_SHOWN,
};
use suanli_shared::{ContentHash, FrameChunk, JobId, Region};

/// A record with the KV revision it was read or written at (for compare-and-set).
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub rec: T,
    pub rev: u64,
}

/// One job and its tasks. Task records change only through [`Job::set_task`], which keeps the
/// index in step with them.
#[derive(Debug, Clone)]
pub struct Job {
    pub rec: Versioned<JobRecord>,
    tasks: Vec<Versioned<TaskRecord>>,
    index: TaskIndex,
}

/// Retry backoff after the `attempt`-th failure: 1 s, 2 s, 4 s … capped at one minute.
pub fn retry_backoff_ms(attempt: u32) -> u64 {
    1000u64.saturating_mul(1 << attempt.min(6)).min(60_000)
}

/// Folds one task event into a task record: the shared record-keeping fold, with the
/// coordinator's retry decision (the job's `max_retries`, then [`retry_backoff_ms`]).
pub fn apply_event(
    task: &TaskRecord,
    ev: &TaskEvent,
    max_retries: u32,
    job_state: JobState,
    now_ms: u64,
) -> Applied {
    fold::apply_event(task, ev, job_state, |attempt| {
        if attempt < max_retries {
            AfterFailure::Retry {
                not_before_ms: now_ms + retry_backoff_ms(attempt),
            }
        } else {
            AfterFailure::Fail
        }
    })
}

/// A new task's record: task `task` of job `job`, in the backlog, or done already when its
/// output was found in the cache at `cached_at_ms`.
pub fn new_task(
    job: &JobId,
    task: u32,
    key: ContentHash,
    chunk: FrameChunk,
    cached_at_ms: Option<u64>,
) -> TaskRecord {
    let state = match cached_at_ms {
        Some(_) => TaskState::Cached,
        None => TaskState::Pending,
    };
    TaskRecord::new(job.clone(), task, key, chunk, state, cached_at_ms)
}

/// A task released onto `region`'s queue.
pub fn released(task: &TaskRecord, region: &Region) -> TaskRecord {
    let mut next = task.clone();
    next.state = TaskState::Queued;
    next.region = Some(region.clone());
    next.worker = None;
    next.releases = task.releases + 1;
    next
}

/// A task taken back from a lost region, to be placed again.
pub fn withdrawn(task: &TaskRecord) -> TaskRecord {
    let mut next = task.clone();
    next.state = TaskState::Pending;
    next.region = None;
    next.worker = None;
    next
}

impl Job {
    /// A job with its task records (task `i` at index `i`), indexed.
    pub fn new(rec: Versioned<JobRecord>, tasks: Vec<Versioned<TaskRecord>>) -> Self {
        let index = TaskIndex::of(tasks.iter().map(|t| &t.rec), 0);
        Self { rec, tasks, index }
    }

    pub fn tasks(&self) -> &[Versioned<TaskRecord>] {
        &self.tasks
    }

    pub fn task(&self, task: u32) -> Option<&Versioned<TaskRecord>> {
        self.tasks.get(task as usize)
    }

    /// Replaces one task's record (the task its `task` field names): the one place a task
    /// changes, so the index follows every change.
    pub fn set_task(&mut self, next: Versioned<TaskRecord>) {
        let slot = &mut self.tasks[next.rec.task as usize];
        self.index.remove(&slot.rec);
        self.index.add(&next.rec);
        *slot = next;
    }

    /// The index as kept, to compare with [`TaskIndex::of`] the task records.
    pub fn index(&self) -> &TaskIndex {
        &self.index
    }

    /// Recounts the index from the task records, walking them all: what every message cost
    /// before the index was kept. The scaling benchmark uses it to show the difference.
    pub fn reindex(&mut self, now_ms: u64) {
        self.index = TaskIndex::of(self.tasks.iter().map(|t| &t.rec), now_ms);
    }

    pub fn counts(&self) -> (TaskCounts, FrameCounts) {
        let tally = self.index.tally();
        (tally.tasks.clone(), tally.frames.clone())
    }

    /// The state the job should be in, given its tasks (cancel is sticky).
    pub fn derived_state(&self) -> JobState {
        self.index.tally().job_state(self.rec.rec.state)
    }

    /// Tasks released and not finished.
    pub fn in_flight(&self) -> u32 {
        let t = &self.index.tally().tasks;
        t.queued + t.running
    }

    /// Queued and running tasks per region.
    pub fn in_flight_by_region(&self) -> &BTreeMap<Region, BTreeSet<u32>> {
        self.index.in_flight_by_region()
    }

    /// Tasks queued in `region` and not started.
    pub fn queued_in(&self, region: &Region) -> u32 {
        self.index.queued_in(region)
    }

    /// Makes the pending tasks whose backoff is over by `now_ms` ready.
    pub fn promote(&mut self, now_ms: u64) {
        self.index.promote(now_ms);
    }

    /// The ready tasks (as of the last [`Job::promote`]), in task order.
    pub fn ready(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.ready().iter().copied()
    }

    pub fn n_ready(&self) -> u32 {
        self.index.ready().len() as u32
    }

    /// Why a failed job failed, in one line.
    pub fn failure_reason(&self) -> Option<String> {
        let failed = self.index.failed();
        let first = &self.tasks[*failed.first()? as usize].rec;
        let last = first.failures.last();
        Some(format!(
            "{} task(s) failed after their retries; first: frames {}: {}",
            failed.len(),
            first.chunk,
            last.map(|f| f.reason.as_str()).unwrap_or("unknown reason")
        ))
    }

    /// The job's status. Walks the tasks (for the figures per region and the failures shown):
    /// API requests ask for it, messages do not.
    pub fn status(&self) -> JobStatus {
        let (tasks, frames) = self.counts();
        let mut regions: BTreeMap<String, RegionFigures> = BTreeMap::new();
        let mut failures = Vec::new();
        let mut failures_total = 0;
        for task in &self.tasks {
            let t = &task.rec;
            if t.state == TaskState::Done {
                if let Some(region) = &t.region {
                    let r = regions.entry(region.to_string()).or_default();
                    r.frames_done += t.chunk.len();
                    r.core_seconds += t.core_seconds;
                    r.bytes_in += t.bytes_in;
                    if let Some(gpu) = &t.gpu {
                        r.add_gpu(gpu);
                    }
                }
            }
            if let Some(f) = t.failures.last() {
                failures_total += 1;
                if failures.len() < MAX_FAILURES_SHOWN {
                    failures.push(TaskFailure {
                        task: t.task,
                        frames: t.chunk.to_string(),
                        state: t.state,
                        failure: f.clone(),
                    });
                }
            }
        }
        let rec = &self.rec.rec;
        JobStatus {
            id: rec.id.clone(),
            name: rec.spec.name.clone(),
            studio: rec.spec.studio.clone(),
            state: rec.state,
            priority: rec.spec.priority,
            renderer: rec.spec.renderer.kind().to_string(),
            created_ms: rec.created_ms,
            finished_ms: rec.finished_ms,
            reason: rec.reason.clone(),
            frames,
            tasks,
            regions,
            failures,
            failures_total,
            blocklist: rec.blocklist.clone(),
            max_retries: rec.spec.max_retries,
            waiting: None,
            budget: None,
            requirements: rec.spec.requirements.clone(),
            inputs_in: Default::default(),
        }
    }

    /// Workers that have now failed this job [`BLOCKLIST_AFTER`] times and are not blocklisted
    /// yet. Counted from the failures the task records keep, so the count survives a restart.
    pub fn new_blocklisted(&self, now_ms: u64) -> Vec<Blocklisted> {
        let listed = &self.rec.rec.blocklist;
        self.index
            .failures()
            .iter()
            .filter(|((region, worker), n)| {
                **n >= BLOCKLIST_AFTER
                    && !listed
                        .iter()
                        .any(|b| &b.region == region && &b.worker == worker)
            })
            .map(|((region, worker), failures)| Blocklisted {
                region: region.clone(),
                worker: worker.clone(),
                failures: *failures,
                at_ms: now_ms,
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use suanli_shared::fold::Tally;
    use suanli_shared::protocol::{
        Failure, InputManifest, JobSpec, Placement, RendererSpec, TaskEventKind,
    };
    use suanli_shared::{ContentHash, FrameChunk, JobId, WorkerId};

    /// A running job of four one-frame builtin tasks, with `input_bytes` of inputs.
    pub(crate) fn job_record(input_bytes: u64) -> JobRecord {
        JobRecord {
            id: JobId::generate(),
            spec: JobSpec {
                webhooks: vec![],
                limits: Default::default(),
                requirements: Default::default(),
                name: "j".into(),
                studio: Default::default(),
                priority: 0,
                frames: "1-4".parse().unwrap(),
                chunk: 1,
                regions: vec![],
                max_retries: 0,
                task_timeout_secs: 60,
                renderer: RendererSpec::Builtin {
                    width: 8,
                    height: 8,
                    samples: 1,
                },
                inputs: InputManifest::default().hash(),
                scene: None,
                output: "f_####".into(),
                placement: Placement::default(),
            },
            state: JobState::Running,
            n_tasks: 4,
            created_ms: 0,
            finished_ms: None,
            reason: None,
            blocklist: vec![],
            input_bytes,
        }
    }

    fn task() -> TaskRecord {
        let mut t = new_task(
            &JobId::generate(),
            0,
            ContentHash::of(b"k"),
            FrameChunk::single(1),
            None,
        );
        t.state = TaskState::Queued;
        t.region = Some("guian".parse().unwrap());
        t
    }

    /// Attempt `attempt` of `t` failed on worker w1 (the shared fold's tests cover the other
    /// events; here only the coordinator's retry decision is under test).
    fn failed(t: &TaskRecord, attempt: u32) -> TaskEvent {
        let (worker, region): (WorkerId, Region) =
            ("w1".parse().unwrap(), "guian".parse().unwrap());
        let failure = Failure {
            exit_code: Some(3),
            reason: "renderer exited with code 3".into(),
            stderr_tail: "boom".into(),
            worker: worker.clone(),
            region: region.clone(),
            attempt,
            at_ms: 5_000,
        };
        TaskEvent {
            job: t.job.clone(),
            task: t.task,
            key: t.key,
            attempt,
            worker,
            region,
            at_ms: 5_000,
            kind: TaskEventKind::Failed { failure },
        }
    }

    fn changed(a: Applied) -> TaskRecord {
        match a {
            Applied::Changed(t) => *t,
            Applied::Ignored => panic!("event was ignored"),
        }
    }

    #[test]
    fn failures_retry_with_backoff_then_fail() {
        let t0 = task();
        let t1 = changed(apply_event(
            &t0,
            &failed(&t0, 0),
            2,
            JobState::Running,
            10_000,
        ));
        assert_eq!((t1.state, t1.attempt), (TaskState::Pending, 1));
        assert_eq!(t1.not_before_ms, 11_000);
        // A late failure from the old attempt changes nothing.
        assert_eq!(
            apply_event(&t1, &failed(&t0, 0), 2, JobState::Running, 10_000),
            Applied::Ignored
        );
        let t2 = changed(apply_event(
            &t1,
            &failed(&t1, 1),
            2,
            JobState::Running,
            20_000,
        ));
        assert_eq!((t2.state, t2.attempt), (TaskState::Pending, 2));
        let t3 = changed(apply_event(
            &t2,
            &failed(&t2, 2),
            2,
            JobState::Running,
            30_000,
        ));
        assert_eq!(t3.state, TaskState::Failed);
        assert_eq!(t3.failures.len(), 3);
        assert_eq!(t3.failures.last().unwrap().stderr_tail, "boom");
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(retry_backoff_ms(0), 1000);
        assert_eq!(retry_backoff_ms(3), 8000);
        assert_eq!(retry_backoff_ms(30), 60_000);
    }

    /// A small deterministic generator (xorshift), so a failing sequence can be replayed.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    fn record(i: u32) -> Versioned<TaskRecord> {
        let mut t = task();
        t.task = i;
        t.state = TaskState::Pending;
        t.region = None;
        Versioned { rec: t, rev: 1 }
    }

    #[test]
    fn the_index_kept_as_tasks_change_equals_a_full_recount() {
        let regions: Vec<Region> = ["guian", "wulan", "qingyang"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let workers: Vec<WorkerId> = ["w1", "w2"].iter().map(|w| w.parse().unwrap()).collect();
        let states = [
            TaskState::Pending,
            TaskState::Queued,
            TaskState::Running,
            TaskState::Done,
            TaskState::Cached,
            TaskState::Failed,
            TaskState::Canceled,
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let n = 40;
        let mut job = Job::new(
            Versioned {
                rec: job_record(0),
                rev: 1,
            },
            (0..n).map(record).collect(),
        );
        let mut now = 0;
        for step in 0..5_000 {
            let mut next = job.task(rng.below(n.into()) as u32).unwrap().clone();
            let t = &mut next.rec;
            t.state = states[rng.below(states.len() as u64) as usize];
            t.region = (rng.below(4) > 0).then(|| regions[rng.below(3) as usize].clone());
            t.not_before_ms = [0, now + 100, now + 5_000][rng.below(3) as usize];
            if rng.below(4) == 0 {
                let mut f = failed(t, t.attempt);
                if let TaskEventKind::Failed { failure } = &mut f.kind {
                    failure.region = regions[rng.below(3) as usize].clone();
                    failure.worker = workers[rng.below(2) as usize].clone();
                    t.failures.push(failure.clone());
                }
                let extra = t.failures.len().saturating_sub(fold::FAILURES_KEPT);
                t.failures.drain(..extra);
            }
            job.set_task(next);
            now += rng.below(300);
            job.promote(now);
            let tasks: Vec<&TaskRecord> = job.tasks().iter().map(|t| &t.rec).collect();
            assert_eq!(
                job.index(),
                &TaskIndex::of(tasks.iter().copied(), now),
                "step {step}"
            );
            // And each answer equals the walk the actor made before the index.
            let ready: Vec<u32> = tasks
                .iter()
                .filter(|t| t.state == TaskState::Pending && t.not_before_ms <= now)
                .map(|t| t.task)
                .collect();
            assert_eq!(job.ready().collect::<Vec<_>>(), ready);
            assert_eq!(job.n_ready() as usize, ready.len());
            let in_flight =
                |t: &&&TaskRecord| matches!(t.state, TaskState::Queued | TaskState::Running);
            assert_eq!(
                job.in_flight() as usize,
                tasks.iter().filter(in_flight).count()
            );
            for region in &regions {
                let held: BTreeSet<u32> = tasks
                    .iter()
                    .filter(in_flight)
                    .filter(|t| t.region.as_ref() == Some(region))
                    .map(|t| t.task)
                    .collect();
                let mine = job
                    .in_flight_by_region()
                    .get(region)
                    .cloned()
                    .unwrap_or_default();
                assert_eq!(mine, held);
                let queued = tasks
                    .iter()
                    .filter(|t| t.state == TaskState::Queued && t.region.as_ref() == Some(region))
                    .count();
                assert_eq!(job.queued_in(region) as usize, queued);
            }
            let tally = Tally::of(tasks.iter().copied());
            assert_eq!(job.counts(), (tally.tasks.clone(), tally.frames.clone()));
            assert_eq!(job.derived_state(), tally.job_state(job.rec.rec.state));
            let failed: Vec<&&TaskRecord> = tasks
                .iter()
                .filter(|t| t.state == TaskState::Failed)
                .collect();
            let reason = job.failure_reason();
            assert_eq!(reason.is_some(), !failed.is_empty());
            if let (Some(reason), Some(first)) = (reason, failed.first()) {
                let prefix = format!("{} task(s) failed", failed.len());
                assert!(reason.starts_with(&prefix), "{reason}");
                assert!(
                    reason.contains(&format!("frames {}", first.chunk)),
                    "{reason}"
                );
            }
            let mut counts: BTreeMap<(Region, WorkerId), u32> = BTreeMap::new();
            for f in tasks.iter().flat_map(|t| &t.failures) {
                *counts
                    .entry((f.region.clone(), f.worker.clone()))
                    .or_default() += 1;
            }
            let listed: Vec<_> = job
                .new_blocklisted(now)
                .into_iter()
                .map(|b| ((b.region, b.worker), b.failures))
                .collect();
            let expected: Vec<_> = counts
                .into_iter()
                .filter(|(_, n)| *n >= BLOCKLIST_AFTER)
                .collect();
            assert_eq!(listed, expected);
        }
    }

    #[test]
    fn released_and_withdrawn_tasks_move_between_the_backlog_and_a_region() {
        let guian: Region = "guian".parse().unwrap();
        let mut job = Job::new(
            Versioned {
                rec: job_record(0),
                rev: 1,
            },
            (0..3).map(record).collect(),
        );
        assert_eq!(job.ready().collect::<Vec<_>>(), [0, 1, 2]);
        let rec = released(&job.task(1).unwrap().rec, &guian);
        assert_eq!((rec.state, rec.releases), (TaskState::Queued, 1));
        job.set_task(Versioned { rec, rev: 2 });
        assert_eq!(job.ready().collect::<Vec<_>>(), [0, 2]);
        assert_eq!((job.in_flight(), job.queued_in(&guian)), (1, 1));
        let rec = withdrawn(&job.task(1).unwrap().rec);
        assert_eq!((rec.state, rec.region.as_ref()), (TaskState::Pending, None));
        job.set_task(Versioned { rec, rev: 3 });
        assert_eq!(
            job.ready().collect::<Vec<_>>(),
            [0, 2],
            "ready once promoted"
        );
        job.promote(0);
        assert_eq!(job.ready().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(job.in_flight_by_region().is_empty());
    }
}
