//! A job's input files: gathered from the scene's folder (nothing outside it, at most
//! [`MAX_INPUT_FILES`]), then hashed with BLAKE3 and uploaded, only the blobs the store lacks
//! (large files as content-defined chunks, only the chunks it lacks), with the manifest that
//! names them. Kept apart from `jobfile`, which decides *which*
//! paths a job names, because this is the part that touches the disk and the store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures::StreamExt as _;
use suanli_shared::chunks::{self, FileDigest, Link};
use suanli_shared::layout;
use suanli_shared::protocol::{InputEntry, InputManifest};
use suanli_shared::store::{Commit, Store};
use suanli_shared::transfer;
use suanli_shared::{ContentHash, Studio};

use crate::hash_cache::{HashCache, Stamp};

/// Most input files one job may name (directories count by their files).
pub const MAX_INPUT_FILES: usize = 100_000;

/// A job's input files, found and checked but not yet hashed.
#[derive(Debug)]
pub struct Gathered {
    /// The scene's path inside the manifest, when the job has a scene.
    pub scene_rel: Option<String>,
    /// (path inside the manifest, file on disk), sorted.
    pub files: Vec<(String, PathBuf)>,
}

/// The scene (if any) and every file under `input_paths`, each named relative to the scene's
/// folder (or `base`, without a scene) and refused when it lies outside it.
pub fn gather(
    base: &Path,
    scene_path: Option<&Path>,
    input_paths: &[PathBuf],
) -> anyhow::Result<Gathered> {
    let root = match scene_path {
        Some(scene) => {
            if !scene.is_file() {
                bail!("scene file {} does not exist", scene.display());
            }
            check_plain(scene, &std::fs::symlink_metadata(scene)?)?;
            scene
                .canonicalize()?
                .parent()
                .map(Path::to_path_buf)
                .context("scene has no parent folder")?
        }
        None => base
            .canonicalize()
            .with_context(|| format!("cannot open {}", base.display()))?,
    };
    let mut files: BTreeSet<(String, PathBuf)> = BTreeSet::new();
    let mut scene_rel = None;
    if let Some(scene) = scene_path {
        let rel = rel_inside(&root, scene)?;
        scene_rel = Some(rel.clone());
        files.insert((rel, scene.canonicalize()?));
    }
    for p in input_paths {
        collect_files(&root, p, &mut files)?;
    }
    if files.len() > MAX_INPUT_FILES {
        bail!(
            "job names {} input files; at most {MAX_INPUT_FILES} are allowed",
            files.len()
        );
    }
    Ok(Gathered {
        scene_rel,
        files: files.into_iter().collect(),
    })
}

/// `path` relative to `root`, refusing anything outside it.
fn rel_inside(root: &Path, path: &Path) -> anyhow::Result<String> {
    let abs = path
        .canonicalize()
        .with_context(|| format!("input {} does not exist", path.display()))?;
    let rel = abs.strip_prefix(root).map_err(|_| {
        anyhow::anyhow!(
            "input {} is outside the job's folder {}: inputs must sit beside or below the scene",
            path.display(),
            root.display()
        )
    })?;
    let rel = rel
        .to_str()
        .with_context(|| format!("input path {} is not valid UTF-8", rel.display()))?
        .to_string();
    suanli_shared::names::validate_rel_path(&rel)?;
    Ok(rel)
}

/// Refuses what is not a plain file or folder: a symbolic link (which could name any file on
/// the studio's machine, and which workers would not recreate), a device, a pipe or a socket.
fn check_plain(path: &Path, meta: &std::fs::Metadata) -> anyhow::Result<()> {
    let kind = meta.file_type();
    if kind.is_symlink() {
        bail!(
            "input {} is a symbolic link: a job's inputs are plain files and folders (copy the file it points to in its place)",
            path.display()
        );
    }
    if !(kind.is_file() || kind.is_dir()) {
        bail!(
            "input {} is not a plain file or folder (a device, pipe or socket): a job's inputs are plain files",
            path.display()
        );
    }
    Ok(())
}

