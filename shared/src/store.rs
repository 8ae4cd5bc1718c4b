//! The storage adapter: Suanli's one door to object storage.
//!
//! Everything Suanli keeps outside NATS (input blobs, manifests, rendered frames, commit markers)
//! lives in an object store, reached through [`object_store`] so that a local directory, S3 (and
//! S3-protocol servers), GCS and Azure behave alike. This module exists to put Suanli's storage
//! policy in one place instead of in every caller:
//!
//! - **URLs to stores**: one [`Store::open`] for every backend, with timeouts sized for large
//!   frames (object_store's 30 s default covers the whole body) and retries with backoff.
//! - **Content checks**: every download is checked against its BLAKE3 hash while it streams, and
//!   every content-addressed upload is checked against the hash it claims, so a changed source
//!   file or a damaged transfer can never land under a content key (see "Content hashing" in the
//!   design).
//! - **The commit primitive**: [`Store::put_if_absent`] is create-if-absent, atomic on the local
//!   file system, S3, GCS and Azure; a task's output manifest is committed with it.
//! - **Errors callers can act on**: every failure carries a [`StoreErrorKind`] that says whether
//!   to retry, fail the task, or fix the configuration.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};
use tokio::io::AsyncWriteExt;

use crate::hash::ContentHash;

/// Files larger than this go up as multipart uploads; smaller ones with a single put.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Part size of multipart uploads. S3 allows at most 10,000 parts, so 16 MiB parts carry
/// blobs up to about 156 GiB; every part but the last must be at least 5 MiB.
pub const DEFAULT_PART_SIZE: usize = 16 * 1024 * 1024;

/// Parts of one multipart upload in flight at once (bounds memory to a few parts).
const MULTIPART_CONCURRENCY: usize = 4;

/// Whole-request timeout, body included: a large frame over a slow cross-region link must fit.
const REQUEST_TIMEOUT: &str = "30min";

/// Time to establish a connection before the attempt counts as failed (and is retried).
const CONNECT_TIMEOUT: &str = "10s";

/// Create-if-absent attempts when the store reports a conflict but shows no winner.
const CREATE_ATTEMPTS: u32 = 3;

/// Payloads up to this size are hashed inline; larger ones on the blocking pool.
const INLINE_HASH_LIMIT: usize = 1024 * 1024;

/// Buffer between the download stream and the temporary file.
const DOWNLOAD_BUFFER: usize = 1024 * 1024;

/// Read size when hashing a small file that is then uploaded in one put.
const READ_BUFFER: usize = 256 * 1024;

/// What a caller must decide on: retry, fail the task, or fix configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The object does not exist.
    NotFound,
    /// The object already exists (a create-if-absent lost, or a precondition failed).
    AlreadyExists,
    /// Content does not match its hash or its expected size (damaged, truncated, or the local
    /// source changed since it was hashed). Retrying a download may help; re-hashing a source
    /// file is needed for an upload.
    Corrupt,
    /// Network trouble, server errors, timeouts: worth retrying later.
    Transient,
    /// Bad URL, unknown option, missing credentials or permissions, or an operation the
    /// backend does not support: retrying will not help, the configuration must change.
    Config,
    /// Local disk trouble: disk full, permissions, missing directories.
    Io,
}

impl StoreErrorKind {
    fn phrase(self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::Corrupt => "content does not match its hash",
            Self::Transient => "store unavailable (transient, worth retrying)",
            Self::Config => "store misconfigured or operation unsupported",
            Self::Io => "local i/o error",
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failed storage operation: what was attempted, where, and a [`StoreErrorKind`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl StoreError {
    /// What the caller should do about it.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    pub(crate) fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    fn with_source(
        kind: StoreErrorKind,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Config, message)
    }

    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(StoreErrorKind::Corrupt, message)
    }

    pub(crate) fn io(context: impl fmt::Display, source: std::io::Error) -> Self {
        Self::with_source(StoreErrorKind::Io, format!("{context}: {source}"), source)
    }

    /// Wrap an object_store error; `context` says what was attempted and where.
    fn store(context: impl fmt::Display, source: object_store::Error) -> Self {
        let kind = classify(&source);
        Self::with_source(kind, format!("{context}: {}", kind.phrase()), source)
    }
}

