//! The task message on a region's work queue: everything a worker needs to run one task,
//! checked again on decode because the queue is a trust boundary.

use serde::{Deserialize, Serialize};

use super::codec::{decode, DecodeError};
use super::renderer::RendererSpec;
use super::spec::validate_output_pattern;
use crate::frames::FrameChunk;
use crate::hash::ContentHash;
use crate::names::{validate_rel_path, JobId, Studio};

/// A task on the queue (`suanli.task.<region>`): everything a worker needs, no lookups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    pub job: JobId,
    /// The job's studio: where the worker reads inputs and commits outputs, and the subject
    /// its events go to.
    pub studio: Studio,
    /// Index of the task in its job.
    pub task: u32,
    pub key: ContentHash,
    pub attempt: u32,
    pub chunk: FrameChunk,
    pub renderer: RendererSpec,
    pub inputs: ContentHash,
    pub scene: Option<String>,
    pub output: String,
    pub timeout_secs: u64,
}

impl TaskAssignment {
    /// Decodes and checks a message from the queue.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "task message";
        let t: Self = decode(bytes, WHAT)?;
        if !t.chunk.is_valid() {
            return Err(DecodeError::invalid(
                WHAT,
                format!("invalid frame chunk {:?}", t.chunk),
            ));
        }
        validate_output_pattern(&t.output).map_err(|e| DecodeError::invalid(WHAT, e))?;
        if let Some(scene) = &t.scene {
            validate_rel_path(scene).map_err(|e| DecodeError::invalid(WHAT, e))?;
        }
        t.renderer
            .validate()
            .map_err(|e| DecodeError::invalid(WHAT, e))?;
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::spec::tests::spec;

    #[test]
    fn task_messages_are_checked_at_the_edge() {
        let s = spec();
        let (chunk, key) = s.tasks().unwrap()[0];
        let t = TaskAssignment {
            job: JobId::generate(),
            studio: "acme".parse().unwrap(),
            task: 0,
            key,
            attempt: 0,
            chunk,
            renderer: s.renderer.clone(),
            inputs: s.inputs,
            scene: Some("../../etc/passwd".into()),
            output: s.output.clone(),
            timeout_secs: 60,
        };
        let bytes = serde_json::to_vec(&t).unwrap();
        assert!(TaskAssignment::decode(&bytes).is_err());
        assert!(TaskAssignment::decode(b"{not json").is_err());
        let ok = TaskAssignment { scene: None, ..t };
        assert_eq!(
            TaskAssignment::decode(&serde_json::to_vec(&ok).unwrap()).unwrap(),
            ok
        );
    }
}
