//! `update()`: every action folded into the state, and the effects it asks for. One test
//! binary, by area: what the farm's polls and events do ([`farm`]), the open job's records
//! ([`job_view`]), and the operator's keys ([`nav`]); the state builders below serve all three.

mod farm;
mod job_view;
mod nav;

use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{TaskEvent, TaskState};
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::{update, Action, Effect, FarmEvent, State, Theme};

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
