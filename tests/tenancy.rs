//! Studios on one farm, end to end through a real nats-server: a studio sees and acts on its
//! own jobs only (another studio's job is "not found", exactly like a missing one), cannot
//! speak for another studio or call the operator's endpoints, while the operator sees and acts
//! on every job; and task events are folded only from the region a task runs in, under its
//! job's studio.

mod common;

use std::fmt::Debug;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{empty_inputs, empty_inputs_of, prepare, sh_flags, write};
use futures::StreamExt;
use suanli::client::{fetch, Client, ClientError};
use suanli::localfarm::{FarmOptions, LocalFarm};
use suanli_shared::nats;
use suanli_shared::protocol::api::{Caller, ErrorKind};
use suanli_shared::protocol::{
    now_ms, EventKind, InputManifest, JobSpec, JobState, TaskEvent, TaskEventKind,
};
use suanli_shared::store::Store;
use suanli_shared::{layout, JobId, Region, Studio};

/// Generous bound for a job in these tests; a hang fails instead of blocking CI.
const JOB_LIMIT: Duration = Duration::from_secs(180);

fn studio(name: &str) -> Studio {
    name.parse().unwrap()
}

fn region(name: &str) -> Region {
    name.parse().unwrap()
}

async fn connect_as(url: &str, name: &str) -> Client {
    Client::connect_as(url, Caller::Studio(studio(name)))
        .await
        .unwrap()
}

/// A two-frame builtin job of the default studio (a studio's submit makes it its own).
fn tiny(inputs: &InputManifest) -> JobSpec {
    common::tiny_builtin(Studio::default(), inputs)
}

/// A job that stays queued: it may run only in a region with no workers.
fn parked(inputs: &InputManifest) -> JobSpec {
    JobSpec {
        limits: Default::default(),
        requirements: Default::default(),
        regions: vec!["nowhere".parse().unwrap()],
        ..tiny(inputs)
    }
}

/// The coordinator's answer about a job that does not exist.
fn assert_not_found<T: Debug>(result: Result<T, ClientError>, id: &JobId, what: &str) {
    match result {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::NotFound, "{what}: {e:?}");
            assert_eq!(e.message, format!("no job {id}"), "{what}");
        }
        other => panic!("{what}: expected 'no job {id}', got {other:?}"),
    }
}

fn assert_forbidden<T: Debug>(result: Result<T, ClientError>, message: &str) {
    match result {
        Err(ClientError::Api(e)) => {
            assert_eq!(e.kind, ErrorKind::Forbidden, "{e:?}");
            assert!(
                e.message.contains(message),
                "'{}' lacks '{message}'",
                e.message
            );
        }
        other => panic!("expected a refusal '{message}', got {other:?}"),
    }
}

