//! The coordinator's API (NATS request/reply). Each endpoint is declared once, in the
//! `endpoints!` table below: its subject token, its request type and its reply type. The
//! client sends any of them with one generic call ([`Endpoint`]); the coordinator decodes every
//! request into one [`Request`] enum and matches on it. A new endpoint is one line here, one arm
//! in the coordinator and (if a command needs it) one call in the CLI.
//!
//! The subject says who calls ([`Caller`]): the operator on `suanli.api.<endpoint>`, studio S
//! on `suanli.studio.<S>.<endpoint>`. nats-server permissions let a studio's identity publish
//! only on its own subjects, so the coordinator can trust the studio a subject names; it then
//! checks what the server cannot: that the job asked about belongs to that studio. A studio may
//! call only the endpoints in [`STUDIO_ENDPOINTS`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec::decode;
use super::records::{JobRecord, TaskRecord, WorkerInfo};
use super::spec::JobSpec;
use super::status::JobStatus;
use crate::names::{JobId, Region, Studio, WorkerId};
use crate::regions::RegionProfile;

/// One API endpoint: its subject token and the types it carries.
pub trait Endpoint {
    /// The last token of its subjects: `suanli.api.<TOKEN>`, `suanli.studio.<studio>.<TOKEN>`.
    const TOKEN: &'static str;
    /// The operator's subject, `suanli.api.<TOKEN>` (a studio's is [`Caller::subject`]).
    const SUBJECT: &'static str;
    type Request: Serialize + DeserializeOwned + Send + Sync;
    type Reply: Serialize + DeserializeOwned + Send;
}

