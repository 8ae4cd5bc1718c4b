//! The worker's local content cache: a size-bounded, read-through copy of each studio's
//! `studios/<studio>/cas/<hash>` blobs, so a region downloads each input once, not once per
//! task.
//!
//! Blobs are stored read-only at `<dir>/cas/<studio>/<hash>` after their hash is verified, and
//! are hard-linked (or copied, across file systems) into each task's input tree: a running task
//! keeps its inputs even if the cache evicts them. Blobs are kept per studio like the store
//! keeps them: a task of one studio gets only blobs found under its own studio's prefix, never
//! one that another studio's task brought in (knowing a hash must not be enough to read
//! another studio's file). Concurrent requests for one blob wait for a single download, in
//! this process (a lock per blob) and across workers sharing the cache folder (a file lock,
//! one of [`LOCK_STRIPES`] picked by the blob's hash, held while it downloads).
//!
//! A chunked file (see `suanli_shared::chunks`) is fetched as its chunks, each a blob like any
//! other, so a file that changed a little downloads only its new chunks; it is then rebuilt
//! into the cache under its whole-file hash and checked against it before any task sees it.
//! Chunks stay cached for the file's next version. Eviction removes the least recently used
//! blobs once the cache is over its bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::StreamExt;
use suanli_shared::chunks;
use suanli_shared::layout;
use suanli_shared::protocol::{InputEntry, InputManifest};
use suanli_shared::store::{Store, StoreError, StoreErrorKind};
use suanli_shared::transfer::{self, Progress, RateLimit};
use suanli_shared::{ContentHash, Studio};
use tracing::{debug, info, warn};

/// Lock files that downloads into one cache folder take, picked by the blob's hash: workers
/// sharing the folder fetch each blob once, and the folder holds a fixed number of them.
pub const LOCK_STRIPES: usize = 256;

/// Chunks of one file downloaded at once.
const FETCH_CONCURRENCY: usize = 4;

/// How often a long fetch logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Why inputs could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("input cache i/o error at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(String),
}

impl CacheError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether another attempt (here or elsewhere) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            CacheError::Store(e) => !matches!(e.kind(), StoreErrorKind::Config),
            CacheError::Io { .. } => true,
            CacheError::Manifest(_) => false,
        }
    }
}

/// A blob as the cache keeps it: a studio's copy of some content.
type BlobId = (Studio, ContentHash);

pub struct Cache {
    dir: PathBuf,
    max_bytes: u64,
    store: Store,
    used: AtomicU64,
    /// One lock per blob being downloaded, so concurrent tasks fetch it once.
    inflight: Mutex<HashMap<BlobId, Arc<tokio::sync::Mutex<()>>>>,
    /// `--max-download-rate`: a cap shared by every download of this worker.
    rate: Option<RateLimit>,
    /// Hits, misses, downloads and evictions, for the worker's metrics.
    pub counters: crate::metrics::CacheCounters,
}

