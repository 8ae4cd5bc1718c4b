//! Operator input folded into the state: moving the selection in each view, switching views,
//! and the confirmation every farm-changing action waits for. Separate from the farm data
//! updates in [`super`] because none of it depends on what the farm said, only on keys.

use suanli_shared::{JobId, Region, WorkerId};

use super::{JobView, State};
use crate::action::{Action, Effect};
use crate::layout;
use crate::view::View;

/// An operator action waiting for `y`.
#[derive(Debug, Clone, PartialEq)]
pub enum Confirm {
    Cancel { job: JobId, name: String },
    Retry { job: JobId, name: String },
    Drain { region: Region, worker: WorkerId },
}

impl Confirm {
    pub fn question(&self) -> String {
        match self {
            Confirm::Cancel { name, .. } => format!("Cancel job {name}?"),
            Confirm::Retry { name, .. } => format!("Retry the failed tasks of job {name}?"),
            Confirm::Drain { region, worker } => format!("Drain worker {region}/{worker}?"),
        }
    }

    pub fn consequence(&self) -> &'static str {
        match self {
            Confirm::Cancel { .. } => "Running renders stop; pending tasks are dropped.",
            Confirm::Retry { .. } => "Failed and canceled tasks are queued again.",
            Confirm::Drain { .. } => "It takes no new tasks, finishes what it renders, exits.",
        }
    }

    fn effect(&self) -> Effect {
        match self.clone() {
            Confirm::Cancel { job, name } => Effect::Cancel { job, name },
            Confirm::Retry { job, name } => Effect::Retry { job, name },
            Confirm::Drain { region, worker } => Effect::Drain { region, worker },
        }
    }
}

impl State {
    pub(super) fn open_job(&mut self) {
        let Some(job) = self.selected_job_status() else {
            return;
        };
        let (id, studio, total) = (job.id.clone(), job.studio.clone(), job.tasks.total);
        if self.job_view.as_ref().is_none_or(|jv| jv.job != id) {
            self.job_view = Some(JobView::new(id, studio, total));
            self.preview = None;
        }
        self.view = View::Job;
    }

    fn move_job(&mut self, delta: isize) {
        if self.jobs.is_empty() {
            return;
        }
        let i = self.selected_job_index().unwrap_or(0);
        let j = step(i, delta, self.jobs.len());
        self.selected_job = Some(self.jobs[j].id.clone());
    }

    fn move_worker(&mut self, delta: isize) {
        if self.workers.is_empty() {
            return;
        }
        let i = self.selected_worker_index().unwrap_or(0);
        let j = step(i, delta, self.workers.len());
        let w = &self.workers[j];
        self.selected_worker = Some((w.region.clone(), w.id.clone()));
    }

    fn move_task(&mut self, delta: isize) {
        if let Some(jv) = self.job_view.as_mut() {
            if jv.total() > 0 {
                jv.sel = step(jv.sel as usize, delta, jv.total() as usize) as u32;
            }
        }
    }

    /// Rows of a page in the current view's list.
    fn page_rows(&self) -> isize {
        (self.size.1 as isize - 8).max(1)
    }

    fn navigate(&mut self, action: &Action) {
        let page = self.page_rows();
        let (cols, rows) = layout::grid_size(self.size);
        let delta: isize = match (self.view, action) {
            (View::Job, Action::Left) => -1,
            (View::Job, Action::Right) => 1,
            (View::Job, Action::Up) => -(cols as isize),
            (View::Job, Action::Down) => cols as isize,
            (View::Job, Action::PageUp) => -(cols as isize * rows as isize),
            (View::Job, Action::PageDown) => cols as isize * rows as isize,
            (_, Action::Up) => -1,
            (_, Action::Down) => 1,
            (_, Action::PageUp) => -page,
            (_, Action::PageDown) => page,
            (_, Action::Home) => isize::MIN,
            (_, Action::End) => isize::MAX,
            _ => 0,
        };
        if delta == 0 {
            return;
        }
        match self.view {
            View::Overview | View::Ledger => self.move_job(delta),
            View::Workers => self.move_worker(delta),
            View::Job => self.move_task(delta),
            // A few rows, all shown: nothing to move.
            View::Studios => {}
        }
    }

