//! The studio side's hash cache: (path, size, mtime, inode) → the file's hash and chunk list,
//! kept in a local file between submits, so an unchanged tree is submitted again without
//! reading it and a changed file is read again (and only its changed chunks uploaded).
//!
//! A file is trusted unchanged only when its size, modification time (nanoseconds), inode and
//! device are all as recorded. A file modified within [`RACY_WINDOW`] of being hashed is not
//! recorded: a write in the same clock tick could leave its mtime as it was (git's "racily
//! clean" files). The cache file is written to a temporary file and renamed into place, and
//! one that cannot be read or parsed is ignored with a warning (everything is hashed again),
//! never trusted in part.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use suanli_shared::chunks::FileDigest;

/// Files modified this recently when hashed are not recorded (see the module docs).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Most files the cache remembers; past it, files not seen by this submit are forgotten.
pub const MAX_ENTRIES: usize = 1_000_000;

const VERSION: u32 = 1;

/// Where the cache lives by default: `$XDG_CACHE_HOME/suanli/hashes.json`, else
/// `~/.cache/suanli/hashes.json`; `None` when neither is known.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("suanli").join("hashes.json"))
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i128,
    pub ino: u64,
    pub dev: u64,
}

impl Stamp {
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    stamp: Stamp,
    digest: FileDigest,
    #[serde(skip)]
    seen: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: HashMap<PathBuf, Entry>,
}

/// The cache, loaded once per submit and saved at its end.
#[derive(Debug, Default)]
pub struct HashCache {
    path: Option<PathBuf>,
    files: HashMap<PathBuf, Entry>,
    changed: bool,
}

