//! The farm's polls and live events folded into the state: connection, workers, jobs,
//! regions, history and the log.

use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::{JobEvent, JobState, WorkerState};
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::state::{Connection, Level, Series, BUCKET_MS};
use suanli_tui::{figures, update, Action, FarmEvent, State, View};

use super::{fresh, polled};

/// A poll of the standard farm plus an idle worker of `slots` in lhasa, a region the
/// catalog does not name.
fn poll_with_lhasa(s: &mut State, slots: u32) {
    let mut snap = fixtures::farm_snapshot();
    snap.workers.push(fixtures::worker(
        "lhasa",
        "lhasa-1",
        slots,
        0,
        WorkerState::Idle,
        0,
    ));
    update(s, Action::Polled(Box::new(snap)));
}

#[test]
fn a_poll_fills_the_state_and_selects_the_first_job() {
    let mut s = fresh();
    assert_eq!(s.connection, Connection::Connecting);
    polled(&mut s);
    assert_eq!(s.connection, Connection::Up);
    assert_eq!(s.jobs.len(), 3);
    assert_eq!(s.workers.len(), 4);
    assert_eq!(s.selected_job, Some(fixtures::job_id(3)));
    assert_eq!(
        s.selected_worker,
        Some((fixtures::region("guian"), fixtures::worker_id("guian-1")))
    );
    assert_eq!(s.log.back().unwrap().text, "connected: 4 workers, 3 jobs");
    // A selection survives the next poll even when the list is reordered.
    update(&mut s, Action::Down);
    let mut snap = fixtures::farm_snapshot();
    snap.jobs.reverse();
    update(&mut s, Action::Polled(Box::new(snap)));
    assert_eq!(s.selected_job, Some(fixtures::job_id(2)));
}

#[test]
fn a_lost_connection_is_logged_once_and_recovery_too() {
    let mut s = fresh();
    polled(&mut s);
    for at in [NOW + 1_000, NOW + 2_000] {
        update(
            &mut s,
            Action::PollFailed {
                error: "no answer within 3s".into(),
                at_ms: at,
            },
        );
    }
    assert_eq!(
        s.connection,
        Connection::Down {
            error: "no answer within 3s".into(),
            since_ms: NOW + 1_000
        }
    );
    let errors = s.log.iter().filter(|l| l.level == Level::Error).count();
    assert_eq!(errors, 1);
    assert_eq!(s.jobs.len(), 3, "the last data stays on screen");
    polled(&mut s);
    assert_eq!(s.connection, Connection::Up);
    assert_eq!(s.log.back().unwrap().text, "reconnected to the coordinator");
}

#[test]
fn workers_that_stop_heartbeating_are_logged_as_lost_and_back() {
    let mut s = fresh();
    polled(&mut s);
    let mut snap = fixtures::farm_snapshot();
    snap.workers[0].state = WorkerState::Lost;
    update(&mut s, Action::Polled(Box::new(snap)));
    let last = s.log.back().unwrap();
    assert_eq!(last.level, Level::Error);
    assert!(
        last.text.starts_with("worker guian/guian-1 lost"),
        "{}",
        last.text
    );
    poll_with_lhasa(&mut s, 4);
    let texts: Vec<&str> = s
        .log
        .iter()
        .rev()
        .take(2)
        .map(|l| l.text.as_str())
        .collect();
    assert!(texts.contains(&"worker guian/guian-1 is back"), "{texts:?}");
    assert!(
        texts.contains(&"worker lhasa/lhasa-1 joined (4 slots)"),
        "{texts:?}"
    );
}

#[test]
fn job_events_change_the_job_state_at_once() {
    let mut s = fresh();
    polled(&mut s);
    update(
        &mut s,
        Action::Event {
            received_ms: NOW,
            event: Box::new(FarmEvent::Job(JobEvent {
                job: fixtures::job_id(3),
                state: JobState::Canceled,
                at_ms: NOW,
                reason: Some("canceled by the operator".into()),
            })),
        },
    );
    let j = s.job(&fixtures::job_id(3)).unwrap();
    assert_eq!(j.state, JobState::Canceled);
    assert_eq!(j.finished_ms, Some(NOW));
    let last = s.log.back().unwrap();
    assert_eq!(last.level, Level::Warn);
    assert_eq!(
        last.text,
        "job shot010-lighting is canceled: canceled by the operator"
    );
}

#[test]
fn a_running_job_s_notice_stands_out_and_a_plain_change_does_not() {
    let mut s = fresh();
    polled(&mut s);
    let event = |reason: Option<&str>| Action::Event {
        received_ms: NOW,
        event: Box::new(FarmEvent::Job(JobEvent {
            job: fixtures::job_id(3),
            state: JobState::Running,
            at_ms: NOW,
            reason: reason.map(String::from),
        })),
    };
    update(&mut s, event(None));
    assert_eq!(s.log.back().unwrap().level, Level::Info);
    update(
        &mut s,
        event(Some(
            "region guian lost (no live worker for 60s): 3 task(s) withdrawn",
        )),
    );
    let last = s.log.back().unwrap();
    assert_eq!(last.level, Level::Warn);
    assert!(last.text.contains("region guian lost"), "{}", last.text);
}