    fn switch_view(&mut self, to: View) {
        if to == View::Job {
            // The Job tab shows the selected job.
            if self.selected_job_status().is_some() {
                self.open_job();
            }
        } else {
            self.view = to;
        }
    }

    fn cycle_view(&mut self, forward: bool) {
        let n = View::ALL.len();
        let mut i = self.view.index();
        for _ in 0..n {
            i = if forward {
                (i + 1) % n
            } else {
                (i + n - 1) % n
            };
            let v = View::ALL[i];
            if v != View::Job || self.selected_job_status().is_some() {
                self.switch_view(v);
                return;
            }
        }
    }

    fn ask(&mut self, action: &Action) {
        let confirm = match (action, self.view) {
            (Action::CancelJob | Action::RetryJob, View::Overview | View::Job | View::Ledger) => {
                let job = if self.view == View::Job {
                    self.job_view.as_ref().and_then(|jv| self.job(&jv.job))
                } else {
                    self.selected_job_status()
                };
                let Some(job) = job else {
                    self.flash = Some("no job selected".into());
                    return;
                };
                let (id, name) = (job.id.clone(), job.name.clone());
                if *action == Action::CancelJob {
                    if job.state.is_final() {
                        self.flash = Some(format!("job {name} is already {}", job.state.as_str()));
                        return;
                    }
                    Confirm::Cancel { job: id, name }
                } else {
                    Confirm::Retry { job: id, name }
                }
            }
            (Action::DrainWorker, View::Workers) => {
                let Some((region, worker)) = self.selected_worker.clone() else {
                    self.flash = Some("no worker selected".into());
                    return;
                };
                Confirm::Drain { region, worker }
            }
            (Action::DrainWorker, _) => {
                self.flash = Some("d drains a worker: select one in the Workers view (3)".into());
                return;
            }
            _ => {
                self.flash = Some("c and r act on a job: select one in the Overview (1)".into());
                return;
            }
        };
        self.confirm = Some(confirm);
    }

    pub(super) fn input(&mut self, action: Action, fx: &mut Vec<Effect>) {
        self.flash = None;
        if action == Action::Quit {
            self.quit = true;
            fx.push(Effect::Quit);
            return;
        }
        if let Some(confirm) = self.confirm.clone() {
            match action {
                Action::Confirm(true) => {
                    self.confirm = None;
                    self.flash = Some(format!("{} sent", confirm_verb(&confirm)));
                    fx.push(confirm.effect());
                }
                Action::Confirm(false) | Action::Back => self.confirm = None,
                _ => {}
            }
            return;
        }
        if self.help {
            if matches!(action, Action::ToggleHelp | Action::Back) {
                self.help = false;
            }
            return;
        }
        match action {
            Action::ToggleHelp => self.help = true,
            Action::NextView => self.cycle_view(true),
            Action::PrevView => self.cycle_view(false),
            Action::ShowView(v) => self.switch_view(v),
            Action::Back => self.view = View::Overview,
            Action::Enter => {
                if matches!(self.view, View::Overview | View::Ledger) {
                    self.open_job();
                }
            }
            Action::CancelJob | Action::RetryJob | Action::DrainWorker => self.ask(&action),
            Action::Up
            | Action::Down
            | Action::Left
            | Action::Right
            | Action::PageUp
            | Action::PageDown
            | Action::Home
            | Action::End => self.navigate(&action),
            _ => {}
        }
    }
}

fn confirm_verb(c: &Confirm) -> String {
    match c {
        Confirm::Cancel { name, .. } => format!("cancel of job {name}"),
        Confirm::Retry { name, .. } => format!("retry of job {name}"),
        Confirm::Drain { region, worker } => format!("drain of worker {region}/{worker}"),
    }
}

/// `i + delta` clamped to `0..len`; `isize::MIN`/`MAX` go to the ends.
fn step(i: usize, delta: isize, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let j = (i as isize).saturating_add(delta);
    j.clamp(0, len as isize - 1) as usize
}