impl Cache {
    /// Opens (creating) the cache folder and measures what it already holds.
    pub async fn open(dir: &Path, max_bytes: u64, store: Store) -> Result<Self, CacheError> {
        let blobs = dir.join("cas");
        tokio::fs::create_dir_all(&blobs)
            .await
            .map_err(|e| CacheError::io(&blobs, e))?;
        let used = tokio::task::spawn_blocking({
            let blobs = blobs.clone();
            move || list_blobs(&blobs).iter().map(|b| b.size).sum::<u64>()
        })
        .await
        .unwrap_or(0);
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes,
            store,
            used: AtomicU64::new(used),
            inflight: Mutex::new(HashMap::new()),
            rate: None,
            counters: Default::default(),
        })
    }

    /// Caps this cache's downloads at `limit` (all of them together).
    pub fn with_download_rate(mut self, limit: Option<RateLimit>) -> Self {
        self.rate = limit;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn blob_path(&self, studio: &Studio, hash: &ContentHash) -> PathBuf {
        self.dir
            .join("cas")
            .join(studio.as_str())
            .join(hash.to_hex())
    }

    /// The local path of a verified blob of `studio`, downloading it on a miss. Returns the
    /// path and the bytes downloaded (0 on a hit).
    pub async fn blob(
        &self,
        studio: &Studio,
        hash: &ContentHash,
        size: u64,
    ) -> Result<(PathBuf, u64), CacheError> {
        let got = self.fetch(studio, hash, size, None).await?;
        if got.1 > 0 {
            self.evict_if_needed().await;
        }
        Ok(got)
    }

    /// [`blob`](Self::blob) without eviction, so the chunks of a file being rebuilt stay.
    async fn fetch(
        &self,
        studio: &Studio,
        hash: &ContentHash,
        size: u64,
        progress: Option<&Progress>,
    ) -> Result<(PathBuf, u64), CacheError> {
        let path = self.blob_path(studio, hash);
        if let Some(hit) = self.hit(&path, size).await {
            self.counters.hits.inc();
            if let Some(p) = progress {
                p.skipped(size);
            }
            return Ok((hit, 0));
        }
        let result = self
            .single_flight(studio, hash, || async {
                // Someone else may have fetched it while we waited.
                if let Some(hit) = self.hit(&path, size).await {
                    self.counters.hits.inc();
                    return Ok((hit, 0));
                }
                debug!(%studio, blob = %hash.short(), size, "cache miss");
                transfer::acquire(self.rate.as_ref(), size).await;
                let download_started = std::time::Instant::now();
                let key = layout::cas(studio, hash);
                self.store
                    .download_verified(&key, hash, size, &path)
                    .await?;
                self.counters.misses.inc();
                self.counters.download_bytes.inc_by(size);
                self.counters
                    .download_seconds
                    .inc_by(download_started.elapsed().as_secs_f64());
                set_read_only(&path);
                self.used.fetch_add(size, Ordering::Relaxed);
                Ok((path.clone(), size))
            })
            .await?;
        if let Some(p) = progress {
            if result.1 > 0 {
                p.moved(size);
            } else {
                p.skipped(size);
            }
        }
        Ok(result)
    }

    /// Runs `work` (which fills the blob `hash` of `studio`) while holding its lock in this
    /// process and its stripe's file lock in the cache folder, so neither another task here
    /// nor another worker sharing the folder fetches it at the same time. `work` must check
    /// for the blob again: the one before may have filled it.
    async fn single_flight<T, F, Fut>(
        &self,
        studio: &Studio,
        hash: &ContentHash,
        work: F,
    ) -> Result<T, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, CacheError>>,
    {
        let flight = (studio.clone(), *hash);
        let lock = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(flight.clone()).or_default().clone()
        };
        let result = async {
            let _guard = lock.lock().await;
            let _file_lock = self.lock_folder(hash).await?;
            work().await
        }
        .await;
        {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            if Arc::strong_count(&lock) <= 2 {
                map.remove(&flight);
            }
        }
        result
    }

    /// Takes the file lock of `hash`'s stripe in the cache folder (waiting on the blocking
    /// pool); released when the returned file is dropped.
    async fn lock_folder(&self, hash: &ContentHash) -> Result<std::fs::File, CacheError> {
        let stripe = hash.as_bytes()[0] as usize % LOCK_STRIPES;
        let path = self.dir.join("locks").join(format!("{stripe:02x}"));
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, e))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| CacheError::io(&path, e))?;
            use std::os::fd::AsRawFd;
            loop {
                // SAFETY: flock on a descriptor this function owns; no memory is involved.
                if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                    return Ok(file);
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(CacheError::io(&path, e));
                }
            }
        })
        .await
        .map_err(|e| CacheError::Manifest(format!("input cache lock task failed: {e}")))?
    }

    /// The local path of a verified input file of `studio`: a whole blob, or a chunked file
    /// rebuilt from its chunks (fetching only the chunks the cache lacks) and checked against
    /// its whole-file hash. Returns the path and the bytes downloaded.
    async fn file(
        &self,
        studio: &Studio,
        entry: &InputEntry,
        progress: &Progress,
    ) -> Result<(PathBuf, u64), CacheError> {
        if entry.chunks.is_empty() {
            return self
                .fetch(studio, &entry.hash, entry.size, Some(progress))
                .await;
        }
        let path = self.blob_path(studio, &entry.hash);
        if let Some(hit) = self.hit(&path, entry.size).await {
            self.counters.hits.inc();
            progress.skipped(entry.size);
            return Ok((hit, 0));
        }
        let mut parts = vec![PathBuf::new(); entry.chunks.len()];
        let mut downloaded = 0;
        let mut todo = entry.chunks.iter().copied().enumerate();
        let mut fetches = futures::stream::FuturesUnordered::new();
        loop {
            while fetches.len() < FETCH_CONCURRENCY {
                let Some((i, c)) = todo.next() else { break };
                fetches.push(async move {
                    self.fetch(studio, &c.hash, c.size, Some(progress))
                        .await
                        .map(|got| (i, got))
                });
            }
            let Some(r) = fetches.next().await else { break };
            let (i, (part, n)) = r?;
            parts[i] = part;
            downloaded += n;
        }
        drop(fetches);
        let (hash, size) = (entry.hash, entry.size);
        self.single_flight(studio, &hash, || async {
            if self.hit(&path, size).await.is_some() {
                return Ok(());
            }
            let dest = path.clone();
            tokio::task::spawn_blocking(move || {
                if let Some(folder) = dest.parent() {
                    std::fs::create_dir_all(folder).map_err(|e| CacheError::io(folder, e))?;
                }
                chunks::rebuild(&parts, &hash, size, &dest)?;
                set_read_only(&dest);
                Ok::<_, CacheError>(())
            })
            .await
            .map_err(|e| CacheError::Manifest(format!("input rebuild task failed: {e}")))??;
            self.used.fetch_add(size, Ordering::Relaxed);
            Ok(())
        })
        .await?;
        Ok((path, downloaded))
    }

    /// A cached blob of the right size, touched for LRU.
    async fn hit(&self, path: &Path, size: u64) -> Option<PathBuf> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&path).ok()?;
            if meta.len() != size {
                warn!(path = %path.display(), "cached blob has the wrong size; fetching again");
                let _ = std::fs::remove_file(&path);
                return None;
            }
            if let Ok(f) = std::fs::File::open(&path) {
                let _ = f.set_modified(SystemTime::now());
            }
            Some(path)
        })
        .await
        .ok()
        .flatten()
    }

    /// Fetches and parses an input manifest of `studio`.
    pub async fn manifest(
        &self,
        studio: &Studio,
        hash: &ContentHash,
    ) -> Result<InputManifest, CacheError> {
        // Its key is the hash of what it names, chunk lists left out: checked once parsed.
        let bytes = self
            .store
            .get_bytes(&layout::input_manifest(studio, hash))
            .await?;
        InputManifest::parse_verified(&bytes, hash).map_err(|e| CacheError::Manifest(e.to_string()))
    }

    /// Lays out every input of a manifest of `studio` under `dest`; returns the bytes
    /// downloaded.
    pub async fn materialize(
        &self,
        studio: &Studio,
        manifest: &InputManifest,
        dest: &Path,
    ) -> Result<u64, CacheError> {
        // A manifest is untrusted input: checked whole before anything is laid out.
        for (rel, entry) in &manifest.files {
            check_input(rel, entry.mode)?;
        }
        let progress = Progress::new(manifest.total_bytes());
        let fetch = async {
            let mut downloaded = 0;
            for (rel, entry) in &manifest.files {
                let (blob, n) = self.file(studio, entry, &progress).await?;
                downloaded += n;
                let target = dest.join(rel);
                let executable = entry.mode & 0o111 != 0;
                let root = dest.to_path_buf();
                tokio::task::spawn_blocking(move || {
                    link_or_copy(&blob, &target, executable)?;
                    check_laid_out(&root, &target)
                })
                .await
                .map_err(|e| CacheError::Manifest(format!("input layout task failed: {e}")))??;
            }
            Ok::<_, CacheError>(downloaded)
        };
        tokio::pin!(fetch);
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.tick().await;
        let result = loop {
            tokio::select! {
                r = &mut fetch => break r,
                _ = ticks.tick() => info!(%studio, "fetching inputs: {}", progress.line()),
            }
        };
        if progress.moved_bytes() > 0 {
            self.evict_if_needed().await;
        }
        result
    }

    /// Pre-staging: fetches every input of a manifest of `studio` into the cache, laying
    /// nothing out (no task folder). `progress` counts the bytes there (`done`) and moved;
    /// returns the bytes downloaded. Each blob and chunk goes through the same single flight
    /// as a task's fetch, so staging and tasks never fetch one twice at once.
    pub async fn stage(
        &self,
        studio: &Studio,
        manifest: &InputManifest,
        progress: &Progress,
    ) -> Result<u64, CacheError> {
        for (rel, entry) in &manifest.files {
            check_input(rel, entry.mode)?;
        }
        let mut downloaded = 0;
        for entry in manifest.files.values() {
            downloaded += self.file(studio, entry, progress).await?.1;
        }
        if downloaded > 0 {
            self.evict_if_needed().await;
        }
        Ok(downloaded)
    }

    /// Removes least recently used blobs until the cache is under 90% of its bound.
    async fn evict_if_needed(&self) {
        if self.used_bytes() <= self.max_bytes {
            return;
        }
        let blobs_dir = self.dir.join("cas");
        let target = self.max_bytes / 10 * 9;
        let (freed, evicted) = tokio::task::spawn_blocking(move || {
            let mut blobs = list_blobs(&blobs_dir);
            let mut total: u64 = blobs.iter().map(|b| b.size).sum();
            blobs.sort_by_key(|b| b.modified);
            let (mut freed, mut evicted) = (0u64, 0u64);
            for b in blobs {
                if total <= target {
                    break;
                }
                if std::fs::remove_file(&b.path).is_ok() {
                    total -= b.size;
                    freed += b.size;
                    evicted += 1;
                }
            }
            (freed, evicted)
        })
        .await
        .unwrap_or((0, 0));
        self.counters.evictions.inc_by(evicted);
        self.counters.evicted_bytes.inc_by(freed);
        if freed > 0 {
            debug!(freed, "evicted blobs from the input cache");
            let _ = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                    Some(u.saturating_sub(freed))
                });
        }
    }
}

