//! Folding what workers report into the actor's state: task events (applied with
//! [`crate::state::apply_event`], persisted, then acknowledged), the blocklist they may grow,
//! what placement learns from a rendered task, and the workers' heartbeat records. A task event
//! is folded only when it comes under its job's studio and from the region its task is
//! released to; anything else is dropped with a warning (a forged or orphaned report).

use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation};
use async_nats::jetstream::AckKind;
use suanli_shared::nats;
use suanli_shared::protocol::decode;
use suanli_shared::protocol::{now_ms, Event, TaskEvent, TaskEventKind, TaskState, WorkerInfo};
use suanli_shared::studios::BudgetAction;
use suanli_shared::{JobId, Region};
use tracing::{debug, info, warn};

use crate::actor::Coordinator;
use crate::budgets::Budgets;
use crate::recovery::{Gone, Incarnation, DEAD_SILENCE_MS};
use crate::state::{apply_event, Applied, Versioned};

impl Coordinator {
    pub(crate) async fn handle_event(&mut self, msg: async_nats::jetstream::Message) {
        let (subject, ev): (_, TaskEvent) = match nats::decode_event(&msg.subject, &msg.payload) {
            Ok((subject, Event::Task(ev))) => (subject, ev),
            // Job events are the coordinator's own announcements: nothing to fold.
            Ok((_, Event::Job(_))) => {
                let _ = msg.ack().await;
                return;
            }
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "dropping a malformed event");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        let Some(job) = self.jobs.get(&ev.job) else {
            debug!(job = %ev.job, "event for an unknown job");
            let _ = msg.ack().await;
            return;
        };
        // nats-server vouches for the subject (who may publish on it); the rest is checked
        // here. `decode_event` already refused a body whose region is not the subject's.
        if subject.studio != job.rec.rec.spec.studio {
            warn!(job = %ev.job, studio = %subject.studio, owner = %job.rec.rec.spec.studio, "event under another studio than the job's; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let Some(task) = job.task(ev.task) else {
            warn!(job = %ev.job, task = ev.task, "event for an unknown task");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        };
        if task.rec.key != ev.key {
            warn!(job = %ev.job, task = ev.task, "event's task key does not match the task; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        if task.rec.region.as_ref() != Some(&ev.region) {
            warn!(job = %ev.job, task = ev.task, region = %ev.region, released_to = ?task.rec.region, "event from a region the task is not released to; dropped");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
        let applied = apply_event(
            &task.rec,
            &ev,
            job.rec.rec.spec.max_retries,
            job.rec.rec.state,
            now_ms(),
        );
        let was_done = task.rec.state == TaskState::Done;
        if let Applied::Changed(next) = applied {
            let committed = (!was_done && next.state == TaskState::Done).then(|| {
                let cost = Budgets::cost_of(&next, &self.config.catalog);
                (cost, next.finished_ms.unwrap_or(ev.at_ms))
            });
            if let Err(e) = self.set_task(&ev.job, *next).await {
                // Leave the event unacknowledged: it is redelivered and applied again.
                warn!(error = %format!("{e:#}"), "cannot apply an event; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            if matches!(ev.kind, TaskEventKind::Failed { .. }) {
                self.update_blocklist(&ev.job).await;
            }
            if let TaskEventKind::Completed {
                cached: false,
                started_ms,
                core_seconds,
                ..
            } = &ev.kind
            {
                let wall = ev.at_ms.saturating_sub(*started_ms) as f64 / 1000.0;
                let rec = &self.jobs[&ev.job].rec.rec;
                self.learned.record(rec, &ev.region, wall, *core_seconds);
            }
            self.settle_job(&ev.job).await;
            if let Some((cost, at)) = committed {
                self.charge_budget(&ev.job, cost, at).await;
            }
        }
        let _ = msg.ack().await;
    }

    /// Charges a committed task's cost to its studio's month; announces the thresholds it
    /// crosses on the job's event subject, and at 100 % under `cancel` cancels the studio's
    /// unfinished jobs.
    async fn charge_budget(&mut self, id: &JobId, cost: f64, at_ms: u64) {
        let rec = &self.jobs[id].rec.rec;
        let studio = rec.spec.studio.clone();
        let (before, after) = self.budgets.charge(rec, cost, at_ms);
        let crossings = self.budgets.crossings(
            &studio,
            before,
            after,
            &self.config.studios,
            &self.config.catalog.currency,
            self.budget_rooms.get(&studio) == Some(&0),
        );
        for c in crossings {
            let b = &c.status;
            let said = format!(
                "budget: studio {} has spent {:.2} of its {:.2} {} for {} ({}%; at the limit: {})",
                b.studio,
                b.spent,
                b.budget,
                b.currency,
                b.month,
                c.percent,
                b.at_limit.as_str()
            );
            warn!(studio = %b.studio, percent = c.percent, spent = b.spent, budget = b.budget, "studio budget threshold crossed");
            let state = self.jobs[id].rec.rec.state;
            self.publish_job_event(id, state, Some(said)).await;
            if c.percent >= 100 && b.at_limit == BudgetAction::Cancel {
                self.cancel_studio(&studio, "canceled: the studio's monthly budget is spent")
                    .await;
            }
        }
    }

    /// Blocklists workers that have failed this job too often; they take none of its tasks
    /// (they hand them back) and dispatch skips regions where no other worker is left.
    async fn update_blocklist(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get(id) else { return };
        let added = job.new_blocklisted(now_ms());
        if added.is_empty() {
            return;
        }
        let mut rec = job.rec.rec.clone();
        rec.blocklist.extend(added.iter().cloned());
        match self.write_job(&rec, job.rec.rev).await {
            Ok(rev) => {
                for b in &added {
                    warn!(job = %id, worker = %b.worker, region = %b.region, failures = b.failures, "worker blocklisted for this job");
                }
                self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot record a blocklisted worker"),
        }
    }

    /// On a secure farm workers may not create their region's queue consumer: the coordinator
    /// creates it when it first sees a worker of the region.
    pub(crate) async fn open_region_queues(&mut self) {
        if self.config.access.identity.is_none() {
            return;
        }
        let regions: Vec<Region> = self
            .workers
            .values()
            .map(|w| w.region.clone())
            .filter(|r| !self.open_queues.contains(r))
            .collect();
        for region in regions {
            let config = nats::region_consumer_config(&region, nats::DEFAULT_ACK_WAIT);
            match self
                .farm
                .tasks
                .get_or_create_consumer(&nats::region_consumer(&region), config)
                .await
            {
                Ok(_) => {
                    info!(%region, "region queue open");
                    self.open_queues.insert(region);
                }
                Err(e) => warn!(%region, error = %e, "cannot open the region's queue"),
            }
        }
    }

    /// Keeps the mirror of worker records; returns the worker whose record shows a new
    /// incarnation (first seen, or another pid or start time than before), whose previous
    /// incarnations' tasks [`Coordinator::release_orphans`] takes back.
    pub(crate) fn handle_worker(&mut self, entry: Entry) -> Option<Gone> {
        match entry.operation {
            Operation::Put => match decode::<WorkerInfo>(&entry.value, "worker record") {
                // A worker identity may write only its own region's keys (nats-server enforces
                // that); the record inside must name the same region and worker, or a worker
                // of one region could pose as another region's.
                Ok(w) if entry.key != nats::worker_key(&w.region, &w.id) => {
                    warn!(key = entry.key, region = %w.region, worker = %w.id, "ignoring a worker record filed under another region's or worker's key");
                }
                Ok(w) => {
                    let before = self.workers.get(&entry.key).map(Incarnation::of);
                    if before.is_none() {
                        info!(worker = %w.id, region = %w.region, slots = w.slots, "worker joined");
                    }
                    let new = before != Some(Incarnation::of(&w));
                    let gone = new.then(|| Gone::restarted(&w));
                    self.workers.insert(entry.key, w);
                    return gone;
                }
                Err(e) => warn!(key = entry.key, error = %e, "ignoring a malformed worker record"),
            },
            Operation::Delete | Operation::Purge => {
                self.workers.remove(&entry.key);
            }
        }
        None
    }

    /// Workers whose record names a process on this host that no longer runs and that have
    /// been silent for [`DEAD_SILENCE_MS`]: every task they were running is orphaned (each
    /// incarnation is handled once).
    pub(crate) fn dead_here(&mut self, now_ms: u64) -> Vec<Gone> {
        let here = suanli_shared::sys::hostname();
        let mut gone = Vec::new();
        for (key, w) in &self.workers {
            let incarnation = Incarnation::of(w);
            if w.host == here
                && now_ms.saturating_sub(w.heartbeat_ms) > DEAD_SILENCE_MS
                && !self.buried.contains(&(key.clone(), incarnation.clone()))
                && !suanli_shared::sys::pid_alive(w.pid)
            {
                gone.push(Gone::dead(w));
                self.buried.insert((key.clone(), incarnation));
            }
        }
        // Forget incarnations no record names any more.
        let workers = &self.workers;
        self.buried
            .retain(|(key, inc)| workers.get(key).is_some_and(|w| &Incarnation::of(w) == inc));
        gone
    }
}
