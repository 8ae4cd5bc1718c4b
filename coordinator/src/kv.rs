//! Writing the actor's changes to KV and announcing them: every task and job record change
//! goes through here, written with a revision check before the mirror takes it, and job state
//! changes are published as job events.

use anyhow::Context as _;
use suanli_shared::nats;
use suanli_shared::protocol::{encode, now_ms, JobEvent, JobRecord, JobState, TaskRecord};
use suanli_shared::JobId;
use tracing::{info, warn};

use crate::actor::Coordinator;
use crate::state::Versioned;

impl Coordinator {
    pub(crate) async fn publish_job_event(
        &self,
        job: &JobId,
        state: JobState,
        reason: Option<String>,
    ) {
        let Some(spec) = self.jobs.get(job).map(|j| &j.rec.rec.spec) else {
            return warn!(job = %job, "no job to announce a state change of");
        };
        let studio = &spec.studio;
        let subject = nats::job_event_subject(studio, job);
        let ev = JobEvent {
            job: job.clone(),
            state,
            at_ms: now_ms(),
            reason,
        };
        self.webhooks.notify(studio, &spec.webhooks, &ev);
        let body = match encode(&ev, "job event") {
            Ok(body) => body,
            Err(e) => return warn!(error = %e, "cannot encode a job event"),
        };
        match self.farm.js.publish(subject, body).await {
            Ok(ack) => {
                if let Err(e) = ack.await {
                    warn!(error = %e, "job event not stored");
                }
            }
            Err(e) => warn!(error = %e, "cannot publish a job event"),
        }
    }

    async fn write_task(&self, rec: &TaskRecord, rev: u64) -> anyhow::Result<u64> {
        let key = nats::task_kv_key(&rec.job, rec.task);
        self.farm
            .tasks_kv
            .update(&key, encode(rec, "task record")?, rev)
            .await
            .with_context(|| format!("cannot update task {key}"))
    }

    pub(crate) async fn write_job(&self, rec: &JobRecord, rev: u64) -> anyhow::Result<u64> {
        self.farm
            .jobs_kv
            .update(rec.id.as_str(), encode(rec, "job record")?, rev)
            .await
            .with_context(|| format!("cannot update job {}", rec.id))
    }

    /// Sets one task's record, persisting it first.
    pub(crate) async fn set_task(&mut self, job: &JobId, next: TaskRecord) -> anyhow::Result<()> {
        let rev = self.jobs[job].tasks()[next.task as usize].rev;
        let rev = self.write_task(&next, rev).await?;
        let job_now = &self.jobs[job];
        self.metrics.task_changed(
            &job_now.tasks()[next.task as usize].rec,
            &next,
            job_now.rec.rec.spec.renderer.kind(),
            &self.config.catalog,
            now_ms(),
        );
        self.jobs
            .get_mut(job)
            .expect("job exists")
            .set_task(Versioned { rec: next, rev });
        Ok(())
    }

    /// Sets the metrics' gauges from the mirror (a scrape asked).
    pub(crate) fn refresh_metrics(&self) {
        self.metrics.refresh(
            self.jobs.values(),
            self.workers.values(),
            now_ms(),
            self.config.worker_lost_after.as_millis() as u64,
        );
    }

    /// Moves the job to the state its tasks imply, persisting and announcing a change.
    pub(crate) async fn settle_job(&mut self, id: &JobId) {
        let Some(job) = self.jobs.get(id) else { return };
        let state = job.derived_state();
        if state == job.rec.rec.state {
            return;
        }
        let mut rec = job.rec.rec.clone();
        rec.state = state;
        rec.reason = (state == JobState::Failed)
            .then(|| job.failure_reason())
            .flatten();
        rec.finished_ms = state.is_final().then(now_ms);
        match self.write_job(&rec, job.rec.rev).await {
            Ok(rev) => {
                info!(job = %id, state = state.as_str(), "job state changed");
                let reason = rec.reason.clone();
                self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
                self.publish_job_event(id, state, reason).await;
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot record a job state change"),
        }
    }
}