impl HashCache {
    /// A cache that remembers nothing and saves nothing (`--no-hash-cache`).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Loads the cache at `path`; a missing file is an empty cache, an unreadable or corrupt
    /// one is ignored with a warning (and replaced when saved).
    pub fn load(path: &Path) -> Self {
        let mut cache = Self {
            path: Some(path.to_path_buf()),
            ..Self::default()
        };
        match std::fs::read(path) {
            Ok(bytes) => match serde_json::from_slice::<OnDisk>(&bytes) {
                Ok(disk) if disk.version == VERSION => cache.files = disk.files,
                Ok(disk) => tracing::warn!(
                    path = %path.display(),
                    "hash cache has version {}, not {VERSION}; hashing every input again",
                    disk.version
                ),
                Err(e) => tracing::warn!(
                    path = %path.display(), error = %e,
                    "hash cache is unreadable; hashing every input again (it is rewritten after this submit)"
                ),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(
                path = %path.display(), error = %e,
                "cannot read the hash cache; hashing every input again"
            ),
        }
        cache
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The digest recorded for `path` if the file is still the version it was taken of.
    pub fn get(&mut self, path: &Path, stamp: &Stamp) -> Option<FileDigest> {
        let entry = self.files.get_mut(path)?;
        if entry.stamp != *stamp || entry.digest.size != stamp.size {
            return None;
        }
        entry.seen = true;
        Some(entry.digest.clone())
    }

    /// Records `digest` for `path` as of `stamp`, unless the file was modified so recently
    /// that a later write could keep the same stamp.
    pub fn insert(&mut self, path: &Path, stamp: Stamp, digest: FileDigest) {
        if self.path.is_none() {
            return;
        }
        let now_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        if stamp.mtime_ns > now_ns - RACY_WINDOW.as_nanos() as i128 {
            self.files.remove(path);
            return;
        }
        self.files.insert(
            path.to_path_buf(),
            Entry {
                stamp,
                digest,
                seen: true,
            },
        );
        self.changed = true;
    }

    /// Writes the cache back (temporary file, then rename) if anything was recorded.
    pub fn save(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let Some(path) = self.path.clone() else {
            return Ok(());
        };
        if !self.changed {
            return Ok(());
        }
        if self.files.len() > MAX_ENTRIES {
            self.files.retain(|_, e| e.seen);
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the hash cache folder {}", dir.display()))?;
        let disk = OnDisk {
            version: VERSION,
            files: std::mem::take(&mut self.files),
        };
        let bytes = serde_json::to_vec(&disk);
        self.files = disk.files;
        let bytes = bytes.context("cannot encode the hash cache")?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".hashes.")
            .tempfile_in(dir)
            .with_context(|| format!("cannot write the hash cache in {}", dir.display()))?;
        use std::io::Write as _;
        tmp.write_all(&bytes)
            .and_then(|_| tmp.as_file().sync_all())
            .with_context(|| format!("cannot write the hash cache in {}", dir.display()))?;
        tmp.persist(&path)
            .with_context(|| format!("cannot replace the hash cache {}", path.display()))?;
        self.changed = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use suanli_shared::ContentHash;

    fn digest(data: &[u8]) -> FileDigest {
        FileDigest {
            hash: ContentHash::of(data),
            size: data.len() as u64,
            chunks: vec![],
        }
    }

    fn old_file(path: &Path, data: &[u8], age_secs: u64) -> Stamp {
        std::fs::write(path, data).unwrap();
        let t = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
        Stamp::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn unchanged_files_hit_and_a_new_mtime_of_the_same_size_misses() {
        let dir = tempfile::tempdir().unwrap();
        let (cache_file, f) = (dir.path().join("c/hashes.json"), dir.path().join("a.bin"));
        let stamp = old_file(&f, b"aaaa", 100);
        let mut c = HashCache::load(&cache_file);
        c.insert(&f, stamp, digest(b"aaaa"));
        c.save().unwrap();
        let mut c = HashCache::load(&cache_file);
        assert_eq!(c.get(&f, &stamp), Some(digest(b"aaaa")));
        // Same size, new content and mtime: not trusted.
        let stamp2 = old_file(&f, b"bbbb", 50);
        assert_eq!(stamp2.size, stamp.size);
        assert_eq!(c.get(&f, &stamp2), None);
        // A different file at the same path (new inode) with the old mtime: not trusted.
        std::fs::remove_file(&f).unwrap();
        let other = dir.path().join("other.bin");
        old_file(&other, b"cccc", 0);
        std::fs::rename(&other, &f).unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let renamed = Stamp {
            mtime_ns: stamp.mtime_ns,
            ..Stamp::of(&meta)
        };
        if renamed.ino != stamp.ino {
            assert_eq!(c.get(&f, &renamed), None);
        }
    }

    #[test]
    fn files_modified_just_now_are_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        let stamp = old_file(&f, b"fresh", 0);
        let mut c = HashCache::load(&dir.path().join("hashes.json"));
        c.insert(&f, stamp, digest(b"fresh"));
        assert_eq!(c.get(&f, &stamp), None);
    }

    #[test]
    fn a_corrupt_cache_file_is_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache_file = dir.path().join("hashes.json");
        std::fs::write(&cache_file, b"{\"version\":1,\"files\":{\"/x\":{\"stamp\":").unwrap();
        let mut c = HashCache::load(&cache_file);
        assert!(c.is_empty());
        let f = dir.path().join("a.bin");
        let stamp = old_file(&f, b"aaaa", 100);
        c.insert(&f, stamp, digest(b"aaaa"));
        c.save().unwrap();
        assert_eq!(HashCache::load(&cache_file).len(), 1);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(
            leftovers.len(),
            2,
            "the cache and the file, no temporary file"
        );
    }

    #[test]
    fn a_disabled_cache_remembers_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.bin");
        let stamp = old_file(&f, b"aaaa", 100);
        let mut c = HashCache::disabled();
        c.insert(&f, stamp, digest(b"aaaa"));
        assert_eq!(c.get(&f, &stamp), None);
        c.save().unwrap();
    }
}
