//! Object-store layout: the one module that builds object keys.
//!
//! ```text
//! cas/<hash>                              input blobs, content-addressed, written once
//! manifests/<hash>                        input manifests (JSON), content-addressed
//! outputs/<task key>/<hash>/<file name>   a task's output files, keyed by content so that two
//!                                         runs of one task never overwrite each other
//! outputs/<task key>/manifest.json        the task's output manifest: written last,
//!                                         create-if-absent; its existence is the commit
//! ```

use object_store::path::Path as ObjPath;

use crate::hash::ContentHash;

/// Key of an input blob.
pub fn cas(hash: &ContentHash) -> ObjPath {
    ObjPath::from(format!("cas/{hash}"))
}

/// Key of an input manifest.
pub fn input_manifest(hash: &ContentHash) -> ObjPath {
    ObjPath::from(format!("manifests/{hash}"))
}

/// Key of a task's output manifest (its commit marker).
pub fn output_manifest(task_key: &ContentHash) -> ObjPath {
    ObjPath::from(format!("outputs/{task_key}/manifest.json"))
}

/// Key of one output file of a task. `file_name` must be a plain file name (checked by
/// [`crate::names::validate_file_name`] before any upload).
pub fn output_file(task_key: &ContentHash, content: &ContentHash, file_name: &str) -> ObjPath {
    ObjPath::from(format!("outputs/{task_key}/{content}/{file_name}"))
}
