//! Heterogeneous compute end to end: a real nats-server, coordinator and workers as processes,
//! GPUs from a stand-in `nvidia-smi` on the worker's `PATH` that prints what a real one prints.
//! GPU tasks get their own devices and run side by side as far as the GPUs allow; a job that
//! asks for a tag runs only on tagged workers; a job no worker can run says why in `status`
//! and starts by itself when a worker that fits joins.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{sh_flags, ProcFarm};
use futures::StreamExt;
use suanli::client::Client;
use suanli::jobfile::Overrides;
use suanli_shared::protocol::{EventKind, JobEvent, JobState, JobStatus};
use suanli_shared::JobId;

const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A folder holding an `nvidia-smi` that prints `lines` for the query the worker makes, and
/// the `PATH` that finds it first.
fn fake_nvidia_smi(dir: &Path, lines: &[&str]) -> (&'static str, String) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = --query-gpu=index,name,memory.total,uuid ] && [ \"$2\" = --format=csv,noheader ] || exit 9\ncat <<'EOF'\n{}\nEOF\n",
        lines.join("\n")
    );
    let smi = bin.join("nvidia-smi");
    std::fs::write(&smi, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&smi, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    ("PATH", path)
}

fn with_gpus(mut flags: Overrides, gpus: u32) -> Overrides {
    flags.gpus = Some(gpus);
    flags.max_retries = Some(0);
    flags
}

async fn wait_done(client: &Client, job: &JobId) -> JobStatus {
    client
        .wait(job, Some(JOB_LIMIT), |_| {})
        .await
        .expect("wait works")
        .expect("job finished in time")
}