/// The one mapping from object_store errors to what a caller must decide.
fn classify(err: &object_store::Error) -> StoreErrorKind {
    use object_store::Error as E;
    match err {
        E::NotFound { .. } => StoreErrorKind::NotFound,
        // S3 answers a lost `If-None-Match: *` with 412 (some stores 304); object_store turns
        // those into AlreadyExists for creates, but keep them here for other conditional calls.
        E::AlreadyExists { .. } | E::Precondition { .. } | E::NotModified { .. } => {
            StoreErrorKind::AlreadyExists
        }
        E::NotImplemented { .. }
        | E::NotSupported { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. } => StoreErrorKind::Config,
        // The local file system reports all its I/O failures (disk full, permissions) as
        // Generic; for network stores Generic means transport errors and server errors.
        E::Generic {
            store: "LocalFileSystem",
            ..
        } => StoreErrorKind::Io,
        _ => StoreErrorKind::Transient,
    }
}

/// Result of [`Store::put_if_absent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// This call created the object.
    Created,
    /// The object was already there (possibly written by an earlier, retried attempt of this
    /// very call); its content was left unchanged.
    AlreadyExisted,
}

/// A handle on one object store (or a prefix of one). Cheap to clone and share between tasks.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    /// The URL as shown to people: normalised, without credentials or query.
    url: Arc<str>,
    /// Files above this size are uploaded with multipart.
    multipart_threshold: u64,
    /// Size of each multipart part but the last.
    part_size: usize,
    /// Requests and bytes through this handle and its clones (what transfers cost).
    counts: Arc<Counters>,
}

/// What a [`Store`] handle and its clones have asked of the store, for reports, benchmarks
/// and tests: bytes moved are the WAN cost Suanli tries to keep down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Reads started (GET).
    pub gets: u64,
    /// Body bytes received by reads.
    pub bytes_read: u64,
    /// Existence checks (HEAD).
    pub heads: u64,
    /// Writes that completed (PUT, create-if-absent, multipart).
    pub puts: u64,
    /// Body bytes of writes that completed.
    pub bytes_written: u64,
    /// Body bytes of single-put writes started, complete or not (a write cut short by a
    /// stopped upload may have used the link all the same).
    pub bytes_offered: u64,
}

#[derive(Debug, Default)]
struct Counters {
    gets: std::sync::atomic::AtomicU64,
    bytes_read: std::sync::atomic::AtomicU64,
    heads: std::sync::atomic::AtomicU64,
    puts: std::sync::atomic::AtomicU64,
    bytes_written: std::sync::atomic::AtomicU64,
    bytes_offered: std::sync::atomic::AtomicU64,
}

