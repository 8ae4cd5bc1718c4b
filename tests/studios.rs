//! Studios and their contracts through the real coordinator, workers and nats-server, each a
//! process: weighted fair share between studios measured from the task records, a quota and a
//! region restriction through a region loss, refusals at submit, and a budget that stops
//! releases.

mod common;

use std::time::Duration;

use common::{sh_flags, write, ProcFarm};
use futures::StreamExt;
use suanli::client::Client;
use suanli::jobfile::Overrides;
use suanli_shared::protocol::{EventKind, JobEvent, JobState, TaskRecord, TaskState};
use suanli_shared::{JobId, Studio};

const JOB_LIMIT: Duration = Duration::from_secs(180);

fn studio(name: &str) -> Studio {
    name.parse().unwrap()
}

/// A `sh` job of `studio` whose frames each sleep `secs`.
fn sleepy(studio_name: &str, frames: &str, secs: f64) -> Overrides {
    Overrides {
        studio: Some(studio(studio_name)),
        ..sh_flags(
            frames,
            &format!("sleep {secs}; printf x > {{output}}/frame_{{frame:04}}.txt"),
        )
    }
}

async fn records(client: &Client, job: &JobId) -> Vec<TaskRecord> {
    client.tasks(job, 0, 1000).await.unwrap().tasks
}

