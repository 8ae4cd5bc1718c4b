//! A job's input files: gathered from the scene's folder (nothing outside it, at most
//! [`MAX_INPUT_FILES`]), then hashed with BLAKE3 and uploaded, only the blobs the store lacks,
//! with the manifest that names them. Kept apart from `jobfile`, which decides *which*
//! paths a job names, because this is the part that touches the disk and the store.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use suanli_shared::layout;
use suanli_shared::protocol::{InputEntry, InputManifest};
use suanli_shared::store::Store;
use suanli_shared::{ContentHash, Studio};

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
    pub uploaded: usize,
    pub uploaded_bytes: u64,
}

/// Hashes every file (path inside the manifest, file on disk), uploads the blobs the store
/// lacks under `studio`'s prefix and stores the manifest there; returns the manifest's hash.
pub async fn upload(
    store: &Store,
    studio: &Studio,
    files: &[(String, PathBuf)],
) -> anyhow::Result<(ContentHash, UploadReport)> {
    use std::os::unix::fs::PermissionsExt;
    let mut manifest = InputManifest::default();
    let mut report = UploadReport::default();
    for (rel, path) in files {
        let p = path.clone();
        let (hash, size, mode) = tokio::task::spawn_blocking(move || {
            let (hash, size) = ContentHash::of_file(&p)?;
            let mode = std::fs::metadata(&p)?.permissions().mode() & 0o777;
            std::io::Result::Ok((hash, size, mode))
        })
        .await?
        .with_context(|| format!("cannot hash {}", path.display()))?;
        if store
            .upload_blob(&layout::cas(studio, &hash), &hash, path)
            .await?
        {
            report.uploaded += 1;
            report.uploaded_bytes += size;
        }
        report.files += 1;
        report.bytes += size;
        manifest
            .files
            .insert(rel.clone(), InputEntry { hash, size, mode });
    }
    let hash = manifest.hash();
    store
        .put_if_absent(
            &layout::input_manifest(studio, &hash),
            Bytes::from(manifest.to_bytes()),
        )
        .await?;
    Ok((hash, report))
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
}
