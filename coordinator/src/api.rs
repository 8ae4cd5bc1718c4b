//! The coordinator's API: answering requests on the `api::*` subjects from the actor's state
//! (status, jobs, tasks, workers, regions), starting submissions off the actor and adopting
//! them, and passing drain, cancel and retry on. One `match` on the subject, so the request
//! vocabulary lives in one place.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use suanli_shared::nats;
use suanli_shared::protocol::api::{self, ApiError};
use suanli_shared::protocol::{now_ms, JobStatus, WorkerInfo, WorkerState};
use suanli_shared::regions::RegionProfile;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::actor::{Coordinator, Prepared};
use crate::kv::encode;
use crate::state::Job;
use crate::submit;

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed {what}: {e}")))
}

impl Coordinator {
    pub(crate) fn reply<T: Serialize>(
        &self,
        reply: Option<async_nats::Subject>,
        result: Result<T, ApiError>,
    ) {
        let Some(reply) = reply else { return };
        let body = match result {
            Ok(v) => encode(&api::Reply::Ok(v)),
            Err(e) => encode(&api::Reply::<()>::Error(e)),
        };
        let client = self.farm.client.clone();
        self.tracker.spawn(async move {
            if let Err(e) = client.publish(reply, body).await {
                warn!(error = %e, "cannot send an API reply");
            }
        });
    }

    fn job(&self, bytes: &[u8]) -> Result<&Job, ApiError> {
        let req: api::JobRequest = decode(bytes, "request")?;
        self.jobs
            .get(&req.job)
            .ok_or_else(|| ApiError::not_found(format!("no job {}", req.job)))
    }

    pub(crate) async fn handle_api(
        &mut self,
        msg: async_nats::Message,
        submit_tx: &mpsc::Sender<Prepared>,
    ) {
        let reply = msg.reply.clone();
        match msg.subject.as_str() {
            api::SUBMIT => {
                let Some(reply) = reply else { return };
                let req: api::SubmitRequest = match decode(&msg.payload, "submit request") {
                    Ok(r) => r,
                    Err(e) => return self.reply(Some(reply), Err::<(), _>(e)),
                };
                let (farm, store, tx) = (self.farm.clone(), self.store.clone(), submit_tx.clone());
                let offered = self.offered_renderers();
                self.tracker.spawn(async move {
                    match submit::prepare(req.spec, &farm, &store, &offered).await {
                        Ok(job) => {
                            let _ = tx.send(Prepared { job, reply }).await;
                        }
                        Err(e) => {
                            let body = encode(&api::Reply::<()>::Error(e));
                            let _ = farm.client.publish(reply, body).await;
                        }
                    }
                });
            }
            api::STATUS => {
                let r = self.job(&msg.payload).map(|j| self.status_of(j));
                self.reply(reply, r);
            }
            api::REGIONS => {
                let list: Vec<RegionProfile> = self.config.catalog.regions().cloned().collect();
                self.reply(reply, Ok(list));
            }
            api::JOB => {
                let r = self.job(&msg.payload).map(|j| j.rec.rec.clone());
                self.reply(reply, r);
            }
            api::JOBS => {
                let list: Vec<_> = self
                    .jobs
                    .values()
                    .rev()
                    .take(200)
                    .map(|j| {
                        let mut s = self.status_of(j);
                        s.failures.clear();
                        s
                    })
                    .collect();
                self.reply(reply, Ok(list));
            }
            api::WORKERS => {
                let now = now_ms();
                let lost = self.config.worker_lost_after.as_millis() as u64;
                let mut list: Vec<WorkerInfo> = self
                    .workers
                    .values()
                    .map(|w| {
                        let mut w = w.clone();
                        w.state = w.observed_state(now, lost);
                        w
                    })
                    .collect();
                list.sort_by(|a, b| (&a.region, &a.id).cmp(&(&b.region, &b.id)));
                self.reply(reply, Ok(list));
            }
            api::TASKS => {
                let r = decode::<api::TasksRequest>(&msg.payload, "request").and_then(|req| {
                    let job = self
                        .jobs
                        .get(&req.job)
                        .ok_or_else(|| ApiError::not_found(format!("no job {}", req.job)))?;
                    let limit = req.limit.min(api::MAX_TASKS_PAGE) as usize;
                    let tasks = job
                        .tasks()
                        .iter()
                        .skip(req.offset as usize)
                        .take(limit)
                        .map(|t| t.rec.clone())
                        .collect();
                    Ok(api::TasksPage {
                        total: job.tasks().len() as u32,
                        offset: req.offset,
                        tasks,
                    })
                });
                self.reply(reply, r);
            }
            api::DRAIN => {
                let r = decode::<api::DrainRequest>(&msg.payload, "request").and_then(|req| {
                    let key = nats::worker_key(&req.region, &req.worker);
                    self.workers.get(&key).cloned().ok_or_else(|| {
                        ApiError::not_found(format!(
                            "no worker '{}' in region '{}' (see `suanli workers`)",
                            req.worker, req.region
                        ))
                    })
                });
                if let Ok(w) = &r {
                    info!(worker = %w.id, region = %w.region, "drain requested");
                    if let Err(e) = self
                        .farm
                        .client
                        .publish(nats::drain_subject(&w.region, &w.id), Bytes::new())
                        .await
                    {
                        warn!(error = %e, "cannot send a drain request");
                    }
                }
                self.reply(reply, r);
            }
            api::CANCEL => {
                let r = match decode::<api::JobRequest>(&msg.payload, "request") {
                    Ok(req) => self.cancel(&req.job).await,
                    Err(e) => Err(e),
                };
                self.reply(reply, r);
            }
            api::RETRY => {
                let r = match decode::<api::JobRequest>(&msg.payload, "request") {
                    Ok(req) => self.retry(&req.job).await,
                    Err(e) => Err(e),
                };
                self.reply(reply, r);
            }
            other => {
                let r: Result<(), _> = Err(ApiError::bad_request(format!(
                    "unknown API subject {other}"
                )));
                self.reply(reply, r);
            }
        }
    }

    /// A job's status with its ledger priced from the region catalog.
    fn status_of(&self, job: &Job) -> JobStatus {
        let mut status = job.status();
        suanli_shared::ledger::price_status(&mut status, &self.config.catalog);
        status
    }

    /// Renderer versions offered by live workers.
    fn offered_renderers(&self) -> submit::Offered {
        let mut out = submit::Offered::new();
        for w in self.live_workers() {
            for (kind, version) in &w.renderers {
                out.entry(kind.clone()).or_default().insert(version.clone());
            }
        }
        out
    }

    pub(crate) fn live_workers(&self) -> impl Iterator<Item = &WorkerInfo> {
        let now = now_ms();
        let lost = self.config.worker_lost_after.as_millis() as u64;
        self.workers
            .values()
            .filter(move |w| w.observed_state(now, lost) != WorkerState::Lost)
    }

    pub(crate) async fn adopt(&mut self, prepared: Prepared) {
        let job = prepared.job;
        let (tasks, _) = job.counts();
        let (id, state) = (job.rec.rec.id.clone(), job.rec.rec.state);
        info!(job = %id, name = %job.rec.rec.spec.name, tasks = tasks.total, cached = tasks.cached, "job submitted");
        let reply = api::SubmitReply {
            id: id.clone(),
            tasks: tasks.total,
            cached: tasks.cached,
        };
        self.jobs.insert(id.clone(), job);
        self.publish_job_event(&id, state, None).await;
        self.reply(Some(prepared.reply), Ok(reply));
    }
}