impl Counters {
    fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
        counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    fn wrote(&self, bytes: u64) {
        Self::add(&self.puts, 1);
        Self::add(&self.bytes_written, bytes);
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

/// Which backend a URL names, before any store is built.
enum Backend {
    Local(PathBuf),
    Memory,
    S3(String),
    Gcs(String),
    Azure(String),
}

const SUPPORTED: &str = "supported: file:///abs/dir, a filesystem path, memory://, \
                         s3://bucket[/prefix], gs://bucket[/prefix], az://container[/prefix]";

impl Store {
    /// Open a store from a URL: `file:///abs/dir` (created if missing), a plain filesystem
    /// path (treated as `file`), `memory://` (tests), `s3://bucket[/prefix]`,
    /// `gs://bucket[/prefix]` or `az://container[/prefix]`.
    ///
    /// Cloud settings come from the usual environment variables (`AWS_*` such as
    /// `AWS_ENDPOINT`/`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP`; `GOOGLE_*`; `AZURE_*`), so a loopback S3 server works.
    /// A prefix in the URL scopes every key. Requests time out after 30 minutes (whole body)
    /// or 10 seconds to connect, unless `*_TIMEOUT`/`*_CONNECT_TIMEOUT` say otherwise, and are
    /// retried with exponential backoff.
    ///
    /// Opening a file store creates its directory with blocking calls: open stores at start-up,
    /// not on a hot async path. Cloud stores do no I/O until the first request.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Self::open_with_options(url, &[])
    }

    /// Like [`Store::open`], with explicit backend options that override the environment,
    /// e.g. `("aws_endpoint", "http://127.0.0.1:9000")`, `("aws_allow_http", "true")`,
    /// `("aws_access_key_id", …)`, `("aws_region", …)`, `("timeout", "1h")`. Keys are
    /// object_store's configuration keys for the URL's backend; an unknown key, or any option
    /// for a `file` or `memory` store, is a [`StoreErrorKind::Config`] error.
    pub fn open_with_options(url: &str, options: &[(&str, &str)]) -> Result<Store, StoreError> {
        let (backend, prefix, shown) = parse_url(url)?;
        if !options.is_empty() && matches!(backend, Backend::Local(_) | Backend::Memory) {
            let keys: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
            return Err(StoreError::config(format!(
                "store options {keys:?} do not apply to {shown}: options are for s3, gs and az stores"
            )));
        }
        // The cloud stores differ only in their builder type, their environment prefix and how
        // the bucket is named: one recipe for all three.
        macro_rules! cloud {
            ($builder:expr, $env:literal, $key:ty, $name:ident($bucket:expr)) => {{
                let builder = configure($builder, $env, options, &shown, |b, k: $key, v| {
                    b.with_config(k, v)
                })?;
                let store = builder
                    .$name($bucket)
                    .with_retry(retry_config())
                    .build()
                    .map_err(|e| build_error(&shown, e))?;
                Arc::new(store)
            }};
        }
        let inner: Arc<dyn ObjectStore> = match backend {
            Backend::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| {
                    StoreError::io(
                        format!("cannot create store directory '{}'", dir.display()),
                        e,
                    )
                })?;
                let fs = LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| StoreError::store(format!("cannot open {shown}"), e))?
                    // The commit marker must survive a power cut once reported as created.
                    .with_fsync(true)
                    .with_automatic_cleanup(true);
                Arc::new(fs)
            }
            Backend::Memory => Arc::new(InMemory::new()),
            Backend::S3(bucket) => cloud!(
                AmazonS3Builder::from_env(),
                "AWS_",
                AmazonS3ConfigKey,
                with_bucket_name(bucket)
            ),
            Backend::Gcs(bucket) => cloud!(
                GoogleCloudStorageBuilder::from_env(),
                "GOOGLE_",
                GoogleConfigKey,
                with_bucket_name(bucket)
            ),
            Backend::Azure(container) => cloud!(
                MicrosoftAzureBuilder::from_env(),
                "AZURE_",
                AzureConfigKey,
                with_container_name(container)
            ),
        };
        let inner = match prefix {
            Some(prefix) => Arc::new(PrefixStore::new(inner, prefix)) as Arc<dyn ObjectStore>,
            None => inner,
        };
        Ok(Store {
            inner,
            url: shown.into(),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
            counts: Arc::default(),
        })
    }

    /// Change when [`Store::upload_blob`] switches to multipart, and the part size. S3 needs
    /// parts of at least 5 MiB (all but the last) and at most 10,000 parts per object.
    pub fn with_multipart(mut self, threshold: u64, part_size: usize) -> Self {
        self.multipart_threshold = threshold;
        self.part_size = part_size.max(1);
        self
    }

    /// Requests and bytes so far through this handle and its clones.
    pub fn counts(&self) -> StoreCounts {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counts;
        StoreCounts {
            gets: c.gets.load(Relaxed),
            bytes_read: c.bytes_read.load(Relaxed),
            heads: c.heads.load(Relaxed),
            puts: c.puts.load(Relaxed),
            bytes_written: c.bytes_written.load(Relaxed),
            bytes_offered: c.bytes_offered.load(Relaxed),
        }
    }

    /// The store's URL, for display (normalised, without credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether an object exists at `key`.
    pub async fn exists(&self, key: &ObjPath) -> Result<bool, StoreError> {
        Counters::add(&self.counts.heads, 1);
        match self.inner.head(key).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(StoreError::store(
                format!("cannot check '{key}' in {}", self.url),
                e,
            )),
        }
    }

    /// Write `bytes` to `key`, replacing what is there.
    pub async fn put_bytes(&self, key: &ObjPath, bytes: Bytes) -> Result<(), StoreError> {
        let len = bytes.len() as u64;
        Counters::add(&self.counts.bytes_offered, len);
        self.inner
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(|e| StoreError::store(format!("cannot write '{key}' to {}", self.url), e))?;
        self.counts.wrote(len);
        Ok(())
    }

    /// Create `key` with `bytes` only if nothing is there: the commit primitive. Atomic on the
    /// local file system (hard link), S3 (`If-None-Match: *`), GCS and Azure; of many
    /// concurrent callers exactly one gets [`Commit::Created`].
    ///
    /// [`Commit::AlreadyExisted`] is also the answer when a retried request finds the object
    /// its own earlier attempt wrote, so callers must treat any existing object as the commit.
    pub async fn put_if_absent(&self, key: &ObjPath, bytes: Bytes) -> Result<Commit, StoreError> {
        let context = || format!("cannot create '{key}' in {}", self.url);
        for attempt in 1..=CREATE_ATTEMPTS {
            let opts = PutOptions::from(PutMode::Create);
            match self
                .inner
                .put_opts(key, PutPayload::from(bytes.clone()), opts)
                .await
            {
                Ok(_) => {
                    self.counts.wrote(bytes.len() as u64);
                    return Ok(Commit::Created);
                }
                Err(e) if classify(&e) == StoreErrorKind::AlreadyExists => {
                    // S3 also answers 409 while a concurrent conditional write is in flight,
                    // which object_store reports as AlreadyExists; only a visible winner is one.
                    if self.exists(key).await? {
                        return Ok(Commit::AlreadyExisted);
                    }
                    if attempt == CREATE_ATTEMPTS {
                        return Err(StoreError::with_source(
                            StoreErrorKind::Transient,
                            format!(
                                "{}: the store reported a conflicting write {CREATE_ATTEMPTS} \
                                 times but no object appeared",
                                context()
                            ),
                            e,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => return Err(StoreError::store(context(), e)),
            }
        }
        Err(StoreError::new(StoreErrorKind::Transient, context()))
    }

    /// Starts reading `key`; the error names the object and the store.
    async fn open_read(&self, key: &ObjPath) -> Result<object_store::GetResult, StoreError> {
        Counters::add(&self.counts.gets, 1);
        self.inner
            .get(key)
            .await
            .map_err(|e| StoreError::store(self.read_context(key), e))
    }

    fn read_context(&self, key: &ObjPath) -> String {
        format!("cannot read '{key}' from {}", self.url)
    }

    /// Read the whole object at `key`, unchecked (for objects that carry no hash).
    pub async fn get_bytes(&self, key: &ObjPath) -> Result<Bytes, StoreError> {
        let context = || self.read_context(key);
        let result = self.open_read(key).await?;
        let bytes = result
            .bytes()
            .await
            .map_err(|e| StoreError::store(context(), e))?;
        Counters::add(&self.counts.bytes_read, bytes.len() as u64);
        Ok(bytes)
    }

    /// Download `key` and check its BLAKE3 hash while it streams. A hash mismatch or a body
    /// shorter or longer than the store announced is [`StoreErrorKind::Corrupt`]; nothing is
    /// returned unless it verified.
    pub async fn get_verified(
        &self,
        key: &ObjPath,
        expected: &ContentHash,
    ) -> Result<Bytes, StoreError> {
        let context = || self.read_context(key);
        let result = self.open_read(key).await?;
        let size = result.meta.size;
        // The announced size comes from the server: reserve at most a modest amount up front.
        let mut buf = BytesMut::with_capacity(size.min(64 * 1024 * 1024) as usize);
        let mut hasher = blake3::Hasher::new();
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::store(context(), e))?;
            if buf.len() as u64 + chunk.len() as u64 > size {
                return Err(StoreError::corrupt(format!(
                    "'{key}' in {} is longer than the {size} bytes the store announced",
                    self.url
                )));
            }
            Counters::add(&self.counts.bytes_read, chunk.len() as u64);
            // Network chunks are small: hashing one costs microseconds, less than a hop to
            // the blocking pool would.
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
        }
        check_content(key, &self.url, expected, size, &hasher, buf.len() as u64)?;
        Ok(buf.freeze())
    }

    /// Download `key` to `dest`: stream into a temporary file in the same directory while
    /// hashing, check hash and size, fsync, then rename into place (and fsync the directory).
    /// On any error, or if the future is dropped, the temporary file is removed and `dest` is
    /// untouched. A wrong hash or size is [`StoreErrorKind::Corrupt`]; a full disk is
    /// [`StoreErrorKind::Io`]. Missing parent directories are created.
    pub async fn download_verified(
        &self,
        key: &ObjPath,
        expected: &ContentHash,
        expected_size: u64,
        dest: &Path,
    ) -> Result<(), StoreError> {
        let Some(file_name) = dest.file_name() else {
            return Err(StoreError::config(format!(
                "cannot download '{key}' to '{}': the destination names no file",
                dest.display()
            )));
        };
        let dir = match dest.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            StoreError::io(format!("cannot create directory '{}'", dir.display()), e)
        })?;
        let tmp = dir.join(format!(
            ".{}.{}.part",
            file_name.to_string_lossy(),
            ulid::Ulid::new()
        ));
        let guard = TempFileGuard(Some(tmp.clone()));
        self.download_to_temp(key, expected, expected_size, &tmp)
            .await?;
        tokio::fs::rename(&tmp, dest).await.map_err(|e| {
            StoreError::io(
                format!("cannot move '{}' to '{}'", tmp.display(), dest.display()),
                e,
            )
        })?;
        guard.disarm();
        // Make the rename itself durable.
        let sync_dir = async { tokio::fs::File::open(&dir).await?.sync_all().await };
        sync_dir
            .await
            .map_err(|e| StoreError::io(format!("cannot sync directory '{}'", dir.display()), e))
    }

    async fn download_to_temp(
        &self,
        key: &ObjPath,
        expected: &ContentHash,
        expected_size: u64,
        tmp: &Path,
    ) -> Result<(), StoreError> {
        let context = || self.read_context(key);
        let write_error = |e| StoreError::io(format!("cannot write '{}'", tmp.display()), e);
        let result = self.open_read(key).await?;
        if result.meta.size != expected_size {
            return Err(StoreError::corrupt(format!(
                "'{key}' in {} has {} bytes, expected {expected_size}",
                self.url, result.meta.size
            )));
        }
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)
            .await
            .map_err(write_error)?;
        let mut file = tokio::io::BufWriter::with_capacity(DOWNLOAD_BUFFER, file);
        let mut hasher = blake3::Hasher::new();
        let mut written = 0u64;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| StoreError::store(context(), e))?;
            Counters::add(&self.counts.bytes_read, chunk.len() as u64);
            written += chunk.len() as u64;
            if written > expected_size {
                return Err(StoreError::corrupt(format!(
                    "'{key}' in {} is longer than the expected {expected_size} bytes",
                    self.url
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(write_error)?;
        }
        check_content(key, &self.url, expected, expected_size, &hasher, written)?;
        file.flush().await.map_err(write_error)?;
        file.get_mut().sync_all().await.map_err(write_error)?;
        Ok(())
    }

    /// Upload a local file as the content-addressed blob `key` (a studio's
    /// [`crate::layout::cas`] key of `hash`) unless the store already has it; returns whether it
    /// uploaded. Files above the multipart threshold (64 MiB by
    /// default) go up in parts, smaller ones in one put. The file is hashed while it is read,
    /// off the async runtime: if it no longer matches `hash` (it changed since it was hashed)
    /// the result is [`StoreErrorKind::Corrupt`] and nothing is left under the key (a multipart
    /// upload is aborted).
    ///
    /// If the future is dropped during a multipart upload, the parts already sent stay as an
    /// incomplete upload: give S3 buckets a lifecycle rule that aborts those.
    pub async fn upload_blob(
        &self,
        key: &ObjPath,
        hash: &ContentHash,
        src: &Path,
    ) -> Result<bool, StoreError> {
        if self.exists(key).await? {
            return Ok(false);
        }
        let size = tokio::fs::metadata(src)
            .await
            .map_err(|e| StoreError::io(format!("cannot read '{}'", src.display()), e))?
            .len();
        if size > self.multipart_threshold {
            self.upload_multipart(key, hash, src).await?;
        } else {
            let path = src.to_path_buf();
            let (bytes, got) = tokio::task::spawn_blocking(move || read_and_hash(&path))
                .await
                .map_err(|e| join_error(src, e))?
                .map_err(|e| StoreError::io(format!("cannot read '{}'", src.display()), e))?;
            if got != *hash {
                return Err(changed_source(src, hash, &got));
            }
            // Content-addressed: an overwrite by a concurrent uploader writes the same bytes.
            self.put_bytes(key, bytes).await?;
        }
        Ok(true)
    }

    async fn upload_multipart(
        &self,
        key: &ObjPath,
        hash: &ContentHash,
        src: &Path,
    ) -> Result<(), StoreError> {
        let context = || {
            format!(
                "cannot upload '{}' to '{key}' in {}",
                src.display(),
                self.url
            )
        };
        let upload = self
            .inner
            .put_multipart(key)
            .await
            .map_err(|e| StoreError::store(context(), e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);

        // A blocking task reads and hashes the file in part-sized chunks; the bounded channel
        // keeps at most two parts waiting while others are in flight.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(2);
        let path = src.to_path_buf();
        let part_size = self.part_size;
        let reader = tokio::task::spawn_blocking(move || read_parts(&path, part_size, &tx));

        let mut upload_error = None;
        while let Some(part) = rx.recv().await {
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                upload_error = Some(e);
                break;
            }
            writer.put(part);
        }
        drop(rx); // stops the reader if the upload failed first
        let read = reader.await;

        let failure = match (upload_error, read) {
            (Some(e), _) => StoreError::store(context(), e),
            (None, Err(e)) => join_error(src, e),
            (None, Ok(Err(e))) => StoreError::io(format!("cannot read '{}'", src.display()), e),
            (None, Ok(Ok(got))) if got != *hash => changed_source(src, hash, &got),
            (None, Ok(Ok(_))) => {
                // finish() aborts the upload itself when completing fails.
                writer
                    .finish()
                    .await
                    .map_err(|e| StoreError::store(context(), e))?;
                if let Ok(meta) = tokio::fs::metadata(src).await {
                    self.counts.wrote(meta.len());
                }
                return Ok(());
            }
        };
        if let Err(abort) = writer.abort().await {
            tracing::warn!(key = %key, store = %self.url, error = %abort,
                "could not abort a failed multipart upload; its parts stay until the bucket's lifecycle rule removes them");
        }
        Err(failure)
    }

    /// Upload `bytes` to `key` (any key, e.g. from [`crate::layout::output_file`]) after checking they
    /// hash to `expected`, the content hash the key was built from; a mismatch is
    /// [`StoreErrorKind::Corrupt`] and nothing is written. Overwrites: the key names the
    /// content, so a second writer writes the same bytes.
    pub async fn put_content(
        &self,
        key: &ObjPath,
        expected: &ContentHash,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        let got = if bytes.len() <= INLINE_HASH_LIMIT {
            ContentHash::of(&bytes)
        } else {
            let to_hash = bytes.clone();
            tokio::task::spawn_blocking(move || ContentHash::of(&to_hash))
                .await
                .map_err(|e| {
                    StoreError::with_source(
                        StoreErrorKind::Io,
                        format!("hashing the content for '{key}' failed"),
                        e,
                    )
                })?
        };
        if got != *expected {
            return Err(StoreError::corrupt(format!(
                "refusing to write '{key}' to {}: the {} bytes hash to {}, not the expected {}",
                self.url,
                bytes.len(),
                got.short(),
                expected.short()
            )));
        }
        self.put_bytes(key, bytes).await
    }

    /// All keys under `prefix` (recursively), sorted; an empty prefix lists the whole store.
    pub async fn list(&self, prefix: &ObjPath) -> Result<Vec<ObjPath>, StoreError> {
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let mut stream = self.inner.list(prefix);
        let mut keys = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| {
                StoreError::store(
                    format!(
                        "cannot list '{}' in {}",
                        prefix.map(|p| p.as_ref()).unwrap_or(""),
                        self.url
                    ),
                    e,
                )
            })?;
            keys.push(meta.location);
        }
        keys.sort();
        Ok(keys)
    }
}

