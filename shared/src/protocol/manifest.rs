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
    /// BLAKE3 of the whole file: what the task key (through the manifest's hash) depends on,
    /// and what a worker checks the file against after rebuilding it from its chunks.
    pub hash: ContentHash,
    pub size: u64,
    /// Unix permission bits (e.g. 0o644); only the executable bit is honoured by workers.
    pub mode: u32,
    /// The file's content-defined chunks in order, each stored at its own `cas/<hash>`, for
    /// files above [`crate::chunks::CHUNK_THRESHOLD`]; empty for a file stored whole (small
    /// files, and every file of a manifest written before chunking). How a file is fetched,
    /// not what it is: left out of the manifest's hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<ChunkRef>,
}

impl InputEntry {
    /// A file stored whole.
    pub fn whole(hash: ContentHash, size: u64, mode: u32) -> Self {
        Self {
            hash,
            size,
            mode,
            chunks: Vec::new(),
        }
    }
}

/// One chunk of a chunked input file: its BLAKE3 hash (its key in the studio's CAS) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ContentHash,
    pub size: u64,
}

/// Most chunks one file may list: 2 TiB at the average chunk size (a film frame's 800 GB of
/// scene data fits), so such a file's entry stays under [`MAX_MANIFEST`]; and a bound on what
/// a hostile manifest can make a worker fetch for one entry.
pub const MAX_CHUNKS_PER_FILE: usize = 1 << 19;

impl InputManifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // String keys and plain fields: serde_json cannot fail on this type.
        serde_json::to_vec(self).expect("an input manifest always serializes")
    }

    /// The manifest's identity, its key in the store and the `inputs` of a job spec (so of
    /// every task key): BLAKE3 of the manifest with every chunk list left out. Two manifests
    /// naming the same files (paths, whole-file hashes, sizes, modes) have one hash however
    /// their files are chunked, and a manifest without chunk lists hashes as it always did.
    pub fn hash(&self) -> ContentHash {
        if self.files.values().all(|e| e.chunks.is_empty()) {
            return ContentHash::of(&self.to_bytes());
        }
        let mut bare = self.clone();
        for e in bare.files.values_mut() {
            e.chunks.clear();
        }
        ContentHash::of(&bare.to_bytes())
    }

    /// Parses (at most [`MAX_MANIFEST`] bytes) and checks every path, so a hostile manifest
    /// cannot escape the task folder, and every chunk list (sizes that add up to the file's,
    /// no empty chunk, at most [`MAX_CHUNKS_PER_FILE`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        const WHAT: &str = "input manifest";
        let m: Self = decode_limited(bytes, WHAT, MAX_MANIFEST)?;
        for (path, entry) in &m.files {
            validate_rel_path(path).map_err(|e| DecodeError::invalid(WHAT, e))?;
            check_chunks(entry)
                .map_err(|e| DecodeError::invalid(WHAT, format!("'{path}': {e}")))?;
        }
        Ok(m)
    }

    /// [`parse`](Self::parse), then checks that the manifest is the one stored under
    /// `expected` (its [`hash`](Self::hash)). The chunk lists are not covered by the hash: a
    /// worker checks every chunk against its own hash and the rebuilt file against the whole
    /// file's, so a forged list can fail a task but never change what it renders.
    pub fn parse_verified(bytes: &[u8], expected: &ContentHash) -> Result<Self, DecodeError> {
        let m = Self::parse(bytes)?;
        let got = m.hash();
        if &got != expected {
            return Err(DecodeError::invalid(
                "input manifest",
                format!(
                    "it hashes to {} but was stored under {}: the store's copy is damaged or forged",
                    got.short(),
                    expected.short()
                ),
            ));
        }
        Ok(m)
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.values().map(|e| e.size).sum()
    }
}

