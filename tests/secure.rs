//! The secure farm against a real nats-server started from the configuration `suanli auth
//! init` writes: every forbidden action is attempted with the wrong role's identity and the
//! server's permission error is asserted, beside the same action with the right identity
//! succeeding. Refusals of connections (no identity, plaintext, another CA, a revoked key) are
//! checked the same way: by trying.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use suanli::client::{fetch, Client, ClientError};
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::access::{Access, Role};
use suanli_shared::nats::{self, Connection};
use suanli_shared::protocol::api::ErrorKind;
use suanli_shared::protocol::{JobSpec, JobState};
use suanli_shared::store::Store;
use suanli_shared::{JobId, Region, Studio};

fn region(r: &str) -> Region {
    r.parse().unwrap()
}

fn studio(s: &str) -> Role {
    Role::Studio(s.parse().unwrap())
}

async fn secure_farm(dir: &Path) -> LocalFarm {
    let mut options = FarmOptions::new(dir, &["guian", "ulanqab"]).expect("regions");
    options.secure = true;
    options.studios = vec!["acme".parse().unwrap(), "blue".parse().unwrap()];
    LocalFarm::start(options).await.expect("secure farm starts")
}

async fn connect(farm: &LocalFarm, role: &Role) -> Connection {
    nats::open(&farm.nats_url, "secure-test", &farm.access(role))
        .await
        .unwrap_or_else(|e| panic!("{role} connects: {e}"))
}

/// How long the server may take to report a violation. The action itself never answers (a
/// forbidden publish is dropped), so this bounds the wait for the server's error.
const VIOLATION_LIMIT: Duration = Duration::from_secs(10);