/// Split a store URL into its backend, an optional key prefix, and the URL to show.
fn parse_url(raw: &str) -> Result<(Backend, Option<ObjPath>, String), StoreError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(StoreError::config(format!("empty store url ({SUPPORTED})")));
    }
    if !raw.contains(':') || raw.starts_with('/') || raw.starts_with('.') {
        let dir = std::path::absolute(raw).map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Config,
                format!("store path '{raw}' cannot be made absolute"),
                e,
            )
        })?;
        let shown = format!("file://{}", dir.display());
        return Ok((Backend::Local(dir), None, shown));
    }
    let url = url::Url::parse(raw).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Config,
            format!("invalid store url '{raw}': {e} ({SUPPORTED})"),
            e,
        )
    })?;
    let scheme = url.scheme();
    let host = url.host_str().unwrap_or("");
    if scheme == "file" {
        if !host.is_empty() && host != "localhost" {
            return Err(StoreError::config(format!(
                "store url '{raw}' names host '{host}': file urls must be local, like file:///abs/dir"
            )));
        }
        let dir = url.to_file_path().map_err(|()| {
            StoreError::config(format!(
                "store url '{raw}' is not an absolute directory path, like file:///abs/dir"
            ))
        })?;
        let shown = format!("file://{}", dir.display());
        return Ok((Backend::Local(dir), None, shown));
    }
    let backend = match scheme {
        "memory" => Backend::Memory,
        "s3" | "gs" | "az" if host.is_empty() => {
            let what = if scheme == "az" {
                "container"
            } else {
                "bucket"
            };
            return Err(StoreError::config(format!(
                "store url '{raw}' names no {what}: use {scheme}://{what}[/prefix]"
            )));
        }
        "s3" => Backend::S3(host.to_string()),
        "gs" => Backend::Gcs(host.to_string()),
        "az" => Backend::Azure(host.to_string()),
        other => {
            return Err(StoreError::config(format!(
                "unsupported store url scheme '{other}' in '{raw}' ({SUPPORTED})"
            )));
        }
    };
    let prefix = ObjPath::from_url_path(url.path()).map_err(|e| {
        StoreError::with_source(
            StoreErrorKind::Config,
            format!("store url '{raw}' has an invalid prefix"),
            e,
        )
    })?;
    let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let shown = match &prefix {
        Some(p) => format!("{scheme}://{host}/{p}"),
        None => format!("{scheme}://{host}"),
    };
    Ok((backend, prefix, shown))
}

