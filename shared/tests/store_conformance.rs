//! Storage conformance suite: one set of cases, run against the local file store and against a
//! real S3-protocol server (`moto_server`, installed by `scripts/install-tools.sh`), so that what
//! the worker and coordinator rely on (create-if-absent races, verified downloads, multipart
//! aborts, prefixes) holds on every backend, not only on the one a developer happens to use.
//!
//! Each S3 test starts its own moto_server on a free loopback port and kills it on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path as ObjPath;
use suanli_shared::store::{Commit, Store, StoreErrorKind};
use suanli_shared::{chunks, layout};
use suanli_shared::{ContentHash, Studio};

const MIB: usize = 1024 * 1024;
const BUCKET: &str = "suanli-test";
const MOTO_START_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Backends

/// A store to test against, and whatever keeps it alive.
struct Backend {
    /// Local files: the temporary root directory. S3: the running server.
    kind: Kind,
    /// Scratch space for local source and destination files.
    scratch: tempfile::TempDir,
}

enum Kind {
    File(tempfile::TempDir),
    S3(MotoServer),
}

impl Backend {
    fn file() -> Self {
        Backend {
            kind: Kind::File(tempfile::tempdir().expect("create temporary store directory")),
            scratch: tempfile::tempdir().expect("create scratch directory"),
        }
    }

    async fn s3() -> Self {
        Backend {
            kind: Kind::S3(MotoServer::start().await),
            scratch: tempfile::tempdir().expect("create scratch directory"),
        }
    }

    /// The store at the backend's root.
    fn store(&self) -> Store {
        self.store_at("")
    }

    /// The store scoped to `prefix` ("" for the root).
    fn store_at(&self, prefix: &str) -> Store {
        match &self.kind {
            Kind::File(dir) => {
                let dir = if prefix.is_empty() {
                    dir.path().to_path_buf()
                } else {
                    dir.path().join(prefix)
                };
                let url = format!("file://{}", dir.display());
                Store::open(&url).unwrap_or_else(|e| panic!("open {url}: {e:#}"))
            }
            Kind::S3(server) => {
                let url = if prefix.is_empty() {
                    format!("s3://{BUCKET}")
                } else {
                    format!("s3://{BUCKET}/{prefix}")
                };
                let endpoint = server.endpoint();
                let options = [
                    ("aws_endpoint", endpoint.as_str()),
                    ("aws_allow_http", "true"),
                    ("aws_access_key_id", "testing"),
                    ("aws_secret_access_key", "testing"),
                    ("aws_region", "us-east-1"),
                    // A dead test server should fail a test quickly, not after minutes of retries.
                    ("timeout", "30s"),
                ];
                Store::open_with_options(&url, &options)
                    .unwrap_or_else(|e| panic!("open {url} at {endpoint}: {e:#}"))
            }
        }
    }

    fn scratch_file(&self, name: &str, content: &[u8]) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::write(&path, content).expect("write scratch file");
        path
    }

    fn scratch_dir(&self, name: &str) -> PathBuf {
        let path = self.scratch.path().join(name);
        std::fs::create_dir_all(&path).expect("create scratch directory");
        path
    }
}

/// A moto_server child process on a loopback port, with one bucket; killed and reaped on drop.
struct MotoServer {
    child: Child,
    port: u16,
    /// Holds the server's log, read when it fails to start.
    log_dir: tempfile::TempDir,
}