fn collect_files(
    root: &Path,
    path: &Path,
    out: &mut BTreeSet<(String, PathBuf)>,
) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("input {} does not exist", path.display()))?;
    check_plain(path, &meta)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list {}", path.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for e in entries {
            collect_files(root, &e.path(), out)?;
            if out.len() > MAX_INPUT_FILES {
                bail!("inputs hold more than {MAX_INPUT_FILES} files");
            }
        }
    } else if meta.is_file() {
        out.insert((rel_inside(root, path)?, path.canonicalize()?));
    }
    Ok(())
}

/// What uploading the inputs did.
#[derive(Debug, Clone, Copy, Default)]
pub struct UploadReport {
    pub files: usize,
    pub bytes: u64,
    /// Blobs uploaded (whole files and chunks) and their bytes: what crossed the link.
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    /// Bytes read from local files (hashing and uploading).
    pub read_bytes: u64,
    /// Chunks of the chunked files, and how many of them were uploaded.
    pub chunks: usize,
    pub uploaded_chunks: usize,
    /// Files the hash cache knew unchanged (not read to be hashed).
    pub unchanged: usize,
}

/// Whole (small) files uploaded at once.
const FILES_AT_ONCE: usize = 8;

/// A file to upload: its name in the manifest, its path, what stat said, and its digest when
/// the hash cache knows it.
type Stated<'a> = (
    &'a String,
    &'a PathBuf,
    std::fs::Metadata,
    Stamp,
    Option<FileDigest>,
);

impl UploadReport {
    fn add(&mut self, o: &UploadReport) {
        self.uploaded += o.uploaded;
        self.uploaded_bytes += o.uploaded_bytes;
        self.read_bytes += o.read_bytes;
        self.chunks += o.chunks;
        self.uploaded_chunks += o.uploaded_chunks;
    }
}

/// How an upload runs: the hash cache, the link's cap and progress, shared by every file.
#[derive(Debug, Clone, Default)]
pub struct UploadOptions {
    pub link: Link,
    /// The hash cache file (`--hash-cache`); `None` hashes every file (`--no-hash-cache`).
    pub hash_cache: Option<PathBuf>,
}

/// Hashes every file (path inside the manifest, file on disk), uploads the blobs the store
/// lacks under `studio`'s prefix and stores the manifest there; returns the manifest's hash.
/// Files above [`suanli_shared::chunks::CHUNK_THRESHOLD`] go up as content-defined chunks,
/// only those the store lacks; the manifest is written last, so a manifest in the store means
/// every blob it names is there too. Files the hash cache knows unchanged are not read to be
/// hashed, and when every file is known and the store already holds the very manifest they
/// make, nothing is read or sent.
pub async fn upload(
    store: &Store,
    studio: &Studio,
    files: &[(String, PathBuf)],
    opts: &UploadOptions,
) -> anyhow::Result<(ContentHash, UploadReport)> {
    let mut cache = match opts.hash_cache.clone() {
        Some(p) => tokio::task::spawn_blocking(move || HashCache::load(&p)).await?,
        None => HashCache::disabled(),
    };
    let mut report = UploadReport::default();
    let mut stated = Vec::with_capacity(files.len());
    let mut all_known = true;
    for (rel, path) in files {
        let meta = tokio::fs::metadata(path)
            .await
            .with_context(|| format!("cannot read {}", path.display()))?;
        let stamp = Stamp::of(&meta);
        let known = cache.get(path, &stamp);
        all_known &= known.is_some();
        stated.push((rel, path, meta, stamp, known));
    }
    if all_known {
        let mut manifest = InputManifest::default();
        for (rel, _, meta, _, known) in &stated {
            let d = known.clone().expect("every file is known");
            manifest.files.insert((*rel).clone(), entry_of(d, meta));
        }
        let hash = manifest.hash();
        let key = layout::input_manifest(studio, &hash);
        if store.exists(&key).await? && store.get_bytes(&key).await? == manifest.to_bytes() {
            report.files = manifest.files.len();
            report.bytes = manifest.total_bytes();
            report.unchanged = report.files;
            report.chunks = manifest.files.values().map(|e| e.chunks.len()).sum();
            if let Some(p) = &opts.link.progress {
                p.add_total(report.bytes);
                p.skipped(report.bytes);
            }
            return Ok((hash, report));
        }
    }
    if let Some(p) = &opts.link.progress {
        p.add_total(stated.iter().map(|s| s.2.len()).sum());
    }
    // Whole files go up a few at once (each in memory, at most CHUNK_THRESHOLD), chunked
    // files one at a time (each with its own few chunks in flight): memory stays bounded and
    // a tree of many small files does not wait a round trip per file.
    let big_file = tokio::sync::Semaphore::new(1);
    let mut uploads = futures::stream::iter(stated)
        .map(|file| upload_one(store, studio, opts, &big_file, file))
        .buffer_unordered(FILES_AT_ONCE);
    let mut manifest = InputManifest::default();
    while let Some(done) = uploads.next().await {
        let (rel, path, meta, stamp, was_known, steady, digest, r) = done?;
        report.add(&r);
        report.unchanged += usize::from(was_known);
        if steady {
            cache.insert(path, stamp, digest.clone());
            if !digest.chunks.is_empty() {
                // A large file is worth keeping even if this submit is stopped later.
                save_cache(&mut cache).await;
            }
        }
        report.files += 1;
        report.bytes += digest.size;
        manifest.files.insert(rel.clone(), entry_of(digest, &meta));
    }
    drop(uploads);
    save_cache(&mut cache).await;
    let hash = manifest.hash();
    let key = layout::input_manifest(studio, &hash);
    let bytes = Bytes::from(manifest.to_bytes());
    if store.put_if_absent(&key, bytes.clone()).await? == Commit::AlreadyExisted {
        // Same files, perhaps listed another way (a manifest from before chunking lists no
        // chunks): ours names blobs just checked to be in the store, so it replaces one that
        // differs. Either copy describes the same files.
        if store.get_bytes(&key).await? != bytes {
            store.put_bytes(&key, bytes).await?;
        }
    }
    Ok((hash, report))
}

