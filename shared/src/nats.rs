//! NATS names and set-up: the one module that spells subjects, streams, consumers and buckets,
//! and that creates them (idempotently) on a server it has checked is new enough.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use crate::access::Access;
use crate::names::{JobId, Region, Studio, WorkerId};
use crate::protocol::{DecodeError, Event, EventKind};

/// Work-queue stream holding released tasks, one subject per region.
pub const TASKS_STREAM: &str = "SUANLI_TASKS";
/// Limits stream of task and job events.
pub const EVENTS_STREAM: &str = "SUANLI_EVENTS";
/// Job spec and state, key = job id.
pub const JOBS_BUCKET: &str = "suanli_jobs";
/// Per-task state, key = `<job>.<task index>`.
pub const TASKS_BUCKET: &str = "suanli_tasks";
/// Worker heartbeats, key = `<region>.<worker>`.
pub const WORKERS_BUCKET: &str = "suanli_workers";
/// Durable consumer through which the coordinator folds events into state.
pub const COORDINATOR_CONSUMER: &str = "coordinator";
/// Coordinator leadership: one key, [`LEASE_KEY`], held by the coordinator that dispatches.
pub const LEASE_BUCKET: &str = "suanli_lease";
pub const LEASE_KEY: &str = "coordinator";

/// The hub's JetStream domain (deploy/nats/hub.conf); leaf nodes rewrite their clients'
/// JetStream API into it.
pub const JS_DOMAIN: &str = "suanli";

/// Oldest nats-server accepted: older ones cannot create KV buckets with async-nats 0.51 and
/// silently ignore features Suanli relies on.
pub const MIN_SERVER: (u64, u64) = (2, 11);

pub fn task_subject(region: &Region) -> String {
    format!("suanli.task.{region}")
}

pub fn region_consumer(region: &Region) -> String {
    format!("region-{region}")
}

/// Who published an event, as the last token of its subject says: a worker of a region (task
/// events) or the coordinator (job events, token `_`, which can never be a region's name).
/// nats-server permissions let a worker publish only with its own region's token, so the
/// coordinator can check the token against the region the task was released to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventSource {
    Coordinator,
    Region(Region),
}

impl EventSource {
    /// The source token of the coordinator's job events.
    pub const COORDINATOR: &'static str = "_";

    pub fn token(&self) -> &str {
        match self {
            EventSource::Coordinator => Self::COORDINATOR,
            EventSource::Region(region) => region.as_str(),
        }
    }

    fn parse(token: &str) -> Option<Self> {
        if token == Self::COORDINATOR {
            return Some(EventSource::Coordinator);
        }
        token.parse().ok().map(EventSource::Region)
    }
}

/// An event subject, `suanli.evt.<studio>.<job>.<kind>.<source>`: whose job it is about, what
/// happened and who says so. Job events always come from the coordinator, task events always
/// from a region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EventSubject {
    pub studio: Studio,
    pub job: JobId,
    pub kind: EventKind,
    pub source: EventSource,
}

impl EventSubject {
    /// A task event of `kind` published by a worker of `region`.
    pub fn task(studio: &Studio, job: &JobId, kind: EventKind, region: &Region) -> Self {
        Self {
            studio: studio.clone(),
            job: job.clone(),
            kind,
            source: EventSource::Region(region.clone()),
        }
    }

    /// A job state change, published by the coordinator.
    pub fn job(studio: &Studio, job: &JobId) -> Self {
        Self {
            studio: studio.clone(),
            job: job.clone(),
            kind: EventKind::Job,
            source: EventSource::Coordinator,
        }
    }

    /// Parses an event subject; `None` for anything else (another shape, an invalid name, a
    /// job event from a region or a task event from the coordinator).
    pub fn parse(subject: &str) -> Option<Self> {
        let mut tokens = subject.strip_prefix("suanli.evt.")?.split('.');
        let (studio, job, kind, source) = (
            tokens.next()?,
            tokens.next()?,
            tokens.next()?,
            tokens.next()?,
        );
        if tokens.next().is_some() {
            return None;
        }
        let parsed = Self {
            studio: studio.parse().ok()?,
            job: job.parse().ok()?,
            kind: EventKind::from_token(kind)?,
            source: EventSource::parse(source)?,
        };
        let from_coordinator = parsed.source == EventSource::Coordinator;
        (from_coordinator == (parsed.kind == EventKind::Job)).then_some(parsed)
    }
}

