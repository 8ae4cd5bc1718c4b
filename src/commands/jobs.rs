//! The commands that act on jobs: `submit` (job file and flags to a queued job, optionally
//! waiting), `status`, `wait`, `fetch`, `cancel` and `retry`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context as _;
use suanli_shared::chunks::Link;
use suanli_shared::store::Store;
use suanli_shared::transfer::{Progress, RateLimit};
use suanli_shared::JobId;

use crate::client::ClientConfig;
use crate::exit::{self, BadInput, EXIT_ERROR, EXIT_JOB_FAILED, EXIT_TIMEOUT};
use crate::hash_cache;
use crate::inputs::UploadOptions;
use crate::jobfile::{self, JobFile, Overrides};
use crate::print;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job file (TOML); flags override its values.
    pub job_file: Option<PathBuf>,
    #[command(flatten)]
    pub flags: Overrides,
    /// Wait for the job to finish; exit 0 only when every frame is done.
    #[arg(long)]
    pub wait: bool,
    #[arg(long)]
    pub json: bool,
    /// The hash cache: (path, size, mtime, inode) → hash, so unchanged inputs are not read
    /// again [default: $XDG_CACHE_HOME/suanli/hashes.json or ~/.cache/suanli/hashes.json].
    #[arg(long, env = "SUANLI_HASH_CACHE", value_name = "PATH")]
    pub hash_cache: Option<PathBuf>,
    /// Hash every input again, and remember nothing.
    #[arg(long, conflicts_with = "hash_cache")]
    pub no_hash_cache: bool,
    /// Cap on upload bandwidth, e.g. 50MiB or 200MB (per second); no cap by default.
    #[arg(long, env = "SUANLI_MAX_UPLOAD_RATE", value_name = "RATE", value_parser = suanli_shared::transfer::parse_rate)]
    pub max_upload_rate: Option<u64>,
}

impl SubmitArgs {
    /// The upload settings these flags ask for, reporting progress into `progress`.
    fn upload_options(&self, progress: Option<Arc<Progress>>) -> UploadOptions {
        UploadOptions {
            link: Link {
                rate: self.max_upload_rate.map(RateLimit::new),
                progress,
            },
            hash_cache: if self.no_hash_cache {
                None
            } else {
                self.hash_cache.clone().or_else(hash_cache::default_path)
            },
        }
    }
}

/// Shows an upload's progress on stderr until `done` is cancelled: one line rewritten every
/// half second on a terminal, a plain line every 5 seconds otherwise (logs, CI).
async fn show_progress(progress: Arc<Progress>, done: tokio_util::sync::CancellationToken) {
    // On a terminal an indicatif bar (bytes dealt with of the total, the link's rate, the
    // time left); elsewhere a plain line every 5 s, as logs and scripts read it.
    let bar = crate::progress::upload_bar();
    let every = Duration::from_millis(if bar.is_some() { 250 } else { 5000 });
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = done.cancelled() => break,
            _ = ticks.tick() => match &bar {
                Some(bar) => crate::progress::show_upload(bar, &progress),
                None => eprintln!("uploading inputs: {}", progress.line()),
            },
        }
    }
    if let Some(bar) = bar {
        crate::progress::show_upload(&bar, &progress);
        bar.finish_and_clear();
        eprintln!("uploaded inputs: {}", progress.line());
    }
}

