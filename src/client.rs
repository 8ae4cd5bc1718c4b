//! The studio's and operator's side of the coordinator API: typed requests over NATS
//! request/reply, waiting on a job through its events, and fetching verified frames. A client
//! calls as one [`Caller`], on that caller's subjects: the operator's, or a studio's.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use suanli_shared::access::{Access, Role};
use suanli_shared::layout;
use suanli_shared::nats;
use suanli_shared::protocol::api::{self, ApiError, Caller, Endpoint, ErrorKind};
use suanli_shared::protocol::{
    decode, encode, JobRecord, JobSpec, JobStatus, OutputManifest, WorkerInfo,
};
use suanli_shared::regions::RegionProfile;
use suanli_shared::store::{Store, StoreErrorKind};
use suanli_shared::{JobId, Region, WorkerId};

/// How long a request waits for the coordinator.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// An API call failed; `kind` lets the binary pick an exit code.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Api(#[from] ApiError),
    #[error("no coordinator answered on {0}: start one with `suanli coordinator` or `suanli up`")]
    NoCoordinator(String),
    #[error("request to the coordinator failed: {0}")]
    Transport(String),
    /// nats-server refused the request: this identity may not call it.
    #[error("permission denied: this identity may not publish to {subject} ({why})")]
    Denied { subject: String, why: String },
}

impl ClientError {
    /// The coordinator refused the request itself (bad, unknown job, not this caller's to
    /// make): asking again will not help.
    pub fn is_bad_request(&self) -> bool {
        matches!(self, ClientError::Denied { .. })
            || matches!(self, ClientError::Api(e) if matches!(e.kind, ErrorKind::BadRequest | ErrorKind::NotFound | ErrorKind::Forbidden))
    }
}

/// Where a command finds the API, how it proves who it is and who it calls as, resolved once
/// from the command line (`--nats`, `--identity`, `--ca`, `--studio`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub url: String,
    pub caller: Caller,
    pub access: Access,
}

impl ClientConfig {
    pub async fn connect(&self) -> anyhow::Result<Client> {
        Client::open(&self.url, self.caller.clone(), &self.access).await
    }
}

#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    url: String,
    /// Who every call is made as: it picks the subjects (`suanli.api.*` or
    /// `suanli.studio.<studio>.*`).
    caller: Caller,
    /// The server's last permissions violation on this connection: a request it dropped is
    /// answered "denied" at once instead of after the request timeout.
    denied: tokio::sync::watch::Receiver<Option<String>>,
}

