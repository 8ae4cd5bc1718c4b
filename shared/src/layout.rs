//! Object-store layout: the one module that builds object keys.
//!
//! Every key lives under its studio's prefix, so a studio's inputs and outputs can be granted
//! (bucket policies, credentials scoped to a prefix) and kept apart from every other studio's:
//!
//! ```text
//! studios/<studio>/cas/<hash>                        input blobs (whole small files and the
//!                                                    chunks of large ones), content-addressed
//! studios/<studio>/manifests/<hash>                  input manifests (JSON), content-addressed
//! studios/<studio>/outputs/<task key>/<hash>/<name>  a task's output files, keyed by content so
//!                                                    that two runs of one task never overwrite
//!                                                    each other
//! studios/<studio>/outputs/<task key>/manifest.json  the task's output manifest: written last,
//!                                                    create-if-absent; its existence is the commit
//! ```
//!
//! Memoization is therefore per studio: a task key names the same pixels for every studio, but
//! a studio finds only the outputs committed under its own prefix, and uploads its own copy of
//! a blob another studio already stored.

use object_store::path::Path as ObjPath;

use crate::hash::ContentHash;
use crate::names::Studio;

/// Everything a studio stores: `studios/<studio>`.
pub fn studio_prefix(studio: &Studio) -> ObjPath {
    ObjPath::from(format!("studios/{studio}"))
}

/// Key of an input blob.
pub fn cas(studio: &Studio, hash: &ContentHash) -> ObjPath {
    ObjPath::from(format!("studios/{studio}/cas/{hash}"))
}

/// Key of an input manifest.
pub fn input_manifest(studio: &Studio, hash: &ContentHash) -> ObjPath {
    ObjPath::from(format!("studios/{studio}/manifests/{hash}"))
}

/// Key of a task's output manifest (its commit marker).
pub fn output_manifest(studio: &Studio, task_key: &ContentHash) -> ObjPath {
    ObjPath::from(format!("studios/{studio}/outputs/{task_key}/manifest.json"))
}

/// Key of one output file of a task. `file_name` must be a plain file name (checked by
/// [`crate::names::validate_file_name`] before any upload).
pub fn output_file(
    studio: &Studio,
    task_key: &ContentHash,
    content: &ContentHash,
    file_name: &str,
) -> ObjPath {
    ObjPath::from(format!(
        "studios/{studio}/outputs/{task_key}/{content}/{file_name}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_lies_under_its_studio_prefix() {
        let (acme, blue): (Studio, Studio) = ("acme".parse().unwrap(), "blue".parse().unwrap());
        let (h, k) = (ContentHash::of(b"blob"), ContentHash::of(b"task"));
        let keys = |s: &Studio| {
            [
                cas(s, &h),
                input_manifest(s, &h),
                output_manifest(s, &k),
                output_file(s, &k, &h, "frame_0001.png"),
            ]
        };
        for (a, b) in keys(&acme).iter().zip(keys(&blue)) {
            assert!(a.prefix_matches(&studio_prefix(&acme)), "{a}");
            assert!(!a.prefix_matches(&studio_prefix(&blue)), "{a}");
            assert_ne!(a, &b);
        }
        assert_eq!(cas(&acme, &h).as_ref(), format!("studios/acme/cas/{h}"));
        assert_eq!(
            output_file(&acme, &k, &h, "f.png").as_ref(),
            format!("studios/acme/outputs/{k}/{h}/f.png")
        );
        assert_eq!(
            output_manifest(&acme, &k).as_ref(),
            format!("studios/acme/outputs/{k}/manifest.json")
        );
    }
}
