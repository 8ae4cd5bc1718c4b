//! The worker's local content cache: a size-bounded, read-through copy of each studio's
//! `studios/<studio>/cas/<hash>` blobs, so a region downloads each input once, not once per
//! task.
//!
//! Blobs are stored read-only at `<dir>/cas/<studio>/<hash>` after their hash is verified, and
//! are hard-linked (or copied, across file systems) into each task's input tree: a running task
//! keeps its inputs even if the cache evicts them. Blobs are kept per studio like the store
//! keeps them: a task of one studio gets only blobs found under its own studio's prefix, never
//! one that another studio's task brought in (knowing a hash must not be enough to read
//! another studio's file). Concurrent requests for one blob wait for a single download.
//! Eviction removes the least recently used blobs once the cache is over its bound.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use suanli_shared::layout;
use suanli_shared::protocol::InputManifest;
use suanli_shared::store::{Store, StoreError, StoreErrorKind};
use suanli_shared::{ContentHash, Studio};
use tracing::{debug, warn};

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
            counters: Default::default(),
        })
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
        let path = self.blob_path(studio, hash);
        if let Some(hit) = self.hit(&path, size).await {
            self.counters.hits.inc();
            return Ok((hit, 0));
        }
        let flight = (studio.clone(), *hash);
        let lock = {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(flight.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Someone else may have fetched it while we waited.
        if let Some(hit) = self.hit(&path, size).await {
            self.counters.hits.inc();
            return Ok((hit, 0));
        }
        let download_started = std::time::Instant::now();
        debug!(%studio, blob = %hash.short(), size, "cache miss");
        let result = async {
            if let Some(folder) = path.parent() {
                tokio::fs::create_dir_all(folder)
                    .await
                    .map_err(|e| CacheError::io(folder, e))?;
            }
            let key = layout::cas(studio, hash);
            Ok::<_, CacheError>(
                self.store
                    .download_verified(&key, hash, size, &path)
                    .await?,
            )
        }
        .await;
        {
            let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            map.remove(&flight);
        }
        result?;
        self.counters.misses.inc();
        self.counters.download_bytes.inc_by(size);
        self.counters
            .download_seconds
            .inc_by(download_started.elapsed().as_secs_f64());
        set_read_only(&path);
        self.used.fetch_add(size, Ordering::Relaxed);
        self.evict_if_needed().await;
        Ok((path, size))
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
        let bytes = self
            .store
            .get_verified(&layout::input_manifest(studio, hash), hash)
            .await?;
        InputManifest::parse(&bytes).map_err(|e| CacheError::Manifest(e.to_string()))
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
        let mut downloaded = 0;
        for (rel, entry) in &manifest.files {
            let (blob, n) = self.blob(studio, &entry.hash, entry.size).await?;
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
mod tests {
    use super::*;
    use suanli_shared::protocol::InputEntry;

    fn acme() -> Studio {
        "acme".parse().unwrap()
    }

    /// A store holding `blobs` under studio acme's prefix.
    async fn store_with(blobs: &[&[u8]]) -> (tempfile::TempDir, Store, Vec<ContentHash>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let mut hashes = vec![];
        for b in blobs {
            let h = ContentHash::of(b);
            store
                .put_bytes(&layout::cas(&acme(), &h), bytes::Bytes::copy_from_slice(b))
                .await
                .unwrap();
            hashes.push(h);
        }
        (dir, store, hashes)
    }

    #[tokio::test]
    async fn a_blob_is_fetched_once_and_verified() {
        let (dir, store, h) = store_with(&[b"scene data"]).await;
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, store.clone())
            .await
            .unwrap();
        let acme = acme();
        let (a, b) = tokio::join!(cache.blob(&acme, &h[0], 10), cache.blob(&acme, &h[0], 10));
        let downloaded = a.unwrap().1 + b.unwrap().1;
        assert_eq!(downloaded, 10, "two concurrent requests download once");
        assert_eq!(cache.blob(&acme, &h[0], 10).await.unwrap().1, 0);
        // A corrupted blob in the store is refused and not cached.
        let bad = ContentHash::of(b"other");
        store
            .put_bytes(
                &layout::cas(&acme, &bad),
                bytes::Bytes::from_static(b"evil!"),
            )
            .await
            .unwrap();
        let err = cache.blob(&acme, &bad, 5).await.unwrap_err();
        assert!(
            matches!(err, CacheError::Store(ref e) if e.kind() == StoreErrorKind::Corrupt),
            "{err}"
        );
        assert!(!cache.blob_path(&acme, &bad).exists());
    }

    #[tokio::test]
    async fn a_studio_gets_only_blobs_from_its_own_prefix() {
        let (dir, store, h) = store_with(&[b"acme's secret texture"]).await;
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, store)
            .await
            .unwrap();
        let (acme, blue): (Studio, Studio) = (acme(), "blue".parse().unwrap());
        assert_eq!(cache.blob(&acme, &h[0], 21).await.unwrap().1, 21);
        // blue names the same hash: the cache holds it for acme, the store not for blue.
        let err = cache.blob(&blue, &h[0], 21).await.unwrap_err();
        assert!(
            matches!(err, CacheError::Store(ref e) if e.kind() == StoreErrorKind::NotFound),
            "{err}"
        );
        assert!(!cache.blob_path(&blue, &h[0]).exists());
    }

    #[tokio::test]
    async fn blobs_of_a_cache_from_before_studios_are_counted_and_evicted() {
        let (dir, store, h) = store_with(&[&[3u8; 600]]).await;
        let cache_dir = dir.path().join("cache");
        let legacy = cache_dir.join("cas").join(ContentHash::of(b"old").to_hex());
        std::fs::create_dir_all(legacy.parent().unwrap()).unwrap();
        std::fs::write(&legacy, [0u8; 600]).unwrap();
        let long_ago = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1);
        std::fs::File::options()
            .write(true)
            .open(&legacy)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let cache = Cache::open(&cache_dir, 1000, store).await.unwrap();
        assert_eq!(cache.used_bytes(), 600);
        assert_eq!(cache.blob(&acme(), &h[0], 600).await.unwrap().1, 600);
        assert!(!legacy.exists(), "the older, untouched blob was evicted");
        assert_eq!(cache.used_bytes(), 600);
    }

    #[tokio::test]
    async fn materializes_trees_and_evicts_to_its_bound() {
        let (dir, store, h) = store_with(&[&[1u8; 600], &[2u8; 600]]).await;
        let cache = Cache::open(&dir.path().join("cache"), 1000, store)
            .await
            .unwrap();
        let mut m = InputManifest::default();
        m.files.insert(
            "a/x.bin".into(),
            InputEntry {
                hash: h[0],
                size: 600,
                mode: 0o644,
            },
        );
        m.files.insert(
            "y.bin".into(),
            InputEntry {
                hash: h[1],
                size: 600,
                mode: 0o755,
            },
        );
        let out = dir.path().join("task");
        assert_eq!(cache.materialize(&acme(), &m, &out).await.unwrap(), 1200);
        assert_eq!(std::fs::read(out.join("a/x.bin")).unwrap(), vec![1u8; 600]);
        assert_eq!(std::fs::read(out.join("y.bin")).unwrap(), vec![2u8; 600]);
        assert!(cache.used_bytes() <= 1000, "evicted down to its bound");
    }

    #[tokio::test]
    async fn hostile_manifests_are_refused_before_anything_is_laid_out() {
        let (dir, store, h) = store_with(&[&[1u8; 10]]).await;
        let cache = Cache::open(&dir.path().join("cache"), 1 << 20, store)
            .await
            .unwrap();
        let entry = |mode| InputEntry {
            hash: h[0],
            size: 10,
            mode,
        };
        for (path, mode, says) in [
            ("../escape.bin", 0o644, "refused"),
            ("/etc/passwd", 0o644, "refused"),
            ("a//b", 0o644, "refused"),
            ("dev.bin", 0o20644, "more than permission bits"),
            ("suid.bin", 0o4755, "more than permission bits"),
        ] {
            let mut m = InputManifest::default();
            m.files.insert("ok.bin".into(), entry(0o644));
            m.files.insert(path.into(), entry(mode));
            let out = dir.path().join("task");
            let err = cache.materialize(&acme(), &m, &out).await.unwrap_err();
            assert!(err.to_string().contains(says), "{path}: {err}");
            assert!(!out.join("ok.bin").exists(), "{path}: nothing laid out");
        }
    }
}