/// Declares each endpoint (a unit type implementing [`Endpoint`], its subject token) and the
/// [`Request`] enum that the coordinator decodes every request into.
macro_rules! endpoints {
    ($( $(#[$doc:meta])* $name:ident = $token:literal, $req:ty => $reply:ty; )*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy)]
            pub struct $name;

            impl Endpoint for $name {
                const TOKEN: &'static str = $token;
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
            /// Decodes a request and who sent it. A subject that is not an API subject (an
            /// unknown endpoint, an invalid studio) or a malformed body is a bad request; an
            /// endpoint the caller may not call (a studio asking for `drain`) is forbidden.
            pub fn decode(subject: &str, payload: &[u8]) -> Result<(Caller, Self), ApiError> {
                let (caller, token) = Caller::parse(subject)?;
                if !TOKENS.contains(&token) {
                    return Err(ApiError::bad_request(format!("unknown API subject {subject}")));
                }
                if !caller.may_call(token) {
                    return Err(ApiError::forbidden(format!(
                        "operator only: {caller} may not call {token}"
                    )));
                }
                let request = match token {
                    $( $token => decode::<$req>(payload, concat!($token, " request"))
                        .map(Request::$name)
                        .map_err(|e| ApiError::bad_request(e.to_string())), )*
                    _ => Err(ApiError::bad_request(format!("unknown API subject {subject}"))),
                }?;
                Ok((caller, request))
            }

            /// The endpoint's subject token.
            pub fn token(&self) -> &'static str {
                match self {
                    $( Request::$name(_) => $token, )*
                }
            }
        }

        /// Every endpoint's subject token.
        pub const TOKENS: &[&str] = &[$( $token ),*];
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
    Workers = "workers", WorkersRequest => Vec<WorkerInfo>;
    /// A page of one job's task records, for the TUI's job view.
    Tasks = "tasks", TasksRequest => TasksPage;
    /// Drain one worker: it takes no new tasks, finishes or hands back what it renders, exits.
    Drain = "drain", DrainRequest => WorkerInfo;
    /// The region catalog.
    Regions = "regions", Empty => Vec<RegionProfile>;
}

/// Every operator API subject, for the coordinator's subscription.
pub const ALL: &str = "suanli.api.>";
/// Every studio's API subjects, for the coordinator's subscription.
pub const ALL_STUDIOS: &str = "suanli.studio.>";

/// The endpoints a studio may call, on its own subjects only. The rest (`workers`, `drain`)
/// are the operator's; nats-server permissions for a studio identity are written from this list.
pub const STUDIO_ENDPOINTS: &[&str] = &[
    Submit::TOKEN,
    Status::TOKEN,
    Jobs::TOKEN,
    Job::TOKEN,
    Cancel::TOKEN,
    Retry::TOKEN,
    Tasks::TOKEN,
    Regions::TOKEN,
];

/// Who calls the API, as its subject says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Caller {
    /// `suanli.api.<endpoint>`: every endpoint, every job. On a farm without identities
    /// every client that names no studio is the operator.
    #[default]
    Operator,
    /// `suanli.studio.<studio>.<endpoint>`: the [`STUDIO_ENDPOINTS`], its own jobs only.
    Studio(Studio),
}

impl Caller {
    /// This caller's subject for endpoint `E`.
    pub fn subject<E: Endpoint>(&self) -> String {
        self.subject_of(E::TOKEN)
    }

    /// This caller's subject for the endpoint `token` (e.g. one of [`STUDIO_ENDPOINTS`]).
    pub fn subject_of(&self, token: &str) -> String {
        match self {
            Caller::Operator => format!("suanli.api.{token}"),
            Caller::Studio(studio) => format!("suanli.studio.{studio}.{token}"),
        }
    }

    /// Every subject of this caller (`suanli.api.>`, `suanli.studio.<studio>.>`).
    pub fn all_subjects(&self) -> String {
        self.subject_of(">")
    }

    /// Who sent a request on `subject`, and the endpoint token it names (not checked against
    /// the endpoints here). A subject of neither shape, or with an invalid studio, is a bad
    /// request.
    pub fn parse(subject: &str) -> Result<(Caller, &str), ApiError> {
        let unknown = || ApiError::bad_request(format!("unknown API subject {subject}"));
        if let Some(token) = subject.strip_prefix("suanli.api.") {
            return Ok((Caller::Operator, token));
        }
        let rest = subject.strip_prefix("suanli.studio.").ok_or_else(unknown)?;
        let (studio, token) = rest.split_once('.').ok_or_else(unknown)?;
        let studio = studio
            .parse()
            .map_err(|e| ApiError::bad_request(format!("API subject {subject}: {e}")))?;
        Ok((Caller::Studio(studio), token))
    }

    /// Whether this caller may call the endpoint `token`.
    pub fn may_call(&self, token: &str) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Studio(_) => STUDIO_ENDPOINTS.contains(&token),
        }
    }

    /// Whether this caller may see and act on a job of `studio`.
    pub fn owns(&self, studio: &Studio) -> bool {
        match self {
            Caller::Operator => true,
            Caller::Studio(own) => own == studio,
        }
    }

    /// The studio this caller acts as; `None` for the operator.
    pub fn studio(&self) -> Option<&Studio> {
        match self {
            Caller::Operator => None,
            Caller::Studio(studio) => Some(studio),
        }
    }

    /// The spec a submit from this caller is accepted as. The operator submits for any
    /// studio. A studio's job is its own: a spec naming no studio (the default) is given the
    /// caller's, a spec naming another studio is refused.
    pub fn own_spec(&self, mut spec: JobSpec) -> Result<JobSpec, ApiError> {
        if let Caller::Studio(own) = self {
            if spec.studio == Studio::default() {
                spec.studio = own.clone();
            } else if &spec.studio != own {
                return Err(ApiError::forbidden(wrong_studio(own, &spec.studio)));
            }
        }
        Ok(spec)
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Operator => f.write_str("the operator"),
            Caller::Studio(studio) => write!(f, "studio {studio}"),
        }
    }
}

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

/// `suanli.api.workers`: the workers from `offset` on, in (region, name) order, as many as
/// fit in [`MAX_PAGE_BYTES`] (a farm of a thousand GPU servers does not fit one message). An
/// empty reply is the end; a request without an offset (`{}`) starts at the first.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct WorkersRequest {
    #[serde(default)]
    pub offset: u32,
}

