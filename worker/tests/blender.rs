//! The Blender runner through its public API: the real Blender (Debian's 3.4.1 here) renders a
//! tiny generated scene, with the same pixels as Blender run by hand, overrides applied, and
//! failures as values. A machine without Blender fails these tests with the command that
//! installs it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;

use common::*;
use suanli_shared::protocol::{self, ImageFormat, RendererSpec};
use suanli_worker::render;

/// The Blender the worker would run; fails the test with the fix when there is none.
fn blender() -> std::ffi::OsString {
    let program = render::blender::program();
    let works = StdCommand::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "blender is not installed (or {} does not run): run scripts/install-tools.sh --blender",
        program.to_string_lossy()
    );
    program
}

/// Writes the test scene (tests/data/make_scene.py) to `dir/scene.blend`.
fn make_scene(dir: &Path, n_frames: u32) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/make_scene.py");
    let scene = dir.join("scene.blend");
    let out = StdCommand::new(blender())
        .args(["-b", "--factory-startup", "--python"])
        .arg(&script)
        .arg("--")
        .arg(&scene)
        .arg(n_frames.to_string())
        .output()
        .expect("run blender");
    assert!(
        out.status.success() && scene.is_file(),
        "make_scene.py failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    scene
}

/// A Blender task writing PNG: `version` empty for any, overrides `None` for the scene's own.
fn blender_spec(version: &str, resolution: Option<[u32; 2]>, samples: Option<u32>) -> RendererSpec {
    RendererSpec::Blender {
        version: version.into(),
        format: ImageFormat::Png,
        resolution,
        samples,
    }
}

#[tokio::test]
async fn blender_renders_the_same_pixels_as_blender_itself() {
    let dirs = dirs();
    let scene = make_scene(&dirs.input, 2);
    let spec = blender_spec("", None, None);
    let mut job = job(&spec, chunk(1, 2, 1), &dirs);
    job.scene = Some(scene.clone());
    job.threads = 1;
    let frames = renders_with_progress(job).await;
    assert_eq!(frames, expected_paths(&dirs, &[1, 2], "png"));

    // The same frames straight from Blender, with its default thread count.
    let direct = dirs.tmp.path().join("direct");
    let out = StdCommand::new(blender())
        .args(["-b", "-Y"])
        .arg(&scene)
        .arg("-o")
        .arg(direct.join("frame_####"))
        .args(["-F", "PNG", "-s", "1", "-e", "2", "-a"])
        .output()
        .expect("run blender");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut pixels = Vec::new();
    for (frame, path) in &frames {
        let ours = read_frame(path);
        let theirs = read_frame(&direct.join(format!("frame_{frame:04}.png")));
        assert_eq!((ours.image.width, ours.image.height), (64, 48));
        assert_eq!(ours.format, theirs.format);
        assert!(
            ours.image == theirs.image,
            "frame {frame}: pixels differ from a direct blender render"
        );
        pixels.push(ours.image.rgb);
    }
    assert_ne!(
        pixels[0], pixels[1],
        "the scene is animated: frames must differ"
    );
}

#[tokio::test]
async fn blender_applies_resolution_and_sample_overrides() {
    let dirs = dirs();
    let scene = make_scene(&dirs.input, 3);
    let spec = blender_spec("", Some([32, 20]), Some(1));
    let mut job = job(&spec, chunk(1, 3, 2), &dirs);
    job.scene = Some(PathBuf::from("scene.blend")); // relative to the input folder
    job.output_pattern = "shot_#_v2";
    assert_eq!(scene, dirs.input.join("scene.blend"));
    let frames = expect_rendered(run(job).await);
    let names: Vec<String> = frames
        .iter()
        .map(|(_, p)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["shot_1_v2.png", "shot_3_v2.png"]);
    for (_, path) in &frames {
        let image = read_frame(path).image;
        assert_eq!((image.width, image.height), (32, 20));
    }
}

