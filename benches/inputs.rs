//! Inputs over the WAN: what a large input file costs to submit and to fetch, first and after
//! small changes, through the real upload (`suanli::inputs::upload`, the code `suanli submit`
//! runs, with its hash cache) and the real worker cache (`suanli_worker::cache::Cache`), on a
//! file store whose counters say what crossed.
//!
//! For one random file (2 GiB by default; `SUANLI_BENCH_INPUT_MIB=256` for a quick run):
//! 1. first submit: bytes uploaded, time; a worker fetches it all;
//! 2. resubmit unchanged: time and bytes read (the hash cache knows the file);
//! 3. 1 MiB overwritten in the middle: bytes uploaded, bytes the worker downloads;
//! 4. 1 MiB inserted in the middle (every later byte shifts): the same;
//! 5. an upload of a fresh file stopped half-way (its future dropped, as Ctrl-C does) and run
//!    again: total bytes sent / file size.
//!
//! Targets (issue 15): a 1 MiB change moves under 2 % of the file; an unchanged resubmit takes
//! under a tenth of the first submit's time; a resumed upload sends under 1.05 x the file.
//! Files go in `SUANLI_BENCH_DIR` (default: the system temporary folder) and are deleted at
//! the end. `cargo bench --bench inputs`; see docs/BENCHMARKS.md.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use suanli::inputs::{self, UploadOptions, UploadReport};
use suanli_shared::store::Store;
use suanli_shared::{ContentHash, Studio};
use suanli_worker::cache::Cache;

const MIB: u64 = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mib: u64 = std::env::var("SUANLI_BENCH_INPUT_MIB")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("SUANLI_BENCH_INPUT_MIB must be a number of MiB")?
        .unwrap_or(2048);
    anyhow::ensure!(mib >= 64, "SUANLI_BENCH_INPUT_MIB must be at least 64");
    let root = match std::env::var_os("SUANLI_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let result = run(root.path(), mib * MIB).await;
    drop(root); // deletes the file, the store and the cache
    result
}

async fn run(root: &Path, size: u64) -> anyhow::Result<()> {
    let shot = root.join("shot");
    std::fs::create_dir_all(&shot)?;
    let file = shot.join("cache.vdb");
    write_random(&file, size, 1)?;
    age(&file, 100)?;
    let store = Store::open(root.join("store").to_str().unwrap())?;
    let studio = Studio::default();
    let files = vec![("cache.vdb".to_string(), file.clone())];
    let opts = UploadOptions {
        hash_cache: Some(root.join("hashes.json")),
        ..Default::default()
    };
    // The worker's cache holds a couple of versions of the file and their chunks.
    let cache = Cache::open(&root.join("cache"), size * 5 / 2, store.clone()).await?;
    println!(
        "inputs over the WAN: one random file of {} MiB, file store, chunks of 1/4/16 MiB (FastCDC)",
        size / MIB
    );

    // 1. First submit.
    let (m1, up1, t1) = submit(&store, &studio, &files, &opts).await?;
    let got1 = fetch(&cache, &store, &studio, m1, root, "task1").await?;
    println!(
        "first submit:        uploaded {:>10} bytes ({:.1} % of the file) in {:.2} s; worker downloaded {} bytes",
        up1.uploaded_bytes,
        pct(up1.uploaded_bytes, size),
        t1.as_secs_f64(),
        got1
    );

    // 2. Unchanged.
    let (m2, up2, t2) = submit(&store, &studio, &files, &opts).await?;
    anyhow::ensure!(m2 == m1, "an unchanged file changed the manifest");
    println!(
        "resubmit unchanged:  read {} bytes, uploaded {} bytes in {:.3} s ({:.4} of the first submit's time)",
        up2.read_bytes,
        up2.uploaded_bytes,
        t2.as_secs_f64(),
        t2.as_secs_f64() / t1.as_secs_f64()
    );

    // 3. 1 MiB overwritten in the middle.
    overwrite_middle(&file, size, 2)?;
    age(&file, 50)?;
    let (m3, up3, _) = submit(&store, &studio, &files, &opts).await?;
    let got3 = fetch(&cache, &store, &studio, m3, root, "task3").await?;
    println!(
        "1 MiB changed:       uploaded {:>10} bytes ({:.2} %), worker downloaded {} bytes ({:.2} %)",
        up3.uploaded_bytes,
        pct(up3.uploaded_bytes, size),
        got3,
        pct(got3, size)
    );

    // 4. 1 MiB inserted in the middle.
    insert_middle(&file, size, 3)?;
    age(&file, 20)?;
    let size4 = size + MIB;
    let (m4, up4, _) = submit(&store, &studio, &files, &opts).await?;
    let got4 = fetch(&cache, &store, &studio, m4, root, "task4").await?;
    println!(
        "1 MiB inserted:      uploaded {:>10} bytes ({:.2} %), worker downloaded {} bytes ({:.2} %)",
        up4.uploaded_bytes,
        pct(up4.uploaded_bytes, size4),
        got4,
        pct(got4, size4)
    );
    drop(cache);
    std::fs::remove_dir_all(root.join("cache"))?;

    // 5. A fresh file, its upload stopped half-way, then run again.
    write_random(&file, size, 4)?;
    age(&file, 10)?;
    let before = store.counts().bytes_written;
    let offered_before = store.counts().bytes_offered;
    let half = size / 2;
    let plain = UploadOptions::default();
    let stopped = {
        let upload = inputs::upload(&store, &studio, &files, &plain);
        tokio::pin!(upload);
        let mut ticks = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                r = &mut upload => break r.map(|_| false)?,
                _ = ticks.tick() => {
                    if store.counts().bytes_written - before >= half {
                        break true; // drops the upload, as Ctrl-C would
                    }
                }
            }
        }
    };
    anyhow::ensure!(stopped, "the upload finished before it could be stopped");
    // Every put started counts as sent, finished or cut short by the stop.
    let sent_before = store.counts().bytes_offered - offered_before;
    let mid = store.counts().bytes_offered;
    submit(&store, &studio, &files, &plain).await?;
    let sent_after = store.counts().bytes_offered - mid;
    let total = sent_before + sent_after;
    println!(
        "stopped and resumed: {sent_before} bytes sent before the stop + {sent_after} after = {:.4} x the file",
        total as f64 / size as f64
    );

    let ok = |b: bool| if b { "met" } else { "MISSED" };
    println!(
        "targets: 1 MiB change < 2 %: {} (changed {:.2} %/{:.2} %, inserted {:.2} %/{:.2} %); \
         unchanged < 1/10 of first: {}; resumed < 1.05 x: {}",
        ok(pct(up3.uploaded_bytes.max(got3), size) < 2.0
            && pct(up4.uploaded_bytes.max(got4), size4) < 2.0),
        pct(up3.uploaded_bytes, size),
        pct(got3, size),
        pct(up4.uploaded_bytes, size4),
        pct(got4, size4),
        ok(t2 * 10 < t1),
        ok((total as f64) < 1.05 * size as f64)
    );
    Ok(())
}