/// The lines `marks/<prefix>-*` files hold, by file name.
fn marks(dir: &Path, prefix: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(prefix).then(|| {
                (
                    name,
                    std::fs::read_to_string(e.path())
                        .unwrap()
                        .trim()
                        .to_string(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gpu_worker_runs_one_gpu_tasks_side_by_side_on_their_own_devices_and_a_two_gpu_task_alone(
) {
    let farm = ProcFarm::start();
    let path = fake_nvidia_smi(
        farm.path(),
        &[
            "0, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-11111111-aaaa",
            "1, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-22222222-bbbb",
        ],
    );
    let _coordinator = farm.coordinator("coordinator", &[]);
    let _worker = farm.worker_env(
        "guian",
        "g",
        &["--slots", "4", "--cores", "4", "--memory", "8G"],
        &[path],
    );
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    let workers = client.workers().await.unwrap();
    let res = workers[0].resources.as_ref().expect("resources advertised");
    assert_eq!(res.gpus.len(), 2, "{res:?}");
    assert_eq!(res.gpus[1].name, "NVIDIA GeForce RTX 4090");
    assert_eq!(res.gpus[1].memory_mib, 24564);
    assert_eq!((res.cores, res.memory_mib), (4, 8192));

    let marks_dir: PathBuf = farm.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let m = marks_dir.display();
    // Each one-GPU task records its devices, then waits (bounded) until the other has
    // started: they pass only if both run at once.
    let script = format!(
        "echo \"$CUDA_VISIBLE_DEVICES $SUANLI_GPUS\" > {m}/one-{{frame}}; \
         i=0; while [ $(ls {m} | grep -c '^one-') -lt 2 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; sleep 0.05; done; \
         echo \"$CUDA_VISIBLE_DEVICES\" > {{output}}/frame_{{frame:04}}.txt"
    );
    let spec = farm.job(with_gpus(sh_flags("1-2", &script), 1)).await;
    let job = client.submit(spec).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    assert_eq!(status.requirements.gpus, 1);
    let seen = marks(&marks_dir, "one-");
    let devices: Vec<&str> = seen.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(devices.len(), 2);
    let mut sorted = devices.clone();
    sorted.sort();
    assert_eq!(sorted, ["0 0", "1 1"], "each task its own GPU: {seen:?}");

    // Two-GPU tasks: both devices each, one task at a time (start and end from the renderers'
    // own clocks).
    let script = format!(
        "echo \"$CUDA_VISIBLE_DEVICES $(date +%s%N)\" > {m}/two-start-{{frame}}; sleep 0.3; \
         date +%s%N > {m}/two-end-{{frame}}; printf x > {{output}}/frame_{{frame:04}}.txt"
    );
    let spec = farm.job(with_gpus(sh_flags("1-2", &script), 2)).await;
    let job = client.submit(spec).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let starts = marks(&marks_dir, "two-start-");
    let ends = marks(&marks_dir, "two-end-");
    assert_eq!((starts.len(), ends.len()), (2, 2));
    let mut spans: Vec<(u128, u128)> = Vec::new();
    for ((_, start), (_, end)) in starts.iter().zip(&ends) {
        let (devices, t0) = start.split_once(' ').unwrap();
        assert_eq!(devices, "0,1", "a two-GPU task holds both");
        spans.push((t0.parse().unwrap(), end.parse().unwrap()));
    }
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0,
        "two-GPU tasks overlapped: {spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_wait_for_a_worker_that_fits_say_why_and_run_only_there() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let _plain = farm.worker("guian", "plain", &["--slots", "2", "--gpus", "none"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;

    let mut job_events = client
        .nats()
        .subscribe(suanli_shared::nats::events_of_kind(EventKind::Job))
        .await
        .unwrap();
    let mut tagged = sh_flags("1-4", "printf x > {output}/frame_{frame:04}.txt");
    tagged.tags = Some(vec!["arnold".into()]);
    tagged.max_retries = Some(0);
    let tag_job = client.submit(farm.job(tagged).await).await.unwrap().id;
    // A different script from the tagged job's, so neither job's tasks are the other's cache
    // hits (requirements are not in the task key) and both render in the region they reach.
    let big = with_gpus(
        sh_flags("1-2", "printf big > {output}/frame_{frame:04}.txt"),
        1,
    );
    let big = Overrides {
        gpu_memory: Some(48 * 1024),
        ..big
    };
    let big_job = client.submit(farm.job(big).await).await.unwrap().id;

    // Neither can run on the only worker: status says which requirement and what it has.
    let says = |job: JobId, needle: &'static str| {
        let client = client.clone();
        async move {
            let mut last = None;
            for _ in 0..200 {
                let s = client.status(&job).await.unwrap();
                if s.waiting.as_deref().is_some_and(|w| w.contains(needle)) {
                    return s;
                }
                last = Some(s);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("status never said '{needle}': {last:?}");
        }
    };
    let s = says(tag_job.clone(), "tags = arnold (has none)").await;
    let waiting = s.waiting.unwrap();
    assert!(waiting.contains("guian/plain"), "{waiting}");
    assert_eq!(s.tasks.done, 0);
    let s = says(big_job.clone(), "gpus = 1 (has 0)").await;
    assert_eq!(s.tasks.running + s.tasks.done, 0, "{s:?}");

    // A tagged worker with a 80 GB card joins in another region: both jobs start by
    // themselves and run only there, though the untagged worker stays live and idle.
    let path = fake_nvidia_smi(
        farm.path(),
        &["0, NVIDIA A100-SXM4-80GB, 81920 MiB, GPU-33333333-cccc"],
    );
    let _fit = farm.worker_env(
        "ulanqab",
        "fit",
        &["--slots", "2", "--tags", "arnold,fast-disk"],
        &[path],
    );
    for job in [&tag_job, &big_job] {
        let status = wait_done(&client, job).await;
        assert_eq!(status.state, JobState::Done, "{status:?}");
        let regions: Vec<&String> = status.regions.keys().collect();
        assert_eq!(regions, ["ulanqab"], "{status:?}");
        assert!(status.waiting.is_none());
    }
    // The job's events said so too: why it waited, then that it could start.
    let mut said = Vec::new();
    let seen_both = tokio::time::timeout(JOB_LIMIT, async {
        while let Some(m) = job_events.next().await {
            if let Ok(ev) = serde_json::from_slice::<JobEvent>(&m.payload) {
                if ev.job == tag_job {
                    said.push(ev.reason.unwrap_or_default());
                    if said.iter().any(|r| r.contains("tags = arnold (has none)"))
                        && said
                            .iter()
                            .any(|r| r.contains("meets its requirements is live"))
                    {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(seen_both.is_ok(), "job events: {said:?}");
    // The untagged worker never ran one.
    let workers = client.workers().await.unwrap();
    let plain = workers.iter().find(|w| w.id.as_str() == "plain");
    assert_eq!(plain.expect("plain worker listed").tasks_done, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_heavy_job_packs_fewer_tasks_per_worker() {
    let farm = ProcFarm::start();
    let _coordinator = farm.coordinator("coordinator", &[]);
    let _worker = farm.worker(
        "guian",
        "w",
        &[
            "--slots", "4", "--cores", "4", "--memory", "4G", "--gpus", "none",
        ],
    );
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    let marks_dir = farm.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let m = marks_dir.display();

    // 1 GiB tasks: four run at once (each waits, bounded, until all four have started).
    let script = format!(
        "touch {m}/light-{{frame}}; \
         i=0; while [ $(ls {m} | grep -c '^light-') -lt 4 ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; sleep 0.05; done; \
         printf x > {{output}}/frame_{{frame:04}}.txt"
    );
    let mut light = sh_flags("1-4", &script);
    light.memory = Some(1024);
    light.max_retries = Some(0);
    let job = client.submit(farm.job(light).await).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");

    // 3 GiB tasks: one at a time in 4 GiB (spans from the renderers' own clocks).
    let script = format!(
        "date +%s%N > {m}/heavy-start-{{frame}}; sleep 0.2; date +%s%N > {m}/heavy-end-{{frame}}; \
         printf x > {{output}}/frame_{{frame:04}}.txt"
    );
    let mut heavy = sh_flags("1-3", &script);
    heavy.memory = Some(3 * 1024);
    heavy.max_retries = Some(0);
    let job = client.submit(farm.job(heavy).await).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let starts = marks(&marks_dir, "heavy-start-");
    let ends = marks(&marks_dir, "heavy-end-");
    let mut spans: Vec<(u128, u128)> = starts
        .iter()
        .zip(&ends)
        .map(|((_, s), (_, e))| (s.parse().unwrap(), e.parse().unwrap()))
        .collect();
    spans.sort();
    assert_eq!(spans.len(), 3);
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "heavy tasks overlapped: {spans:?}");
    }
}

/// `(start, end)` spans in ns from `<prefix>start-<frame>` / `<prefix>end-<frame>` marks, the
/// renderers' own clocks.
fn spans(dir: &Path, prefix: &str) -> Vec<(u128, u128)> {
    let starts = marks(dir, &format!("{prefix}start-"));
    let ends = marks(dir, &format!("{prefix}end-"));
    assert_eq!(starts.len(), ends.len(), "{starts:?} {ends:?}");
    starts
        .iter()
        .zip(&ends)
        .map(|((_, s), (_, e))| (s.parse().unwrap(), e.parse().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_licence_pool_of_three_is_never_exceeded_across_two_regions_and_a_coordinator_restart() {
    let farm = ProcFarm::start();
    let catalog = farm.path().join("regions.toml");
    std::fs::write(
        &catalog,
        "[licenses]\nredshift = 3\n\n[[region]]\nname = \"guian\"\n\n[[region]]\nname = \"ulanqab\"\n",
    )
    .unwrap();
    let catalog = catalog.to_str().unwrap().to_string();
    let coordinator = farm.coordinator("coordinator", &["--catalog", &catalog]);
    let _a = farm.worker("guian", "a", &["--slots", "3", "--gpus", "none"]);
    let _b = farm.worker("ulanqab", "b", &["--slots", "3", "--gpus", "none"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;

    // A pool the farm does not have, or more seats than it holds: refused at submit.
    let mut unknown = sh_flags("1", "printf x > {output}/frame_{frame:04}.txt");
    unknown.licenses = Some(vec![("vray".into(), 1)]);
    let e = client.submit(farm.job(unknown).await).await.unwrap_err();
    assert!(
        format!("{e:#}").contains("licence pool 'vray' is unknown: the farm's pools are redshift"),
        "{e:#}"
    );
    let mut greedy = sh_flags("1", "printf x > {output}/frame_{frame:04}.txt");
    greedy.licenses = Some(vec![("redshift".into(), 4)]);
    let e = client.submit(farm.job(greedy).await).await.unwrap_err();
    assert!(format!("{e:#}").contains("the pool has 3"), "{e:#}");
    assert!(client.jobs().await.unwrap().is_empty(), "nothing enqueued");

    let marks_dir = farm.path().join("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    let m = marks_dir.display();
    // Three slots in each region, three seats in all: each task holds a seat for 0.4 s of its
    // own clock.
    let script = format!(
        "date +%s%N > {m}/rs-start-{{frame}}; sleep 0.4; date +%s%N > {m}/rs-end-{{frame}}; \
         printf x > {{output}}/frame_{{frame:04}}.txt"
    );
    // One job in each region, both drawing on the one pool.
    let mut jobs = Vec::new();
    for (frames, region) in [("1-6", "guian"), ("7-12", "ulanqab")] {
        let mut flags = sh_flags(frames, &script);
        flags.licenses = Some(vec![("redshift".into(), 1)]);
        flags.regions = Some(vec![region.into()]);
        flags.max_retries = Some(0);
        jobs.push((
            client.submit(farm.job(flags).await).await.unwrap().id,
            region,
        ));
    }

    // Restart the coordinator once three tasks have started: the new one counts the seats
    // the records show held, and releases no more than the pool's rest.
    let started = |n: usize| marks(&marks_dir, "rs-start-").len() >= n;
    let deadline = std::time::Instant::now() + JOB_LIMIT;
    while !started(3) {
        assert!(std::time::Instant::now() < deadline, "tasks never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(coordinator);
    let _coordinator = farm.coordinator("coordinator-2", &["--catalog", &catalog]);

    for (job, region) in &jobs {
        let status = wait_done(&client, job).await;
        assert_eq!(status.state, JobState::Done, "{status:?}");
        assert!(status
            .requirements
            .summary()
            .contains("licenses = redshift=1"));
        let regions: Vec<&String> = status.regions.keys().collect();
        assert_eq!(regions, [region], "{status:?}");
    }
    // Twelve renders in two regions, never more than three at once.
    let spans = spans(&marks_dir, "rs-");
    assert_eq!(spans.len(), 12);
    assert!(
        common::most_at_once(spans.iter().copied()) <= 3,
        "more than 3 seats in use: {spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_job_leaves_gpu_workers_alone_when_cpu_workers_are_free_and_cheaper_and_gpu_hours_are_billed(
) {
    let farm = ProcFarm::start();
    let catalog = farm.path().join("regions.toml");
    std::fs::write(
        &catalog,
        "currency = \"CNY\"\n\n\
         [[region]]\nname = \"guian\"\nprice_per_core_hour = 0.6\nprice_per_gpu_hour = 5.0\nwatts_per_gpu = 300.0\npue = 1.12\n\
         [region.gpu_prices]\n\"4090\" = 9.0\n\n\
         [[region]]\nname = \"ulanqab\"\nprice_per_core_hour = 0.1\npue = 1.2\n",
    )
    .unwrap();
    let catalog = catalog.to_str().unwrap().to_string();
    let _coordinator = farm.coordinator("coordinator", &["--catalog", &catalog]);
    let path = fake_nvidia_smi(
        farm.path(),
        &[
            "0, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-11111111-aaaa",
            "1, NVIDIA GeForce RTX 4090, 24564 MiB, GPU-22222222-bbbb",
        ],
    );
    let _gpu = farm.worker_env("guian", "gpu", &["--slots", "4"], &[path]);
    let _cpu = farm.worker("ulanqab", "cpu", &["--slots", "4", "--gpus", "none"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;

    // Four CPU tasks, four free CPU slots at a sixth of the price: none goes to the GPUs.
    let mut cpu = sh_flags("1-4", "sleep 0.2; printf c > {output}/frame_{frame:04}.txt");
    cpu.max_retries = Some(0);
    let job = client.submit(farm.job(cpu).await).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let regions: Vec<&String> = status.regions.keys().collect();
    assert_eq!(regions, ["ulanqab"], "{status:?}");
    let workers = client.workers().await.unwrap();
    let gpu = workers.iter().find(|w| w.id.as_str() == "gpu").unwrap();
    assert_eq!(gpu.tasks_done, 0, "the GPU worker took a CPU task");

    // A GPU job runs on the GPU worker, and its GPU time is billed at the model's price.
    let gpu_job = with_gpus(
        sh_flags("1-2", "sleep 0.3; printf g > {output}/frame_{frame:04}.txt"),
        1,
    );
    let job = client.submit(farm.job(gpu_job).await).await.unwrap().id;
    let status = wait_done(&client, &job).await;
    assert_eq!(status.state, JobState::Done, "{status:?}");
    let guian = &status.regions["guian"];
    assert!(guian.gpu_seconds >= 0.6, "two tasks of 0.3 s: {guian:?}");
    assert_eq!(
        guian.gpu_models.keys().collect::<Vec<_>>(),
        ["NVIDIA GeForce RTX 4090"]
    );
    let expected = guian.core_seconds * 0.6 / 3600.0 + guian.gpu_seconds * 9.0 / 3600.0;
    assert!(
        (guian.cost - expected).abs() < 1e-9,
        "cost {} != cores + GPU-hours at the 4090's price {expected}",
        guian.cost
    );
    let kwh = (guian.core_seconds * 10.0 + guian.gpu_seconds * 300.0) / 3600.0 / 1000.0 * 1.12;
    assert!((guian.energy_kwh - kwh).abs() < 1e-12, "{guian:?}");
}
