//! Events: what happened to a task run (published by workers) and to a job (published by the
//! coordinator), and the one decoder that turns an event subject and payload into a typed event.

use serde::{Deserialize, Serialize};

use super::codec::{decode, DecodeError};
use super::manifest::OutputFile;
use super::records::JobState;
use crate::hash::ContentHash;
use crate::names::{JobId, Region, WorkerId};

/// Why a task run failed, as shown to the studio.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub exit_code: Option<i32>,
    pub reason: String,
    pub stderr_tail: String,
    pub worker: WorkerId,
    pub region: Region,
    pub attempt: u32,
    pub at_ms: u64,
}

/// The GPUs one task run held: how many, of which model, for how long in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuUse {
    pub count: u32,
    /// The model of the first of them, as `nvidia-smi` names it: per-model GPU prices.
    pub model: String,
    /// Wall seconds x GPUs held.
    pub seconds: f64,
}

/// What happened to a task run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEventKind {
    Started,
    Progress {
        fraction: f32,
    },
    Completed {
        cached: bool,
        started_ms: u64,
        /// Wall seconds x render threads, for the ledger.
        core_seconds: f64,
        outputs: Vec<OutputFile>,
        /// Input bytes this run downloaded into the region (cache misses).
        bytes_in: u64,
        /// The GPUs the run held, for the ledger; `None` for a CPU task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gpu: Option<GpuUse>,
    },
    Failed {
        failure: Failure,
    },
}

impl TaskEventKind {
    /// The kind its subject carries.
    pub fn event_kind(&self) -> EventKind {
        match self {
            TaskEventKind::Started => EventKind::Started,
            TaskEventKind::Progress { .. } => EventKind::Progress,
            TaskEventKind::Completed { .. } => EventKind::Completed,
            TaskEventKind::Failed { .. } => EventKind::Failed,
        }
    }
}

/// The kind token of an event subject (`suanli.evt.<studio>.<job>.<kind>.<source>`): which
/// event it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Started,
    Progress,
    Completed,
    Failed,
    /// A job state change ([`JobEvent`]).
    Job,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Started,
        EventKind::Progress,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Job,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Progress => "progress",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Job => "job",
        }
    }

    /// The kind a subject token names; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == token)
    }
}

/// Any event on `suanli.evt.>`, decoded once at the edge by its subject's kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Task(TaskEvent),
    Job(JobEvent),
}

impl Event {
    /// Decodes an event of `kind`; a task event whose body is of another kind than its
    /// subject says is refused.
    pub fn decode(kind: EventKind, payload: &[u8]) -> Result<Self, DecodeError> {
        if kind == EventKind::Job {
            return decode(payload, "job event").map(Event::Job);
        }
        let ev: TaskEvent = decode(payload, "task event")?;
        if ev.kind.event_kind() != kind {
            return Err(DecodeError::invalid(
                "task event",
                format!(
                    "a {} event on a {} subject",
                    ev.kind.event_kind().as_str(),
                    kind.as_str()
                ),
            ));
        }
        Ok(Event::Task(ev))
    }
}

/// An event about one task run, published by a worker of `region` on
/// `suanli.evt.<studio>.<job>.<kind>.<region>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub job: JobId,
    pub task: u32,
    pub key: ContentHash,
    pub attempt: u32,
    pub worker: WorkerId,
    pub region: Region,
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: TaskEventKind,
}

/// A job state change, published by the coordinator on `suanli.evt.<studio>.<job>.job._`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job: JobId,
    pub state: JobState,
    pub at_ms: u64,
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> TaskEvent {
        TaskEvent {
            job: JobId::generate(),
            task: 3,
            key: ContentHash::of(b"k"),
            attempt: 0,
            worker: "w1".parse().unwrap(),
            region: "guian".parse().unwrap(),
            at_ms: 1,
            kind: TaskEventKind::Started,
        }
    }

    #[test]
    fn events_decode_by_their_subject_kind() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_token(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::from_token("jobs"), None);
        let ev = started();
        let bytes = serde_json::to_vec(&ev).unwrap();
        assert_eq!(
            Event::decode(EventKind::Started, &bytes).unwrap(),
            Event::Task(ev.clone())
        );
        let err = Event::decode(EventKind::Completed, &bytes).unwrap_err();
        assert!(
            err.to_string()
                .contains("a started event on a completed subject"),
            "{err}"
        );
        let job = JobEvent {
            job: ev.job.clone(),
            state: JobState::Done,
            at_ms: 2,
            reason: None,
        };
        let bytes = serde_json::to_vec(&job).unwrap();
        let decoded = Event::decode(EventKind::Job, &bytes).unwrap();
        assert_eq!(decoded, Event::Job(job));
        assert!(Event::decode(EventKind::Started, &bytes).is_err());
    }
}
