//! Content-defined chunks of large input files, so a changed file moves only its changed
//! parts over the WAN.
//!
//! A file above [`CHUNK_THRESHOLD`] is cut with FastCDC (`fastcdc::v2020`, 1 MiB minimum,
//! 4 MiB average, 16 MiB maximum): cut points follow the content, so an edit or an insertion
//! changes the chunks around it and leaves the rest as they were. Each chunk is stored once,
//! like any blob, at its studio's `cas/<BLAKE3 of the chunk>`; the manifest lists a file's
//! chunks beside its whole-file hash. Smaller files stay whole.
//!
//! This module is what submit and workers agree on: how a file is cut ([`chunk_stream`]), how
//! its chunks go up ([`upload_chunked`]: only those the store lacks, a few at once, never the
//! whole file in memory) and how a file is rebuilt from verified chunks ([`rebuild`]: checked
//! against the whole-file hash before it is moved into place).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use crate::hash::ContentHash;
use crate::layout;
use crate::names::Studio;
use crate::protocol::ChunkRef;
use crate::store::{changed_source, join_error, Store, StoreError, StoreErrorKind};
use crate::transfer::{self, Progress, RateLimit};

/// Files larger than this are chunked; smaller ones are stored whole.
pub const CHUNK_THRESHOLD: u64 = 16 * 1024 * 1024;
/// FastCDC's smallest chunk (but a file's last).
pub const MIN_CHUNK: u32 = 1024 * 1024;
/// FastCDC's target average chunk.
pub const AVG_CHUNK: u32 = 4 * 1024 * 1024;
/// FastCDC's largest chunk: also the most one chunk holds in memory.
pub const MAX_CHUNK: u32 = 16 * 1024 * 1024;

/// Chunks of one file checked or uploaded at once: bounds memory to this many chunks (plus
/// two waiting in the reader's channel), at most [`MAX_CHUNK`] each.
pub const UPLOAD_CONCURRENCY: usize = 4;

/// Whether a file of `size` bytes is chunked.
pub fn is_chunked(size: u64) -> bool {
    size > CHUNK_THRESHOLD
}

/// What hashing a file found: its whole-file hash and size and, for a chunked file, its
/// chunks in order (empty for a file stored whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub hash: ContentHash,
    pub size: u64,
    #[serde(default)]
    pub chunks: Vec<ChunkRef>,
}

/// Cuts `reader` into content-defined chunks, calling `each` with every chunk and its bytes
/// in order (at most [`MAX_CHUNK`] in memory at once); returns the whole stream's digest.
/// Blocking: run it on the blocking pool.
pub fn chunk_stream<R: Read>(
    reader: R,
    mut each: impl FnMut(ChunkRef, Vec<u8>) -> std::io::Result<()>,
) -> std::io::Result<FileDigest> {
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::new();
    let mut size = 0u64;
    for chunk in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let chunk = chunk.map_err(std::io::Error::from)?;
        whole.update(&chunk.data);
        let r = ChunkRef {
            hash: ContentHash::of(&chunk.data),
            size: chunk.length as u64,
        };
        size += r.size;
        chunks.push(r);
        each(r, chunk.data)?;
    }
    Ok(FileDigest {
        hash: ContentHash::from_hasher(&whole),
        size,
        chunks,
    })
}

/// What uploading one file's chunks did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkUpload {
    /// Bytes read from the local file.
    pub read: u64,
    /// Chunks the file has, and those uploaded (the store lacked them).
    pub chunks: usize,
    pub uploaded_chunks: usize,
    /// Bytes of the chunks uploaded.
    pub uploaded: u64,
}

/// How uploads may use the link: an optional cap and an optional progress to report into.
#[derive(Debug, Clone, Default)]
pub struct Link {
    pub rate: Option<RateLimit>,
    pub progress: Option<Arc<Progress>>,
}

impl Link {
    async fn send(&self, n: u64) {
        transfer::acquire(self.rate.as_ref(), n).await;
    }

    fn moved(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.moved(n);
        }
    }

    fn skipped(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.skipped(n);
        }
    }
}

