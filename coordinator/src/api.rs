//! The coordinator's API: answering requests on the `suanli.api.*` (operator) and
//! `suanli.studio.<studio>.*` subjects from the actor's state (status, jobs, tasks, workers,
//! regions), starting submissions off the actor and adopting them, and passing drain, cancel
//! and retry on. Requests arrive decoded as one `api::Request` enum with their `Caller`
//! (declared with the endpoints in `shared::protocol::api`); each arm answers with its
//! endpoint's reply type, so a reply of the wrong type does not compile.
//!
//! The subject's studio is trusted (nats-server permissions stop a studio from using another's
//! subjects); what the server cannot check is checked here: a studio sees and acts on its own
//! jobs only, and a job of another studio is answered exactly like a job that does not exist.

use bytes::Bytes;
use suanli_shared::nats;
use suanli_shared::protocol::api::{self, ApiError, Caller, Endpoint, Request};
use suanli_shared::protocol::{encode, now_ms, JobStatus, WorkerInfo, WorkerState};
use suanli_shared::regions::RegionProfile;
use suanli_shared::JobId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::actor::{Coordinator, Prepared};
use crate::state::Job;
use crate::submit;

/// The body of a reply to `E`. A reply that cannot be encoded becomes an internal error,
/// never an empty payload.
pub(crate) fn reply_body<E: Endpoint>(result: Result<E::Reply, ApiError>) -> Bytes {
    let reply = match result {
        Ok(v) => api::Reply::Ok(v),
        Err(e) => api::Reply::Error(e),
    };
    encode(&reply, "API reply").unwrap_or_else(|e| {
        warn!(endpoint = E::SUBJECT, error = %e, "cannot encode an API reply");
        error_body(ApiError::internal(e.to_string()))
    })
}

