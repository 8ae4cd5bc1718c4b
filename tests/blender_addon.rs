//! The Blender add-on (`integrations/blender/suanli_submit`) in a headless Blender against a
//! real farm: installed from its zip and enabled the usual way, its Submit operator submits
//! the open scene through the `suanli` binary, Refresh follows the job to the end and Fetch
//! downloads the frames.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use suanli::client::Client;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::protocol::{JobState, RendererSpec};
use suanli_shared::JobId;

fn blender() -> String {
    let bin = std::env::var("SUANLI_BLENDER").unwrap_or_else(|_| "blender".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "blender is not installed: run scripts/install-tools.sh --blender"
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addon_submits_the_open_scene_and_fetches_its_frames() {
    let blender = blender();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot");
    std::fs::create_dir_all(&shot).unwrap();
    let scene = shot.join("shot.blend");
    let made = Command::new(&blender)
        .args(["-b", "--factory-startup", "--python"])
        .arg(root.join("worker/tests/data/make_scene.py"))
        .arg("--")
        .arg(&scene)
        .arg("2")
        .output()
        .unwrap();
    assert!(
        made.status.success() && scene.exists(),
        "scene generation failed: {}",
        String::from_utf8_lossy(&made.stdout)
    );

    let farm = LocalFarm::start(FarmOptions::new(dir.path().join("farm"), &["guian"]).unwrap())
        .await
        .unwrap();
    farm.wait_for_workers(Duration::from_secs(60))
        .await
        .unwrap();

    // A Blender of its own: user scripts and config in the test's folder.
    let result = dir.path().join("result.json");
    let script = root.join("integrations/blender/tests/headless_submit.py");
    let out = tokio::process::Command::new(&blender)
        .arg("-b")
        .arg(&scene)
        .args(["--python-exit-code", "1", "--python-expr"])
        .arg(format!(
            "import runpy; runpy.run_path({:?})",
            script.display().to_string()
        ))
        .env("BLENDER_USER_SCRIPTS", dir.path().join("blender-scripts"))
        .env("BLENDER_USER_CONFIG", dir.path().join("blender-config"))
        .env(
            "SUANLI_ADDON_DIR",
            root.join("integrations/blender/suanli_submit"),
        )
        .env("SUANLI_BIN", env!("CARGO_BIN_EXE_suanli"))
        .env("SUANLI_ADDON_RESULT", &result)
        .env("SUANLI_NATS", &farm.nats_url)
        .env("SUANLI_STORE", &farm.store_url)
        .env_remove("SUANLI_STUDIO")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(900), out)
        .await
        .expect("blender finished")
        .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "blender failed:\n{log}");
    let got: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&result).unwrap_or_else(|e| panic!("{e}\n{log}")),
    )
    .unwrap();
    assert_eq!(got["state"], "done", "{got}");
    assert_eq!(
        (got["frames_done"].as_u64(), got["frames_total"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        got["files"],
        serde_json::json!(["frame_0001.png", "frame_0002.png"]),
        "{got}"
    );
    assert_eq!(got["saved"], true, "the .blend was saved before submitting");

    // The farm's record: the open scene, its frame range, the panel's chunk and priority.
    let client = Client::connect(&farm.nats_url).await.unwrap();
    let id: JobId = got["job"].as_str().unwrap().parse().unwrap();
    let record = client.job(&id).await.unwrap();
    assert_eq!(record.state, JobState::Done);
    assert_eq!(record.spec.name, "shot");
    assert_eq!(record.spec.scene.as_deref(), Some("shot.blend"));
    assert_eq!(record.spec.frames.to_string(), "1-2");
    assert_eq!((record.spec.chunk, record.spec.priority), (1, 3));
    assert!(matches!(record.spec.renderer, RendererSpec::Blender { .. }));
    farm.stop().await;
}