#[tokio::test]
async fn blender_fails_cleanly_on_a_missing_or_broken_scene() {
    let _ = blender();
    let dirs = dirs();
    let spec = blender_spec("", None, None);

    let mut missing = job(&spec, chunk(1, 1, 1), &dirs);
    missing.scene = Some(dirs.input.join("missing.blend"));
    let failure = fails(missing).await;
    assert!(
        failure.reason.contains("missing.blend' does not exist"),
        "{failure:?}"
    );

    let broken_path = dirs.input.join("broken.blend");
    std::fs::write(&broken_path, "not a blend file").unwrap();
    let mut broken = job(&spec, chunk(1, 1, 1), &dirs);
    broken.scene = Some(broken_path);
    let failure = fails(broken).await;
    assert_eq!(failure.exit_code, Some(1), "{failure:?}");
    assert_eq!(failure.reason, "blender exited with code 1");
    // Blender writes its errors to stdout; the tail carries them.
    assert!(
        failure
            .stderr_tail
            .contains("Error: File format is not supported"),
        "{failure:?}"
    );
    assert!(std::fs::read_dir(&dirs.output).unwrap().next().is_none());
}

#[tokio::test]
async fn blender_refuses_a_task_for_another_version() {
    let _ = blender();
    let dirs = dirs();
    let scene = dirs.input.join("scene.blend");
    std::fs::write(&scene, "never read").unwrap();
    let spec = blender_spec("0.1.0", None, None);
    let mut job = job(&spec, chunk(1, 1, 1), &dirs);
    job.scene = Some(scene);
    let failure = fails(job).await;
    let local = render::detect_versions().await["blender"].clone();
    assert_eq!(
        failure.reason,
        format!("task needs blender 0.1.0 but this worker has {local}")
    );
}

#[tokio::test]
async fn detect_versions_lists_what_this_machine_runs() {
    let program = blender();
    let versions = render::detect_versions().await;
    assert_eq!(versions["builtin"], protocol::BUILTIN_VERSION);
    assert_eq!(versions["command"], "any");
    let out = StdCommand::new(program).arg("--version").output().unwrap();
    let first = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(first, format!("Blender {}", versions["blender"]));
    assert!(versions["blender"].starts_with(|c: char| c.is_ascii_digit()));
}

/// The sandbox a worker with `--sandbox required` (and `run_as`) would use, or `None` after
/// checking that it refuses to start where bwrap is missing or broken.
fn sandbox(run_as: Option<&str>) -> Option<std::sync::Arc<render::sandbox::Confinement>> {
    use render::sandbox::{Confinement, SandboxMode, SandboxSettings};
    let settings = SandboxSettings {
        mode: SandboxMode::Required,
        run_as: run_as.map(str::to_string),
        ..Default::default()
    };
    match Confinement::resolve(&settings, None) {
        Ok(c) => Some(std::sync::Arc::new(c)),
        Err(e) => {
            eprintln!("NOTE: no working bwrap here; checked only the refusal: {e}");
            assert!(e.0.contains("--sandbox required"), "{e}");
            None
        }
    }
}

#[tokio::test]
async fn blender_in_the_sandbox_renders_the_same_pixels() {
    let dirs = dirs();
    make_scene(&dirs.input, 1);
    let spec = blender_spec("", None, None);
    let mut plain = job(&spec, chunk(1, 1, 1), &dirs);
    plain.scene = Some(PathBuf::from("scene.blend"));
    plain.threads = 1;
    let unconfined = read_frame(&expect_rendered(run(plain.clone()).await)[0].1);
    // SAFETY: geteuid has no preconditions.
    let as_root = unsafe { libc::geteuid() } == 0;
    for run_as in [None, Some("nobody").filter(|_| as_root)] {
        let Some(confinement) = sandbox(run_as) else {
            return;
        };
        std::fs::remove_dir_all(&dirs.output).unwrap();
        std::fs::create_dir(&dirs.output).unwrap();
        confinement
            .prepare(dirs.tmp.path(), &[&dirs.output])
            .unwrap();
        let mut confined = plain.clone();
        confined.confinement = Some(render::TaskConfinement {
            confinement,
            limits: Default::default(),
            task_dir: dirs.tmp.path().to_path_buf(),
        });
        let frames = expect_rendered(run(confined).await);
        let ours = read_frame(&frames[0].1);
        assert!(
            ours.image == unconfined.image,
            "sandboxed ({run_as:?}) pixels differ from an unconfined render"
        );
    }
}