/// Runs `action` on a fresh connection of `role` and asserts that nats-server reports a
/// permissions violation naming `subject`.
async fn assert_denied<F, Fut, T>(
    farm: &LocalFarm,
    role: &Role,
    what: &str,
    subject: &str,
    action: F,
) where
    F: FnOnce(async_nats::Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let conn = connect(farm, role).await;
    let mut denied = conn.denied.clone();
    let client = conn.client.clone();
    let watcher = async {
        loop {
            if let Some(e) = denied.borrow_and_update().clone() {
                if e.contains(subject) {
                    return e;
                }
            }
            denied.changed().await.expect("connection alive");
        }
    };
    tokio::pin!(watcher);
    // A forbidden request never gets its answer: the action is dropped once the server has
    // said why (or once it returns by itself, e.g. a plain publish).
    let acting = action(client);
    tokio::pin!(acting);
    let seen = tokio::time::timeout(VIOLATION_LIMIT, async {
        tokio::select! {
            seen = &mut watcher => seen,
            _ = &mut acting => (&mut watcher).await,
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{role} was not refused: {what} ({subject})"));
    assert!(
        seen.to_ascii_lowercase().contains("permissions violation"),
        "{what}: {seen}"
    );
}

/// Asserts that `role` may do `action` without the server reporting a violation.
async fn assert_allowed<F, Fut, T, E>(farm: &LocalFarm, role: &Role, what: &str, action: F) -> T
where
    F: FnOnce(async_nats::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Debug,
{
    let conn = connect(farm, role).await;
    let out = tokio::time::timeout(VIOLATION_LIMIT, action(conn.client.clone()))
        .await
        .unwrap_or_else(|_| panic!("{role}: {what} did not finish"))
        .unwrap_or_else(|e| panic!("{role}: {what} failed: {e:?}"));
    // A round trip after the action: any violation it caused has arrived by now.
    conn.client.flush().await.unwrap();
    assert_eq!(*conn.denied.borrow(), None, "{role}: {what} was refused");
    out
}

async fn request(c: async_nats::Client, subject: String) -> Result<async_nats::Message, String> {
    c.request(subject, Bytes::from_static(b"{}"))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_job_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let farm = secure_farm(dir.path()).await;
    let guian = Role::Worker(region("guian"));
    let ulanqab = Role::Worker(region("ulanqab"));

    // ---- A worker: no API, no other region's queue, no broadcasts, no admin, no job writes.
    for subject in ["suanli.api.submit", "suanli.api.cancel", "suanli.api.jobs"] {
        assert_denied(&farm, &guian, "call the API", subject, |c| {
            request(c, subject.to_string())
        })
        .await;
    }
    assert_denied(
        &farm,
        &guian,
        "pull another region's tasks",
        "$JS.API.CONSUMER.MSG.NEXT.SUANLI_TASKS.region-ulanqab",
        |c| {
            request(
                c,
                "$JS.API.CONSUMER.MSG.NEXT.SUANLI_TASKS.region-ulanqab".into(),
            )
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "broadcast a cancel",
        "suanli.ctl.cancel.",
        |c| async move {
            c.publish("suanli.ctl.cancel.01jxxxxxxxxxxxxxxxxxxxxxxx", Bytes::new())
                .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "tell another worker to drain",
        "suanli.ctl.drain.guian.guian-1",
        |c| async move {
            c.publish("suanli.ctl.drain.guian.guian-1", Bytes::new())
                .await
        },
    )
    .await;
    // Pre-staging: a worker takes only its own region's requests and reports only for it;
    // asking a region to stage is the coordinator's.
    assert_denied(
        &farm,
        &guian,
        "take another region's pre-stage requests",
        "suanli.stage.ulanqab",
        |c| async move {
            c.queue_subscribe("suanli.stage.ulanqab", "stage-ulanqab".into())
                .await
                .map(|_| ())
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "report pre-staging for another region",
        "suanli.staged.ulanqab",
        |c| async move { c.publish("suanli.staged.ulanqab", Bytes::new()).await },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "ask a region to pre-stage",
        "suanli.stage.guian",
        |c| async move { c.publish("suanli.stage.guian", Bytes::new()).await },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "read the pre-staging reports",
        "suanli.staged.",
        |c| async move { c.subscribe("suanli.staged.*").await.map(|_| ()) },
    )
    .await;
    assert_allowed(
        &farm,
        &guian,
        "take its own region's pre-stage requests",
        |c| async move {
            c.queue_subscribe("suanli.stage.guian", "stage-guian".into())
                .await
                .map(|_| ())
        },
    )
    .await;
    assert_allowed(
        &farm,
        &guian,
        "report its own region's pre-staging",
        |c| async move { c.publish("suanli.staged.guian", Bytes::new()).await },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "delete the task stream",
        "$JS.API.STREAM.DELETE.SUANLI_TASKS",
        |c| async move { jetstream::new(c).delete_stream(nats::TASKS_STREAM).await },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "purge the task stream",
        "$JS.API.STREAM.PURGE.SUANLI_TASKS",
        |c| async move {
            let js = jetstream::new(c);
            js.get_stream(nats::TASKS_STREAM)
                .await
                .unwrap()
                .purge()
                .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "create a consumer",
        "$JS.API.CONSUMER.CREATE.SUANLI_TASKS",
        |c| async move {
            let js = jetstream::new(c);
            let s = js.get_stream(nats::TASKS_STREAM).await.unwrap();
            s.create_consumer(nats::region_consumer_config(
                &region("ulanqab"),
                Duration::from_secs(5),
            ))
            .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "create a bucket",
        "$JS.API.STREAM.CREATE.KV_stolen",
        |c| async move {
            jetstream::new(c)
                .create_key_value(kv::Config {
                    bucket: "stolen".into(),
                    ..Default::default()
                })
                .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "write a job record",
        "$KV.suanli_jobs.",
        |c| async move {
            let kv = jetstream::new(c)
                .get_key_value(nats::JOBS_BUCKET)
                .await
                .unwrap();
            kv.put("01jxxxxxxxxxxxxxxxxxxxxxxx", Bytes::from_static(b"{}"))
                .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "write another region's worker record",
        "$KV.suanli_workers.ulanqab.",
        |c| async move {
            let kv = jetstream::new(c)
                .get_key_value(nats::WORKERS_BUCKET)
                .await
                .unwrap();
            kv.put("ulanqab.fake", Bytes::from_static(b"{}")).await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "publish an event as another region",
        "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.completed.ulanqab",
        |c| async move {
            c.publish(
                "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.completed.ulanqab",
                Bytes::new(),
            )
            .await
        },
    )
    .await;
    assert_denied(
        &farm,
        &guian,
        "publish a job event",
        "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.job._",
        |c| async move {
            c.publish(
                "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.job._",
                Bytes::new(),
            )
            .await
        },
    )
    .await;
    // ... while the right worker does the same things allowed to it.
    assert_allowed(
        &farm,
        &ulanqab,
        "pull its own region's tasks",
        |c| async move {
            let js = jetstream::new(c);
            let consumer: jetstream::consumer::PullConsumer = js
                .get_stream(nats::TASKS_STREAM)
                .await?
                .get_consumer("region-ulanqab")
                .await?;
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(200))
                .messages()
                .await?;
            while batch.next().await.is_some() {}
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        },
    )
    .await;
    assert_allowed(
        &farm,
        &guian,
        "write its own region's worker record",
        |c| async move {
            let kv = jetstream::new(c)
                .get_key_value(nats::WORKERS_BUCKET)
                .await?;
            kv.put("guian.probe", Bytes::from_static(b"{}")).await?;
            kv.delete("guian.probe").await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        },
    )
    .await;
    assert_allowed(&farm, &guian, "read job records", |c| async move {
        let kv = jetstream::new(c).get_key_value(nats::JOBS_BUCKET).await?;
        kv.get("01jxxxxxxxxxxxxxxxxxxxxxxx").await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;

    // ---- A studio: only its own API subjects and events; no queue, no buckets.
    let blue = studio("blue");
    let acme = studio("acme");
    assert_denied(
        &farm,
        &blue,
        "speak for another studio",
        "suanli.studio.acme.status",
        |c| request(c, "suanli.studio.acme.status".into()),
    )
    .await;
    for subject in [
        "suanli.api.jobs",
        "suanli.studio.blue.drain",
        "suanli.studio.blue.workers",
    ] {
        assert_denied(&farm, &blue, "call an operator endpoint", subject, |c| {
            request(c, subject.to_string())
        })
        .await;
    }
    assert_denied(
        &farm,
        &blue,
        "watch another studio's events",
        "suanli.evt.acme.>",
        |c| async move { c.subscribe("suanli.evt.acme.>").await.map(|_| ()) },
    )
    .await;
    assert_denied(
        &farm,
        &blue,
        "read another role's replies",
        "_INBOX.studio-acme.>",
        |c| async move { c.subscribe("_INBOX.studio-acme.>").await.map(|_| ()) },
    )
    .await;
    assert_denied(
        &farm,
        &blue,
        "pull from the task queue",
        "$JS.API.CONSUMER.MSG.NEXT.SUANLI_TASKS.region-guian",
        |c| {
            request(
                c,
                "$JS.API.CONSUMER.MSG.NEXT.SUANLI_TASKS.region-guian".into(),
            )
        },
    )
    .await;
    assert_denied(
        &farm,
        &blue,
        "read a bucket",
        "$JS.API.STREAM.INFO.KV_suanli_jobs",
        |c| async move {
            jetstream::new(c)
                .get_key_value(nats::JOBS_BUCKET)
                .await
                .map(|_| ())
        },
    )
    .await;
    // ---- The operator: the whole API, no direct stream or bucket deletes.
    assert_denied(
        &farm,
        &Role::Operator,
        "delete the task stream",
        "$JS.API.STREAM.DELETE.SUANLI_TASKS",
        |c| async move { jetstream::new(c).delete_stream(nats::TASKS_STREAM).await },
    )
    .await;
    assert_denied(
        &farm,
        &Role::Operator,
        "delete a bucket",
        "$JS.API.STREAM.DELETE.KV_suanli_jobs",
        |c| async move { jetstream::new(c).delete_key_value(nats::JOBS_BUCKET).await },
    )
    .await;
    assert_denied(
        &farm,
        &Role::Operator,
        "answer API requests in the coordinator's place",
        "suanli.api.>",
        |c| async move { c.subscribe("suanli.api.>").await.map(|_| ()) },
    )
    .await;
    let workers = assert_allowed(&farm, &Role::Operator, "list workers", |c| async move {
        c.request("suanli.api.workers", Bytes::from_static(b"{}"))
            .await
    })
    .await;
    let listed: serde_json::Value = serde_json::from_slice(&workers.payload).unwrap();
    assert_eq!(listed["ok"].as_array().map(Vec::len), Some(2), "{listed}");

    // ---- The coordinator: creates and deletes what it owns.
    assert_allowed(
        &farm,
        &Role::Coordinator,
        "create and delete a bucket",
        |c| async move {
            let js = jetstream::new(c);
            js.create_key_value(kv::Config {
                bucket: "scratch".into(),
                ..Default::default()
            })
            .await?;
            js.delete_key_value("scratch").await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        },
    )
    .await;
    assert_denied(
        &farm,
        &Role::Coordinator,
        "publish a worker's task event",
        "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.completed.guian",
        |c| async move {
            c.publish(
                "suanli.evt.acme.01jxxxxxxxxxxxxxxxxxxxxxxx.completed.guian",
                Bytes::new(),
            )
            .await
        },
    )
    .await;
    assert_allowed(&farm, &acme, "call its own API", |c| async move {
        c.request("suanli.studio.acme.regions", Bytes::from_static(b"{}"))
            .await
    })
    .await;
    assert_allowed(&farm, &acme, "watch its own events", |c| async move {
        c.subscribe("suanli.evt.acme.>").await.map(|_| ())
    })
    .await;

    farm.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_right_credentials_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = FarmOptions::new(dir.path(), &["guian"]).unwrap();
    options.secure = true;
    options.studios = vec!["acme".parse().unwrap(), "blue".parse().unwrap()];
    let farm = LocalFarm::start(options).await.unwrap();
    let auth = farm.auth_dir.clone().unwrap();
    let url = farm.nats_url.clone();
    let one_line = |e: &nats::NatsError| {
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        text
    };

    // No identity (but the right CA): the server asks for one.
    let ca_only = Access {
        identity: None,
        ca: Some(auth.join("ca.pem")),
    };
    let err = nats::open(&url, "t", &ca_only)
        .await
        .err()
        .expect("refused");
    let text = one_line(&err);
    assert!(text.contains("this farm needs an identity"), "{text}");

    // Plaintext: the server demands TLS before anything else.
    let mut tcp =
        std::net::TcpStream::connect(("127.0.0.1", farm.nats.as_ref().unwrap().port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut info = vec![0u8; 4096];
    let n = tcp.read(&mut info).unwrap();
    let info = String::from_utf8_lossy(&info[..n]).to_string();
    assert!(info.contains("\"tls_required\":true"), "{info}");
    tcp.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        .unwrap();
    let mut reply = String::new();
    let _ = tcp.read_to_string(&mut reply);
    assert!(!reply.contains("PONG"), "plaintext was served: {reply}");

    // A certificate from another CA: a second farm's CA does not vouch for this server.
    let other = tempfile::tempdir().unwrap();
    suanli::auth::init(suanli::auth::InitArgs::new(
        other.path(),
        &[],
        &[],
        "127.0.0.1:4222",
        7422,
    ))
    .unwrap();
    let wrong_ca = Access::load(
        Some(&auth.join("operator.nk")),
        Some(&other.path().join("ca.pem")),
    )
    .unwrap();
    let err = nats::open(&url, "t", &wrong_ca)
        .await
        .err()
        .expect("refused");
    let text = one_line(&err);
    assert!(
        text.contains("not signed by the CA given with --ca"),
        "{text}"
    );

    // An identity of another farm: unknown here.
    let stranger = Access::load(
        Some(&other.path().join("operator.nk")),
        Some(&auth.join("ca.pem")),
    )
    .unwrap();
    let err = nats::open(&url, "t", &stranger)
        .await
        .err()
        .expect("refused");
    let text = one_line(&err);
    assert!(text.contains("does not know this identity"), "{text}");

    // A revoked identity: refused once the server reloads; the others still work.
    let kept = dir.path().join("blue-copy.nk");
    std::fs::copy(auth.join("studio-blue.nk"), &kept).unwrap();
    let blue = Access::load(Some(&kept), Some(&auth.join("ca.pem"))).unwrap();
    nats::open(&url, "t", &blue)
        .await
        .expect("blue connects before");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["auth", "revoke", "--out"])
        .arg(&auth)
        .arg("studio-blue")
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        !auth.join("studio-blue.nk").exists(),
        "the revoked seed is removed"
    );
    farm.nats.as_ref().unwrap().reload().unwrap();
    // The reload is asynchronous: poll until the server refuses the key (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        match nats::open(&url, "t", &blue).await {
            Err(e) => break e,
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the revoked identity is still accepted after the reload"),
        }
    };
    let text = one_line(&refused);
    assert!(text.contains("does not know this identity"), "{text}");
    let acme = farm.access(&studio("acme"));
    nats::open(&url, "t", &acme)
        .await
        .expect("acme still connects");
    farm.stop().await;
}

/// A two-frame builtin job for `studio`, its (empty) inputs stored under the studio's prefix.
async fn tiny_job(farm: &LocalFarm, studio_name: &str, name: &str) -> JobSpec {
    let studio: Studio = studio_name.parse().unwrap();
    let store = Store::open(&farm.store_url).unwrap();
    let inputs = common::empty_inputs_of(&store, &studio).await;
    JobSpec {
        name: name.into(),
        ..common::tiny_builtin(studio, &inputs)
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) {
    match r {
        Err(ClientError::Api(e)) => assert_eq!(e.kind, ErrorKind::NotFound, "{what}: {e:?}"),
        other => panic!("{what}: expected not found, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secure_farm_renders_two_studios_jobs_and_keeps_them_apart() {
    let dir = tempfile::tempdir().unwrap();
    let farm = secure_farm(dir.path()).await;
    let acme = Client::connect_with(&farm.nats_url, &farm.access(&studio("acme")))
        .await
        .unwrap();
    let blue = Client::connect_with(&farm.nats_url, &farm.access(&studio("blue")))
        .await
        .unwrap();
    let limit = Some(Duration::from_secs(180));
    let a = acme
        .submit(tiny_job(&farm, "acme", "acme-shot").await)
        .await
        .unwrap();
    let b = blue
        .submit(tiny_job(&farm, "blue", "blue-shot").await)
        .await
        .unwrap();
    for (client, id) in [(&acme, &a.id), (&blue, &b.id)] {
        let done = client
            .wait(id, limit, |_| {})
            .await
            .unwrap()
            .expect("finished");
        assert_eq!(done.state, JobState::Done, "{id}");
        assert_eq!(done.tasks.done, 2);
    }
    // Each studio fetches its own frames (verified), from its own prefix.
    let store = Store::open(&farm.store_url).unwrap();
    let record = acme.job(&a.id).await.unwrap();
    let got = fetch(&record, &store, &dir.path().join("acme-frames"))
        .await
        .unwrap();
    assert_eq!((got.frames, got.missing.len()), (2, 0));

    // Blue cannot see, cancel, retry or fetch acme's job: it does not exist for blue.
    is_not_found(blue.status(&a.id).await, "status");
    is_not_found(blue.job(&a.id).await, "job record (fetch)");
    is_not_found(blue.cancel(&a.id).await, "cancel");
    is_not_found(blue.retry(&a.id).await, "retry");
    let listed: Vec<JobId> = blue
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, std::slice::from_ref(&b.id));
    // The operator sees both.
    let operator = Client::connect_with(&farm.nats_url, &farm.access(&Role::Operator))
        .await
        .unwrap();
    assert_eq!(operator.jobs().await.unwrap().len(), 2);

    // Blue's identity asking as acme: nats-server refuses it, and the CLI says so at once.
    let auth = farm.auth_dir.clone().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args([
            "status",
            a.id.as_str(),
            "--studio",
            "acme",
            "--nats",
            &farm.nats_url,
        ])
        .arg("--identity")
        .arg(auth.join("studio-blue.nk"))
        .arg("--ca")
        .arg(auth.join("ca.pem"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("permission denied") && stderr.contains("suanli.studio.acme.status"),
        "{stderr}"
    );
    // And with its own identity, blue's CLI sees its own job.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(["status", b.id.as_str(), "--json", "--nats", &farm.nats_url])
        .arg("--identity")
        .arg(auth.join("studio-blue.nk"))
        .arg("--ca")
        .arg(auth.join("ca.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"studio\": \"blue\""));
    farm.stop().await;
}
