//! The operator's keys: quitting, views, selections, and the confirmations before any action
//! that changes the farm.

use suanli_tui::fixtures;
use suanli_tui::state::Confirm;
use suanli_tui::{update, Action, Effect, View};

use super::{fresh, open_job, polled};

#[test]
fn quit_asks_the_runtime_to_stop() {
    let mut s = fresh();
    assert_eq!(update(&mut s, Action::Quit), vec![Effect::Quit]);
    assert!(s.quit);
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
    for _ in 0..4 {
        update(&mut s, Action::NextView);
        seen.push(s.view);
    }
    assert_eq!(
        seen,
        [View::Workers, View::Ledger, View::Studios, View::Overview]
    );
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
fn the_task_selection_moves_by_grid_rows() {
    let mut s = open_job();
    let (cols, _) = suanli_tui::layout::grid_size(s.size);
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