impl MotoServer {
    async fn start() -> Self {
        let bin = moto_binary();
        let log_dir = tempfile::tempdir().expect("create moto log directory");
        let log_path = log_dir.path().join("moto.log");
        let port = free_port();
        let log = std::fs::File::create(&log_path).expect("create moto log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = MotoServer {
            child,
            port,
            log_dir,
        };
        server.wait_ready_and_create_bucket().await;
        server
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Poll until the server accepts the bucket creation (its first answer), within a deadline.
    async fn wait_ready_and_create_bucket(&mut self) {
        let deadline = Instant::now() + MOTO_START_DEADLINE;
        let port = self.port;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll moto_server") {
                panic!(
                    "moto_server exited with {status} before answering on port {port}; log:\n{}",
                    self.log_tail()
                );
            }
            let attempt = tokio::task::spawn_blocking(move || raw_put_bucket(port))
                .await
                .expect("join bucket creation");
            match attempt {
                Ok(200) => return,
                Ok(status) => panic!(
                    "moto_server answered {status} to creating bucket '{BUCKET}'; log:\n{}",
                    self.log_tail()
                ),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!(
                    "moto_server did not answer on port {port} within {MOTO_START_DEADLINE:?}: \
                     {e}; log:\n{}",
                    self.log_tail()
                ),
            }
        }
    }

    /// The raw ListMultipartUploads answer for the bucket (moto accepts unsigned requests).
    async fn pending_multipart_uploads(&self) -> String {
        let port = self.port;
        let (status, body) = tokio::task::spawn_blocking(move || {
            raw_request(port, &format!("GET /{BUCKET}?uploads"))
        })
        .await
        .expect("join request")
        .expect("list multipart uploads");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_dir.path().join("moto.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SUANLI_MOTO_SERVER`, else `<workspace>/.tools/bin/moto_server`, else `moto_server` on PATH.
fn moto_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SUANLI_MOTO_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SUANLI_MOTO_SERVER is '{}', which is not a file: point it at moto_server, or unset \
             it and run scripts/install-tools.sh",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tools = workspace.join(".tools/bin/moto_server");
    if tools.is_file() {
        return tools;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("moto_server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "moto_server not found (looked at $SUANLI_MOTO_SERVER, {} and $PATH): the S3 \
         conformance tests need it; run scripts/install-tools.sh to install it",
        tools.display()
    );
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// `PUT /<bucket>` over plain HTTP/1.1 (moto accepts unsigned requests); returns the status.
fn raw_put_bucket(port: u16) -> std::io::Result<u16> {
    raw_request(port, &format!("PUT /{BUCKET}")).map(|(status, _)| status)
}

/// One bodiless HTTP/1.1 request (`request` is "METHOD /target"); returns status and body.
fn raw_request(port: u16, request: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{request} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an http response: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// The studio whose prefix the layout keys in these tests use.
fn studio() -> Studio {
    "acme".parse().unwrap()
}

fn key(s: &str) -> ObjPath {
    ObjPath::from(s)
}

/// Deterministic, non-repeating test content.
fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut h = blake3::Hasher::new();
    h.update(&[seed]);
    let mut reader = h.finalize_xof();
    out.resize(len, 0);
    reader.fill(&mut out);
    out
}

/// Every file below `dir`, recursively (directories themselves are not listed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).expect("read directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------------
// Cases

async fn put_get_round_trip(b: &Backend) {
    let store = b.store();
    let k = key("a/b/c.bin");
    let data = Bytes::from(content(100_000, 1));
    store.put_bytes(&k, data.clone()).await.unwrap();
    assert_eq!(store.get_bytes(&k).await.unwrap(), data);
    // Overwrite replaces.
    store
        .put_bytes(&k, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(&store.get_bytes(&k).await.unwrap()[..], b"second");
    // Empty objects are objects too.
    let empty = key("empty");
    store.put_bytes(&empty, Bytes::new()).await.unwrap();
    assert!(store.get_bytes(&empty).await.unwrap().is_empty());
}

async fn exists_true_and_false(b: &Backend) {
    let store = b.store();
    let k = key("exists/here");
    assert!(!store.exists(&k).await.unwrap());
    store.put_bytes(&k, Bytes::from_static(b"x")).await.unwrap();
    assert!(store.exists(&k).await.unwrap());
    assert!(!store.exists(&key("exists/elsewhere")).await.unwrap());
}

async fn get_missing_is_not_found(b: &Backend) {
    let store = b.store();
    let err = store.get_bytes(&key("no/such/key")).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err:#}");
    let msg = err.to_string();
    assert!(
        msg.contains("no/such/key") && msg.contains(store.url()),
        "{msg}"
    );
    let err = store
        .get_verified(&key("no/such/key"), &ContentHash::of(b""))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err:#}");
}

async fn put_if_absent_creates_once(b: &Backend) {
    let store = b.store();
    let k = layout::output_manifest(&studio(), &ContentHash::of(b"task"));
    let first = store
        .put_if_absent(&k, Bytes::from_static(b"first"))
        .await
        .unwrap();
    assert_eq!(first, Commit::Created);
    let second = store
        .put_if_absent(&k, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(second, Commit::AlreadyExisted);
    assert_eq!(&store.get_bytes(&k).await.unwrap()[..], b"first");
}

async fn put_if_absent_race_has_one_winner(b: &Backend) {
    let store = b.store();
    let k = key("race/manifest.json");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16u8 {
        let store = store.clone();
        let k = k.clone();
        tasks.spawn(async move {
            let body = Bytes::from(format!("writer {i}").into_bytes());
            (i, store.put_if_absent(&k, body).await)
        });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.expect("join writer");
        match result.unwrap_or_else(|e| panic!("writer {i}: {e:#}")) {
            Commit::Created => winners.push(i),
            Commit::AlreadyExisted => {}
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one writer must win, got {winners:?}"
    );
    let stored = store.get_bytes(&k).await.unwrap();
    assert_eq!(stored, format!("writer {}", winners[0]).into_bytes());
}

async fn get_verified_checks_hash(b: &Backend) {
    let store = b.store();
    let data = content(300_000, 2);
    let hash = ContentHash::of(&data);
    let k = layout::cas(&studio(), &hash);
    store
        .put_bytes(&k, Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(store.get_verified(&k, &hash).await.unwrap(), data);
    let err = store
        .get_verified(&k, &ContentHash::of(b"something else"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
}

async fn download_verified_writes_only_good_content(b: &Backend) {
    let store = b.store();
    let data = content(2 * MIB + 123, 3);
    let hash = ContentHash::of(&data);
    let k = layout::cas(&studio(), &hash);
    store
        .put_bytes(&k, Bytes::from(data.clone()))
        .await
        .unwrap();
    let size = data.len() as u64;

    // Good: lands at dest (parent directories created).
    let dir = b.scratch_dir("download");
    let dest = dir.join("nested/frame.exr");
    store
        .download_verified(&k, &hash, size, &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(dir_entries(&dir.join("nested")), ["frame.exr"]);

    // Wrong hash: Corrupt, no dest, no temporary file left behind.
    let bad_dir = b.scratch_dir("bad-hash");
    let bad = bad_dir.join("frame.exr");
    let err = store
        .download_verified(&k, &ContentHash::of(b"other"), size, &bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert!(!bad.exists());
    assert!(
        dir_entries(&bad_dir).is_empty(),
        "{:?}",
        dir_entries(&bad_dir)
    );

    // Right hash, wrong size: Corrupt too, and nothing left.
    let err = store
        .download_verified(&k, &hash, size + 1, &bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert!(
        dir_entries(&bad_dir).is_empty(),
        "{:?}",
        dir_entries(&bad_dir)
    );

    // An existing dest is untouched by a failed download.
    std::fs::write(&bad, b"previous").unwrap();
    let err = store
        .download_verified(&k, &ContentHash::of(b"other"), size, &bad)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert_eq!(std::fs::read(&bad).unwrap(), b"previous");
    assert_eq!(dir_entries(&bad_dir), ["frame.exr"]);

    // Missing object: NotFound, nothing left.
    let err = store
        .download_verified(&key("cas/missing"), &hash, size, &bad_dir.join("x"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{err:#}");
    assert_eq!(dir_entries(&bad_dir), ["frame.exr"]);
}

async fn upload_blob_skips_existing(b: &Backend) {
    let store = b.store();
    let data = content(10_000, 4);
    let hash = ContentHash::of(&data);
    let src = b.scratch_file("small.bin", &data);
    assert!(store
        .upload_blob(&layout::cas(&studio(), &hash), &hash, &src)
        .await
        .unwrap());
    assert!(!store
        .upload_blob(&layout::cas(&studio(), &hash), &hash, &src)
        .await
        .unwrap());
    assert_eq!(
        store
            .get_verified(&layout::cas(&studio(), &hash), &hash)
            .await
            .unwrap(),
        data
    );
}

async fn upload_blob_multipart_round_trips(b: &Backend) {
    // 5 MiB parts (S3's minimum) over 5 MiB: three parts, the last one short.
    let store = b.store().with_multipart(5 * MIB as u64, 5 * MIB);
    let data = content(12 * MIB + 4321, 5);
    let src = b.scratch_file("large.bin", &data);
    let (hash, size) = ContentHash::of_file(&src).unwrap();
    assert!(store
        .upload_blob(&layout::cas(&studio(), &hash), &hash, &src)
        .await
        .unwrap());
    assert!(!store
        .upload_blob(&layout::cas(&studio(), &hash), &hash, &src)
        .await
        .unwrap());
    let dest = b.scratch_dir("large-out").join("large.bin");
    store
        .download_verified(&layout::cas(&studio(), &hash), &hash, size, &dest)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

async fn upload_blob_refuses_changed_file(b: &Backend) {
    // Single put: the file no longer matches the hash it was registered with.
    let store = b.store().with_multipart(5 * MIB as u64, 5 * MIB);
    let claimed = ContentHash::of(b"what the manifest says");
    let src = b.scratch_file("changed.bin", b"what is on disk now");
    let err = store
        .upload_blob(&layout::cas(&studio(), &claimed), &claimed, &src)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert!(!store
        .exists(&layout::cas(&studio(), &claimed))
        .await
        .unwrap());

    // Multipart: parts went up before the mismatch was known; the upload must be aborted.
    let big = b.scratch_file("changed-big.bin", &content(11 * MIB, 6));
    let err = store
        .upload_blob(&layout::cas(&studio(), &claimed), &claimed, &big)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert!(!store
        .exists(&layout::cas(&studio(), &claimed))
        .await
        .unwrap());
    assert!(store
        .list(&layout::studio_prefix(&studio()))
        .await
        .unwrap()
        .is_empty());
    // Aborted, not just left incomplete: no staging file, no pending upload with parts.
    match &b.kind {
        Kind::File(dir) => assert!(
            files_under(dir.path()).is_empty(),
            "{:?}",
            files_under(dir.path())
        ),
        Kind::S3(server) => {
            let uploads = server.pending_multipart_uploads().await;
            assert!(!uploads.contains("<Upload>"), "{uploads}");
        }
    }
}

async fn put_content_checks_hash(b: &Backend) {
    let store = b.store();
    let task = ContentHash::of(b"task key");
    let data = Bytes::from(content(50_000, 7));
    let hash = ContentHash::of(&data);
    let k = layout::output_file(&studio(), &task, &hash, "frame_0001.png");
    store.put_content(&k, &hash, data.clone()).await.unwrap();
    assert_eq!(store.get_verified(&k, &hash).await.unwrap(), data);

    let wrong = ContentHash::of(b"not it");
    let k2 = layout::output_file(&studio(), &task, &wrong, "frame_0002.png");
    let err = store.put_content(&k2, &wrong, data).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Corrupt, "{err:#}");
    assert!(!store.exists(&k2).await.unwrap());
}

async fn list_under_prefix(b: &Backend) {
    let store = b.store();
    for k in ["gc/a", "gc/b/c", "gc/b/d", "gcx/not-under", "other/e"] {
        store
            .put_bytes(&key(k), Bytes::from_static(b"x"))
            .await
            .unwrap();
    }
    let listed = store.list(&key("gc")).await.unwrap();
    assert_eq!(listed, [key("gc/a"), key("gc/b/c"), key("gc/b/d")]);
    assert!(store.list(&key("nothing/here")).await.unwrap().is_empty());
    assert_eq!(store.list(&ObjPath::default()).await.unwrap().len(), 5);
}

async fn url_prefix_scopes_keys(b: &Backend) {
    let root = b.store();
    let scoped = b.store_at("farm-a");
    let other = b.store_at("farm-b");
    scoped
        .put_bytes(&key("cas/x"), Bytes::from_static(b"a"))
        .await
        .unwrap();
    other
        .put_bytes(&key("cas/x"), Bytes::from_static(b"b"))
        .await
        .unwrap();
    assert_eq!(&scoped.get_bytes(&key("cas/x")).await.unwrap()[..], b"a");
    assert_eq!(&other.get_bytes(&key("cas/x")).await.unwrap()[..], b"b");
    assert_eq!(
        &root.get_bytes(&key("farm-a/cas/x")).await.unwrap()[..],
        b"a"
    );
    assert!(!root.exists(&key("cas/x")).await.unwrap());
    assert_eq!(
        scoped.list(&ObjPath::default()).await.unwrap(),
        [key("cas/x")]
    );
    assert!(scoped.url().ends_with("farm-a"), "{}", scoped.url());
}

/// A chunked file goes up as its chunks, comes back chunk by chunk (each verified) and is
/// rebuilt against its whole-file hash; sent again after a 1 MiB edit, only the chunks around
/// the edit go up, and the store counts what crossed.
async fn chunked_round_trip(b: &Backend) {
    let store = b.store();
    let s = studio();
    let data = content(24 * MIB, 41);
    let src = b.scratch_file("cache.vdb", &data);
    let (digest, up) = chunks::upload_chunked(&store, &s, &src, None, &Default::default())
        .await
        .expect("chunked upload");
    assert_eq!(digest.hash, ContentHash::of(&data));
    assert!(digest.chunks.len() >= 2, "{} chunks", digest.chunks.len());
    assert_eq!(
        (up.uploaded, up.read),
        (data.len() as u64, data.len() as u64)
    );
    let out = b.scratch_dir("chunks");
    let mut parts = vec![];
    for (i, c) in digest.chunks.iter().enumerate() {
        let part = out.join(format!("{i}"));
        store
            .download_verified(&layout::cas(&s, &c.hash), &c.hash, c.size, &part)
            .await
            .expect("chunk download");
        parts.push(part);
    }
    let rebuilt = out.join("rebuilt");
    chunks::rebuild(&parts, &digest.hash, digest.size, &rebuilt).expect("rebuild");
    assert!(std::fs::read(&rebuilt).unwrap() == data);

    let mut edited = data.clone();
    edited[12 * MIB..13 * MIB].copy_from_slice(&content(MIB, 42));
    let src = b.scratch_file("cache.vdb", &edited);
    let before = store.counts();
    let (again, up) = chunks::upload_chunked(&store, &s, &src, None, &Default::default())
        .await
        .expect("second upload");
    let sent = store.counts().bytes_written - before.bytes_written;
    assert_eq!(sent, up.uploaded);
    assert!(
        up.uploaded > 0 && up.uploaded < data.len() as u64 / 2,
        "{} of {} bytes sent again",
        up.uploaded,
        data.len()
    );
    assert_eq!(again.size, data.len() as u64);
    // Resent whole: nothing moves.
    let (_, up) = chunks::upload_chunked(&store, &s, &src, Some(&again), &Default::default())
        .await
        .expect("third upload");
    assert_eq!((up.uploaded, up.read), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// One test per case and backend: `file::<case>` and `s3::<case>`.

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::file();
                    super::$case(&backend).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = super::Backend::s3().await;
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

conformance!(
    put_get_round_trip,
    exists_true_and_false,
    get_missing_is_not_found,
    put_if_absent_creates_once,
    put_if_absent_race_has_one_winner,
    get_verified_checks_hash,
    download_verified_writes_only_good_content,
    upload_blob_skips_existing,
    upload_blob_multipart_round_trips,
    upload_blob_refuses_changed_file,
    put_content_checks_hash,
    list_under_prefix,
    url_prefix_scopes_keys,
    chunked_round_trip,
);

#[test]
fn bad_urls_are_config_errors() {
    for url in ["ftp://x", "s3://", "s3:///just-a-prefix", "gs://", "az://"] {
        let err = Store::open(url).unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::Config, "{url}: {err:#}");
    }
    let err = Store::open("ftp://x").unwrap_err().to_string();
    assert!(err.contains("ftp") && err.contains("s3://"), "{err}");
}

#[test]
fn plain_paths_open_as_file_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not/yet/there");
    let store = Store::open(path.to_str().unwrap()).unwrap();
    assert!(path.is_dir(), "the store directory is created");
    assert_eq!(store.url(), format!("file://{}", path.display()));
}
