//! Recovery in seconds from a worker that died mid-task: when a worker's record shows a new
//! incarnation (it restarted on its host and took its name back, `worker::presence`), or its
//! record names a process on this coordinator's host that is gone, the tasks its previous
//! incarnation was running are taken back at once and released again as a new attempt,
//! instead of waiting out the region consumer's ack wait for JetStream to redeliver them.
//!
//! The new attempt is what makes the old run harmless: its message id differs (`<job>.<task>.
//! <attempt>.<release>`), so the queue takes the new publish; the old message, when the queue
//! redelivers it after its ack wait, is skipped by the worker that gets it (its record's attempt
//! is higher: `still_wanted`); a late `started` or `failed` of the old attempt is stale to the
//! fold, and a late `completed` is the same pixels. Which tasks are orphaned is decided by the
//! pure [`orphaned`], from the worker's own clock only (a task's `started_ms` and the
//! incarnation's `started_ms` are both stamped by that worker), so no clocks are compared
//! across machines.

use std::collections::BTreeMap;

use suanli_shared::protocol::{TaskRecord, TaskState, WorkerInfo};
use suanli_shared::{JobId, Region, WorkerId};
use tracing::warn;

use crate::actor::Coordinator;
use crate::state::Job;

/// How long a worker on this host whose process is gone must also have been silent before its
/// tasks are taken back: a pid that is not in this host's `/proc` may be in another pid
/// namespace (a container sharing the host name), and a heartbeat that still flows says so.
/// Both clocks are this host's.
pub const DEAD_SILENCE_MS: u64 = 5_000;

/// Which incarnation of a worker a record is: a restarted worker has another pid or start time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Incarnation {
    pub host: String,
    pub pid: u32,
    pub started_ms: u64,
}

impl Incarnation {
    pub fn of(w: &WorkerInfo) -> Self {
        Self {
            host: w.host.clone(),
            pid: w.pid,
            started_ms: w.started_ms,
        }
    }
}

/// Who ran the orphaned tasks, and up to when (on that worker's clock): tasks it started
/// before `before_ms` belong to an incarnation that is gone.
#[derive(Debug, Clone)]
pub struct Gone {
    pub region: Region,
    pub worker: WorkerId,
    /// Tasks started before this belong to the dead incarnation; `u64::MAX` when the
    /// worker's last incarnation itself is known dead (every task it runs is orphaned).
    pub before_ms: u64,
}

impl Gone {
    /// The previous incarnations of a worker whose record now shows `w`.
    pub fn restarted(w: &WorkerInfo) -> Self {
        Self {
            region: w.region.clone(),
            worker: w.id.clone(),
            before_ms: w.started_ms,
        }
    }

    /// Every incarnation of a worker whose last one is known dead.
    pub fn dead(w: &WorkerInfo) -> Self {
        Self {
            region: w.region.clone(),
            worker: w.id.clone(),
            before_ms: u64::MAX,
        }
    }

    fn ran(&self, t: &TaskRecord) -> bool {
        t.state == TaskState::Running
            && t.region.as_ref() == Some(&self.region)
            && t.worker.as_ref() == Some(&self.worker)
            && t.started_ms.is_some_and(|s| s < self.before_ms)
    }
}

/// The running tasks of unfinished jobs that `gone` was running, in job then task order. Reads
/// each job's in-flight index for the region; never walks every task.
pub fn orphaned(jobs: &BTreeMap<JobId, Job>, gone: &Gone) -> Vec<(JobId, u32)> {
    let mut out = Vec::new();
    for (id, job) in jobs {
        if job.rec.rec.state.is_final() {
            continue;
        }
        let Some(in_flight) = job.in_flight_by_region().get(&gone.region) else {
            continue;
        };
        for &task in in_flight {
            if job.task(task).is_some_and(|t| gone.ran(&t.rec)) {
                out.push((id.clone(), task));
            }
        }
    }
    out
}

/// An orphaned task back in the backlog as its next attempt, ready at once.
pub fn next_attempt(task: &TaskRecord) -> TaskRecord {
    let mut next = crate::state::withdrawn(task);
    next.attempt = task.attempt + 1;
    next.not_before_ms = 0;
    next
}