impl Client {
    /// Connects as the operator (on a farm without identities, anyone who names no studio).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::open(url, Caller::Operator, &Access::none()).await
    }

    /// Connects to call the API as `caller`, on a farm without identities.
    pub async fn connect_as(url: &str, caller: Caller) -> anyhow::Result<Self> {
        Self::open(url, caller, &Access::none()).await
    }

    /// Connects with an identity (a secure farm): a studio's identity calls as that studio,
    /// the operator's as the operator.
    pub async fn connect_with(url: &str, access: &Access) -> anyhow::Result<Self> {
        let caller = match access.role() {
            Some(Role::Studio(s)) => Caller::Studio(s.clone()),
            _ => Caller::Operator,
        };
        Self::open(url, caller, access).await
    }

    /// Connects with `access`, calling as `caller`. The one place a client's caller is set.
    pub async fn open(url: &str, caller: Caller, access: &Access) -> anyhow::Result<Self> {
        let conn = nats::open(url, "suanli-cli", access).await?;
        let nats = conn.client;
        let denied = conn.denied;
        Ok(Self {
            nats,
            url: url.to_string(),
            caller,
            denied,
        })
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// The server's permission violations on this connection, for callers that wait on
    /// something the server may refuse (see [`Client::call`]).
    pub fn denied(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.denied.clone()
    }

    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// Sends one request to the coordinator: the endpoint type fixes the request and the
    /// reply, the caller and the endpoint the subject, so every API call goes through here.
    pub async fn call<E: Endpoint>(&self, req: &E::Request) -> Result<E::Reply, ClientError> {
        let body = encode(req, "request").map_err(|e| ClientError::Transport(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(body)
            .timeout(Some(REQUEST_TIMEOUT));
        let subject = self.caller.subject::<E>();
        let mut denied = self.denied.clone();
        denied.mark_unchanged();
        let sent = self.nats.send_request(subject.clone(), request);
        let refused = async {
            loop {
                if denied.changed().await.is_err() {
                    return std::future::pending().await;
                }
                if let Some(e) = denied.borrow().as_deref() {
                    if e.contains(&format!("\"{subject}\"")) {
                        return e.to_string();
                    }
                }
            }
        };
        let msg = tokio::select! {
            sent = sent => sent.map_err(|e| match e.kind() {
                async_nats::RequestErrorKind::NoResponders => {
                    ClientError::NoCoordinator(self.url.clone())
                }
                _ => ClientError::Transport(e.to_string()),
            })?,
            why = refused => return Err(ClientError::Denied { subject, why }),
        };
        match decode::<api::Reply<E::Reply>>(&msg.payload, "reply") {
            Ok(api::Reply::Ok(v)) => Ok(v),
            Ok(api::Reply::Error(e)) => Err(ClientError::Api(e)),
            Err(e) => Err(ClientError::Transport(e.to_string())),
        }
    }

    pub async fn submit(&self, spec: JobSpec) -> Result<api::SubmitReply, ClientError> {
        self.call::<api::Submit>(&api::SubmitRequest { spec }).await
    }

    pub async fn status(&self, job: &JobId) -> Result<JobStatus, ClientError> {
        self.call::<api::Status>(&job_request(job)).await
    }

    pub async fn job(&self, job: &JobId) -> Result<JobRecord, ClientError> {
        self.call::<api::Job>(&job_request(job)).await
    }

    pub async fn jobs(&self) -> Result<Vec<JobStatus>, ClientError> {
        self.call::<api::Jobs>(&api::Empty {}).await
    }

    pub async fn cancel(&self, job: &JobId) -> Result<JobStatus, ClientError> {
        self.call::<api::Cancel>(&job_request(job)).await
    }

    pub async fn retry(&self, job: &JobId) -> Result<JobStatus, ClientError> {
        self.call::<api::Retry>(&job_request(job)).await
    }

    /// Every worker, in (region, name) order: as many calls as pages (a large farm's records
    /// do not fit one message).
    pub async fn workers(&self) -> Result<Vec<WorkerInfo>, ClientError> {
        let mut all: Vec<WorkerInfo> = Vec::new();
        loop {
            let offset = all.len() as u32;
            let page = self
                .call::<api::Workers>(&api::WorkersRequest { offset })
                .await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    pub async fn regions(&self) -> Result<Vec<RegionProfile>, ClientError> {
        self.call::<api::Regions>(&api::Empty {}).await
    }

    /// One page of a job's task records (at most [`api::MAX_TASKS_PAGE`]).
    pub async fn tasks(
        &self,
        job: &JobId,
        offset: u32,
        limit: u32,
    ) -> Result<api::TasksPage, ClientError> {
        let req = api::TasksRequest {
            job: job.clone(),
            offset,
            limit,
        };
        self.call::<api::Tasks>(&req).await
    }

    /// Asks the coordinator to drain a worker; returns the worker as last seen.
    pub async fn drain(
        &self,
        region: &Region,
        worker: &WorkerId,
    ) -> Result<WorkerInfo, ClientError> {
        let req = api::DrainRequest {
            region: region.clone(),
            worker: worker.clone(),
        };
        self.call::<api::Drain>(&req).await
    }

    /// Waits until the job reaches a final state (or `timeout`), calling `on_update` with each
    /// new status. Woken by the job's events (their subject names the job's studio, which the
    /// first status tells); polls every second as a fallback.
    pub async fn wait(
        &self,
        job: &JobId,
        timeout: Option<Duration>,
        mut on_update: impl FnMut(&JobStatus),
    ) -> anyhow::Result<Option<JobStatus>> {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut events: Option<async_nats::Subscriber> = None;
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            // A NATS restart or a coordinator fail-over is a pause, not the end of the wait:
            // only a refused request (unknown job) ends it.
            let status =
                match self.status(job).await {
                    Ok(s) => s,
                    Err(e) if !e.is_bad_request() => {
                        tracing::warn!(error = %e, "status unavailable; waiting on");
                        let limit = deadline
                            .map(|d| d.min(tokio::time::Instant::now() + Duration::from_secs(1)));
                        tokio::time::sleep_until(limit.unwrap_or_else(|| {
                            tokio::time::Instant::now() + Duration::from_secs(1)
                        }))
                        .await;
                        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                            return Ok(None);
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
            let events = match events.as_mut() {
                Some(events) => events,
                None => {
                    let subject = nats::job_events(&status.studio, job);
                    let sub = self
                        .nats
                        .subscribe(subject)
                        .await
                        .context("cannot subscribe to the job's events")?;
                    events = Some(sub);
                    // Ask again now that events are heard: nothing between the two is missed.
                    continue;
                }
            };
            on_update(&status);
            if status.state.is_final() {
                return Ok(Some(status));
            }
            let sleep_until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep_until(sleep_until) => return Ok(None),
                _ = poll.tick() => {}
                Some(_) = events.next() => {
                    // Coalesce a burst of events into one status request, bounded from the
                    // first event so a busy job still updates at least every 50 ms.
                    let until = tokio::time::Instant::now() + Duration::from_millis(50);
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, events.next()).await {}
                }
            }
        }
    }
}

fn job_request(job: &JobId) -> api::JobRequest {
    api::JobRequest { job: job.clone() }
}

/// What `fetch` did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FetchReport {
    pub frames: usize,
    pub downloaded: usize,
    pub already_present: usize,
    pub bytes: u64,
    /// Frames of tasks with no committed output yet.
    pub missing: Vec<u32>,
    /// Files whose stored bytes do not match their committed hash or size (damaged in the
    /// store); nothing is written for them.
    pub unverified: Vec<String>,
}

enum Fetched {
    Downloaded,
    AlreadyPresent,
    Unverified(String),
}

/// What `fetch` reports as it goes (a progress bar's input).
#[derive(Debug, Clone, Copy)]
pub enum FetchProgress {
    /// Once the committed manifests are read: the files and bytes to fetch.
    Total { files: usize, bytes: u64 },
    /// One file done (downloaded, kept or refused), with its size.
    File { bytes: u64 },
}

/// Downloads every committed frame of a job into `out`, verifying each file's BLAKE3 hash.
/// Files already there with the right hash are kept.
pub async fn fetch(job: &JobRecord, store: &Store, out: &Path) -> anyhow::Result<FetchReport> {
    fetch_with_progress(job, store, out, |_| {}).await
}

/// [`fetch`], telling `progress` the totals and each file done.
pub async fn fetch_with_progress(
    job: &JobRecord,
    store: &Store,
    out: &Path,
    progress: impl Fn(FetchProgress),
) -> anyhow::Result<FetchReport> {
    tokio::fs::create_dir_all(out)
        .await
        .with_context(|| format!("cannot create {}", out.display()))?;
    let tasks = job.spec.tasks()?;
    let mut report = FetchReport::default();
    let studio = &job.spec.studio;
    let results = futures::stream::iter(tasks.into_iter().map(|(chunk, key)| {
        let (store, studio) = (store.clone(), studio.clone());
        async move {
            match store
                .get_bytes(&layout::output_manifest(&studio, &key))
                .await
            {
                Ok(bytes) => Ok((
                    chunk,
                    key,
                    Some(OutputManifest::parse(&bytes, &key).map_err(anyhow::Error::msg)?),
                )),
                Err(e) if e.kind() == StoreErrorKind::NotFound => Ok((chunk, key, None)),
                Err(e) => Err(anyhow::Error::new(e)),
            }
        }
    }))
    .buffered(32)
    .collect::<Vec<_>>()
    .await;
    let mut downloads = Vec::new();
    for r in results {
        let (chunk, key, manifest) = r?;
        let Some(manifest) = manifest else {
            report.missing.extend(chunk.frames());
            continue;
        };
        for f in manifest.files {
            report.frames += 1;
            report.bytes += f.size;
            downloads.push((key, f));
        }
    }
    progress(FetchProgress::Total {
        files: downloads.len(),
        bytes: report.bytes,
    });
    let progress = &progress;
    let outcomes =
        futures::stream::iter(downloads.into_iter().map(|(key, f)| {
            let (store, studio) = (store.clone(), studio.clone());
            let dest = out.join(&f.name);
            async move {
                let size = f.size;
                let done = async {
            // Keep a file that is already there and verifies.
            if let Ok(meta) = tokio::fs::metadata(&dest).await {
                if meta.len() == f.size {
                    let d = dest.clone();
                    let same = tokio::task::spawn_blocking(move || {
                        suanli_shared::ContentHash::of_file(&d)
                    })
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .is_some_and(|(h, _)| h == f.hash);
                    if same {
                        return anyhow::Ok(Fetched::AlreadyPresent);
                    }
                }
                tokio::fs::remove_file(&dest).await.ok();
            }
            let got = store
                .download_verified(
                    &layout::output_file(&studio, &key, &f.hash, &f.name),
                    &f.hash,
                    f.size,
                    &dest,
                )
                .await;
            match got {
                Ok(_) => Ok(Fetched::Downloaded),
                Err(e) if e.kind() == StoreErrorKind::Corrupt => {
                    tracing::warn!(file = %f.name, error = %e, "stored frame does not verify");
                    Ok(Fetched::Unverified(f.name.clone()))
                }
                Err(e) => Err(anyhow::Error::new(e).context(format!("cannot fetch {}", f.name))),
            }
            }
            .await;
                progress(FetchProgress::File { bytes: size });
                done
            }
        }))
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for o in outcomes {
        match o? {
            Fetched::Downloaded => report.downloaded += 1,
            Fetched::AlreadyPresent => report.already_present += 1,
            Fetched::Unverified(name) => report.unverified.push(name),
        }
    }
    report.unverified.sort();
    Ok(report)
}