/// Uploads the chunks of the file at `src` that `studio`'s store lacks, a few at once.
///
/// With `known` (the file's digest from the hash cache, for a file unchanged since), the
/// store is asked for each chunk and only the missing ones are read (each checked against
/// its hash: a file that changed anyway is [`StoreErrorKind::Corrupt`]). Without it, the
/// file is read once, cut and hashed while its chunks go up. Each chunk is one put of its
/// own: an upload stopped half-way leaves the chunks it sent, and the next one skips them.
pub async fn upload_chunked(
    store: &Store,
    studio: &Studio,
    src: &Path,
    known: Option<&FileDigest>,
    link: &Link,
) -> Result<(FileDigest, ChunkUpload), StoreError> {
    match known {
        Some(digest) => {
            let report = upload_known(store, studio, src, digest, link).await?;
            Ok((digest.clone(), report))
        }
        None => upload_streaming(store, studio, src, link).await,
    }
}

/// Puts one chunk unless the store has it; returns whether it was sent.
async fn put_chunk(
    store: &Store,
    studio: &Studio,
    chunk: ChunkRef,
    data: Bytes,
    link: &Link,
) -> Result<bool, StoreError> {
    let key = layout::cas(studio, &chunk.hash);
    if store.exists(&key).await? {
        link.skipped(chunk.size);
        return Ok(false);
    }
    link.send(chunk.size).await;
    // Content-addressed: a concurrent uploader of the same chunk writes the same bytes.
    store.put_bytes(&key, data).await?;
    link.moved(chunk.size);
    Ok(true)
}

