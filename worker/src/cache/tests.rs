use super::*;

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
    m.files
        .insert("a/x.bin".into(), InputEntry::whole(h[0], 600, 0o644));
    m.files
        .insert("y.bin".into(), InputEntry::whole(h[1], 600, 0o755));
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
    let entry = |mode| InputEntry::whole(h[0], 10, mode);
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
use suanli_shared::chunks::pseudo_random as noise;

/// A store holding `data` as a chunked file of acme, and its manifest entry.
async fn chunked_store(data: &[u8]) -> (tempfile::TempDir, Store, InputEntry) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store").to_str().unwrap()).unwrap();
    let src = dir.path().join("src.bin");
    std::fs::write(&src, data).unwrap();
    let (digest, up) = chunks::upload_chunked(&store, &acme(), &src, None, &Default::default())
        .await
        .unwrap();
    assert!(digest.chunks.len() >= 2, "{} chunks", digest.chunks.len());
    assert_eq!(up.uploaded, data.len() as u64);
    let entry = InputEntry {
        chunks: digest.chunks,
        ..InputEntry::whole(digest.hash, digest.size, 0o644)
    };
    (dir, store, entry)
}

fn one_file(entry: &InputEntry) -> InputManifest {
    let mut m = InputManifest::default();
    m.files.insert("cache/sim.bin".into(), entry.clone());
    m
}

#[tokio::test]
async fn chunked_files_are_rebuilt_and_a_new_version_fetches_only_new_chunks() {
    let data = noise(40 << 20, 1);
    let (dir, store, entry) = chunked_store(&data).await;
    let cache = Cache::open(&dir.path().join("cache"), 1 << 30, store.clone())
        .await
        .unwrap();
    let out = dir.path().join("task1");
    let n = cache
        .materialize(&acme(), &one_file(&entry), &out)
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(std::fs::read(out.join("cache/sim.bin")).unwrap() == data);
    // 1 MiB changed in the middle: only the chunks around it come down.
    let mut edited = data.clone();
    edited[20 << 20..21 << 20].copy_from_slice(&noise(1 << 20, 9));
    let src = dir.path().join("src.bin");
    std::fs::write(&src, &edited).unwrap();
    let (digest, _) = chunks::upload_chunked(&store, &acme(), &src, None, &Default::default())
        .await
        .unwrap();
    let edited_entry = InputEntry {
        chunks: digest.chunks,
        ..InputEntry::whole(digest.hash, digest.size, 0o644)
    };
    let out = dir.path().join("task2");
    let n = cache
        .materialize(&acme(), &one_file(&edited_entry), &out)
        .await
        .unwrap();
    assert!(n > 0 && n <= 2 * u64::from(chunks::MAX_CHUNK), "{n} bytes");
    assert!(std::fs::read(out.join("cache/sim.bin")).unwrap() == edited);
}

#[tokio::test]
async fn bad_chunks_fail_the_fetch_commit_nothing_and_are_fetched_again() {
    let data = noise(40 << 20, 2);
    let (dir, store, entry) = chunked_store(&data).await;
    let cache = Cache::open(&dir.path().join("cache"), 1 << 30, store.clone())
        .await
        .unwrap();
    let victim = entry.chunks[1];
    let key = layout::cas(&acme(), &victim.hash);
    let good = store.get_bytes(&key).await.unwrap();
    let whole = cache.blob_path(&acme(), &entry.hash);
    let tries: [(&str, bytes::Bytes, &str); 3] = [
        (
            "corrupt",
            bytes::Bytes::from(vec![7u8; victim.size as usize]),
            "hashes to",
        ),
        ("truncated", good.slice(..good.len() / 2), "expected"),
        ("missing", bytes::Bytes::new(), "not found"),
    ];
    for (what, bad, says) in tries {
        if what == "missing" {
            let local = dir.path().join("store").join(key.as_ref());
            std::fs::remove_file(local).unwrap();
        } else {
            store.put_bytes(&key, bad).await.unwrap();
        }
        let out = dir.path().join(format!("task-{what}"));
        let err = cache
            .materialize(&acme(), &one_file(&entry), &out)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{what}: {err}");
        assert!(err.is_retryable(), "{what}: {err}");
        assert!(!whole.exists(), "{what}: no rebuilt file kept");
        assert!(!cache.blob_path(&acme(), &victim.hash).exists(), "{what}");
        assert!(
            !out.join("cache/sim.bin").exists(),
            "{what}: nothing laid out"
        );
    }
    // Repaired in the store: the retry fetches that chunk again and succeeds (chunks
    // whose fetch the failure cut short come down too).
    store.put_bytes(&key, good).await.unwrap();
    let out = dir.path().join("task-retry");
    let n = cache
        .materialize(&acme(), &one_file(&entry), &out)
        .await
        .unwrap();
    assert!(n >= victim.size, "{n}");
    assert!(cache.blob_path(&acme(), &victim.hash).exists());
    assert!(std::fs::read(out.join("cache/sim.bin")).unwrap() == data);
}

