//! Manifests: the input manifest (a job's files by content hash) and the output manifest whose
//! create-if-absent write is a task's commit. Both are checked on decode, so a hostile manifest
//! cannot name a path outside its folder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::codec::{decode_limited, DecodeError};
use crate::hash::ContentHash;
use crate::names::{validate_file_name, validate_rel_path, JobId, Region, WorkerId};

/// Largest manifest read from the store, in bytes. Manifests are objects, not NATS messages,
/// so they get more room than [`MAX_MESSAGE`](super::codec::MAX_MESSAGE): an input manifest of
/// the CLI's 100,000 files at most (`MAX_INPUT_FILES`) fits with paths of 500 bytes on average,
/// and an output manifest of a full chunk is a few hundred KiB. Anything larger is refused
/// before it is parsed.
pub const MAX_MANIFEST: usize = 64 * 1024 * 1024;

/// The job's input files: relative path -> content. Stored at `manifests/<hash>` as compact
/// JSON with sorted keys, so equal trees have equal hashes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InputManifest {
    pub files: BTreeMap<String, InputEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputEntry {
    pub hash: ContentHash,
    pub size: u64,
    /// Unix permission bits (e.g. 0o644); only the executable bit is honoured by workers.
    pub mode: u32,
}

impl InputManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // String keys and plain fields: serde_json cannot fail on this type.
        serde_json::to_vec(self).expect("an input manifest always serializes")
    }

    pub fn hash(&self) -> ContentHash {
        ContentHash::of(&self.to_bytes())
    }

    /// Parses (at most [`MAX_MANIFEST`] bytes) and checks every path, so a hostile manifest
    /// cannot escape the task folder.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "input manifest";
        let m: Self = decode_limited(bytes, WHAT, MAX_MANIFEST)?;
        for path in m.files.keys() {
            validate_rel_path(path).map_err(|e| DecodeError::invalid(WHAT, e))?;
        }
        Ok(m)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|e| e.size).sum()
    }
}

/// One output file of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub frame: u32,
    pub name: String,
    pub hash: ContentHash,
    pub size: u64,
}

/// A task's output manifest at `outputs/<key>/manifest.json`, written create-if-absent after
/// every file it lists is uploaded: its existence is the task's commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputManifest {
    pub task_key: ContentHash,
    pub renderer: String,
    pub files: Vec<OutputFile>,
    /// Provenance of the run that committed (the first one wins).
    pub job: JobId,
    pub worker: WorkerId,
    pub region: Region,
    pub committed_ms: u64,
}

impl OutputManifest {
    /// Parses (at most [`MAX_MANIFEST`] bytes) and checks that it is the manifest of `key` and
    /// that every file name stays in its folder.
    pub fn parse(bytes: &[u8], key: &ContentHash) -> Result<Self, DecodeError> {
        const WHAT: &str = "output manifest";
        let m: Self = decode_limited(bytes, WHAT, MAX_MANIFEST)?;
        if &m.task_key != key {
            return Err(DecodeError::invalid(
                WHAT,
                format!(
                    "it names task {} but was stored under {}",
                    m.task_key.short(),
                    key.short()
                ),
            ));
        }
        for f in &m.files {
            validate_file_name(&f.name).map_err(|e| DecodeError::invalid(WHAT, e))?;
        }
        Ok(m)
    }
}