async fn done(client: &Client, job: &JobId) {
    let status = client
        .wait(job, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("finished in time");
    assert_eq!(status.state, JobState::Done, "{status:?}");
}

/// Slot-milliseconds each set of tasks ran within `[from, to]`.
fn busy_within(tasks: &[TaskRecord], from: u64, to: u64) -> u64 {
    tasks
        .iter()
        .filter_map(|t| Some((t.started_ms?, t.finished_ms?)))
        .map(|(s, f)| f.min(to).saturating_sub(s.max(from)))
        .sum()
}

/// The most tasks of `tasks` running at once, from their start and finish times.
fn most_at_once(tasks: &[TaskRecord]) -> usize {
    common::most_at_once(
        tasks
            .iter()
            .filter_map(|t| Some((t.started_ms?, t.finished_ms?))),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_studios_weighted_3_to_1_share_a_saturated_farm_in_that_ratio() {
    let farm = ProcFarm::start();
    let catalog = write(
        &farm.path().join("studios.toml"),
        "[[studio]]\nname = \"acme\"\nweight = 3.0\n\n[[studio]]\nname = \"bolt\"\nweight = 1.0\n",
    );
    let _coordinator = farm.coordinator(
        "coordinator",
        &["--studios", catalog.to_str().unwrap(), "--prefetch", "0"],
    );
    let client = farm.client().await;
    // The coordinator answers (no worker yet).
    farm.wait_for_workers(&client, 0).await;
    // Both studios' jobs wait in the backlog before any worker is up, so the farm is
    // saturated from its first slot; bolt's is the smaller one, and it is submitted first.
    let bolt = client
        .submit(farm.job(sleepy("bolt", "1-40", 0.4)).await)
        .await
        .expect("bolt's job accepted")
        .id;
    let acme = client
        .submit(farm.job(sleepy("acme", "1-90", 0.4)).await)
        .await
        .expect("acme's job accepted")
        .id;
    let _w1 = farm.worker("guian", "g1", &["--slots", "4"]);
    let _w2 = farm.worker("guian", "g2", &["--slots", "4"]);
    done(&client, &acme).await;
    done(&client, &bolt).await;
    let (a, b) = (records(&client, &acme).await, records(&client, &bolt).await);
    // The window in which both studios had tasks to release: from the later first start to
    // the earlier last start.
    let first = |ts: &[TaskRecord]| ts.iter().filter_map(|t| t.started_ms).min().unwrap();
    let last = |ts: &[TaskRecord]| ts.iter().filter_map(|t| t.started_ms).max().unwrap();
    let (from, to) = (first(&a).max(first(&b)), last(&a).min(last(&b)));
    assert!(to > from, "the studios overlapped");
    let (busy_a, busy_b) = (busy_within(&a, from, to), busy_within(&b, from, to));
    let ratio = busy_a as f64 / busy_b as f64;
    println!(
        "over {:.1} s both studios had work: acme {:.1} slot-s, bolt {:.1} slot-s, ratio {ratio:.2} (weights 3:1)",
        (to - from) as f64 / 1000.0,
        busy_a as f64 / 1000.0,
        busy_b as f64 / 1000.0
    );
    assert!(
        (ratio / 3.0 - 1.0).abs() <= 0.10,
        "acme:bolt slot time {ratio:.2}, not within 10 % of 3"
    );
    // Every task ran in guian, the only region.
    assert!(a.iter().chain(&b).all(|t| t.state == TaskState::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_quota_and_region_restriction_hold_through_a_region_loss() {
    let farm = ProcFarm::start();
    let catalog = write(
        &farm.path().join("studios.toml"),
        "[[studio]]\nname = \"north\"\nregions = [\"guian\"]\nmax_slots = 2\nmax_priority = 5\n",
    );
    let _coordinator = farm.coordinator(
        "coordinator",
        &[
            "--studios",
            catalog.to_str().unwrap(),
            "--region-lost-after",
            "2s",
            "--worker-lost-after",
            "2s",
        ],
    );
    let mut g = farm.worker("guian", "g", &["--slots", "4"]);
    let _u = farm.worker("ulanqab", "u", &["--slots", "4"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 2).await;

    // Refused at submit: a region outside the contract, a priority above the ceiling.
    let elsewhere = Overrides {
        regions: Some(vec!["ulanqab".into()]),
        ..sleepy("north", "1-2", 0.1)
    };
    let e = client
        .submit(farm.job(elsewhere).await)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("studio 'north' may not send data to region(s) ulanqab"),
        "{e}"
    );
    let urgent = Overrides {
        priority: Some(9),
        ..sleepy("north", "1-2", 0.1)
    };
    let e = client
        .submit(farm.job(urgent).await)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("priority 9 is above studio 'north''s ceiling of 5"),
        "{e}"
    );

    let mut job_events = client
        .nats()
        .subscribe(suanli_shared::nats::events_of_kind(EventKind::Job))
        .await
        .unwrap();
    let north = client
        .submit(farm.job(sleepy("north", "1-10", 0.5)).await)
        .await
        .unwrap()
        .id;
    // Once north runs in guian, guian's only worker dies.
    let mut holding = false;
    for _ in 0..400 {
        let page = records(&client, &north).await;
        if page.iter().any(|t| {
            t.state == TaskState::Running
                && t.region.as_ref().is_some_and(|r| r.as_str() == "guian")
        }) {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holding, "north runs in guian");
    g.kill9();
    // The coordinator withdraws north's tasks from guian...
    let said = tokio::time::timeout(JOB_LIMIT, async {
        while let Some(m) = job_events.next().await {
            if let Ok(ev) = serde_json::from_slice::<JobEvent>(&m.payload) {
                if ev.job == north && ev.reason.is_some_and(|r| r.contains("region guian lost")) {
                    return;
                }
            }
        }
    })
    .await;
    assert!(said.is_ok(), "a job event reports the region loss");
    // ...and another studio's job renders in ulanqab meanwhile, while north's waits.
    let south = client
        .submit(farm.job(sleepy("south", "1-6", 0.1)).await)
        .await
        .unwrap()
        .id;
    done(&client, &south).await;
    let page = records(&client, &north).await;
    assert!(
        page.iter()
            .all(|t| t.region.as_ref().is_none_or(|r| r.as_str() == "guian")),
        "north's tasks stay out of ulanqab: {page:?}"
    );
    assert!(
        page.iter().any(|t| t.state == TaskState::Pending),
        "north waits for guian"
    );
    // Guian comes back; north finishes there, never more than 2 at once.
    let _g2 = farm.worker("guian", "g2", &["--slots", "4"]);
    done(&client, &north).await;
    let page = records(&client, &north).await;
    assert!(page
        .iter()
        .all(|t| t.region.as_ref().is_some_and(|r| r.as_str() == "guian")));
    let most = most_at_once(&page);
    println!("north: at most {most} tasks at once (quota 2), all in guian");
    assert!(most <= 2, "north ran {most} at once");
    assert_eq!(most, 2, "the quota, not less, was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_of_a_few_core_seconds_stops_releases_within_one_task_of_it() {
    let farm = ProcFarm::start();
    // One currency unit a core-second in guian; the worker below gives each of its 2 slots
    // half the machine's cores, so a 0.5 s task costs about 0.5 x that many units.
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1);
    let budget = 3.0 * threads as f64;
    let regions = write(
        &farm.path().join("regions.toml"),
        "[[region]]\nname = \"guian\"\nprice_per_core_hour = 3600.0\n",
    );
    let studios = write(
        &farm.path().join("studios.toml"),
        &format!(
            "[[studio]]\nname = \"thrift\"\nbudget_per_month = {budget}\nat_limit = \"stop\"\n"
        ),
    );
    let _coordinator = farm.coordinator(
        "coordinator",
        &[
            "--catalog",
            regions.to_str().unwrap(),
            "--studios",
            studios.to_str().unwrap(),
        ],
    );
    let _w = farm.worker("guian", "g", &["--slots", "2"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    let mut job_events = client
        .nats()
        .subscribe(suanli_shared::nats::events_of_kind(EventKind::Job))
        .await
        .unwrap();
    let job = client
        .submit(farm.job(sleepy("thrift", "1-40", 0.5)).await)
        .await
        .unwrap()
        .id;
    // Releases stop, and the tasks in flight then finish.
    let mut stopped = None;
    for _ in 0..1200 {
        let s = client.status(&job).await.unwrap();
        let b = s.budget.clone().expect("a studio with a budget shows it");
        if b.stopped && s.tasks.queued + s.tasks.running == 0 {
            stopped = Some(s);
            break;
        }
        assert_ne!(s.state, JobState::Done, "the budget never stopped the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = stopped.expect("releases stopped and the running tasks finished");
    let b = status.budget.clone().unwrap();
    let tasks = records(&client, &job).await;
    let one_task = tasks
        .iter()
        .filter(|t| t.state == TaskState::Done)
        .map(|t| t.core_seconds)
        .fold(0.0, f64::max);
    let ledger = suanli_shared::ledger::Ledger::of([&status]);
    println!(
        "budget {budget:.3}: stopped at {:.3} spent ({} of 40 tasks done), one task {one_task:.3}; ledger {:.3}",
        b.spent, status.tasks.done, ledger.total.cost
    );
    assert!(status.tasks.pending > 0, "work was left unreleased");
    assert!(
        (b.spent - budget).abs() <= one_task + 1e-9,
        "spent {} is more than one task ({one_task}) from the budget {budget}",
        b.spent
    );
    // The budget is spent by the ledger's own figures.
    assert!(
        (ledger.total.cost - b.spent).abs() < 1e-9,
        "{ledger:?} {b:?}"
    );
    // The 80 % threshold was announced on the job's events.
    let announced = tokio::time::timeout(JOB_LIMIT, async {
        while let Some(m) = job_events.next().await {
            if let Ok(ev) = serde_json::from_slice::<JobEvent>(&m.payload) {
                if ev.reason.as_deref().is_some_and(|r| {
                    r.starts_with("budget: studio thrift has spent") && r.contains("(80%")
                }) {
                    return;
                }
            }
        }
    })
    .await;
    assert!(announced.is_ok(), "an event announced 80 % of the budget");
    // `suanli ledger --studio thrift` shows where it stopped.
    let mut ledger_cmd = farm.role("ledger", &["--studio", "thrift", "ledger"]);
    let exit = ledger_cmd.wait_exit(JOB_LIMIT).await.expect("ledger exits");
    assert!(exit.success(), "{}", ledger_cmd.log_text());
    let text = ledger_cmd.log_text();
    println!("{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("thrift"))
        .unwrap_or_else(|| panic!("a row for thrift: {text}"));
    assert!(row.contains("stop (releases stopped)"), "{row}");
    assert!(row.contains(&format!("{:.3}", b.spent)), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_under_cancel_cancels_the_studio_s_jobs_at_the_limit() {
    let farm = ProcFarm::start();
    let regions = write(
        &farm.path().join("regions.toml"),
        "[[region]]\nname = \"guian\"\nprice_per_core_hour = 3600.0\n",
    );
    // Any rendered task passes a budget this small.
    let studios = write(
        &farm.path().join("studios.toml"),
        "[[studio]]\nname = \"brief\"\nbudget_per_month = 0.01\nat_limit = \"cancel\"\n",
    );
    let _coordinator = farm.coordinator(
        "coordinator",
        &[
            "--catalog",
            regions.to_str().unwrap(),
            "--studios",
            studios.to_str().unwrap(),
        ],
    );
    let _w = farm.worker("guian", "g", &["--slots", "1"]);
    let client = farm.client().await;
    farm.wait_for_workers(&client, 1).await;
    let job = client
        .submit(farm.job(sleepy("brief", "1-20", 0.2)).await)
        .await
        .unwrap()
        .id;
    let status = client
        .wait(&job, Some(JOB_LIMIT), |_| {})
        .await
        .unwrap()
        .expect("the job ends");
    println!(
        "{:?}: {:?}, {:?}",
        status.state, status.reason, status.tasks
    );
    assert_eq!(status.state, JobState::Canceled, "{status:?}");
    assert!(
        status
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("monthly budget is spent")),
        "{status:?}"
    );
    assert!(status.tasks.done < 20, "{:?}", status.tasks);
    let b = status.budget.expect("its budget is shown");
    assert!(b.spent >= 0.01, "{b:?}");
}