impl std::fmt::Display for EventSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "suanli.evt.{}.{}.{}.{}",
            self.studio,
            self.job,
            self.kind.as_str(),
            self.source.token()
        )
    }
}

/// Subject of a task event of `kind`, published by a worker of `region`.
pub fn task_event_subject(
    studio: &Studio,
    job: &JobId,
    kind: EventKind,
    region: &Region,
) -> String {
    EventSubject::task(studio, job, kind, region).to_string()
}

/// Subject of a job state change, published by the coordinator.
pub fn job_event_subject(studio: &Studio, job: &JobId) -> String {
    EventSubject::job(studio, job).to_string()
}

/// The kind of event a subject carries; `None` for a subject that is not an event subject.
pub fn event_kind(subject: &str) -> Option<EventKind> {
    EventSubject::parse(subject).map(|s| s.kind)
}

/// Decodes an event received on `subject`: its kind from the subject, its body by that kind.
/// The body must be about the subject's job, and a task event's region must be the subject's
/// source: a worker cannot report for another region by writing it in the body.
pub fn decode_event(subject: &str, payload: &[u8]) -> Result<(EventSubject, Event), DecodeError> {
    let parsed = EventSubject::parse(subject).ok_or_else(|| {
        DecodeError::invalid("event", format!("{subject} is not an event subject"))
    })?;
    let event = Event::decode(parsed.kind, payload)?;
    let (job, region) = match &event {
        Event::Task(ev) => (&ev.job, Some(&ev.region)),
        Event::Job(ev) => (&ev.job, None),
    };
    if job != &parsed.job {
        return Err(DecodeError::invalid(
            "event",
            format!("an event about job {job} on {subject}"),
        ));
    }
    if let Some(region) = region {
        if parsed.source != EventSource::Region(region.clone()) {
            return Err(DecodeError::invalid(
                "event",
                format!("a task event from region {region} on {subject}"),
            ));
        }
    }
    Ok((parsed, event))
}

/// Every event of one job (live subscription).
pub fn job_events(studio: &Studio, job: &JobId) -> String {
    format!("suanli.evt.{studio}.{job}.>")
}

/// Every event of one studio's jobs.
pub fn studio_events(studio: &Studio) -> String {
    format!("suanli.evt.{studio}.>")
}

/// Every event of `kind`, of every studio's jobs (`suanli.evt.*.*.<kind>.*`; job events come
/// only from the coordinator, `suanli.evt.*.*.job._`).
pub fn events_of_kind(kind: EventKind) -> String {
    let source = match kind {
        EventKind::Job => EventSource::COORDINATOR,
        _ => "*",
    };
    format!("suanli.evt.*.*.{}.{source}", kind.as_str())
}

/// Every event of every job, progress included (the TUI's live subscription).
pub const ALL_EVENTS: &str = "suanli.evt.>";

/// The events `SUANLI_EVENTS` stores: all but progress, which is a plain publish.
pub fn stored_events() -> Vec<String> {
    [
        EventKind::Started,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Job,
    ]
    .into_iter()
    .map(events_of_kind)
    .collect()
}

/// Live heartbeat subject of a worker (core NATS; the lasting copy is in KV).
pub fn worker_subject(region: &Region, worker: &WorkerId) -> String {
    format!("suanli.worker.{region}.{worker}")
}

/// Every worker's live heartbeat.
pub const ALL_WORKERS: &str = "suanli.worker.>";

pub fn worker_key(region: &Region, worker: &WorkerId) -> String {
    format!("{region}.{worker}")
}

pub fn task_kv_key(job: &JobId, task: u32) -> String {
    format!("{job}.{task}")
}

/// Core-NATS broadcast telling workers to stop rendering a job's tasks now.
pub fn cancel_subject(job: &JobId) -> String {
    format!("suanli.ctl.cancel.{job}")
}

