//! `update()`: every action folded into the state, and the effects it asks for.

use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{
    JobEvent, JobState, TaskEvent, TaskEventKind, TaskState, WorkerState,
};
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::state::{Confirm, Connection, Level, Series, BUCKET_MS};
use suanli_tui::{figures, update, Action, Effect, FarmEvent, State, Theme, View};

fn fresh() -> State {
    State::new(Theme::plain(), NOW, (80, 24))
}

fn polled(state: &mut State) {
    update(state, Action::Polled(Box::new(fixtures::farm_snapshot())));
}

fn event(state: &mut State, ev: TaskEvent) -> Vec<Effect> {
    update(
        state,
        Action::Event {
            received_ms: ev.at_ms,
            event: Box::new(FarmEvent::Task(ev)),
        },
    )
}

/// The running job (48 tasks) open with every task pending.
fn open_job() -> State {
    let mut s = fresh();
    polled(&mut s);
    assert!(update(&mut s, Action::Enter).is_empty());
    let job = fixtures::job_id(3);
    let tasks = (0..48)
        .map(|i| fixtures::task(&job, i, TaskState::Pending, "guian", "guian-1"))
        .collect();
    update(
        &mut s,
        Action::Tasks {
            job,
            page: TasksPage {
                total: 48,
                offset: 0,
                tasks,
            },
        },
    );
    s
}