#[tokio::test]
async fn a_forged_chunk_list_is_refused_by_the_whole_file_hash() {
    let data = noise(40 << 20, 3);
    let (dir, store, entry) = chunked_store(&data).await;
    let cache = Cache::open(&dir.path().join("cache"), 1 << 30, store)
        .await
        .unwrap();
    // Genuine chunks in another order: each verifies, the file does not.
    let mut forged = entry.clone();
    forged.chunks.reverse();
    let out = dir.path().join("task");
    let err = cache
        .materialize(&acme(), &one_file(&forged), &out)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chunk list is wrong"), "{err}");
    assert!(!cache.blob_path(&acme(), &entry.hash).exists());
    assert!(!out.join("cache/sim.bin").exists());
}

#[tokio::test]
async fn two_workers_sharing_a_cache_folder_fetch_each_chunk_once() {
    let data = noise(40 << 20, 4);
    let (dir, store, entry) = chunked_store(&data).await;
    let folder = dir.path().join("shared-cache");
    // Two caches on one folder, as two worker processes would open it.
    let a = Cache::open(&folder, 1 << 30, store.clone()).await.unwrap();
    let b = Cache::open(&folder, 1 << 30, store.clone()).await.unwrap();
    let before = store.counts();
    let (m, acme) = (one_file(&entry), acme());
    let (ta, tb) = (dir.path().join("ta"), dir.path().join("tb"));
    let (ra, rb) = tokio::join!(a.materialize(&acme, &m, &ta), b.materialize(&acme, &m, &tb));
    let moved = ra.unwrap() + rb.unwrap();
    let after = store.counts();
    assert_eq!(after.gets - before.gets, entry.chunks.len() as u64);
    assert_eq!(after.bytes_read - before.bytes_read, data.len() as u64);
    assert_eq!(moved, data.len() as u64);
    for t in ["ta", "tb"] {
        assert!(std::fs::read(dir.path().join(t).join("cache/sim.bin")).unwrap() == data);
    }
}

#[tokio::test]
async fn staging_beside_a_task_fetches_each_chunk_once_and_lays_nothing_out() {
    let data = noise(40 << 20, 6);
    let (dir, store, entry) = chunked_store(&data).await;
    let folder = dir.path().join("shared-cache");
    // The worker that stages and another that runs a task, on one folder.
    let stager = Cache::open(&folder, 1 << 30, store.clone()).await.unwrap();
    let runner = Cache::open(&folder, 1 << 30, store.clone()).await.unwrap();
    let before = store.counts();
    let (m, acme) = (one_file(&entry), acme());
    let progress = Progress::new(m.total_bytes());
    let task = dir.path().join("task");
    let (staged, ran) = tokio::join!(
        stager.stage(&acme, &m, &progress),
        runner.materialize(&acme, &m, &task)
    );
    let moved = staged.unwrap() + ran.unwrap();
    let after = store.counts();
    assert_eq!(after.gets - before.gets, entry.chunks.len() as u64);
    assert_eq!(moved, data.len() as u64, "each chunk moved once");
    assert_eq!(progress.done(), data.len() as u64, "all of it there");
    assert!(std::fs::read(task.join("cache/sim.bin")).unwrap() == data);
    assert!(stager.blob_path(&acme, &entry.hash).exists());
    // Staged again: everything is there, nothing moves, nothing is asked of the store.
    let again = Progress::new(m.total_bytes());
    assert_eq!(stager.stage(&acme, &m, &again).await.unwrap(), 0);
    assert_eq!((again.done(), again.moved_bytes()), (data.len() as u64, 0));
    assert_eq!(store.counts().gets, after.gets);
    // Staging refuses a manifest a task would refuse.
    let mut bad = m.clone();
    let e = bad.files.remove("cache/sim.bin").unwrap();
    bad.files.insert("../escape.bin".into(), e);
    assert!(stager.stage(&acme, &bad, &Progress::new(0)).await.is_err());
}

#[tokio::test]
async fn a_capped_cache_downloads_no_faster_than_its_cap() {
    let data = noise(24 << 20, 5);
    let (dir, store, entry) = chunked_store(&data).await;
    let rate = 40 << 20;
    let cache = Cache::open(&dir.path().join("cache"), 1 << 30, store)
        .await
        .unwrap()
        .with_download_rate(Some(RateLimit::new(rate)));
    let start = std::time::Instant::now();
    let n = cache
        .materialize(&acme(), &one_file(&entry), &dir.path().join("task"))
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    let least = std::time::Duration::from_secs_f64(n as f64 / rate as f64);
    assert!(
        start.elapsed() >= least,
        "{:?} < {least:?}",
        start.elapsed()
    );
}