async fn submit(
    store: &Store,
    studio: &Studio,
    files: &[(String, PathBuf)],
    opts: &UploadOptions,
) -> anyhow::Result<(ContentHash, UploadReport, Duration)> {
    let start = Instant::now();
    let (m, report) = inputs::upload(store, studio, files, opts).await?;
    Ok((m, report, start.elapsed()))
}

/// What a worker does for a task: the manifest, then the inputs through its cache; returns
/// the bytes it downloaded (counted by the store).
async fn fetch(
    cache: &Cache,
    store: &Store,
    studio: &Studio,
    manifest: ContentHash,
    root: &Path,
    task: &str,
) -> anyhow::Result<u64> {
    let before = store.counts().bytes_read;
    let m = cache.manifest(studio, &manifest).await?;
    let manifest_bytes = store.counts().bytes_read - before;
    let dir = root.join(task);
    cache.materialize(studio, &m, &dir).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(store.counts().bytes_read - before - manifest_bytes)
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole as f64
}

/// `size` random bytes (BLAKE3's output stream, seeded) written in 1 MiB blocks.
fn write_random(path: &Path, size: u64, seed: u8) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    let mut xof = h.finalize_xof();
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        xof.fill(&mut block[..n]);
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

fn random_mib(seed: u8) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&[seed, 0xee]);
    let mut b = vec![0u8; MIB as usize];
    h.finalize_xof().fill(&mut b);
    b
}

/// Overwrites 1 MiB in the middle of the file in place.
fn overwrite_middle(path: &Path, size: u64, seed: u8) -> anyhow::Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.seek(SeekFrom::Start(size / 2))?;
    f.write_all(&random_mib(seed))?;
    Ok(())
}

/// Inserts 1 MiB in the middle: a new file with the first half, the new MiB, the rest.
fn insert_middle(path: &Path, size: u64, seed: u8) -> anyhow::Result<()> {
    use std::io::Read as _;
    let tmp = path.with_extension("new");
    {
        let mut src = std::io::BufReader::new(std::fs::File::open(path)?);
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        std::io::copy(&mut (&mut src).take(size / 2), &mut out)?;
        out.write_all(&random_mib(seed))?;
        std::io::copy(&mut src, &mut out)?;
        out.flush()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Sets the file's modification time `secs` in the past: a file written a moment ago is one
/// the hash cache does not trust yet (it could change again within the same clock tick).
fn age(path: &Path, secs: u64) -> anyhow::Result<()> {
    let t = SystemTime::now() - Duration::from_secs(secs);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_modified(t)?;
    Ok(())
}