/// Apply Suanli's client defaults (unless the environment sets them) and then the caller's
/// options to a cloud builder.
fn configure<B, K>(
    mut builder: B,
    env_prefix: &str,
    options: &[(&str, &str)],
    shown: &str,
    with_config: impl Fn(B, K, &str) -> B,
) -> Result<B, StoreError>
where
    K: FromStr<Err = object_store::Error>,
{
    let defaults = [
        ("timeout", REQUEST_TIMEOUT),
        ("connect_timeout", CONNECT_TIMEOUT),
    ];
    for (key, value) in defaults {
        let env_key = format!("{env_prefix}{}", key.to_ascii_uppercase());
        if std::env::var_os(&env_key).is_none() {
            let key = key.parse::<K>().map_err(|e| build_error(shown, e))?;
            builder = with_config(builder, key, value);
        }
    }
    for (key, value) in options {
        let parsed = key.to_ascii_lowercase().parse::<K>().map_err(|e| {
            StoreError::with_source(
                StoreErrorKind::Config,
                format!("unknown option '{key}' for {shown}"),
                e,
            )
        })?;
        builder = with_config(builder, parsed, value);
    }
    Ok(builder)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: Duration::from_secs(3 * 60),
    }
}

fn build_error(shown: &str, e: object_store::Error) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Config,
        format!("cannot configure {shown}: {e}"),
        e,
    )
}

