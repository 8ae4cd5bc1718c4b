//! Suanli's operator terminal (`suanli tui`): regions, jobs, workers and the ledger, live.
//!
//! Built the Elm way: every input (key, tick, poll result, NATS event) is an
//! [`action::Action`]; [`state::update`] folds it into [`state::State`] and returns
//! [`action::Effect`]s; [`ui::draw`] paints the state. Background tasks in [`run`] talk to
//! the farm through [`FarmApi`] and only post actions, so the state has one writer and the
//! screen never waits on the network. Views are tested by drawing fixed states into ratatui's
//! `TestBackend`.

pub mod action;
pub mod api;
pub mod figures;
pub mod fixtures;
pub mod fmt;
pub mod input;
pub mod layout;
pub mod preview;
mod runtime;
pub mod state;
pub mod theme;
pub mod ui;
pub mod view;

pub use action::{Action, Effect, Snapshot};
pub use api::{FarmApi, FarmError, FarmErrorKind, FarmEvent};
pub use runtime::{perform, poll_once, run, Options};
pub use state::{update, State};
pub use theme::Theme;
pub use view::View;