/// What uploading one file gave: its name, path, stat and stamp, whether the hash cache knew
/// it, whether it stayed the same while read, its digest and its share of the report.
type Uploaded<'a> = (
    &'a String,
    &'a PathBuf,
    std::fs::Metadata,
    Stamp,
    bool,
    bool,
    FileDigest,
    UploadReport,
);

async fn upload_one<'a>(
    store: &Store,
    studio: &Studio,
    opts: &UploadOptions,
    big_file: &tokio::sync::Semaphore,
    (rel, path, meta, stamp, known): Stated<'a>,
) -> anyhow::Result<Uploaded<'a>> {
    let _turn = if chunks::is_chunked(meta.len()) {
        Some(big_file.acquire().await?)
    } else {
        None
    };
    let mut r = UploadReport::default();
    let was_known = known.is_some();
    let digest = upload_file(store, studio, path, meta.len(), known, opts, &mut r)
        .await
        .with_context(|| format!("cannot upload {}", path.display()))?;
    // Recorded in the hash cache only if the file did not change while it was read.
    let steady =
        !was_known && tokio::fs::metadata(path).await.ok().map(|m| Stamp::of(&m)) == Some(stamp);
    Ok((rel, path, meta, stamp, was_known, steady, digest, r))
}

fn entry_of(d: FileDigest, meta: &std::fs::Metadata) -> InputEntry {
    use std::os::unix::fs::PermissionsExt;
    InputEntry {
        hash: d.hash,
        size: d.size,
        mode: meta.permissions().mode() & 0o777,
        chunks: d.chunks,
    }
}

/// Saves the hash cache off the runtime; a cache that cannot be written only costs the next
/// submit a re-read, so it is a warning.
async fn save_cache(cache: &mut HashCache) {
    let mut taken = std::mem::take(cache);
    let (back, result) = tokio::task::spawn_blocking(move || {
        let r = taken.save();
        (taken, r)
    })
    .await
    .unwrap_or_else(|e| (HashCache::disabled(), Err(anyhow::anyhow!("{e}"))));
    *cache = back;
    if let Err(e) = result {
        tracing::warn!("{e:#}; the next submit hashes these files again");
    }
}

