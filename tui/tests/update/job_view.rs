//! The open job: task records kept fresh by live events with the coordinator's fold, the
//! figures derived from them, and the preview.

use suanli_shared::protocol::{TaskEvent, TaskEventKind, TaskState};
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::state::Level;
use suanli_tui::{figures, update, Action, Effect, State};

use super::{event, fresh, open_job, polled};

#[test]
fn task_events_update_the_open_job_live() {
    let mut s = open_job();
    assert_eq!(s.job_view.as_ref().unwrap().tally.loaded.tasks.pending, 48);
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
    let t = &jv.tally.loaded.tasks;
    assert_eq!((t.running, t.pending), (1, 47));

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
    let t = &jv.tally.loaded.tasks;
    assert_eq!((t.done, t.failed, t.pending), (1, 1, 46));
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

/// The open job's status gets a retry budget (the fixtures' jobs have none).
fn with_retries(s: &mut State, max_retries: u32) {
    let mut snap = fixtures::farm_snapshot();
    for j in &mut snap.jobs {
        j.max_retries = max_retries;
    }
    update(s, Action::Polled(Box::new(snap)));
}

#[test]
fn a_failed_attempt_with_retries_left_is_shown_pending_not_failed() {
    let mut s = open_job();
    with_retries(&mut s, 1);
    let job = fixtures::job_id(3);
    event(
        &mut s,
        fixtures::failed(&job, 7, "ulanqab", "ulanqab-1", NOW + 6_000),
    );
    let jv = s.job_view.as_ref().unwrap();
    let rec = jv.tasks[7].as_ref().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.failures.len()),
        (TaskState::Pending, 1, 1),
        "the coordinator queues it again as the next attempt"
    );
    assert_eq!(jv.tally.count(Some(TaskState::Failed)), 0);
    assert_eq!(jv.tally.count(Some(TaskState::Pending)), 48);
    assert_eq!(s.log.back().unwrap().level, Level::Error, "still logged");

    // The retry fails too: the budget is spent, the task has failed.
    let mut again = fixtures::failed(&job, 7, "ulanqab", "ulanqab-1", NOW + 9_000);
    again.attempt = 1;
    event(&mut s, again);
    let jv = s.job_view.as_ref().unwrap();
    let rec = jv.tasks[7].as_ref().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.failures.len()),
        (TaskState::Failed, 1, 2)
    );
    assert_eq!(jv.tally.count(Some(TaskState::Failed)), 1);
}

#[test]
fn a_late_completion_of_an_older_attempt_is_shown_done() {
    let mut s = open_job();
    with_retries(&mut s, 2);
    let job = fixtures::job_id(3);
    // Attempt 0 timed out on guian and was retried: attempt 1 now runs on ulanqab.
    let mut retry = fixtures::completed(&job, 2, "ulanqab", "ulanqab-1", NOW + 4_000, 0);
    retry.attempt = 1;
    retry.kind = TaskEventKind::Started;
    event(&mut s, retry);
    let rec = s.job_view.as_ref().unwrap().tasks[2].as_ref().unwrap();
    assert_eq!((rec.state, rec.attempt), (TaskState::Running, 1));

    // Then attempt 0's completion arrives: the same task key, the same pixels, so it counts.
    event(
        &mut s,
        fixtures::completed(&job, 2, "guian", "guian-1", NOW + 5_000, 2_000),
    );
    let jv = s.job_view.as_ref().unwrap();
    let rec = jv.tasks[2].as_ref().unwrap();
    assert_eq!(rec.state, TaskState::Done);
    assert_eq!(rec.worker, Some(fixtures::worker_id("guian-1")));
    assert_eq!(jv.tally.count(Some(TaskState::Done)), 1);
    assert_eq!(jv.tally.count(Some(TaskState::Running)), 0);
    assert_eq!(jv.last_rendered, Some(2));
}