/// `suanli submit`: resolves and checks the job, uploads its inputs, submits it and, with
/// `--wait`, follows it to the end.
pub async fn submit(
    mut args: SubmitArgs,
    api: &ClientConfig,
    store_url: &str,
) -> anyhow::Result<u8> {
    args.flags.studio = api.caller.studio().cloned();
    let (file, base) = match &args.job_file {
        Some(path) => {
            let file = jobfile::read_job_file(path).map_err(|e| BadInput(format!("{e:#}")))?;
            let base = path
                .parent()
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        p.to_path_buf()
                    }
                })
                .unwrap_or_else(|| ".".into());
            (file, base)
        }
        None => (JobFile::default(), PathBuf::from(".")),
    };
    let progress = Progress::new(0);
    let opts = args.upload_options((!args.json).then(|| progress.clone()));
    let mut resolved =
        jobfile::resolve(file, args.flags, &base).map_err(|e| BadInput(format!("{e:#}")))?;
    // Check the coordinator is there before uploading anything.
    let client = api.connect().await?;
    let store = Store::open(store_url)?;
    let done = tokio_util::sync::CancellationToken::new();
    let shower = (!args.json).then(|| tokio::spawn(show_progress(progress, done.clone())));
    let upload = jobfile::upload_inputs(&store, &mut resolved, &opts).await;
    done.cancel();
    if let Some(shower) = shower {
        let _ = shower.await;
    }
    let upload = upload?;
    let reply = client.submit(resolved.spec).await.context("job refused")?;
    if !args.wait {
        if args.json {
            print::json(&serde_json::json!({
                "id": reply.id,
                "tasks": reply.tasks,
                "cached": reply.cached,
                "inputs": {
                    "files": upload.files,
                    "bytes": upload.bytes,
                    "unchanged": upload.unchanged,
                    "read_bytes": upload.read_bytes,
                    "uploaded": upload.uploaded,
                    "uploaded_bytes": upload.uploaded_bytes,
                    "chunks": upload.chunks,
                    "uploaded_chunks": upload.uploaded_chunks,
                },
            }));
        } else {
            println!("{}", reply.id);
            eprintln!(
                "submitted: {} tasks ({} cached); inputs: {} files ({} unchanged), {} uploaded ({:.1} MB)",
                reply.tasks,
                reply.cached,
                upload.files,
                upload.unchanged,
                upload.uploaded,
                upload.uploaded_bytes as f64 / 1e6
            );
        }
        return Ok(0);
    }
    if !args.json {
        eprintln!(
            "job {} submitted: {} tasks ({} cached)",
            reply.id, reply.tasks, reply.cached
        );
    }
    let bar = (!args.json)
        .then(|| crate::progress::job_bar(crate::progress::Stream::Stderr))
        .flatten();
    let end = client
        .wait(&reply.id, None, |s| {
            if let Some(bar) = &bar {
                crate::progress::show_job(bar, s);
            } else if !args.json {
                eprintln!(
                    "  {}: {}/{} frames, {} running",
                    s.state.as_str(),
                    s.frames.done,
                    s.frames.total,
                    s.tasks.running
                );
            }
        })
        .await?
        .context("wait ended without a result")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        print::json(&end);
    } else {
        println!("{}", reply.id);
        print::status(&end);
    }
    Ok(exit::of_ended_job(&end))
}

/// `suanli status [JOB]`: one job in full, or the list of jobs.
pub async fn status(api: &ClientConfig, job: Option<JobId>, json: bool) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    match job {
        Some(job) => {
            let s = client.status(&job).await?;
            if json {
                print::json(&s);
            } else {
                print::status(&s);
            }
        }
        None => {
            let list = client.jobs().await?;
            if json {
                print::json(&list);
            } else {
                print::job_list(&list);
            }
        }
    }
    Ok(0)
}

/// `suanli wait JOB`: until the job ends (exit 0 only when done) or `timeout` passes (exit 4).
pub async fn wait(
    api: &ClientConfig,
    job: JobId,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    let bar = (!json)
        .then(|| crate::progress::job_bar(crate::progress::Stream::Stderr))
        .flatten();
    let end = client
        .wait(&job, timeout, |s| {
            if let Some(bar) = &bar {
                crate::progress::show_job(bar, s);
            }
        })
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    match end {
        Some(s) => {
            if json {
                print::json(&s);
            } else {
                print::status(&s);
            }
            Ok(exit::of_ended_job(&s))
        }
        None => {
            eprintln!("error: job {job} did not finish within the timeout");
            Ok(EXIT_TIMEOUT)
        }
    }
}

/// `suanli fetch JOB --out DIR`: exit 1 when a stored frame is damaged, 3 when frames are
/// missing.
pub async fn fetch(
    api: &ClientConfig,
    store: &str,
    job: JobId,
    out: &Path,
    json: bool,
) -> anyhow::Result<u8> {
    let client = api.connect().await?;
    let rec = client.job(&job).await?;
    let store = Store::open(store)?;
    let bar = (!json).then(crate::progress::bytes_bar).flatten();
    let report = crate::client::fetch_with_progress(&rec, &store, out, |p| {
        if let Some(bar) = &bar {
            match p {
                crate::client::FetchProgress::Total { bytes, .. } => bar.set_length(bytes),
                crate::client::FetchProgress::File { bytes } => bar.inc(bytes),
            }
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if json {
        print::json(&report);
    } else {
        print::fetch(&report, out, rec.state.as_str());
    }
    Ok(if !report.unverified.is_empty() {
        EXIT_ERROR
    } else if report.missing.is_empty() {
        0
    } else {
        EXIT_JOB_FAILED
    })
}

/// `suanli cancel JOB`.
pub async fn cancel(api: &ClientConfig, job: JobId, json: bool) -> anyhow::Result<u8> {
    let s = api.connect().await?.cancel(&job).await?;
    if json {
        print::json(&s);
    } else {
        println!("job {} is {}", s.id, s.state.as_str());
    }
    Ok(0)
}

/// `suanli retry JOB`.
pub async fn retry(api: &ClientConfig, job: JobId, json: bool) -> anyhow::Result<u8> {
    let s = api.connect().await?.retry(&job).await?;
    if json {
        print::json(&s);
    } else {
        println!(
            "job {} is {}: {} tasks pending",
            s.id,
            s.state.as_str(),
            s.tasks.pending
        );
    }
    Ok(0)
}