struct BlobFile {
    path: PathBuf,
    size: u64,
    modified: SystemTime,
}

/// Every blob under `dir` (`<dir>/<studio>/<hash>`). Files directly in `dir` are blobs of a
/// cache written before blobs were kept per studio: counted and evicted like the others, never
/// served.
fn list_blobs(dir: &Path) -> Vec<BlobFile> {
    let mut blobs = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return blobs;
    };
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            let Ok(studio) = std::fs::read_dir(e.path()) else {
                continue;
            };
            blobs.extend(studio.flatten().filter_map(|b| blob_file(&b)));
        } else if let Some(b) = blob_file(&e) {
            blobs.push(b);
        }
    }
    blobs
}

fn blob_file(e: &std::fs::DirEntry) -> Option<BlobFile> {
    let meta = e.metadata().ok()?;
    meta.is_file().then(|| BlobFile {
        path: e.path(),
        size: meta.len(),
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

fn set_read_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o444));
}

/// Refuses an input whose path could leave the task's folder (absolute, `..`, empty parts)
/// or whose mode is more than permission bits (a device, a link, setuid): a scene's inputs
/// are plain files in plain folders. The submitting CLI refuses them too; this is the worker's
/// own check, as the manifest may come from anyone who can write the store.
fn check_input(rel: &str, mode: u32) -> Result<(), CacheError> {
    suanli_shared::names::validate_rel_path(rel)
        .map_err(|e| CacheError::Manifest(format!("input '{rel}' refused: {e}")))?;
    if mode & !0o777 != 0 {
        return Err(CacheError::Manifest(format!(
            "input '{rel}' refused: mode {mode:o} is more than permission bits (inputs are plain files: no links, devices, setuid or setgid)"
        )));
    }
    Ok(())
}

/// Checks that every part of `target` below `root` is a real folder or file, not a link:
/// nothing the worker lays out may point outside the task's folder.
fn check_laid_out(root: &Path, target: &Path) -> Result<(), CacheError> {
    for part in target.ancestors().take_while(|a| *a != root) {
        let meta = std::fs::symlink_metadata(part).map_err(|e| CacheError::io(part, e))?;
        if !(meta.is_file() || meta.is_dir()) {
            return Err(CacheError::Manifest(format!(
                "input '{}' is not a plain file or folder once laid out",
                part.display()
            )));
        }
    }
    Ok(())
}

fn link_or_copy(blob: &Path, target: &Path, executable: bool) -> Result<(), CacheError> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| CacheError::io(parent, e))?;
    }
    if std::fs::hard_link(blob, target).is_err() {
        std::fs::copy(blob, target).map_err(|e| CacheError::io(target, e))?;
    }
    if executable {
        let _ = std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o555));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