pub(crate) fn join_error(src: &Path, e: tokio::task::JoinError) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::Io,
        format!("reading '{}' stopped unexpectedly", src.display()),
        e,
    )
}

pub(crate) fn changed_source(src: &Path, claimed: &ContentHash, got: &ContentHash) -> StoreError {
    StoreError::corrupt(format!(
        "'{}' hashes to {} while uploading, not the claimed {}: it changed since it was hashed; \
         nothing was stored",
        src.display(),
        got.short(),
        claimed.short()
    ))
}

/// Compare what was streamed with what was expected.
fn check_content(
    key: &ObjPath,
    url: &str,
    expected: &ContentHash,
    expected_size: u64,
    hasher: &blake3::Hasher,
    got_size: u64,
) -> Result<(), StoreError> {
    if got_size != expected_size {
        return Err(StoreError::corrupt(format!(
            "'{key}' in {url} is truncated: got {got_size} of {expected_size} bytes"
        )));
    }
    let got = ContentHash::from_hasher(hasher);
    if got != *expected {
        return Err(StoreError::corrupt(format!(
            "'{key}' in {url} hashes to {}, expected {}",
            got.short(),
            expected.short()
        )));
    }
    Ok(())
}

/// Read a whole (small) file and hash it. Blocking.
fn read_and_hash(path: &Path) -> std::io::Result<(Bytes, ContentHash)> {
    let mut file = std::fs::File::open(path)?;
    let mut data = Vec::new();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; READ_BUFFER];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        data.extend_from_slice(&buf[..n]);
    }
    Ok((Bytes::from(data), ContentHash::from_hasher(&hasher)))
}