pub const CANCEL_ALL: &str = "suanli.ctl.cancel.*";

/// Core-NATS message telling one worker to drain (sent by the coordinator's `drain` API).
pub fn drain_subject(region: &Region, worker: &WorkerId) -> String {
    format!("suanli.ctl.drain.{region}.{worker}")
}

/// Header carrying the idempotency key of a task publish: one per (attempt, release), so a
/// repeated publish of the same release is dropped and a re-release is not.
pub fn task_msg_id(job: &JobId, task: u32, attempt: u32, release: u32) -> String {
    format!("{job}.{task}.{attempt}.{release}")
}

/// Errors connecting to or preparing NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot connect to NATS at {url}: {source} (is nats-server running? start one with `suanli up` or scripts/install-tools.sh)")]
    Connect {
        url: String,
        #[source]
        source: async_nats::ConnectError,
    },
    #[error("nats-server at {url} refused {who}: {why}")]
    Refused {
        url: String,
        who: String,
        why: String,
    },
    #[error("TLS to {url} failed: {why}")]
    Tls { url: String, why: String },
    #[error("nats-server {found} at {url} is too old: Suanli needs {}.{} or newer with JetStream (Debian's 2.9 package is too old; scripts/install-tools.sh installs a current one)", MIN_SERVER.0, MIN_SERVER.1)]
    TooOld { url: String, found: String },
    #[error("nats-server at {url} has JetStream disabled: start it with -js")]
    NoJetStream { url: String },
    #[error("cannot set up {what}: {message}")]
    Setup { what: String, message: String },
}

fn parse_version(v: &str) -> Option<(u64, u64)> {
    let mut parts = v.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A connection and what the roles watch on it.
pub struct Connection {
    pub client: async_nats::Client,
    /// Moves on every reconnection. Pull requests and ordered consumers in flight when a
    /// server restarts are lost with it, and the client notices only after their heartbeats or
    /// expiry run out (seconds); a role that watches this counter reopens them at once instead.
    pub reconnects: tokio::sync::watch::Receiver<u64>,
    /// The last permissions violation the server reported on this connection (nats-server
    /// drops a forbidden publish or subscription and says so only asynchronously): a caller
    /// waiting on a reply can tell "denied" from "no answer yet".
    pub denied: tokio::sync::watch::Receiver<Option<String>>,
}

/// Connects (reconnecting by itself afterwards) and refuses servers older than
/// [`MIN_SERVER`] or without JetStream.
pub async fn connect(
    url: &str,
    name: &str,
    access: &Access,
) -> Result<async_nats::Client, NatsError> {
    Ok(open(url, name, access).await?.client)
}

/// [`connect`], plus the reconnection counter of [`Connection::reconnects`].
pub async fn connect_watched(
    url: &str,
    name: &str,
    access: &Access,
) -> Result<(async_nats::Client, tokio::sync::watch::Receiver<u64>), NatsError> {
    let c = open(url, name, access).await?;
    Ok((c.client, c.reconnects))
}

/// Connects as `access` says: with an identity, over TLS checked against its CA, signing the
/// server's challenge with the identity's NKey and using the role's own reply inboxes.
pub async fn open(url: &str, name: &str, access: &Access) -> Result<Connection, NatsError> {
    // Two crypto back ends are linked (aws-lc-rs through async-nats, ring through others), so
    // rustls cannot pick one by itself; a second call finds it installed and changes nothing.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let (tx, reconnects) = tokio::sync::watch::channel(0u64);
    let (denied_tx, denied) = tokio::sync::watch::channel(None::<String>);
    let was_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut opts = async_nats::ConnectOptions::new()
        .event_callback(move |event| {
            let (tx, was_down, denied_tx) = (tx.clone(), was_down.clone(), denied_tx.clone());
            async move {
                use std::sync::atomic::Ordering;
                match event {
                    async_nats::Event::Disconnected => was_down.store(true, Ordering::SeqCst),
                    async_nats::Event::Connected if was_down.swap(false, Ordering::SeqCst) => {
                        tx.send_modify(|n| *n += 1)
                    }
                    async_nats::Event::ServerError(async_nats::ServerError::Other(e))
                        if e.to_ascii_lowercase().contains("permissions violation") =>
                    {
                        tracing::info!(error = %e, "nats-server refused an action");
                        denied_tx.send_replace(Some(e));
                    }
                    _ => {}
                }
            }
        })
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(30)))
        .max_reconnects(None);
    if let Some(id) = &access.identity {
        opts = opts
            .nkey(id.seed().to_string())
            .custom_inbox_prefix(id.role.inbox_prefix());
    }
    if let Some(ca) = &access.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let client = opts
        .connect(url)
        .await
        .map_err(|source| connect_error(url, access, source))?;
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER => {}
        _ => {
            return Err(NatsError::TooOld {
                url: url.to_string(),
                found: info.version,
            })
        }
    }
    if !info.jetstream {
        // A leaf node without JetStream of its own (a region's leaf, deploy/nats/leaf.conf)
        // forwards the JetStream API to its hub: refuse only a server where no JetStream
        // answers at all.
        let js = jetstream::new(client.clone());
        let answered = tokio::time::timeout(Duration::from_secs(5), js.query_account()).await;
        if !matches!(answered, Ok(Ok(_))) {
            // Asked through a leaf node whose permissions refuse the question, the server says
            // so: that is the identity's (or the leaf config's) fault, not a missing JetStream.
            if let Some(why) = denied.borrow().clone() {
                return Err(NatsError::Refused {
                    url: url.to_string(),
                    who: match &access.identity {
                        Some(id) => format!("identity {} ({})", id.role, id.path.display()),
                        None => "this connection".into(),
                    },
                    why,
                });
            }
            return Err(NatsError::NoJetStream {
                url: url.to_string(),
            });
        }
    }
    Ok(Connection {
        client,
        reconnects,
        denied,
    })
}

