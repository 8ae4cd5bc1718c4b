//! Webhooks through a real farm: receivers written here (a few lines of HTTP/1.1 over tokio)
//! verify every signature and get each job state change once, in order, the farm's URL and
//! the job's own alike; a receiver that accepts and never answers delays nobody (its
//! deliveries time out and are retried on their own), and bad URLs are refused at submit.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use suanli::client::Client;
use suanli::events::EventReader;
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_coordinator::webhooks::{self, WebhookConfig};
use suanli_shared::nats;
use suanli_shared::protocol::{JobSpec, JobState};
use suanli_shared::store::Store;
use suanli_shared::Studio;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(120);
const SECRET: &[u8] = b"a-webhook-secret-for-tests";

/// One POST as received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one HTTP/1.1 request (headers, then a Content-Length body).
async fn read_request(sock: &mut TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Received {
        path,
        headers,
        body,
    })
}

/// A receiver that records every request and answers 200.
async fn receiver() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut sock).await {
                    g.lock().unwrap().push(req);
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if sock.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, got)
}

/// A receiver that accepts connections, reads nothing and never answers; counts connections.
async fn hanging_receiver() -> (String, Arc<Mutex<Vec<TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hang", listener.local_addr().unwrap());
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            h.lock().unwrap().push(sock);
        }
    });
    (url, held)
}

async fn tiny_job(farm: &LocalFarm, hooks: Vec<String>) -> JobSpec {
    let studio: Studio = "acme".parse().unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let inputs = common::empty_inputs_of(&store, &studio).await;
    JobSpec {
        webhooks: hooks,
        ..common::tiny_builtin(studio, &inputs)
    }
}

/// The job's state changes as stored in the event stream, in order.
async fn stored_states(client: &Client, spec: &JobSpec, job: &suanli_shared::JobId) -> Vec<String> {
    let filter = nats::job_events(&spec.studio, job);
    let mut reader = EventReader::open(client, &filter, None).await.unwrap();
    let mut states = Vec::new();
    while !reader.caught_up() {
        let (line, _) = reader.next().await.unwrap().unwrap();
        if line.kind == "job" {
            states.push(line.event["state"].as_str().unwrap().to_string());
        }
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_get_each_signed_state_change_once_and_a_hanging_one_delays_nobody() {
    let (good, got) = receiver().await;
    let (hang, held) = hanging_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let mut options = FarmOptions::new(dir.path(), &["guian"]).unwrap();
    options.webhooks = WebhookConfig {
        urls: vec![format!("{good}/farm"), hang.clone()],
        secret: Some(SECRET.to_vec()),
        timeout: Duration::from_secs(1),
        attempts: 3,
        backoff: Duration::from_millis(100),
    };
    let farm = LocalFarm::start(options).await.unwrap();
    farm.wait_for_workers(LIMIT).await.unwrap();
    let client = Client::connect(&farm.nats_url).await.unwrap();

    // The job names its own URL too.
    let spec = tiny_job(&farm, vec![format!("{good}/job")]).await;
    let id = client.submit(spec.clone()).await.unwrap().id;
    let done = client.wait(&id, Some(LIMIT), |_| {}).await.unwrap();
    assert_eq!(done.expect("finished").state, JobState::Done);
    let states = stored_states(&client, &spec, &id).await;
    assert_eq!(
        states.last().map(String::as_str),
        Some("done"),
        "{states:?}"
    );
    assert!(
        states.len() >= 2,
        "more than one change to deliver: {states:?}"
    );

    // Every change reaches both of the good receiver's paths, signed, once (by event id).
    for path in ["/farm", "/job"] {
        let received = common::wait_until(LIMIT, || {
            let got = got.lock().unwrap();
            let mine: Vec<Received> = got.iter().filter(|r| r.path == path).cloned().collect();
            let ids: HashSet<&str> = mine
                .iter()
                .filter_map(|r| r.header("x-suanli-delivery"))
                .collect();
            (ids.len() >= states.len()).then(|| mine.clone())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "{path}: not every state change arrived: {:?}",
                got.lock().unwrap()
            )
        });
        let mut seen = HashSet::new();
        let mut delivered = Vec::new();
        for r in &received {
            let sig = r.header("x-suanli-signature").expect("signed");
            assert!(
                webhooks::verify(SECRET, &r.body, sig),
                "{path}: bad signature"
            );
            assert!(!webhooks::verify(b"another secret", &r.body, sig));
            assert_eq!(r.header("x-suanli-event"), Some("job.state"));
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let delivery = r.header("x-suanli-delivery").unwrap();
            assert_eq!(body["id"], delivery);
            assert_eq!(body["job"], id.as_str());
            assert_eq!(body["studio"], "acme");
            if seen.insert(delivery.to_string()) {
                delivered.push(body["state"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(delivered, states, "{path}");
    }

    // The hanging endpoint was tried again: its first attempt timed out (it never answers),
    // while the job above ran and finished and the good receiver got everything.
    let retried =
        common::wait_until(LIMIT, || (held.lock().unwrap().len() >= 2).then_some(())).await;
    assert!(
        retried.is_some(),
        "the hanging receiver's delivery was not retried after its timeout"
    );
    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_webhook_urls_are_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    for (url, want) in [
        ("ftp://hooks.example/x", "must be http:// or https://"),
        ("not a url", "is not a URL"),
        (
            "https://user:pw@hooks.example/x",
            "must not carry a user or password",
        ),
    ] {
        let job = common::write(
            &dir.path().join("job.toml"),
            &format!("frames = \"1\"\nrenderer = {{ kind = \"builtin\" }}\nwebhooks = [{url:?}]\n"),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
            .arg("submit")
            .arg(&job)
            .args(["--nats", "nats://127.0.0.1:1", "--store"])
            .arg(dir.path().join("store"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.contains(want), "{url}: {stderr}");
        // Refused before anything was stored.
        assert!(!dir.path().join("store").exists(), "{url}");
    }
    // The coordinator refuses it too (a client that skips the check).
    let mut spec = JobSpec {
        webhooks: vec!["gopher://x".into()],
        ..common::tiny_builtin("acme".parse().unwrap(), &Default::default())
    };
    assert!(spec.validate().unwrap_err().to_string().contains("http"));
    spec.webhooks = (0..9).map(|i| format!("https://h{i}.example/")).collect();
    assert!(spec
        .validate()
        .unwrap_err()
        .to_string()
        .contains("at most 8"));
}
