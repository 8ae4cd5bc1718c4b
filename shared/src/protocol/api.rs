//! The coordinator's API (`suanli.api.<endpoint>`, NATS request/reply). Each endpoint is
//! declared once, in the `endpoints!` table below: its subject, its request type and its reply type. The
//! client sends any of them with one generic call ([`Endpoint`]); the coordinator decodes every
//! request into one [`Request`] enum and matches on it. A new endpoint is one line here, one arm
//! in the coordinator and (if a command needs it) one call in the CLI.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec::decode;
use super::records::{JobRecord, TaskRecord, WorkerInfo};
use super::spec::JobSpec;
use super::status::JobStatus;
use crate::names::{JobId, Region, Studio, WorkerId};
use crate::regions::RegionProfile;

/// One API endpoint: its subject and the types it carries.
pub trait Endpoint {
    /// `suanli.api.<name>`.
    const SUBJECT: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync;
    type Reply: Serialize + DeserializeOwned + Send;
}

/// Declares each endpoint (a unit type implementing [`Endpoint`], its subject
/// `suanli.api.<token>`) and the [`Request`] enum that the coordinator decodes every request
/// into.
macro_rules! endpoints {
    ($( $(#[$doc:meta])* $name:ident = $token:literal, $req:ty => $reply:ty; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl Endpoint for $name {
                const SUBJECT: &'static str = concat!("suanli.api.", $token);
                type Request = $req;
                type Reply = $reply;
            }
        )*

        /// Every API request, decoded from its subject and payload.
        // One request lives at a time, moved once into its handler: the size of the submit
        // variant (a whole job spec) costs nothing worth a box.
        #[allow(clippy::large_enum_variant)]
        #[derive(Debug, Clone)]
        pub enum Request {
            $( $name($req), )*
        }

        impl Request {
            /// Decodes a request; an unknown subject or a malformed body is a bad request.
            pub fn decode(subject: &str, payload: &[u8]) -> Result<Self, ApiError> {
                match subject {
                    $( concat!("suanli.api.", $token) => decode::<$req>(payload, concat!($token, " request"))
                        .map(Request::$name)
                        .map_err(|e| ApiError::bad_request(e.to_string())), )*
                    other => Err(ApiError::bad_request(format!("unknown API subject {other}"))),
                }
            }
        }

        /// Every endpoint's subject.
        pub const SUBJECTS: &[&str] = &[$( concat!("suanli.api.", $token) ),*];
    };
}

endpoints! {
    /// Submit a job (its inputs already uploaded).
    Submit = "submit", SubmitRequest => SubmitReply;
    /// One job's status, priced from the region catalog.
    Status = "status", JobRequest => JobStatus;
    /// The latest jobs' statuses, without their failure lists.
    Jobs = "jobs", Empty => Vec<JobStatus>;
    /// One job's record (its spec), e.g. for `fetch`.
    Job = "job", JobRequest => JobRecord;
    /// Cancel a job: running renders are killed, queued tasks are skipped.
    Cancel = "cancel", JobRequest => JobStatus;
    /// Retry a job's failed and canceled tasks.
    Retry = "retry", JobRequest => JobStatus;
    /// Every worker the coordinator knows, with its observed state.
    Workers = "workers", Empty => Vec<WorkerInfo>;
    /// A page of one job's task records, for the TUI's job view.
    Tasks = "tasks", TasksRequest => TasksPage;
    /// Drain one worker: it takes no new tasks, finishes or hands back what it renders, exits.
    Drain = "drain", DrainRequest => WorkerInfo;
    /// The region catalog.
    Regions = "regions", Empty => Vec<RegionProfile>;
}

/// Every API subject, for the coordinator's subscription.
pub const ALL: &str = "suanli.api.>";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    pub spec: JobSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitReply {
    pub id: JobId,
    pub tasks: u32,
    pub cached: u32,
}

/// For status, job, cancel and retry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRequest {
    pub job: JobId,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Empty {}

/// Most task records one `tasks` reply carries (keeps replies well under NATS's 1 MiB).
pub const MAX_TASKS_PAGE: u32 = 500;

/// `suanli.api.tasks`: tasks `offset .. offset + limit` of a job, in task order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TasksRequest {
    pub job: JobId,
    #[serde(default)]
    pub offset: u32,
    /// At most [`MAX_TASKS_PAGE`]; larger values are clamped.
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TasksPage {
    /// Tasks in the job.
    pub total: u32,
    pub offset: u32,
    pub tasks: Vec<TaskRecord>,
}

/// `suanli.api.drain`: the worker's key in `suanli_workers` is `<region>.<worker>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrainRequest {
    pub region: Region,
    pub worker: WorkerId,
}

/// Category of an API error, so clients can pick an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    NotFound,
    Unavailable,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::BadRequest,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::NotFound,
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Internal,
            message: message.into(),
        }
    }
}

/// Why a studio may not submit a job that names another studio (said by the CLI before it
/// uploads anything, and by the coordinator to any client).
pub fn wrong_studio(caller: &Studio, named: &Studio) -> String {
    format!("this identity is studio {caller}; the job names studio {named}")
}

/// Every reply: `{"ok": ...}` or `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_replies_have_a_stable_shape() {
        let ok: Reply<u32> = Reply::Ok(3);
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":3}"#);
        let err: Reply<u32> = Reply::Error(ApiError::not_found("no job x"));
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"kind":"not_found","message":"no job x"}}"#
        );
    }

    #[test]
    fn every_subject_decodes_to_its_own_request() {
        let job = JobId::generate();
        let body = serde_json::to_vec(&JobRequest { job: job.clone() }).unwrap();
        assert!(matches!(
            Request::decode(Cancel::SUBJECT, &body),
            Ok(Request::Cancel(JobRequest { job: j })) if j == job
        ));
        assert!(matches!(
            Request::decode(Workers::SUBJECT, b"{}"),
            Ok(Request::Workers(_))
        ));
        let unknown = Request::decode("suanli.api.nope", b"{}").unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::BadRequest);
        assert!(unknown
            .message
            .contains("unknown API subject suanli.api.nope"));
        let malformed = Request::decode(Status::SUBJECT, b"{}").unwrap_err();
        assert_eq!(malformed.kind, ErrorKind::BadRequest);
        assert!(
            malformed.message.starts_with("malformed status request"),
            "{}",
            malformed.message
        );
        for subject in SUBJECTS {
            assert!(subject.starts_with("suanli.api.") && !subject.contains('*'));
        }
    }
}