async fn upload_streaming(
    store: &Store,
    studio: &Studio,
    src: &Path,
    link: &Link,
) -> Result<(FileDigest, ChunkUpload), StoreError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(ChunkRef, Bytes)>(2);
    let path = src.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        chunk_stream(
            std::io::BufReader::with_capacity(1 << 20, file),
            |c, data| {
                tx.blocking_send((c, Bytes::from(data)))
                    .map_err(|_| std::io::Error::other("the upload stopped"))
            },
        )
    });
    let mut report = ChunkUpload::default();
    let mut inflight = FuturesUnordered::new();
    let mut failure = None;
    'feed: while let Some((chunk, data)) = rx.recv().await {
        while inflight.len() >= UPLOAD_CONCURRENCY {
            match inflight.next().await {
                Some(Ok((c, sent))) => tally(&mut report, c, sent),
                Some(Err(e)) => {
                    failure = Some(e);
                    break 'feed;
                }
                None => break,
            }
        }
        inflight.push(async move {
            put_chunk(store, studio, chunk, data, link)
                .await
                .map(|sent| (chunk, sent))
        });
    }
    drop(rx); // stops the reader if an upload failed first
    if failure.is_none() {
        while let Some(done) = inflight.next().await {
            match done {
                Ok((c, sent)) => tally(&mut report, c, sent),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    let read = reader.await.map_err(|e| join_error(src, e));
    if let Some(e) = failure {
        return Err(e);
    }
    let digest =
        read?.map_err(|e| StoreError::io(format!("cannot read '{}'", src.display()), e))?;
    report.read = digest.size;
    Ok((digest, report))
}

fn tally(report: &mut ChunkUpload, chunk: ChunkRef, sent: bool) {
    report.chunks += 1;
    if sent {
        report.uploaded_chunks += 1;
        report.uploaded += chunk.size;
    }
}

async fn upload_known(
    store: &Store,
    studio: &Studio,
    src: &Path,
    digest: &FileDigest,
    link: &Link,
) -> Result<ChunkUpload, StoreError> {
    let mut offsets = Vec::with_capacity(digest.chunks.len());
    let mut at = 0u64;
    for c in &digest.chunks {
        offsets.push((at, *c));
        at += c.size;
    }
    let one = |(offset, chunk): (u64, ChunkRef)| async move {
        let key = layout::cas(studio, &chunk.hash);
        if store.exists(&key).await? {
            link.skipped(chunk.size);
            return Ok::<_, StoreError>((chunk, false));
        }
        let path = src.to_path_buf();
        let data = tokio::task::spawn_blocking(move || read_range(&path, offset, chunk.size))
            .await
            .map_err(|e| join_error(src, e))?
            .map_err(|e| StoreError::io(format!("cannot read '{}'", src.display()), e))?;
        let got = ContentHash::of(&data);
        if got != chunk.hash {
            return Err(changed_source(src, &chunk.hash, &got));
        }
        link.send(chunk.size).await;
        store.put_bytes(&key, Bytes::from(data)).await?;
        link.moved(chunk.size);
        Ok((chunk, true))
    };
    let mut report = ChunkUpload::default();
    let mut done = futures::stream::iter(offsets)
        .map(one)
        .buffer_unordered(UPLOAD_CONCURRENCY);
    while let Some(r) = done.next().await {
        let (chunk, sent) = r?;
        tally(&mut report, chunk, sent);
        if sent {
            report.read += chunk.size;
        }
    }
    Ok(report)
}

fn read_range(path: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut data = vec![0u8; len as usize];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// Rebuilds a file at `dest` from its chunks' local files (`parts`, in order, each already
/// verified): streams them into a temporary file beside `dest` while hashing, and moves it
/// into place only if it has `size` bytes hashing to `expected`. Otherwise the result is
/// [`StoreErrorKind::Corrupt`] and `dest` is untouched. Blocking: run it on the blocking pool.
pub fn rebuild(
    parts: &[PathBuf],
    expected: &ContentHash,
    size: u64,
    dest: &Path,
) -> Result<(), StoreError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let io =
        |what: &str, p: &Path, e| StoreError::io(format!("cannot {what} '{}'", p.display()), e);
    let mut tmp = tempfile::Builder::new()
        .prefix(".rebuild.")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| io("create a file in", dir, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut written = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for part in parts {
        let mut f = std::fs::File::open(part).map_err(|e| io("read", part, e))?;
        loop {
            let n = f.read(&mut buf).map_err(|e| io("read", part, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n])
                .map_err(|e| io("write", tmp.path(), e))?;
            written += n as u64;
        }
    }
    let got = ContentHash::from_hasher(&hasher);
    if written != size || got != *expected {
        return Err(StoreError::new(
            StoreErrorKind::Corrupt,
            format!(
                "the file rebuilt from its chunks has {written} bytes hashing to {}, not the \
                 manifest's {size} bytes hashing to {}: its chunk list is wrong (a damaged or \
                 forged manifest); nothing was kept",
                got.short(),
                expected.short()
            ),
        ));
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| io("sync", tmp.path(), e))?;
    tmp.persist(dest)
        .map_err(|e| io("move a rebuilt file to", dest, e.error))?;
    Ok(())
}

/// Deterministic, incompressible bytes (xorshift): inputs for tests and benchmarks that no
/// chunker or compressor can shortcut, the same for the same `seed`.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::pseudo_random as noise;

    fn cut(data: &[u8]) -> FileDigest {
        chunk_stream(data, |_, _| Ok(())).unwrap()
    }

    #[test]
    fn chunks_cover_the_file_and_its_hash_is_the_whole_files() {
        let data = noise(40 << 20, 1);
        let d = cut(&data);
        assert_eq!(d.hash, ContentHash::of(&data));
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.chunks.iter().map(|c| c.size).sum::<u64>(), d.size);
        assert!(d.chunks.len() >= 3, "{} chunks", d.chunks.len());
        let mut at = 0;
        for c in &d.chunks {
            assert!(c.size <= u64::from(MAX_CHUNK));
            assert_eq!(c.hash, ContentHash::of(&data[at..at + c.size as usize]));
            at += c.size as usize;
        }
    }

    #[test]
    fn an_insertion_changes_only_the_chunks_around_it() {
        let data = noise(64 << 20, 2);
        let mut edited = data[..30 << 20].to_vec();
        edited.extend(noise(1 << 20, 3));
        edited.extend_from_slice(&data[30 << 20..]);
        let (a, b) = (cut(&data), cut(&edited));
        let old: std::collections::HashSet<_> = a.chunks.iter().collect();
        let new_bytes: u64 = b
            .chunks
            .iter()
            .filter(|c| !old.contains(c))
            .map(|c| c.size)
            .sum();
        assert!(
            new_bytes <= 1 + 3 * u64::from(MAX_CHUNK) / 2,
            "a 1 MiB insertion made {new_bytes} new bytes"
        );
    }

    #[test]
    fn a_rebuild_is_kept_only_if_it_matches_the_whole_hash() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"hello ").unwrap();
        std::fs::write(&b, b"world").unwrap();
        let dest = dir.path().join("out");
        let good = ContentHash::of(b"hello world");
        rebuild(&[a.clone(), b.clone()], &good, 11, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello world");
        let dest2 = dir.path().join("out2");
        let err = rebuild(&[b, a], &good, 11, &dest2).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err}");
        assert!(!dest2.exists());
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 3, "no temporary file is left behind");
    }
}