/// The body of an error reply, whatever the endpoint.
fn error_body(e: ApiError) -> Bytes {
    encode(&api::Reply::<()>::Error(e), "API error reply").unwrap_or_else(|_| {
        Bytes::from_static(br#"{"error":{"kind":"internal","message":"cannot encode the reply"}}"#)
    })
}

impl Coordinator {
    /// Answers a request to `E` (a request without a reply subject gets none).
    pub(crate) fn reply<E: Endpoint>(
        &self,
        to: Option<async_nats::Subject>,
        result: Result<E::Reply, ApiError>,
    ) {
        self.send_reply(to, reply_body::<E>(result));
    }

    fn send_reply(&self, to: Option<async_nats::Subject>, body: Bytes) {
        let Some(to) = to else { return };
        let client = self.farm.client.clone();
        self.tracker.spawn(async move {
            if let Err(e) = client.publish(to, body).await {
                warn!(error = %e, "cannot send an API reply");
            }
        });
    }

    /// The job `id` if `caller` may see it; a job of another studio is not found, with the
    /// same words as a job that does not exist, so its existence does not leak.
    pub(crate) fn job(&self, caller: &Caller, id: &JobId) -> Result<&Job, ApiError> {
        self.jobs
            .get(id)
            .filter(|j| caller.owns(&j.rec.rec.spec.studio))
            .ok_or_else(|| ApiError::not_found(format!("no job {id}")))
    }

    /// Every API request: decoded once into its [`Caller`] and [`Request`] (which refuses an
    /// operator endpoint to a studio), then one arm per endpoint, each answered with that
    /// endpoint's reply type.
    pub(crate) async fn handle_api(
        &mut self,
        msg: async_nats::Message,
        submit_tx: &mpsc::Sender<Prepared>,
    ) {
        let reply = msg.reply.clone();
        let (caller, request) = match Request::decode(msg.subject.as_str(), &msg.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                debug!(subject = %msg.subject, error = %e, "API request refused");
                return self.send_reply(reply, error_body(e));
            }
        };
        debug!(%caller, endpoint = request.token(), "API request");
        match request {
            Request::Submit(req) => {
                let Some(reply) = reply else { return };
                // The studio's contract (regions, priority ceiling) before anything is read.
                let spec = match caller.own_spec(req.spec).and_then(|spec| {
                    self.config
                        .studios
                        .terms(&spec.studio)
                        .check_job(&spec)
                        .map_err(ApiError::bad_request)?;
                    crate::licenses::check_job(&self.config.catalog.licenses, &spec)
                        .map_err(ApiError::bad_request)?;
                    Ok(spec)
                }) {
                    Ok(spec) => spec,
                    Err(e) => {
                        info!(%caller, error = %e, "submit refused");
                        return self.send_reply(Some(reply), error_body(e));
                    }
                };
                let (farm, store, tx) = (self.farm.clone(), self.store.clone(), submit_tx.clone());
                let offered = self.offered_renderers();
                self.tracker.spawn(async move {
                    match submit::prepare(spec, &farm, &store, &offered).await {
                        Ok(job) => {
                            let _ = tx.send(Prepared { job, reply }).await;
                        }
                        Err(e) => {
                            let _ = farm.client.publish(reply, error_body(e)).await;
                        }
                    }
                });
            }
            Request::Status(req) => {
                let r = self.job(&caller, &req.job).map(|j| self.status_of(j));
                self.reply::<api::Status>(reply, r);
            }
            Request::Regions(_) => {
                let list: Vec<RegionProfile> = self.config.catalog.regions().cloned().collect();
                self.reply::<api::Regions>(reply, Ok(list));
            }
            Request::Job(req) => {
                let r = self.job(&caller, &req.job).map(|j| j.rec.rec.clone());
                self.reply::<api::Job>(reply, r);
            }
            Request::Jobs(_) => {
                let list: Vec<_> = self
                    .jobs
                    .values()
                    .rev()
                    .filter(|j| caller.owns(&j.rec.rec.spec.studio))
                    .take(200)
                    .map(|j| {
                        let mut s = self.status_of(j);
                        s.failures.clear();
                        s
                    })
                    .collect();
                self.reply::<api::Jobs>(reply, Ok(list));
            }
            // Operator only: `Request::decode` refuses these to a studio.
            Request::Workers(req) => {
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
                let page = page_within(list.iter().skip(req.offset as usize), api::MAX_PAGE_BYTES);
                self.reply::<api::Workers>(reply, Ok(page));
            }
            Request::Tasks(req) => {
                let r = self.tasks_page(&caller, &req);
                self.reply::<api::Tasks>(reply, r);
            }
            Request::Drain(req) => {
                let r = self.drain(&req).await;
                self.reply::<api::Drain>(reply, r);
            }
            Request::Cancel(req) => {
                let r = self.cancel(&caller, &req.job).await;
                self.reply::<api::Cancel>(reply, r);
            }
            Request::Retry(req) => {
                let r = self.retry(&caller, &req.job).await;
                self.reply::<api::Retry>(reply, r);
            }
        }
    }

    /// Tasks `offset .. offset + limit` of a job (the limit clamped to a page).
    fn tasks_page(
        &self,
        caller: &Caller,
        req: &api::TasksRequest,
    ) -> Result<api::TasksPage, ApiError> {
        let job = self.job(caller, &req.job)?;
        let limit = req.limit.min(api::MAX_TASKS_PAGE) as usize;
        let tasks = page_within(
            job.tasks()
                .iter()
                .skip(req.offset as usize)
                .take(limit)
                .map(|t| &t.rec),
            api::MAX_PAGE_BYTES,
        );
        Ok(api::TasksPage {
            total: job.tasks().len() as u32,
            offset: req.offset,
            tasks,
        })
    }

    /// Tells one worker to drain; answers with the worker as last seen.
    async fn drain(&self, req: &api::DrainRequest) -> Result<WorkerInfo, ApiError> {
        let key = nats::worker_key(&req.region, &req.worker);
        let w = self.workers.get(&key).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "no worker '{}' in region '{}' (see `suanli workers`)",
                req.worker, req.region
            ))
        })?;
        info!(worker = %w.id, region = %w.region, "drain requested");
        if let Err(e) = self
            .farm
            .client
            .publish(nats::drain_subject(&w.region, &w.id), Bytes::new())
            .await
        {
            warn!(error = %e, "cannot send a drain request");
        }
        Ok(w)
    }

    /// A job's status with its ledger priced from the region catalog.
    fn status_of(&self, job: &Job) -> JobStatus {
        let mut status = job.status();
        status.inputs_in = self.staging.presence(&status.id);
        // The bytes pre-staging moved are the region's input bytes too (its tasks then find
        // them there and move none), priced as egress with the rest.
        for (region, p) in &status.inputs_in {
            if p.moved_bytes > 0 {
                status.regions.entry(region.clone()).or_default().bytes_in += p.moved_bytes;
            }
        }
        suanli_shared::ledger::price_status(&mut status, &self.config.catalog);
        if !status.state.is_final() && status.tasks.pending + status.tasks.queued > 0 {
            status.waiting = self.no_worker_runs(&job.rec.rec.spec);
            let spec = &job.rec.rec.spec;
            if status.waiting.is_none() && !spec.requirements.licenses.is_empty() {
                let used = crate::licenses::in_use(self.jobs.values());
                status.waiting =
                    crate::licenses::waiting(spec, &self.config.catalog.licenses, &used);
            }
        }
        let studio = &status.studio;
        status.budget = self.budgets.status(
            studio,
            &self.config.studios,
            &self.config.catalog.currency,
            self.budget_rooms.get(studio) == Some(&0),
        );
        status
    }

    /// Why no live worker would run `spec`'s tasks (its renderer, its command profile, in its
    /// regions), from the renderers and profiles workers advertise; `None` if one would.
    pub(crate) fn no_worker_runs(&self, spec: &suanli_shared::protocol::JobSpec) -> Option<String> {
        use suanli_shared::protocol::RendererSpec;
        let in_regions =
            |w: &&WorkerInfo| spec.regions.is_empty() || spec.regions.contains(&w.region);
        let live: Vec<&WorkerInfo> = self.live_workers().filter(in_regions).collect();
        if live.is_empty() {
            return None; // nothing to say about renderers: the farm shows no worker at all
        }
        let kind = spec.renderer.kind();
        let runs = |w: &&WorkerInfo| match &spec.renderer {
            RendererSpec::Command {
                profile: Some(p), ..
            } => w.renderers.contains_key(kind) && w.profiles.contains(p),
            RendererSpec::Command { profile: None, .. } => {
                w.renderers.get(kind).is_some_and(|v| v == "any")
            }
            _ => w.renderers.contains_key(kind),
        };
        if live.iter().any(runs) {
            return unmet_requirements(&spec.requirements, live.into_iter().filter(runs));
        }
        Some(match &spec.renderer {
            RendererSpec::Command { profile: Some(p), .. } => format!(
                "no live worker has the command profile '{p}': its tasks wait until one that defines it (--command-profile) joins"
            ),
            RendererSpec::Command { profile: None, .. } => "no live worker runs a job's own command (--allow-any-command): name one of the workers' command profiles, or start such a worker".to_string(),
            _ => format!(
                "no live worker allows the {kind} renderer: its tasks wait until one that does (--renderers) joins"
            ),
        })
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
        info!(job = %id, studio = %job.rec.rec.spec.studio, name = %job.rec.rec.spec.name, tasks = tasks.total, cached = tasks.cached, "job submitted");
        let reply = api::SubmitReply {
            id: id.clone(),
            tasks: tasks.total,
            cached: tasks.cached,
        };
        self.jobs.insert(id.clone(), job);
        self.publish_job_event(&id, state, None).await;
        self.reply::<api::Submit>(Some(prepared.reply), Ok(reply));
    }
}

