//! Pre-staging: the coordinator asks a region to fetch a job's inputs into its cache before the
//! job's tasks reach it (`suanli.stage.<region>`, one worker of the region takes each request),
//! and that worker reports how much of them the region holds (`suanli.staged.<region>`).

use serde::{Deserialize, Serialize};

use super::codec::{decode, DecodeError};
use crate::hash::ContentHash;
use crate::names::{JobId, Region, Studio, WorkerId};

/// Fetch the inputs of `job` (the manifest `inputs` of `studio`) into the region's cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    pub job: JobId,
    pub studio: Studio,
    pub inputs: ContentHash,
    /// The region asked, which must be the subject's: a request is never carried across.
    pub region: Region,
}

impl StageRequest {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        decode(bytes, "stage request")
    }
}

/// How much of a job's input one region holds, as the worker that stages it reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageProgress {
    pub job: JobId,
    pub region: Region,
    pub worker: WorkerId,
    /// Bytes of the job's input files in the region's cache so far.
    pub present_bytes: u64,
    /// Bytes of all the job's input files.
    pub total_bytes: u64,
    /// Bytes this staging moved from the store (chunks actually downloaded).
    pub moved_bytes: u64,
    /// The staging ended (every file there, or `error`).
    pub done: bool,
    /// Why the staging stopped short; the tasks then fetch on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub at_ms: u64,
}

impl StageProgress {
    /// Decodes a report and checks its figures agree.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "stage progress";
        let p: Self = decode(bytes, WHAT)?;
        if p.present_bytes > p.total_bytes {
            return Err(DecodeError::invalid(
                WHAT,
                format!(
                    "{} bytes present of {} in all",
                    p.present_bytes, p.total_bytes
                ),
            ));
        }
        Ok(p)
    }
}

/// How much of a job's input a region holds, as `status` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputPresence {
    pub present_bytes: u64,
    pub total_bytes: u64,
    /// Bytes pre-staging moved into the region (chunks actually downloaded): counted in the
    /// region's `bytes_in`, since the tasks then move none.
    #[serde(default)]
    pub moved_bytes: u64,
    /// The region's staging ended (all there, or it gave up and tasks fetch on demand).
    pub done: bool,
}

impl InputPresence {
    /// Present as a whole percentage (100 for an empty input).
    pub fn percent(&self) -> u64 {
        self.present_bytes
            .saturating_mul(100)
            .checked_div(self.total_bytes)
            .map_or(100, |p| p.min(100))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(present: u64, total: u64) -> StageProgress {
        StageProgress {
            job: JobId::generate(),
            region: "guian".parse().unwrap(),
            worker: "w1".parse().unwrap(),
            present_bytes: present,
            total_bytes: total,
            moved_bytes: present,
            done: false,
            error: None,
            at_ms: 1,
        }
    }

    #[test]
    fn progress_reports_are_checked_at_the_edge() {
        let ok = progress(5, 10);
        let bytes = serde_json::to_vec(&ok).unwrap();
        assert_eq!(StageProgress::decode(&bytes).unwrap(), ok);
        let bad = serde_json::to_vec(&progress(11, 10)).unwrap();
        let err = StageProgress::decode(&bad).unwrap_err();
        assert!(err.to_string().contains("11 bytes present of 10"), "{err}");
        assert!(StageRequest::decode(b"{}").is_err());
    }

    #[test]
    fn presence_is_a_bounded_percentage() {
        let p = |present, total| InputPresence {
            present_bytes: present,
            total_bytes: total,
            moved_bytes: 0,
            done: false,
        };
        assert_eq!(p(0, 0).percent(), 100);
        assert_eq!(p(1, 3).percent(), 33);
        assert_eq!(p(3, 3).percent(), 100);
    }
}