/// One clear line for a failed connection: who was refused and what to do about it.
fn connect_error(url: &str, access: &Access, source: async_nats::ConnectError) -> NatsError {
    use async_nats::ConnectErrorKind as K;
    let url = url.to_string();
    let who = match &access.identity {
        Some(id) => format!("identity {} ({})", id.role, id.path.display()),
        None => "a connection without an identity".to_string(),
    };
    let detail = source.to_string();
    let tls_failure = detail.contains("invalid peer certificate")
        || detail.to_ascii_lowercase().contains("handshake");
    match source.kind() {
        K::AuthorizationViolation | K::Authentication => NatsError::Refused {
            url,
            why: if access.identity.is_some() {
                "the server does not know this identity (revoked, or from another farm)".into()
            } else {
                "this farm needs an identity: pass --identity FILE and --ca FILE (or SUANLI_IDENTITY and SUANLI_CA)".into()
            },
            who,
        },
        K::Tls | K::Io if source.kind() == K::Tls || tls_failure => {
            let why = if access.ca.is_none() {
                format!("{detail} (the server requires TLS: pass --ca FILE, the farm's ca.pem)")
            } else if detail.contains("UnknownIssuer") || detail.contains("unknown issuer") {
                "the server's certificate was not signed by the CA given with --ca".to_string()
            } else if detail.to_ascii_lowercase().contains("expired") {
                "the server's certificate has expired: renew it with suanli auth init".to_string()
            } else if detail.contains("NotValidForName") {
                "the server's certificate does not name this host: add it with suanli auth init --hosts".to_string()
            } else {
                detail
            };
            NatsError::Tls { url, why }
        }
        _ => NatsError::Connect { url, source },
    }
}

/// Handles to every stream and bucket, created if missing.
#[derive(Clone)]
pub struct Farm {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub tasks: stream::Stream,
    pub jobs_kv: kv::Store,
    pub tasks_kv: kv::Store,
    pub workers_kv: kv::Store,
    pub lease_kv: kv::Store,
}