#[test]
fn quit_asks_the_runtime_to_stop() {
    let mut s = fresh();
    assert_eq!(update(&mut s, Action::Quit), vec![Effect::Quit]);
    assert!(s.quit);
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
    let mut snap = fixtures::farm_snapshot();
    snap.workers.push(fixtures::worker(
        "lhasa",
        "lhasa-1",
        4,
        0,
        WorkerState::Idle,
        0,
    ));
    update(&mut s, Action::Polled(Box::new(snap)));
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
fn enter_opens_the_job_and_the_poller_is_told_to_load_it() {
    let mut s = fresh();
    polled(&mut s);
    assert_eq!(s.interest().job, None);
    update(&mut s, Action::Enter);
    assert_eq!(s.view, View::Job);
    let interest = s.interest();
    assert_eq!(interest.job, Some(fixtures::job_id(3)));
    assert_eq!(interest.total, 48);
    update(&mut s, Action::Back);
    assert_eq!(s.view, View::Overview);
    assert_eq!(s.interest().job, None);
}

#[test]
fn tab_cycles_views_skipping_the_job_view_without_a_job() {
    let mut s = fresh();
    let mut seen = Vec::new();
    for _ in 0..3 {
        update(&mut s, Action::NextView);
        seen.push(s.view);
    }
    assert_eq!(seen, [View::Workers, View::Ledger, View::Overview]);
    polled(&mut s);
    update(&mut s, Action::NextView);
    assert_eq!(s.view, View::Job);
    update(&mut s, Action::PrevView);
    assert_eq!(s.view, View::Overview);
    update(&mut s, Action::ShowView(View::Ledger));
    assert_eq!(s.view, View::Ledger);
}

#[test]
fn cancel_and_retry_wait_for_yes() {
    let mut s = fresh();
    polled(&mut s);
    assert!(update(&mut s, Action::CancelJob).is_empty());
    assert!(matches!(s.confirm, Some(Confirm::Cancel { .. })));
    // Keys other than y/n/Esc do nothing while the question is open.
    assert!(update(&mut s, Action::Down).is_empty());
    assert_eq!(s.selected_job, Some(fixtures::job_id(3)));
    assert!(update(&mut s, Action::Confirm(false)).is_empty());
    assert_eq!(s.confirm, None);
    update(&mut s, Action::RetryJob);
    let fx = update(&mut s, Action::Confirm(true));
    assert_eq!(
        fx,
        vec![Effect::Retry {
            job: fixtures::job_id(3),
            name: "shot010-lighting".into()
        }]
    );
    assert_eq!(
        s.flash.as_deref(),
        Some("retry of job shot010-lighting sent")
    );
}

#[test]
fn a_finished_job_cannot_be_canceled() {
    let mut s = fresh();
    polled(&mut s);
    update(&mut s, Action::Down);
    update(&mut s, Action::CancelJob);
    assert_eq!(s.confirm, None);
    assert_eq!(s.flash.as_deref(), Some("job shot009 is already done"));
}

#[test]
fn drain_acts_on_the_selected_worker_in_the_workers_view() {
    let mut s = fresh();
    polled(&mut s);
    update(&mut s, Action::DrainWorker);
    assert_eq!(s.confirm, None);
    assert!(s.flash.as_deref().unwrap().contains("Workers view"));
    update(&mut s, Action::ShowView(View::Workers));
    update(&mut s, Action::End);
    update(&mut s, Action::DrainWorker);
    let fx = update(&mut s, Action::Confirm(true));
    assert_eq!(
        fx,
        vec![Effect::Drain {
            region: fixtures::region("ulanqab"),
            worker: fixtures::worker_id("ulanqab-2")
        }]
    );
}

#[test]
fn help_takes_keys_until_it_is_closed() {
    let mut s = fresh();
    polled(&mut s);
    update(&mut s, Action::ToggleHelp);
    update(&mut s, Action::Down);
    update(&mut s, Action::Enter);
    assert!(s.help);
    assert_eq!(s.view, View::Overview);
    assert_eq!(s.selected_job, Some(fixtures::job_id(3)));
    update(&mut s, Action::Back);
    assert!(!s.help);
}

#[test]
fn task_events_update_the_open_job_live() {
    let mut s = open_job();
    assert_eq!(s.job_view.as_ref().unwrap().tally.pending, 48);
    let job = fixtures::job_id(3);
    let base = fixtures::completed(&job, 2, "guian", "guian-1", NOW + 5_000, 2_000);
    event(
        &mut s,
        TaskEvent {
            kind: TaskEventKind::Started,
            at_ms: NOW + 3_000,
            ..base.clone()
        },
    );
    event(
        &mut s,
        TaskEvent {
            kind: TaskEventKind::Progress { fraction: 0.5 },
            at_ms: NOW + 4_000,
            ..base.clone()
        },
    );
    let jv = s.job_view.as_ref().unwrap();
    assert_eq!(jv.tasks[2].as_ref().unwrap().state, TaskState::Running);
    assert_eq!(jv.progress.get(&2), Some(&0.5));
    assert_eq!((jv.tally.running, jv.tally.pending), (1, 47));

    // Completion: rendered, with a frame to preview (the selection has none).
    let fx = event(&mut s, base.clone());
    let jv = s.job_view.as_ref().unwrap();
    let rec = jv.tasks[2].as_ref().unwrap();
    assert_eq!(rec.state, TaskState::Done);
    assert_eq!(rec.finished_ms, Some(NOW + 5_000));
    assert_eq!(jv.last_rendered, Some(2));
    assert!(jv.progress.is_empty());
    assert!(
        matches!(&fx[..], [Effect::LoadPreview { file, .. }] if file.name == "frame_0003.png"),
        "{fx:?}"
    );

    // A failure of another task.
    event(
        &mut s,
        fixtures::failed(&job, 7, "ulanqab", "ulanqab-1", NOW + 6_000),
    );
    let jv = s.job_view.as_ref().unwrap();
    let rec = jv.tasks[7].as_ref().unwrap();
    assert_eq!(rec.state, TaskState::Failed);
    assert_eq!(rec.failures.len(), 1);
    assert_eq!(
        (jv.tally.done, jv.tally.failed, jv.tally.pending),
        (1, 1, 46)
    );
    assert_eq!(s.log.back().unwrap().level, Level::Error);

    // An event about an older attempt changes nothing.
    let mut stale = fixtures::failed(&job, 2, "guian", "guian-1", NOW + 7_000);
    s.job_view.as_mut().unwrap().tasks[2]
        .as_mut()
        .unwrap()
        .attempt = 1;
    stale.attempt = 0;
    event(&mut s, stale);
    assert_eq!(
        s.job_view.as_ref().unwrap().tasks[2]
            .as_ref()
            .unwrap()
            .state,
        TaskState::Done
    );
}

#[test]
fn completions_feed_throughput_and_the_eta() {
    let mut s = fresh();
    polled(&mut s);
    let job = fixtures::job_id(3);
    let running = s.job(&job).unwrap().clone();
    assert_eq!(
        figures::eta_secs(&s, &running),
        None,
        "nothing measured yet"
    );
    event(
        &mut s,
        fixtures::completed(&job, 1, "guian", "guian-1", NOW, 4_000),
    );
    event(
        &mut s,
        fixtures::completed(&job, 2, "guian", "guian-2", NOW, 2_000),
    );
    event(
        &mut s,
        fixtures::completed(&job, 3, "ulanqab", "ulanqab-1", NOW, 3_000),
    );
    // 27 tasks left (48 - 20 done - 1 failed), 3 at a time, 3 s each: 9 waves, 27 s.
    assert_eq!(figures::eta_secs(&s, &running), Some(27.0));
    let rows = figures::region_rows(&s);
    assert_eq!(rows[0].frames_per_min, 2.0);
    assert_eq!(rows[1].frames_per_min, 1.0);
    assert_eq!(figures::frames_per_min(&s.farm_frames, NOW), 3.0);
    // A minute later, those frames have left the window.
    update(
        &mut s,
        Action::Tick {
            now_ms: NOW + 61_000,
        },
    );
    assert_eq!(figures::frames_per_min(&s.farm_frames, s.now_ms), 0.0);
    // Cache hits are not throughput.
    let mut hit = fixtures::completed(&job, 4, "guian", "guian-1", NOW + 61_000, 10);
    if let TaskEventKind::Completed { cached, .. } = &mut hit.kind {
        *cached = true;
    }
    event(&mut s, hit);
    assert_eq!(figures::frames_per_min(&s.farm_frames, s.now_ms), 0.0);
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
    assert_eq!(figures::ledger(&s).total.cost, None);
    update(&mut s, Action::Catalog(Some(fixtures::catalog())));
    let rows = figures::region_rows(&s);
    assert_eq!((rows[0].price, rows[0].pue), (Some(0.08), Some(1.12)));
    let ledger = figures::ledger(&s);
    // shot010: 6 frames x 360 core-s in each region; shot001: 9 x 720 in guian.
    let guian_h = (6.0 * 360.0 + 9.0 * 720.0) / 3600.0;
    let ulanqab_h = 6.0 * 360.0 / 3600.0;
    let cost = ledger.total.cost.unwrap();
    assert!((cost - (guian_h * 0.08 + ulanqab_h * 0.06)).abs() < 1e-9);
    let kwh = ledger.total.kwh.unwrap();
    assert!((kwh - (guian_h * 0.010 * 1.12 + ulanqab_h * 0.010 * 1.25)).abs() < 1e-9);
    // A region the catalog does not name gets neutral figures (free, PUE 1).
    let mut snap = fixtures::farm_snapshot();
    snap.workers.push(fixtures::worker(
        "lhasa",
        "lhasa-1",
        1,
        0,
        WorkerState::Idle,
        0,
    ));
    update(&mut s, Action::Polled(Box::new(snap)));
    let lhasa = figures::region_rows(&s)
        .into_iter()
        .find(|r| r.region.as_str() == "lhasa")
        .unwrap();
    assert_eq!((lhasa.price, lhasa.pue), (Some(0.0), Some(1.0)));
    update(&mut s, Action::Catalog(None));
    assert!(figures::region_rows(&s).iter().all(|r| r.price.is_none()));
}

#[test]
fn a_preview_for_another_frame_is_ignored() {
    let mut s = open_job();
    let job = fixtures::job_id(3);
    event(
        &mut s,
        fixtures::completed(&job, 2, "guian", "guian-1", NOW, 1_000),
    );
    let p = s.preview.clone().unwrap();
    update(
        &mut s,
        Action::Preview {
            key: p.key,
            name: "frame_9999.png".into(),
            result: Err("x".into()),
        },
    );
    assert_eq!(s.preview.as_ref().unwrap().image, None);
    update(
        &mut s,
        Action::Preview {
            key: p.key,
            name: p.name,
            result: Err("store unreachable".into()),
        },
    );
    assert_eq!(
        s.preview.as_ref().unwrap().image,
        Some(Err("store unreachable".into()))
    );
}

#[test]
fn the_task_selection_moves_by_grid_rows() {
    let mut s = open_job();
    let (cols, _) = suanli_tui::ui::job::grid_size(s.size);
    assert_eq!(cols, 43);
    update(&mut s, Action::Down);
    assert_eq!(s.job_view.as_ref().unwrap().sel, 43);
    update(&mut s, Action::Down);
    assert_eq!(
        s.job_view.as_ref().unwrap().sel,
        47,
        "clamped to the last task"
    );
    update(&mut s, Action::Left);
    update(&mut s, Action::Up);
    assert_eq!(s.job_view.as_ref().unwrap().sel, 3);
    update(&mut s, Action::Home);
    assert_eq!(s.job_view.as_ref().unwrap().sel, 0);
    // A narrower terminal has shorter rows.
    update(
        &mut s,
        Action::Resize {
            width: 60,
            height: 24,
        },
    );
    update(&mut s, Action::Down);
    assert_eq!(s.job_view.as_ref().unwrap().sel, 32);
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