impl Coordinator {
    /// Takes back the tasks a gone incarnation of a worker was running and puts them back in
    /// the backlog as their next attempt; the next dispatch round releases them.
    pub(crate) async fn release_orphans(&mut self, gone: Gone, why: &str) {
        let tasks = orphaned(&self.jobs, &gone);
        if tasks.is_empty() {
            return;
        }
        let mut moved: BTreeMap<JobId, u32> = BTreeMap::new();
        for (job, task) in tasks {
            let next = next_attempt(&self.jobs[&job].tasks()[task as usize].rec);
            if let Err(e) = self.set_task(&job, next).await {
                // Left running: the queue redelivers it after its ack wait, as before.
                warn!(error = %format!("{e:#}"), "cannot take back an orphaned task");
                continue;
            }
            *moved.entry(job).or_default() += 1;
        }
        self.metrics.rereleased(
            "worker_restart",
            moved.values().map(|n| u64::from(*n)).sum(),
        );
        for (job, n) in moved {
            let reason = format!(
                "worker {} of region {} {why}: {n} task(s) it was rendering released again as a new attempt",
                gone.worker, gone.region
            );
            warn!(job = %job, worker = %gone.worker, region = %gone.region, tasks = n, "{why}: tasks released again");
            let state = self.jobs[&job].rec.rec.state;
            self.publish_job_event(&job, state, Some(reason)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Versioned;
    use suanli_shared::protocol::JobState;

    thread_local! {
        static JOB: JobId = JobId::generate();
    }

    fn job(tasks: Vec<TaskRecord>) -> Job {
        let mut rec = crate::state::tests::job_record(0);
        rec.id = tasks[0].job.clone();
        rec.n_tasks = tasks.len() as u32;
        Job::new(
            Versioned { rec, rev: 1 },
            tasks
                .into_iter()
                .map(|rec| Versioned { rec, rev: 1 })
                .collect(),
        )
    }

    fn task(i: u32, state: TaskState, worker: &str, started_ms: u64) -> TaskRecord {
        let mut t = crate::state::new_task(
            &JOB.with(|j| j.clone()),
            i,
            suanli_shared::ContentHash::of(&[i as u8]),
            suanli_shared::FrameChunk::single(i + 1),
            None,
        );
        t.state = state;
        t.region = Some("guian".parse().unwrap());
        t.worker = (!worker.is_empty()).then(|| worker.parse().unwrap());
        t.started_ms = Some(started_ms);
        t.releases = 1;
        t
    }

    #[test]
    fn only_tasks_the_old_incarnation_was_running_are_orphaned() {
        let tasks = vec![
            task(0, TaskState::Running, "a", 100), // the old incarnation's
            task(1, TaskState::Running, "a", 900), // the new incarnation's own
            task(2, TaskState::Running, "b", 100), // another worker's
            task(3, TaskState::Queued, "", 0),     // not started anywhere
        ];
        let mut jobs = BTreeMap::new();
        let j = job(tasks);
        jobs.insert(j.rec.rec.id.clone(), j);
        let gone = Gone {
            region: "guian".parse().unwrap(),
            worker: "a".parse().unwrap(),
            before_ms: 500,
        };
        let found: Vec<u32> = orphaned(&jobs, &gone).into_iter().map(|(_, t)| t).collect();
        assert_eq!(found, [0]);
        let dead = Gone {
            before_ms: u64::MAX,
            ..gone.clone()
        };
        let found: Vec<u32> = orphaned(&jobs, &dead).into_iter().map(|(_, t)| t).collect();
        assert_eq!(found, [0, 1]);
        let other_region = Gone {
            region: "ulanqab".parse().unwrap(),
            ..gone
        };
        assert!(orphaned(&jobs, &other_region).is_empty());
    }

    #[test]
    fn an_orphan_goes_back_to_the_backlog_as_its_next_attempt() {
        let t = task(0, TaskState::Running, "a", 100);
        let next = next_attempt(&t);
        assert_eq!(next.state, TaskState::Pending);
        assert_eq!(
            (next.attempt, &next.region, &next.worker),
            (1, &None, &None)
        );
        assert_eq!(next.not_before_ms, 0);
        // A late `started` of the old attempt is stale to the fold.
        let ev = suanli_shared::protocol::TaskEvent {
            job: t.job.clone(),
            task: 0,
            key: t.key,
            attempt: 0,
            worker: "a".parse().unwrap(),
            region: "guian".parse().unwrap(),
            at_ms: 200,
            kind: suanli_shared::protocol::TaskEventKind::Started,
        };
        let applied = crate::state::apply_event(&next, &ev, 3, JobState::Running, 300);
        assert_eq!(applied, crate::state::Applied::Ignored);
    }
}