fn suanli(args: &[&str], nats: &str, store: &str, cwd: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_suanli"))
        .args(args)
        .env("SUANLI_NATS", nats)
        .env("SUANLI_STORE", store)
        .env_remove("SUANLI_STUDIO")
        .current_dir(cwd)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_sees_and_acts_on_its_own_jobs_only_and_the_operator_on_all() {
    let dir = tempfile::tempdir().unwrap();
    let options = FarmOptions::new(dir.path(), &["guian"]).unwrap();
    let farm = LocalFarm::start(options).await.expect("farm starts");
    let url = farm.nats_url.clone();
    let operator = Client::connect(&url).await.unwrap();
    let (acme, blue) = (
        connect_as(&url, "acme").await,
        connect_as(&url, "blue").await,
    );
    let store = Store::open(&farm.store_url).unwrap();
    // Each studio stores its inputs under its own prefix (the same manifest, three copies).
    let inputs = empty_inputs(&store).await;
    empty_inputs_of(&store, &studio("acme")).await;
    empty_inputs_of(&store, &studio("blue")).await;

    // acme's job is acme's, whatever the spec said (nothing: the default).
    let id = acme.submit(parked(&inputs)).await.unwrap().id;
    let own = acme.status(&id).await.unwrap();
    assert_eq!((own.studio.as_str(), own.state), ("acme", JobState::Queued));
    assert_eq!(acme.job(&id).await.unwrap().spec.studio.as_str(), "acme");
    assert!(acme.jobs().await.unwrap().iter().any(|j| j.id == id));

    // To blue it does not exist: every call is answered as for a job that never did.
    let missing = JobId::generate();
    assert_not_found(blue.status(&missing).await, &missing, "a missing job");
    assert_not_found(blue.status(&id).await, &id, "status");
    assert_not_found(blue.job(&id).await, &id, "job (what fetch reads)");
    assert_not_found(blue.tasks(&id, 0, 10).await, &id, "tasks");
    assert_not_found(blue.cancel(&id).await, &id, "cancel");
    assert_not_found(blue.retry(&id).await, &id, "retry");
    assert!(blue.jobs().await.unwrap().is_empty());
    let after = operator.status(&id).await.unwrap();
    assert_eq!(
        after.state,
        JobState::Queued,
        "blue's cancel changed nothing"
    );

    // The operator sees it and acts on it; acme cancels and retries its own.
    assert!(operator.jobs().await.unwrap().iter().any(|j| j.id == id));
    assert_eq!(acme.cancel(&id).await.unwrap().state, JobState::Canceled);
    assert_not_found(blue.retry(&id).await, &id, "retry of a canceled job");
    assert_ne!(operator.retry(&id).await.unwrap().state, JobState::Canceled);
    assert_eq!(
        operator.cancel(&id).await.unwrap().state,
        JobState::Canceled
    );
    assert_ne!(acme.retry(&id).await.unwrap().state, JobState::Canceled);
    assert_eq!(
        operator.cancel(&id).await.unwrap().state,
        JobState::Canceled
    );

    // The operator's own jobs (the default studio) are not acme's either.
    let default_job = operator.submit(parked(&inputs)).await.unwrap().id;
    assert_eq!(
        operator.status(&default_job).await.unwrap().studio,
        Studio::default()
    );
    assert_not_found(
        acme.status(&default_job).await,
        &default_job,
        "default's job",
    );
    let acme_jobs: Vec<JobId> = acme
        .jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(acme_jobs, std::slice::from_ref(&id));
    operator.cancel(&default_job).await.unwrap();

    // blue cannot speak for acme, nor call the operator's endpoints; nothing was enqueued.
    let mut for_acme = parked(&inputs);
    for_acme.studio = studio("acme");
    assert_forbidden(
        blue.submit(for_acme).await,
        "this identity is studio blue; the job names studio acme",
    );
    assert_forbidden(
        blue.workers().await,
        "operator only: studio blue may not call workers",
    );
    let worker = operator.workers().await.unwrap().remove(0);
    assert_forbidden(
        blue.drain(&worker.region, &worker.id).await,
        "operator only: studio blue may not call drain",
    );
    assert_eq!(operator.jobs().await.unwrap().len(), 2);

    // A studio's job runs, is followed and fetched by the studio; not by another.
    let done = acme.submit(tiny(&inputs)).await.unwrap().id;
    let end = acme
        .wait(&done, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("acme's job finished in time");
    assert_eq!(end.state, JobState::Done, "{end:?}");
    let record = acme.job(&done).await.unwrap();
    let report = fetch(&record, &store, &dir.path().join("frames"))
        .await
        .unwrap();
    assert_eq!((report.frames, report.missing.len()), (2, 0));
    assert_not_found(blue.job(&done).await, &done, "job of a finished job");

    // Its frames are stored under acme's prefix only, like everything in the store.
    for (_, key) in record.spec.tasks().unwrap() {
        let committed = |s: &Studio| layout::output_manifest(s, &key);
        assert!(store.exists(&committed(&studio("acme"))).await.unwrap());
        assert!(!store.exists(&committed(&studio("blue"))).await.unwrap());
        assert!(!store.exists(&committed(&Studio::default())).await.unwrap());
    }
    let everything = store.list(&"".into()).await.unwrap();
    assert!(
        everything
            .iter()
            .all(|k| k.as_ref().starts_with("studios/")),
        "{everything:?}"
    );
    assert!(everything.iter().any(
        |k| k.prefix_matches(&layout::studio_prefix(&studio("acme")))
            && k.as_ref().contains("/outputs/")
    ));

    // Memoization is per studio: the same shot renders again for blue, not for acme.
    let blue_run = blue.submit(tiny(&inputs)).await.unwrap();
    assert_eq!(blue_run.cached, 0, "acme's outputs are not blue's cache");
    let acme_again = acme.submit(tiny(&inputs)).await.unwrap();
    assert_eq!(
        acme_again.cached, acme_again.tasks,
        "acme's own outputs are"
    );
    let blue_end = blue
        .wait(&blue_run.id, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("blue's job finished in time");
    assert_eq!(
        (
            blue_end.state,
            blue_end.studio.as_str(),
            blue_end.tasks.cached
        ),
        (JobState::Done, "blue", 0)
    );

    // The command line acts as the studio --studio names.
    let cwd = dir.path();
    let store_url = farm.store_url.clone();
    let out = suanli(
        &["--studio", "blue", "status", done.as_str()],
        &url,
        &store_url,
        cwd,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no job {done}")));
    let out = suanli(&["workers", "--studio", "blue"], &url, &store_url, cwd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("operator only"));
    let out = suanli(
        &["status", "--studio", "acme", "--json"],
        &url,
        &store_url,
        cwd,
    );
    assert_eq!(out.status.code(), Some(0));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 3, "acme lists its three jobs: {list:?}");
    assert!(list.iter().all(|j| j["studio"] == "acme"));
    let out = suanli(&["status", done.as_str()], &url, &store_url, cwd);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("studio acme"));
    farm.stop().await;
}

/// Publishes one task event on `subject` and waits until the events stream stored it.
async fn publish_event(js: &async_nats::jetstream::Context, subject: String, ev: &TaskEvent) {
    let body = serde_json::to_vec(ev).unwrap();
    js.publish(subject, body.into())
        .await
        .unwrap()
        .await
        .expect("the events stream stores it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_from_another_region_or_studio_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let options = FarmOptions::new(dir.path(), &["guian", "ulanqab"]).unwrap();
    let farm = LocalFarm::start(options).await.expect("farm starts");
    let acme = connect_as(&farm.nats_url, "acme").await;
    let store = Store::open(&farm.store_url).unwrap();
    let shot = dir.path().join("shot");
    write(&shot.join("scene.txt"), "scene");
    // The render holds its slot until the test lets it go, so the task stays running in
    // guian while events about it are forged.
    let release = dir.path().join("release");
    let script = format!(
        "while [ ! -e {} ]; do sleep 0.05; done; printf x > {{output}}/frame_{{frame:04}}.txt",
        release.display()
    );
    let mut flags = sh_flags("1", &script);
    flags.studio = Some(studio("acme"));
    flags.regions = Some(vec!["guian".into()]);
    let spec = prepare(&store, flags, &shot).await;

    // Listen before submitting, so the start cannot be missed.
    let mut started = acme
        .nats()
        .subscribe(nats::studio_events(&studio("acme")))
        .await
        .unwrap();
    let id = acme.submit(spec).await.unwrap().id;
    let start = tokio::time::timeout(JOB_LIMIT, async {
        while let Some(msg) = started.next().await {
            let subject = nats::EventSubject::parse(&msg.subject).expect("an event subject");
            if subject.kind == EventKind::Started {
                return subject;
            }
        }
        panic!("the subscription ended");
    })
    .await
    .expect("the render started in time");
    assert_eq!((&start.job, start.source.token()), (&id, "guian"));
    let task = acme.tasks(&id, 0, 1).await.unwrap().tasks.remove(0);

    // Events are folded in the order the stream stored them: the real start above, then these.
    let (acme_studio, guian, ulanqab) = (studio("acme"), region("guian"), region("ulanqab"));
    let completed = |region: &Region, worker: &str, core_seconds: f64| TaskEvent {
        job: id.clone(),
        task: 0,
        key: task.key,
        attempt: 0,
        worker: worker.parse().unwrap(),
        region: region.clone(),
        at_ms: now_ms(),
        kind: TaskEventKind::Completed {
            cached: false,
            started_ms: now_ms(),
            core_seconds,
            outputs: vec![],
            bytes_in: 0,
            gpu: None,
        },
    };
    let subject = |studio: &Studio, region: &Region| {
        nats::task_event_subject(studio, &id, EventKind::Completed, region)
    };
    let js = async_nats::jetstream::new(acme.nats().clone());
    // A worker of ulanqab reporting, as itself, a task released to guian.
    let ev = completed(&ulanqab, "ulanqab-x", 1.0);
    publish_event(&js, subject(&acme_studio, &ulanqab), &ev).await;
    // The same report on guian's subject: the body's region is not the subject's.
    publish_event(&js, subject(&acme_studio, &guian), &ev).await;
    // A report under another studio's subject.
    let ev = completed(&guian, "guian-x", 2.0);
    publish_event(&js, subject(&studio("blue"), &guian), &ev).await;
    // Then one that is right in every way (standing in for the worker's own): it is folded, so
    // the three before it were refused for what they were, not ignored for a final task.
    let ev = completed(&guian, "guian-ok", 7.0);
    publish_event(&js, subject(&acme_studio, &guian), &ev).await;

    let end = acme
        .wait(&id, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("the job ended in time");
    assert_eq!(end.state, JobState::Done, "{end:?}");
    let done = acme.tasks(&id, 0, 1).await.unwrap().tasks.remove(0);
    assert_eq!(
        (
            done.worker.as_ref().map(|w| w.as_str()),
            done.region.as_ref(),
            done.core_seconds
        ),
        (Some("guian-ok"), Some(&guian), 7.0),
        "only the report from guian under acme was folded: {done:?}"
    );
    write(&release, "go");
    farm.stop().await;
}