#[test]
fn ticks_sample_utilization_per_region() {
    let mut s = fresh();
    polled(&mut s);
    for i in 1..=10 {
        update(
            &mut s,
            Action::Tick {
                now_ms: NOW + i * 1000,
            },
        );
    }
    let rows = figures::region_rows(&s);
    // guian: 2 of 4 slots busy; ulanqab: 1 of 2 live slots (ulanqab-2 is lost).
    assert_eq!(rows[0].utilization, Some(0.5));
    assert_eq!(rows[1].utilization, Some(0.5));
    assert_eq!((rows[1].live_workers, rows[1].known_workers), (1, 2));
    let history = figures::utilization_history(&s, &fixtures::region("guian"), 4);
    assert_eq!(history[3], Some(0.5));
    // Nothing is sampled while disconnected: no data is not zero.
    update(
        &mut s,
        Action::PollFailed {
            error: "down".into(),
            at_ms: NOW + 11_000,
        },
    );
    update(
        &mut s,
        Action::Tick {
            now_ms: NOW + 30_000,
        },
    );
    let history = figures::utilization_history(&s, &fixtures::region("guian"), 1);
    assert_eq!(history, vec![None]);
}

#[test]
fn the_catalog_prices_regions_or_leaves_them_unknown() {
    let mut s = fresh();
    polled(&mut s);
    assert!(figures::region_rows(&s).iter().all(|r| r.price.is_none()));
    assert_eq!(figures::cost(&s, &Ledger::of(&s.jobs).total), None);
    update(&mut s, Action::Catalog(Some(fixtures::catalog())));
    let rows = figures::region_rows(&s);
    assert_eq!((rows[0].price, rows[0].pue), (Some(0.08), Some(1.12)));
    let ledger = Ledger::of(&s.jobs);
    // shot010: 6 frames x 360 core-s in each region; shot001: 9 x 720 in guian.
    let guian_h = (6.0 * 360.0 + 9.0 * 720.0) / 3600.0;
    let ulanqab_h = 6.0 * 360.0 / 3600.0;
    let cost = figures::cost(&s, &ledger.total).unwrap();
    assert!((cost - (guian_h * 0.08 + ulanqab_h * 0.06)).abs() < 1e-9);
    let kwh = figures::energy_kwh(&s, &ledger.total).unwrap();
    assert!((kwh - (guian_h * 0.010 * 1.12 + ulanqab_h * 0.010 * 1.25)).abs() < 1e-9);
    // A region the catalog does not name gets neutral figures (free, PUE 1).
    poll_with_lhasa(&mut s, 1);
    let lhasa = figures::region_rows(&s)
        .into_iter()
        .find(|r| r.region.as_str() == "lhasa")
        .unwrap();
    assert_eq!((lhasa.price, lhasa.pue), (Some(0.0), Some(1.0)));
    update(&mut s, Action::Catalog(None));
    assert!(figures::region_rows(&s).iter().all(|r| r.price.is_none()));
}

#[test]
fn live_event_outages_and_operator_results_are_logged() {
    let mut s = fresh();
    update(&mut s, Action::EventsDown("no NATS".into()));
    update(&mut s, Action::EventsDown("no NATS".into()));
    assert_eq!(s.log.len(), 1);
    assert_eq!(s.events_down.as_deref(), Some("no NATS"));
    update(&mut s, Action::EventsUp);
    assert_eq!(s.events_down, None);
    assert_eq!(s.log.back().unwrap().text, "live events are back");
    update(
        &mut s,
        Action::Failed("cannot cancel job x: no job x".into()),
    );
    assert_eq!(s.flash.as_deref(), Some("cannot cancel job x: no job x"));
    assert_eq!(s.log.back().unwrap().level, Level::Error);
    update(&mut s, Action::Down);
    assert_eq!(s.flash, None, "a key clears the message");
}

#[test]
fn history_is_kept_in_five_second_buckets() {
    let mut series = Series::default();
    series.add(NOW, 1.0, 2.0);
    series.add(NOW + 1_000, 1.0, 2.0);
    series.add(NOW + BUCKET_MS, 3.0, 4.0);
    // Late data for a bucket still kept is added to it.
    series.add(NOW + 500, 1.0, 0.0);
    let w = series.window(NOW + 2 * BUCKET_MS, 4);
    assert_eq!(w.len(), 4);
    assert_eq!(w[0], None);
    assert_eq!(w[1].map(|b| (b.a, b.b)), Some((3.0, 4.0)));
    assert_eq!(w[2].map(|b| (b.a, b.b)), Some((3.0, 4.0)));
    assert_eq!(w[3], None);
    assert_eq!(series.sum(NOW + 2 * BUCKET_MS, 2), (3.0, 4.0));
    // Ten minutes later, the oldest buckets are gone.
    for i in 0..200 {
        series.add(NOW + 20 * BUCKET_MS + i * BUCKET_MS, 1.0, 1.0);
    }
    assert_eq!(series.sum(NOW + 2 * BUCKET_MS, 3), (0.0, 0.0));
}

#[test]
fn an_empty_snapshot_leaves_no_selection() {
    let mut s = fresh();
    update(&mut s, Action::Polled(Box::default()));
    assert_eq!(s.selected_job, None);
    update(&mut s, Action::Enter);
    update(&mut s, Action::CancelJob);
    assert_eq!(s.view, View::Overview);
    assert_eq!(s.confirm, None);
}