/// Most task records one `tasks` reply carries.
pub const MAX_TASKS_PAGE: u32 = 500;
/// Most bytes of records one `tasks` or `workers` reply carries (three quarters of the 1 MiB
/// message limit): records with many outputs, long failures or many GPUs make a shorter page.
pub const MAX_PAGE_BYTES: usize = 768 * 1024;

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
    /// Tasks `offset ..`: as many as asked, or fewer when they would pass
    /// [`MAX_PAGE_BYTES`]; ask again from `offset + tasks.len()` for the rest.
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
    /// The caller may not do this (a studio calling an operator endpoint or speaking for
    /// another studio).
    Forbidden,
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
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Forbidden,
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
    fn every_subject_decodes_to_its_own_request_and_caller() {
        let job = JobId::generate();
        let body = serde_json::to_vec(&JobRequest { job: job.clone() }).unwrap();
        assert!(matches!(
            Request::decode(Cancel::SUBJECT, &body),
            Ok((Caller::Operator, Request::Cancel(JobRequest { job: j }))) if j == job
        ));
        let acme = Caller::Studio("acme".parse().unwrap());
        assert!(matches!(
            Request::decode("suanli.studio.acme.cancel", &body),
            Ok((ref c, Request::Cancel(_))) if *c == acme
        ));
        assert!(matches!(
            Request::decode(Workers::SUBJECT, b"{}"),
            Ok((Caller::Operator, Request::Workers(_)))
        ));
        for subject in [
            "suanli.api.nope",
            "suanli.api.status.x",
            "suanli.apix.status",
            "suanli.studio.acme.nope",
            "suanli.studio.acme",
            "suanli.studio.acme.status.x",
            "suanli.evt.acme.status",
        ] {
            let err = Request::decode(subject, b"{}").unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest, "{subject}");
            assert_eq!(err.message, format!("unknown API subject {subject}"));
        }
        for subject in ["suanli.studio.Acme.status", "suanli.studio..status"] {
            let err = Request::decode(subject, &body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest, "{subject}");
            assert!(err.message.contains("invalid studio"), "{}", err.message);
        }
        let malformed = Request::decode(Status::SUBJECT, b"{}").unwrap_err();
        assert_eq!(malformed.kind, ErrorKind::BadRequest);
        assert!(
            malformed.message.starts_with("malformed status request"),
            "{}",
            malformed.message
        );
        for token in TOKENS {
            assert!(!token.contains(['.', '*', '>']));
        }
    }

    #[test]
    fn subjects_round_trip_for_every_caller() {
        let callers = [Caller::Operator, Caller::Studio("acme".parse().unwrap())];
        for caller in &callers {
            for token in TOKENS {
                let subject = caller.subject_of(token);
                assert_eq!(Caller::parse(&subject).unwrap(), (caller.clone(), *token));
            }
        }
        assert_eq!(Caller::Operator.subject::<Status>(), Status::SUBJECT);
        assert_eq!(callers[1].subject::<Status>(), "suanli.studio.acme.status");
        assert_eq!(callers[1].all_subjects(), "suanli.studio.acme.>");
        assert_eq!(Caller::Operator.all_subjects(), ALL);
    }

    #[test]
    fn a_studio_calls_only_its_endpoints_and_owns_only_its_jobs() {
        for token in STUDIO_ENDPOINTS {
            assert!(TOKENS.contains(token), "{token} is an endpoint");
        }
        let blue = Caller::Studio("blue".parse().unwrap());
        for subject in ["suanli.studio.blue.drain", "suanli.studio.blue.workers"] {
            let err = Request::decode(subject, b"{}").unwrap_err();
            assert_eq!(err.kind, ErrorKind::Forbidden, "{subject}");
            assert!(err
                .message
                .starts_with("operator only: studio blue may not call"));
        }
        assert!(TOKENS.iter().all(|t| Caller::Operator.may_call(t)));
        assert_eq!(
            TOKENS
                .iter()
                .filter(|t| !blue.may_call(t))
                .collect::<Vec<_>>(),
            [&"workers", &"drain"]
        );
        let (acme, default) = ("acme".parse().unwrap(), Studio::default());
        assert!(Caller::Operator.owns(&acme) && blue.owns(&"blue".parse().unwrap()));
        assert!(!blue.owns(&acme) && !blue.owns(&default));

        let mut spec = crate::protocol::spec::tests::spec();
        assert_eq!(blue.own_spec(spec.clone()).unwrap().studio.as_str(), "blue");
        assert_eq!(
            Caller::Operator.own_spec(spec.clone()).unwrap().studio,
            default
        );
        spec.studio = acme;
        assert_eq!(
            Caller::Operator
                .own_spec(spec.clone())
                .unwrap()
                .studio
                .as_str(),
            "acme"
        );
        let err = blue.own_spec(spec).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Forbidden);
        assert_eq!(
            err.message,
            "this identity is studio blue; the job names studio acme"
        );
    }
}
