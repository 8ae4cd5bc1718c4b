//! A task's outputs in the store, under its job's studio's prefix: each frame uploaded under
//! its content key, then the output manifest committed create-if-absent, so that exactly one run's outputs stand for a task key
//! however many runs finish. It exists apart from the task's life because the same manifest
//! read serves the cache hit before a render and the conflict after one.

use std::path::PathBuf;

use bytes::Bytes;
use suanli_shared::layout;
use suanli_shared::protocol::{now_ms, OutputFile, OutputManifest, TaskAssignment};
use suanli_shared::store::{Commit, Store, StoreErrorKind};
use suanli_shared::{ContentHash, Studio};
use tracing::info;

use crate::state::Shared;

/// Reads a committed output manifest of `studio`, if any.
pub(crate) async fn committed(
    store: &Store,
    studio: &Studio,
    key: &ContentHash,
) -> Result<Option<OutputManifest>, String> {
    match store.get_bytes(&layout::output_manifest(studio, key)).await {
        Ok(bytes) => OutputManifest::parse(&bytes, key)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == StoreErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read the output manifest: {e}")),
    }
}

/// Uploads every frame under its content key, then commits the output manifest
/// create-if-absent. Returns the committed files, and whether they came from another job
/// (a cache hit) rather than from this job's runs.
pub(crate) async fn commit(
    sh: &Shared,
    task: &TaskAssignment,
    frames: Vec<(u32, PathBuf)>,
) -> Result<(Vec<OutputFile>, bool), String> {
    let mut files = Vec::with_capacity(frames.len());
    for (frame, path) in frames {
        files.push(upload_frame(sh, task, frame, &path).await?);
    }
    let manifest = OutputManifest {
        task_key: task.key,
        renderer: format!("{} {}", task.renderer.kind(), task.renderer.version()),
        files,
        job: task.job.clone(),
        worker: sh.config.name.clone(),
        region: sh.config.region.clone(),
        committed_ms: now_ms(),
    };
    let body = Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?);
    match sh
        .store
        .put_if_absent(&layout::output_manifest(&task.studio, &task.key), body)
        .await
    {
        Ok(Commit::Created) => {
            // Chaos runs count these lines: one per task key, ever.
            info!(job = %task.job, task = task.task, key = %task.key, "output committed");
            Ok((manifest.files, false))
        }
        Ok(Commit::AlreadyExisted) => {
            info!(job = %task.job, task = task.task, "another run committed this task first; using its outputs");
            match committed(&sh.store, &task.studio, &task.key).await? {
                Some(m) => Ok((m.files, m.job != task.job)),
                None => Err("output manifest vanished after a commit conflict".into()),
            }
        }
        Err(e) => Err(format!("cannot commit the outputs: {e}")),
    }
}

/// Uploads one rendered frame under its content key.
async fn upload_frame(
    sh: &Shared,
    task: &TaskAssignment,
    frame: u32,
    path: &std::path::Path,
) -> Result<OutputFile, String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("renderer wrote an unreadable file name {}", path.display()))?
        .to_string();
    suanli_shared::names::validate_file_name(&name).map_err(|e| e.to_string())?;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| format!("cannot read rendered frame {}: {e}", path.display()))?;
    let bytes = Bytes::from(bytes);
    let hash = {
        let b = bytes.clone();
        tokio::task::spawn_blocking(move || ContentHash::of(&b))
            .await
            .map_err(|e| format!("hashing failed: {e}"))?
    };
    let upload_started = std::time::Instant::now();
    sh.store
        .put_content(
            &layout::output_file(&task.studio, &task.key, &hash, &name),
            &hash,
            bytes.clone(),
        )
        .await
        .map_err(|e| format!("cannot upload frame {frame}: {e}"))?;
    sh.metrics
        .uploaded(bytes.len() as u64, upload_started.elapsed().as_secs_f64());
    Ok(OutputFile {
        frame,
        name,
        hash,
        size: bytes.len() as u64,
    })
}
