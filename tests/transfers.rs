//! Inputs over the WAN, through the real binary: a submit killed half-way through its upload
//! resumes without sending the chunks already stored, and a worker rebuilds the chunked file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;
use suanli::localfarm::{FarmOptions, LocalFarm};

use suanli_shared::chunks::pseudo_random as noise;

fn suanli(args: &[&str], farm: &LocalFarm, cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_suanli"));
    cmd.args(args)
        .env("SUANLI_NATS", &farm.nats_url)
        .env("SUANLI_STORE", &farm.store_url)
        .current_dir(cwd);
    cmd
}

/// (files, bytes) stored under `dir`.
fn stored(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    // Only stored objects (named by their hash): an upload in progress is a staging file
    // beside them (`<hash>#<n>`), which a killed upload leaves behind unfinished.
    let sizes: Vec<u64> = entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .collect();
    (sizes.len(), sizes.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_submit_resumes_without_sending_stored_chunks_again() {
    let dir = tempfile::tempdir().unwrap();
    let farm = LocalFarm::start(FarmOptions::new(dir.path(), &["guian"]).unwrap())
        .await
        .expect("farm starts");
    let cwd = dir.path().join("studio");
    std::fs::create_dir_all(&cwd).unwrap();
    let size = 48usize << 20;
    std::fs::write(cwd.join("cache.bin"), noise(size, 11)).unwrap();
    let hash_cache = dir.path().join("hashes.json");
    let store_dir = PathBuf::from(farm.store_url.trim_start_matches("file://"));
    let cas = store_dir.join("studios/default/cas");
    let manifests = store_dir.join("studios/default/manifests");
    let args = [
        "submit",
        "--renderer",
        "builtin",
        "--frames",
        "1",
        "--input",
        "cache.bin",
        "--hash-cache",
        hash_cache.to_str().unwrap(),
        "--json",
    ];

    // First try, capped so it is still uploading when killed; killed once 3 chunks are in.
    let mut first = suanli(&args, &farm, &cwd)
        .args(["--max-upload-rate", "8MiB"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let three_in = wait_until(Duration::from_secs(60), || {
        (stored(&cas).0 >= 3).then_some(())
    })
    .await;
    first.kill().unwrap();
    let status = first.wait().unwrap();
    assert!(three_in.is_some(), "the first submit never stored 3 chunks");
    assert!(!status.success(), "killed before it finished");
    let (n_before, stored_before) = stored(&cas);
    assert!(
        stored_before < size as u64,
        "{n_before} chunks: it finished first"
    );
    assert_eq!(stored(&manifests).0, 0, "no manifest from a killed submit");

    // Again, to the end: only the chunks missing go up.
    let out = suanli(&args, &farm, &cwd).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sent = reply["inputs"]["uploaded_bytes"].as_u64().unwrap();
    assert_eq!(
        stored_before + sent,
        size as u64,
        "every byte stored once: {stored_before} before the kill, {sent} after"
    );
    assert!(sent < size as u64, "{sent}");
    assert!(reply["inputs"]["uploaded_chunks"].as_u64() < reply["inputs"]["chunks"].as_u64());

    // A worker fetches the chunks, rebuilds the file and renders.
    let id = reply["id"].as_str().unwrap();
    let waited = suanli(&["wait", id, "--timeout", "120s"], &farm, &cwd)
        .output()
        .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    farm.stop().await;
}