/// The records in order while their encoded size stays within `budget` bytes (always the
/// first one): a page of tasks with many outputs or long failures is cut short rather than
/// refused for its size; the caller asks again from where it ends.
fn page_within<'a, T: serde::Serialize + Clone + 'a>(
    records: impl Iterator<Item = &'a T>,
    budget: usize,
) -> Vec<T> {
    let mut used = 0usize;
    let mut out = Vec::new();
    for rec in records {
        let size = serde_json::to_vec(rec).map_or(usize::MAX, |b| b.len() + 1);
        if !out.is_empty() && used.saturating_add(size) > budget {
            break;
        }
        used = used.saturating_add(size);
        out.push(rec.clone());
    }
    out
}

/// Why none of `workers` (live, in the job's regions, running its renderer) can run a task
/// with these requirements: the requirements the closest worker (the one missing the fewest)
/// does not meet and what it has; `None` if one fits.
fn unmet_requirements<'a>(
    req: &suanli_shared::protocol::Requirements,
    workers: impl Iterator<Item = &'a WorkerInfo>,
) -> Option<String> {
    use suanli_shared::protocol::Resources;
    if !req.asks_worker() {
        return None;
    }
    let mut closest: Option<(&WorkerInfo, Vec<suanli_shared::protocol::Unmet>)> = None;
    for w in workers {
        let unmet = Resources::unmet(w.resources.as_ref(), req);
        if unmet.is_empty() {
            return None;
        }
        if closest.as_ref().is_none_or(|(_, u)| unmet.len() < u.len()) {
            closest = Some((w, unmet));
        }
    }
    let (w, unmet) = closest?;
    let what: Vec<String> = unmet.iter().map(ToString::to_string).collect();
    Some(format!(
        "no live worker meets its requirements: {} on the closest, {}/{}; its tasks start when a worker that fits joins",
        what.join(", "),
        w.region,
        w.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::protocol::{OutputFile, TaskRecord, TaskState};
    use suanli_shared::{ContentHash, FrameChunk, JobId};

    #[test]
    fn a_page_of_large_task_records_stays_under_the_message_limit() {
        let job = JobId::generate();
        // 500 tasks of 200 frames each: about 40 MB of records, forty times a message.
        let records: Vec<TaskRecord> = (0..api::MAX_TASKS_PAGE)
            .map(|i| {
                let mut t = TaskRecord::new(
                    job.clone(),
                    i,
                    ContentHash::of(&i.to_le_bytes()),
                    FrameChunk {
                        start: i * 200 + 1,
                        end: i * 200 + 200,
                        step: 1,
                    },
                    TaskState::Done,
                    Some(1),
                );
                t.outputs = (0..200)
                    .map(|f| OutputFile {
                        frame: i * 200 + f + 1,
                        name: format!("frame_{:06}.exr", i * 200 + f + 1),
                        hash: ContentHash::of(&f.to_le_bytes()),
                        size: 12_345_678,
                    })
                    .collect();
                t
            })
            .collect();
        let page = page_within(records.iter(), api::MAX_PAGE_BYTES);
        assert!(
            !page.is_empty() && page.len() < records.len(),
            "{}",
            page.len()
        );
        assert_eq!(page[..], records[..page.len()], "the first ones, in order");
        let reply = reply_body::<api::Tasks>(Ok(api::TasksPage {
            total: records.len() as u32,
            offset: 0,
            tasks: page,
        }));
        assert!(
            reply.len() <= suanli_shared::protocol::codec::MAX_MESSAGE,
            "{}",
            reply.len()
        );
        let decoded: api::Reply<api::TasksPage> = serde_json::from_slice(&reply).unwrap();
        assert!(
            matches!(decoded, api::Reply::Ok(_)),
            "an answer, not an error"
        );
        // Small records: the whole page.
        let small: Vec<TaskRecord> = records
            .iter()
            .cloned()
            .map(|mut t| {
                t.outputs.clear();
                t
            })
            .collect();
        assert_eq!(
            page_within(small.iter(), api::MAX_PAGE_BYTES).len(),
            small.len()
        );
    }

    #[test]
    fn a_thousand_gpu_servers_are_listed_in_pages_that_each_fit_a_message() {
        let gpus: Vec<serde_json::Value> = (0..8)
            .map(|i| {
                serde_json::json!({"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
                    "uuid": format!("GPU-{i:08}-aaaa-bbbb-cccc-dddddddddddd")})
            })
            .collect();
        let workers: Vec<WorkerInfo> = (0..1_000)
            .map(|i| {
                serde_json::from_value(serde_json::json!({
                    "id": format!("gpu-server-{i:04}"), "region": "guian", "slots": 8, "busy": 8,
                    "state": "rendering", "renderers": {"blender": "4.2.1", "command": "any"},
                    "host": format!("gpu-server-{i:04}.guian.example"), "pid": 4242,
                    "started_ms": 0, "heartbeat_ms": 0, "tasks_done": 123456,
                    "core_seconds": 1.0e9, "current": [],
                    "resources": {"cores": 128, "memory_mib": 1_048_576, "gpus": gpus,
                        "tags": ["redshift", "octane"]},
                    "gpus_busy": 8,
                }))
                .unwrap()
            })
            .collect();
        let whole = reply_body::<api::Workers>(Ok(workers.clone()));
        assert!(
            whole.len() < 200,
            "one reply of every worker is refused for its size: {}",
            String::from_utf8_lossy(&whole)
        );
        // Offset after offset, as the client asks, until an empty page.
        let mut listed: Vec<WorkerInfo> = Vec::new();
        loop {
            let page = page_within(workers.iter().skip(listed.len()), api::MAX_PAGE_BYTES);
            let body = reply_body::<api::Workers>(Ok(page.clone()));
            assert!(body.len() <= suanli_shared::protocol::codec::MAX_MESSAGE);
            if page.is_empty() {
                break;
            }
            listed.extend(page);
        }
        assert_eq!(listed, workers);
    }
}
