//! Commands that rewrite a whole job, from the operator or the job's own studio: cancel (every
//! open task canceled, workers told to stop) and retry (failed and canceled tasks back to the
//! backlog as a new attempt).

use bytes::Bytes;
use suanli_shared::nats;
use suanli_shared::protocol::api::{ApiError, Caller};
use suanli_shared::protocol::{now_ms, JobState, JobStatus, TaskRecord, TaskState};
use suanli_shared::{JobId, Studio};
use tracing::{info, warn};

use crate::actor::Coordinator;
use crate::state::Versioned;

impl Coordinator {
    pub(crate) async fn cancel(
        &mut self,
        caller: &Caller,
        id: &JobId,
    ) -> Result<JobStatus, ApiError> {
        self.job(caller, id)?;
        self.cancel_job(id, "canceled by request").await?;
        Ok(self.jobs[id].status())
    }

    /// Cancels every unfinished job of `studio` (its budget is spent, under `cancel`).
    pub(crate) async fn cancel_studio(&mut self, studio: &Studio, reason: &str) {
        let open: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| &j.rec.rec.spec.studio == studio && !j.rec.rec.state.is_final())
            .map(|j| j.rec.rec.id.clone())
            .collect();
        for id in open {
            if let Err(e) = self.cancel_job(&id, reason).await {
                warn!(job = %id, error = %e, "cannot cancel a job");
            }
        }
    }

    /// Cancels a job that is not final: the record first, then the workers told, then its open
    /// tasks, then the event.
    async fn cancel_job(&mut self, id: &JobId, reason: &str) -> Result<(), ApiError> {
        let job = &self.jobs[id];
        if !job.rec.rec.state.is_final() {
            let mut rec = job.rec.rec.clone();
            rec.state = JobState::Canceled;
            rec.finished_ms = Some(now_ms());
            rec.reason = Some(reason.into());
            let rev = self
                .write_job(&rec, job.rec.rev)
                .await
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
            self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
            // Tell workers to stop now; queued messages are skipped because the tasks are canceled.
            let _ = self
                .farm
                .client
                .publish(nats::cancel_subject(id), Bytes::new())
                .await;
            let open: Vec<TaskRecord> = self.jobs[id]
                .tasks()
                .iter()
                .filter(|t| !t.rec.state.is_final())
                .map(|t| t.rec.clone())
                .collect();
            for mut t in open {
                t.state = TaskState::Canceled;
                t.finished_ms = Some(now_ms());
                if let Err(e) = self.set_task(id, t).await {
                    warn!(error = %format!("{e:#}"), "cannot record a canceled task");
                }
            }
            self.publish_job_event(id, JobState::Canceled, Some(reason.into()))
                .await;
            info!(job = %id, reason, "job canceled");
        }
        Ok(())
    }

    pub(crate) async fn retry(
        &mut self,
        caller: &Caller,
        id: &JobId,
    ) -> Result<JobStatus, ApiError> {
        let job = self.job(caller, id)?;
        let again: Vec<TaskRecord> = job
            .tasks()
            .iter()
            .filter(|t| matches!(t.rec.state, TaskState::Failed | TaskState::Canceled))
            .map(|t| t.rec.clone())
            .collect();
        if again.is_empty() {
            return Err(ApiError::bad_request(format!(
                "job {id} has no failed or canceled tasks to retry"
            )));
        }
        let mut rec = job.rec.rec.clone();
        rec.state = JobState::Running;
        rec.finished_ms = None;
        rec.reason = None;
        let rev = self
            .write_job(&rec, job.rec.rev)
            .await
            .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        self.jobs.get_mut(id).expect("job exists").rec = Versioned { rec, rev };
        let n = again.len();
        for mut t in again {
            t.state = TaskState::Pending;
            t.attempt += 1;
            t.not_before_ms = 0;
            t.finished_ms = None;
            t.region = None;
            self.set_task(id, t)
                .await
                .map_err(|e| ApiError::internal(format!("{e:#}")))?;
        }
        info!(job = %id, tasks = n, "job retried");
        self.publish_job_event(id, JobState::Running, None).await;
        Ok(self.jobs[id].status())
    }
}