/// A chunk list that cannot describe its file is refused before anything is fetched.
fn check_chunks(entry: &InputEntry) -> Result<(), String> {
    if entry.chunks.is_empty() {
        return Ok(());
    }
    if entry.chunks.len() > MAX_CHUNKS_PER_FILE {
        return Err(format!(
            "{} chunks listed; at most {MAX_CHUNKS_PER_FILE} are allowed",
            entry.chunks.len()
        ));
    }
    let mut sum = 0u64;
    for c in &entry.chunks {
        if c.size == 0 {
            return Err("a chunk of 0 bytes is listed".into());
        }
        sum = sum.saturating_add(c.size);
    }
    if sum != entry.size {
        return Err(format!(
            "its chunks add up to {sum} bytes but the file has {}",
            entry.size
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data: &[u8], chunks: &[&[u8]]) -> InputEntry {
        InputEntry {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            mode: 0o644,
            chunks: chunks
                .iter()
                .map(|c| ChunkRef {
                    hash: ContentHash::of(c),
                    size: c.len() as u64,
                })
                .collect(),
        }
    }

    fn manifest(chunked: bool) -> InputManifest {
        let mut m = InputManifest::default();
        m.files.insert("scene.blend".into(), entry(b"scene", &[]));
        let parts: &[&[u8]] = if chunked { &[b"cache ", b"data"] } else { &[] };
        m.files
            .insert("cache/sim.vdb".into(), entry(b"cache data", parts));
        m
    }

    #[test]
    fn chunk_lists_are_left_out_of_the_manifests_hash() {
        let (whole, chunked) = (manifest(false), manifest(true));
        // A manifest without chunk lists hashes as manifests always did: existing keys stay.
        assert_eq!(whole.hash(), ContentHash::of(&whole.to_bytes()));
        assert!(!String::from_utf8(whole.to_bytes())
            .unwrap()
            .contains("chunks"));
        assert_ne!(whole.to_bytes(), chunked.to_bytes());
        assert_eq!(whole.hash(), chunked.hash());
        // A changed file changes it, chunked or not.
        let mut changed = chunked.clone();
        changed.files.get_mut("scene.blend").unwrap().hash = ContentHash::of(b"scene 2");
        assert_ne!(changed.hash(), chunked.hash());
    }

    #[test]
    fn chunked_manifests_round_trip_and_are_checked_against_their_key() {
        let m = manifest(true);
        let bytes = m.to_bytes();
        assert_eq!(InputManifest::parse_verified(&bytes, &m.hash()).unwrap(), m);
        let err = InputManifest::parse_verified(&bytes, &ContentHash::of(b"other")).unwrap_err();
        assert!(err.to_string().contains("damaged or forged"), "{err}");
        // Today's manifests (no chunk lists) decode unchanged.
        let old = br#"{"files":{"a.bin":{"hash":"0000000000000000000000000000000000000000000000000000000000000000","size":3,"mode":420}}}"#;
        assert!(InputManifest::parse(old).unwrap().files["a.bin"]
            .chunks
            .is_empty());
    }

    #[test]
    fn chunk_lists_that_cannot_describe_their_file_are_refused() {
        let mut m = manifest(true);
        m.files.get_mut("cache/sim.vdb").unwrap().size = 11;
        let err = InputManifest::parse(&m.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("add up to 10 bytes"), "{err}");
        let mut m = manifest(true);
        let e = m.files.get_mut("cache/sim.vdb").unwrap();
        e.chunks.push(ChunkRef {
            hash: ContentHash::of(b""),
            size: 0,
        });
        let err = InputManifest::parse(&m.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("0 bytes"), "{err}");
        let mut m = manifest(true);
        let e = m.files.get_mut("cache/sim.vdb").unwrap();
        let one = e.chunks[0];
        e.chunks = vec![ChunkRef { size: 1, ..one }; MAX_CHUNKS_PER_FILE + 1];
        e.size = e.chunks.len() as u64;
        let err = InputManifest::parse(&m.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