/// Read a file in `part_size` chunks, hash them, and send them on. Blocking. Stops early (and
/// returns whatever it hashed) when the receiver is gone.
fn read_parts(
    path: &Path,
    part_size: usize,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> std::io::Result<ContentHash> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    loop {
        let mut part = vec![0u8; part_size];
        let mut filled = 0;
        while filled < part_size {
            let n = file.read(&mut part[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        part.truncate(filled);
        hasher.update(&part);
        if tx.blocking_send(Bytes::from(part)).is_err() || filled < part_size {
            break;
        }
    }
    Ok(ContentHash::from_hasher(&hasher))
}

/// Removes a temporary download on every way out (errors and cancellation) until disarmed.
struct TempFileGuard(Option<PathBuf>);

impl TempFileGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            // One unlink: too small to be worth a hop to the blocking pool, and Drop cannot
            // await. A file that is already gone is fine.
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_map_to_backends_and_prefixes() {
        let (b, p, shown) = parse_url("s3://bucket/some/prefix").unwrap();
        assert!(matches!(b, Backend::S3(ref name) if name == "bucket"));
        assert_eq!(p.unwrap().as_ref(), "some/prefix");
        assert_eq!(shown, "s3://bucket/some/prefix");

        let (b, p, shown) = parse_url("/tmp/suanli-store").unwrap();
        assert!(matches!(b, Backend::Local(ref d) if d == Path::new("/tmp/suanli-store")));
        assert!(p.is_none());
        assert_eq!(shown, "file:///tmp/suanli-store");

        let (b, _, _) = parse_url("file:///tmp/x").unwrap();
        assert!(matches!(b, Backend::Local(ref d) if d == Path::new("/tmp/x")));
        assert!(matches!(parse_url("memory://").unwrap().0, Backend::Memory));
    }

    #[test]
    fn bad_urls_are_config_errors_that_say_what_to_do() {
        for url in [
            "",
            "ftp://x",
            "s3://",
            "gs://",
            "az:///only-a-path",
            "file://host/dir",
        ] {
            let err = Store::open(url).unwrap_err();
            assert_eq!(err.kind(), StoreErrorKind::Config, "{url}: {err}");
        }
        let err = Store::open("ftp://x").unwrap_err().to_string();
        assert!(err.contains("s3://bucket"), "{err}");
        let err = Store::open("s3://").unwrap_err().to_string();
        assert!(err.contains("names no bucket"), "{err}");
    }

    #[test]
    fn unknown_options_are_refused() {
        let err = Store::open_with_options("s3://b", &[("no_such_option", "1")]).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Config);
        assert!(err.to_string().contains("no_such_option"), "{err}");
        let err = Store::open_with_options("memory://", &[("aws_region", "x")]).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Config);
    }

    #[test]
    fn object_store_errors_map_to_kinds() {
        use object_store::Error as E;
        let src = || -> BoxError { "x".into() };
        let cases = [
            (
                E::NotFound {
                    path: "k".into(),
                    source: src(),
                },
                StoreErrorKind::NotFound,
            ),
            (
                E::AlreadyExists {
                    path: "k".into(),
                    source: src(),
                },
                StoreErrorKind::AlreadyExists,
            ),
            (
                E::Precondition {
                    path: "k".into(),
                    source: src(),
                },
                StoreErrorKind::AlreadyExists,
            ),
            (
                E::NotImplemented {
                    operation: "put".into(),
                    implementer: "x".into(),
                },
                StoreErrorKind::Config,
            ),
            (
                E::Generic {
                    store: "LocalFileSystem",
                    source: src(),
                },
                StoreErrorKind::Io,
            ),
            (
                E::Generic {
                    store: "S3",
                    source: src(),
                },
                StoreErrorKind::Transient,
            ),
            (
                E::PermissionDenied {
                    path: "k".into(),
                    source: src(),
                },
                StoreErrorKind::Config,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(classify(&err), kind, "{err}");
        }
    }

    #[tokio::test]
    async fn memory_store_round_trip_and_commit() {
        let store = Store::open("memory://").unwrap();
        let key = ObjPath::from("a/b");
        assert!(!store.exists(&key).await.unwrap());
        assert_eq!(
            store
                .put_if_absent(&key, Bytes::from_static(b"one"))
                .await
                .unwrap(),
            Commit::Created
        );
        assert_eq!(
            store
                .put_if_absent(&key, Bytes::from_static(b"two"))
                .await
                .unwrap(),
            Commit::AlreadyExisted
        );
        let got = store
            .get_verified(&key, &ContentHash::of(b"one"))
            .await
            .unwrap();
        assert_eq!(&got[..], b"one");
    }
}