/// Uploads one file, whole or as chunks (`known`: its digest from the hash cache), and
/// returns its digest.
async fn upload_file(
    store: &Store,
    studio: &Studio,
    path: &Path,
    size: u64,
    known: Option<FileDigest>,
    opts: &UploadOptions,
    report: &mut UploadReport,
) -> anyhow::Result<FileDigest> {
    if chunks::is_chunked(size) {
        let (digest, up) =
            chunks::upload_chunked(store, studio, path, known.as_ref(), &opts.link).await?;
        report.read_bytes += up.read;
        report.chunks += up.chunks;
        report.uploaded_chunks += up.uploaded_chunks;
        report.uploaded += up.uploaded_chunks;
        report.uploaded_bytes += up.uploaded;
        return Ok(digest);
    }
    let (hash, size) = match known {
        Some(d) => (d.hash, d.size),
        None => {
            let p = path.to_path_buf();
            let got = tokio::task::spawn_blocking(move || ContentHash::of_file(&p))
                .await?
                .with_context(|| format!("cannot hash {}", path.display()))?;
            report.read_bytes += got.1;
            got
        }
    };
    let key = layout::cas(studio, &hash);
    let sent = if store.exists(&key).await? {
        false
    } else {
        transfer::acquire(opts.link.rate.as_ref(), size).await;
        report.read_bytes += size;
        store.upload_blob(&key, &hash, path).await?
    };
    if let Some(p) = &opts.link.progress {
        if sent {
            p.moved(size);
        } else {
            p.skipped(size);
        }
    }
    if sent {
        report.uploaded += 1;
        report.uploaded_bytes += size;
    }
    Ok(FileDigest {
        hash,
        size,
        chunks: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shot folder with a scene and a textures folder.
    fn shot() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("shot");
        std::fs::create_dir_all(shot.join("tex")).unwrap();
        std::fs::write(shot.join("scene.blend"), "scene").unwrap();
        std::fs::write(shot.join("tex/wood.png"), "wood").unwrap();
        (dir, shot)
    }

    fn refusal(shot: &Path, inputs: &[&str]) -> String {
        let paths: Vec<PathBuf> = inputs.iter().map(|p| shot.join(p)).collect();
        format!(
            "{:#}",
            gather(shot, Some(&shot.join("scene.blend")), &paths).unwrap_err()
        )
    }

    #[test]
    fn plain_files_and_folders_are_gathered() {
        let (_dir, shot) = shot();
        let g = gather(&shot, Some(&shot.join("scene.blend")), &[shot.join("tex")]).unwrap();
        let names: Vec<&str> = g.files.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(names, ["scene.blend", "tex/wood.png"]);
    }

    #[test]
    fn links_sockets_and_escapes_are_refused() {
        let (dir, shot) = shot();
        let secret = dir.path().join("secret.txt");
        std::fs::write(&secret, "outside").unwrap();
        // A link inside a named folder, pointing out of it.
        std::os::unix::fs::symlink(&secret, shot.join("tex/link.png")).unwrap();
        assert!(refusal(&shot, &["tex"]).contains("is a symbolic link"));
        std::fs::remove_file(shot.join("tex/link.png")).unwrap();
        // A link named directly, even to a file inside the folder.
        std::os::unix::fs::symlink(shot.join("tex/wood.png"), shot.join("alias.png")).unwrap();
        assert!(refusal(&shot, &["alias.png"]).contains("is a symbolic link"));
        // A linked scene.
        std::os::unix::fs::symlink(shot.join("scene.blend"), shot.join("linked.blend")).unwrap();
        let err = gather(&shot, Some(&shot.join("linked.blend")), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("is a symbolic link"), "{err:#}");
        // A socket (like a device or a pipe, not a plain file).
        let _sock = std::os::unix::net::UnixListener::bind(shot.join("tex/render.sock")).unwrap();
        assert!(refusal(&shot, &["tex"]).contains("not a plain file or folder"));
        // A name that leaves the scene's folder.
        assert!(refusal(&shot, &["../secret.txt"]).contains("outside the job's folder"));
    }

    pub(crate) use suanli_shared::chunks::pseudo_random as noise;

    #[tokio::test]
    async fn large_files_go_up_as_chunks_and_a_change_sends_only_its_chunks() {
        let (dir, shot) = shot();
        let big = noise(40 << 20, 5);
        std::fs::write(shot.join("tex/cache.bin"), &big).unwrap();
        let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let studio: Studio = "acme".parse().unwrap();
        let g = gather(&shot, Some(&shot.join("scene.blend")), &[shot.join("tex")]).unwrap();
        let opts = UploadOptions::default();
        let (hash, first) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert_eq!(first.uploaded_bytes, first.bytes);
        assert!(first.chunks >= 2 && first.uploaded_chunks == first.chunks);
        let m = InputManifest::parse_verified(
            &store
                .get_bytes(&layout::input_manifest(&studio, &hash))
                .await
                .unwrap(),
            &hash,
        )
        .unwrap();
        let entry = &m.files["tex/cache.bin"];
        assert_eq!(entry.hash, ContentHash::of(&big));
        assert_eq!(entry.chunks.len(), first.chunks);
        assert!(
            m.files["scene.blend"].chunks.is_empty(),
            "small files stay whole"
        );
        // The same files again: nothing sent, same manifest.
        let (again, second) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert_eq!((again, second.uploaded_bytes), (hash, 0));
        // 1 MiB changed in the middle: a few chunks go up, not the file.
        let mut edited = big.clone();
        edited[20 << 20..21 << 20].copy_from_slice(&noise(1 << 20, 6));
        std::fs::write(shot.join("tex/cache.bin"), &edited).unwrap();
        let (changed, third) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert_ne!(changed, hash);
        assert!(
            third.uploaded_bytes > 0 && third.uploaded_bytes <= 2 * u64::from(chunks::MAX_CHUNK),
            "{} bytes",
            third.uploaded_bytes
        );
    }

    fn age(path: &Path, secs: u64) {
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[tokio::test]
    async fn the_hash_cache_skips_reading_unchanged_files_and_rereads_changed_ones() {
        let (dir, shot) = shot();
        let big = noise(20 << 20, 7);
        std::fs::write(shot.join("tex/cache.bin"), &big).unwrap();
        for f in ["scene.blend", "tex/wood.png", "tex/cache.bin"] {
            age(&shot.join(f), 100);
        }
        let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
        let studio: Studio = "acme".parse().unwrap();
        let g = gather(&shot, Some(&shot.join("scene.blend")), &[shot.join("tex")]).unwrap();
        let opts = UploadOptions {
            hash_cache: Some(dir.path().join("cache/hashes.json")),
            ..Default::default()
        };
        let (hash, first) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert!(first.read_bytes >= first.bytes);
        let before = store.counts();
        let (again, second) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert_eq!(again, hash);
        assert_eq!((second.read_bytes, second.uploaded_bytes), (0, 0));
        assert_eq!(second.unchanged, 3);
        assert_eq!(second.chunks, first.chunks);
        let after = store.counts();
        assert_eq!(after.bytes_written, before.bytes_written);
        // Same size, new content and mtime: read again, and the new hash is used.
        let mut edited = big.clone();
        edited[1 << 20] ^= 0xff;
        std::fs::write(shot.join("tex/cache.bin"), &edited).unwrap();
        age(&shot.join("tex/cache.bin"), 50);
        let (changed, third) = upload(&store, &studio, &g.files, &opts).await.unwrap();
        assert_ne!(changed, hash);
        assert_eq!(third.unchanged, 2);
        assert_eq!(third.read_bytes, edited.len() as u64);
        let m = InputManifest::parse_verified(
            &store
                .get_bytes(&layout::input_manifest(&studio, &changed))
                .await
                .unwrap(),
            &changed,
        )
        .unwrap();
        assert_eq!(m.files["tex/cache.bin"].hash, ContentHash::of(&edited));
        // Without the cache every file is read again.
        let (_, fourth) = upload(&store, &studio, &g.files, &UploadOptions::default())
            .await
            .unwrap();
        assert!(fourth.read_bytes >= fourth.bytes && fourth.unchanged == 0);
    }
}