fn setup_err(what: &str, e: impl std::fmt::Display) -> NatsError {
    NatsError::Setup {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// Creates (or opens) the streams and buckets. Safe to call from every role at start-up.
pub async fn setup(client: async_nats::Client) -> Result<Farm, NatsError> {
    let js = jetstream::new(client.clone());
    let tasks = js
        .get_or_create_stream(stream::Config {
            name: TASKS_STREAM.to_string(),
            subjects: vec!["suanli.task.*".to_string()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            // Message-id dedupe must outlive any coordinator restart; KV state is the lasting guard.
            duplicate_window: Duration::from_secs(6 * 3600),
            ..Default::default()
        })
        .await
        .map_err(|e| setup_err(TASKS_STREAM, e))?;
    let events_config = stream::Config {
        name: EVENTS_STREAM.to_string(),
        subjects: stored_events(),
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    };
    let mut events = js
        .get_or_create_stream(events_config.clone())
        .await
        .map_err(|e| setup_err(EVENTS_STREAM, e))?;
    // A stream made by an older version keeps the event subjects of its day, and events on
    // today's subjects would match no stream (and never reach the coordinator): bring them up to
    // date. Only the subjects change; the stored events stay.
    let info = events
        .info()
        .await
        .map_err(|e| setup_err(EVENTS_STREAM, e))?;
    if info.config.subjects != events_config.subjects {
        let mut updated = info.config.clone();
        updated.subjects = events_config.subjects.clone();
        js.update_stream(updated)
            .await
            .map_err(|e| setup_err(EVENTS_STREAM, e))?;
        tracing::info!(subjects = ?events_config.subjects, "updated the event stream's subjects");
    }
    let jobs_kv = bucket(&js, JOBS_BUCKET, Duration::ZERO).await?;
    let tasks_kv = bucket(&js, TASKS_BUCKET, Duration::ZERO).await?;
    let workers_kv = bucket(&js, WORKERS_BUCKET, Duration::from_secs(24 * 3600)).await?;
    let lease_kv = bucket(&js, LEASE_BUCKET, Duration::ZERO).await?;
    Ok(Farm {
        client,
        js,
        tasks,
        jobs_kv,
        tasks_kv,
        workers_kv,
        lease_kv,
    })
}

/// Opens the streams and buckets the coordinator created, creating nothing: for roles that may
/// not create them (a worker on a secure farm). Waits for a coordinator that is still starting.
pub async fn attach(client: async_nats::Client) -> Result<Farm, NatsError> {
    let js = jetstream::new(client.clone());
    let started = std::time::Instant::now();
    let mut logged = false;
    loop {
        let attempt = async {
            let tasks = js
                .get_stream(TASKS_STREAM)
                .await
                .map_err(|e| (TASKS_STREAM, e.to_string()))?;
            let kv = |name: &'static str| {
                let js = js.clone();
                async move {
                    js.get_key_value(name)
                        .await
                        .map_err(|e| (name, e.to_string()))
                }
            };
            Ok::<_, (&str, String)>(Farm {
                client: client.clone(),
                js: js.clone(),
                tasks,
                jobs_kv: kv(JOBS_BUCKET).await?,
                tasks_kv: kv(TASKS_BUCKET).await?,
                workers_kv: kv(WORKERS_BUCKET).await?,
                lease_kv: kv(LEASE_BUCKET).await?,
            })
        };
        match attempt.await {
            Ok(farm) => return Ok(farm),
            Err((what, e)) if started.elapsed() > ATTACH_PATIENCE => {
                return Err(setup_err(
                    what,
                    format!("{e} (the coordinator creates it: is one running on this farm?)"),
                ))
            }
            Err((what, e)) => {
                if !logged {
                    tracing::info!(missing = what, error = %e, "waiting for the coordinator to set up the farm");
                    logged = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// How long [`attach`] waits for a coordinator to create the farm.
const ATTACH_PATIENCE: Duration = Duration::from_secs(120);

/// How long a task may go without an acknowledgement before its region's queue offers it again,
/// on a consumer the coordinator creates (a secure farm, where workers may not create them).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(60);

/// The durable pull consumer of a region's queue, shared by every worker of the region.
pub fn region_consumer_config(
    region: &Region,
    ack_wait: Duration,
) -> jetstream::consumer::pull::Config {
    let name = region_consumer(region);
    jetstream::consumer::pull::Config {
        durable_name: Some(name),
        filter_subject: task_subject(region),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending: 100_000,
        ..Default::default()
    }
}

async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, NatsError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: name.to_string(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another role created it between our look-up and create.
        Err(e) => js.get_key_value(name).await.map_err(|_| setup_err(name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER);
        assert!(parse_version("2.11.0").unwrap() >= MIN_SERVER);
        assert!(parse_version("3.0.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn event_subjects_round_trip_with_studio_and_source() {
        let (studio, job): (Studio, _) = ("acme".parse().unwrap(), JobId::generate());
        let guian: Region = "guian".parse().unwrap();
        for kind in EventKind::ALL {
            let parsed = if kind == EventKind::Job {
                EventSubject::job(&studio, &job)
            } else {
                EventSubject::task(&studio, &job, kind, &guian)
            };
            let subject = parsed.to_string();
            assert_eq!(EventSubject::parse(&subject), Some(parsed), "{subject}");
            assert_eq!(event_kind(&subject), Some(kind));
            assert!(subject.starts_with(&job_events(&studio, &job).replace('>', "")));
            assert!(subject.starts_with(&studio_events(&studio).replace('>', "")));
        }
        assert_eq!(
            task_event_subject(&studio, &job, EventKind::Completed, &guian),
            format!("suanli.evt.acme.{job}.completed.guian")
        );
        assert_eq!(
            job_event_subject(&studio, &job),
            format!("suanli.evt.acme.{job}.job._")
        );
        assert_eq!(
            events_of_kind(EventKind::Started),
            "suanli.evt.*.*.started.*"
        );
        assert_eq!(stored_events().last().unwrap(), "suanli.evt.*.*.job._");
        assert!(!stored_events().iter().any(|s| s.contains("progress")));
    }

    #[test]
    fn bad_event_subjects_are_not_events() {
        let job = JobId::generate();
        for bad in [
            "suanli.task.guian".to_string(),
            format!("suanli.evt.{job}.started"),
            format!("suanli.evt.acme.{job}.started"),
            format!("suanli.evt.acme.{job}.started.guian.x"),
            format!("suanli.evt.acme.{job}.jobs._"),
            format!("suanli.evt.Acme.{job}.started.guian"),
            "suanli.evt.acme.not-a-job.started.guian".to_string(),
            format!("suanli.evt.acme.{job}.started.Guian"),
            // Job events come from the coordinator only, task events from a region only.
            format!("suanli.evt.acme.{job}.job.guian"),
            format!("suanli.evt.acme.{job}.completed._"),
        ] {
            assert_eq!(EventSubject::parse(&bad), None, "{bad}");
            assert!(decode_event(&bad, b"{}")
                .unwrap_err()
                .to_string()
                .contains("not an event subject"));
        }
    }

    #[test]
    fn an_event_body_must_match_its_subject() {
        use crate::protocol::{TaskEvent, TaskEventKind};
        let (studio, job): (Studio, _) = ("acme".parse().unwrap(), JobId::generate());
        let (guian, wulan): (Region, Region) = ("guian".parse().unwrap(), "wulan".parse().unwrap());
        let ev = TaskEvent {
            job: job.clone(),
            task: 0,
            key: crate::ContentHash::of(b"k"),
            attempt: 0,
            worker: "w1".parse().unwrap(),
            region: guian.clone(),
            at_ms: 1,
            kind: TaskEventKind::Started,
        };
        let body = serde_json::to_vec(&ev).unwrap();
        let subject = task_event_subject(&studio, &job, EventKind::Started, &guian);
        let (parsed, decoded) = decode_event(&subject, &body).unwrap();
        assert_eq!(parsed.source, EventSource::Region(guian));
        assert_eq!(decoded, Event::Task(ev));
        let elsewhere = task_event_subject(&studio, &job, EventKind::Started, &wulan);
        let err = decode_event(&elsewhere, &body).unwrap_err().to_string();
        assert!(err.contains("a task event from region guian on"), "{err}");
        let other_job = task_event_subject(&studio, &JobId::generate(), EventKind::Started, &wulan);
        let err = decode_event(&other_job, &body).unwrap_err().to_string();
        assert!(
            err.contains(&format!("an event about job {job} on")),
            "{err}"
        );
    }
}
