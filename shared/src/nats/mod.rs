//! NATS names, connection and set-up: the one module that spells subjects, streams, consumers
//! and buckets (here), connects to a server it has checked is new enough ([`connect`]), and
//! creates the streams and buckets idempotently ([`setup`]).

mod connect;
mod setup;

pub use connect::*;
pub use setup::*;

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

/// Pre-stage requests to one region (core NATS): fetch a job's inputs into its cache. The
/// region's workers take them in one queue group, [`stage_queue`], so one worker stages each.
pub fn stage_subject(region: &Region) -> String {
    format!("suanli.stage.{region}")
}

/// The queue group a region's workers take pre-stage requests in.
pub fn stage_queue(region: &Region) -> String {
    format!("stage-{region}")
}

/// Pre-staging progress from a worker of `region` (core NATS, to the coordinator).
pub fn staged_subject(region: &Region) -> String {
    format!("suanli.staged.{region}")
}

/// Every region's pre-staging progress.
pub const ALL_STAGED: &str = "suanli.staged.*";

/// Decodes a pre-staging report received on `subject`: the region in its body must be the
/// subject's, so a worker cannot report for another region.
pub fn decode_staged(
    subject: &str,
    payload: &[u8],
) -> Result<crate::protocol::StageProgress, DecodeError> {
    let region = subject.strip_prefix("suanli.staged.").ok_or_else(|| {
        DecodeError::invalid(
            "stage progress",
            format!("{subject} is not a stage subject"),
        )
    })?;
    let p = crate::protocol::StageProgress::decode(payload)?;
    if p.region.as_str() != region {
        return Err(DecodeError::invalid(
            "stage progress",
            format!("a report from region {} on {subject}", p.region),
        ));
    }
    Ok(p)
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn stage_reports_must_come_from_their_region() {
        let region: Region = "guian".parse().unwrap();
        let p = crate::protocol::StageProgress {
            job: JobId::generate(),
            region: region.clone(),
            worker: "w1".parse().unwrap(),
            present_bytes: 1,
            total_bytes: 2,
            moved_bytes: 1,
            done: false,
            error: None,
            at_ms: 1,
        };
        let body = serde_json::to_vec(&p).unwrap();
        assert_eq!(decode_staged(&staged_subject(&region), &body).unwrap(), p);
        let other: Region = "ulanqab".parse().unwrap();
        let err = decode_staged(&staged_subject(&other), &body)
            .unwrap_err()
            .to_string();
        assert!(err.contains("from region guian"), "{err}");
        assert!(decode_staged("suanli.task.guian", &body).is_err());
    }
}
