//! Turning a submitted spec into a job: validate, check the inputs are in the store, hash the
//! tasks, mark cache hits, and write the task records then the job record (the job record is
//! written last, so a crash mid-submit leaves no half job behind: orphan task records without
//! a job are never loaded).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use suanli_shared::layout;
use suanli_shared::nats::{task_kv_key, Farm};
use suanli_shared::protocol::api::ApiError;
use suanli_shared::protocol::{
    encode, now_ms, InputManifest, JobRecord, JobSpec, JobState, RendererSpec, TaskRecord,
};
use suanli_shared::store::{Store, StoreErrorKind};
use suanli_shared::JobId;

use crate::state::{new_task, Job, Versioned};

/// Concurrent store look-ups and KV writes while preparing a job.
const CONCURRENCY: usize = 64;

/// Renderer versions offered by live workers: kind -> versions.
pub type Offered = BTreeMap<String, BTreeSet<String>>;

pub async fn prepare(
    mut spec: JobSpec,
    farm: &Farm,
    store: &Store,
    offered: &Offered,
) -> Result<Job, ApiError> {
    spec.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    fill_renderer_version(&mut spec, offered)?;

    // Not `get_verified`: a manifest's key is the hash of what it names, chunk lists left out
    // (`InputManifest::hash`), so it is checked once parsed.
    let manifest_bytes = store
        .get_bytes(&layout::input_manifest(&spec.studio, &spec.inputs))
        .await
        .map_err(|e| match e.kind() {
            StoreErrorKind::NotFound => ApiError::bad_request(format!(
                "input manifest {} is not in the store {}: upload the inputs first (suanli submit does)",
                spec.inputs.short(),
                store.url()
            )),
            _ => ApiError::internal(format!("cannot read the input manifest: {e}")),
        })?;
    let manifest = InputManifest::parse_verified(&manifest_bytes, &spec.inputs)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    if let Some(scene) = &spec.scene {
        if !manifest.files.contains_key(scene) {
            return Err(ApiError::bad_request(format!(
                "scene '{scene}' is not among the job's inputs"
            )));
        }
    }

    let tasks = spec
        .tasks()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let keys: Vec<_> = tasks.iter().map(|(_, key)| *key).collect();
    // Memoization is per studio: only outputs committed under the job's studio count.
    let cached: Vec<bool> = futures::stream::iter(keys.into_iter().map(|key| {
        let (store, manifest) = (store.clone(), layout::output_manifest(&spec.studio, &key));
        async move { store.exists(&manifest).await }
    }))
    .buffered(CONCURRENCY)
    .try_collect()
    .await
    .map_err(|e| ApiError::internal(format!("cannot check the output cache: {e}")))?;

    let id = JobId::generate();
    let now = now_ms();
    let records: Vec<TaskRecord> = tasks
        .iter()
        .zip(&cached)
        .enumerate()
        .map(|(i, ((chunk, key), hit))| new_task(&id, i as u32, *key, *chunk, hit.then_some(now)))
        .collect();
    let writes: Vec<(String, Bytes)> = records
        .iter()
        .map(|rec| {
            let body = encode(rec, "task record").map_err(|e| ApiError::internal(e.to_string()))?;
            Ok((task_kv_key(&rec.job, rec.task), body))
        })
        .collect::<Result<_, ApiError>>()?;
    let revs: Vec<u64> = futures::stream::iter(writes.into_iter().map(|(key, body)| {
        let kv = farm.tasks_kv.clone();
        async move { kv.create(key, body).await }
    }))
    .buffered(CONCURRENCY)
    .try_collect()
    .await
    .map_err(|e| ApiError::internal(format!("cannot record the job's tasks: {e}")))?;

    let all_cached = cached.iter().all(|c| *c);
    let rec = JobRecord {
        id: id.clone(),
        n_tasks: records.len() as u32,
        spec,
        state: if all_cached {
            JobState::Done
        } else {
            JobState::Queued
        },
        created_ms: now,
        finished_ms: all_cached.then_some(now),
        reason: None,
        blocklist: Vec::new(),
        input_bytes: manifest.total_bytes(),
    };
    let rev = farm
        .jobs_kv
        .create(
            id.as_str(),
            encode(&rec, "job record").map_err(|e| ApiError::internal(e.to_string()))?,
        )
        .await
        .map_err(|e| ApiError::internal(format!("cannot record the job: {e}")))?;
    Ok(Job::new(
        Versioned { rec, rev },
        records
            .into_iter()
            .zip(revs)
            .map(|(rec, rev)| Versioned { rec, rev })
            .collect(),
    ))
}

/// A Blender job that names no version gets the one its live workers run, so its task keys
/// say which Blender made the pixels.
fn fill_renderer_version(spec: &mut JobSpec, offered: &Offered) -> Result<(), ApiError> {
    if let RendererSpec::Blender { version, .. } = &mut spec.renderer {
        if version.is_empty() {
            let versions = offered.get("blender").cloned().unwrap_or_default();
            match versions.len() {
                1 => *version = versions.into_iter().next().unwrap_or_default(),
                0 => {
                    return Err(ApiError::bad_request(
                        "no live worker offers blender: start workers where blender is installed, or name the version in the job (renderer.version)",
                    ))
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "live workers run several blender versions ({}): name one in the job (renderer.version)",
                        versions.into_iter().collect::<Vec<_>>().join(", ")
                    )))
                }
            }
        }
    }
    Ok(())
}
