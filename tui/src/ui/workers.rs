//! The workers view: every worker the coordinator knows, what it renders now, how much it has
//! rendered, and how fresh its heartbeat is.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use suanli_shared::protocol::{WorkerInfo, WorkerState};

use crate::fmt;
use crate::state::State;
use crate::ui::{page_start, section, Columns};

const COLS: [(Constraint, bool); 8] = [
    (Constraint::Fill(2), false),
    (Constraint::Length(9), false),
    (Constraint::Length(9), false),
    (Constraint::Length(5), true),
    (Constraint::Fill(3), false),
    (Constraint::Length(7), true),
    (Constraint::Length(5), true),
    (Constraint::Fill(2), false),
];

pub fn draw(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let live = state
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Lost)
        .count();
    let title = format!(" Workers {} · {} live ", state.workers.len(), live);
    let inner = section(frame, state, area, title);
    // A GPUS column (busy/total and each card's VRAM) only on a farm with GPUs.
    let gpus = state.workers.iter().any(|w| gpu_count(w) > 0);
    let mut spec = COLS.to_vec();
    let mut titles = vec![
        "WORKER",
        "REGION",
        "STATE",
        "SLOTS",
        "CURRENT",
        "CORE-S",
        "BEAT",
        "RENDERERS",
    ];
    if gpus {
        spec.insert(4, (Constraint::Length(11), true));
        titles.insert(4, "GPUS");
    }
    let cols = Columns::new(&spec, inner.width);
    let mut lines = vec![cols.header(&titles, t.header())];
    if state.workers.is_empty() {
        lines.push(Line::styled(
            "no workers yet: start one with `suanli worker --region R`",
            t.dim(),
        ));
    }
    let visible = inner.height.saturating_sub(1) as usize;
    let sel = state.selected_worker_index();
    let start = page_start(sel.unwrap_or(0), visible);
    for (i, w) in state.workers.iter().enumerate().skip(start).take(visible) {
        let beat = state.now_ms.saturating_sub(w.heartbeat_ms) as f64 / 1000.0;
        let mut cells = vec![
            (w.id.to_string(), t.normal()),
            (w.region.to_string(), t.normal()),
            (
                format!("{:?}", w.state).to_lowercase(),
                t.worker_state(w.state),
            ),
            (format!("{}/{}", w.busy, w.slots), t.normal()),
            (current(state, w), t.normal()),
            (fmt::figure(w.core_seconds), t.normal()),
            (
                fmt::duration(beat),
                if w.state == WorkerState::Lost {
                    t.error()
                } else {
                    t.normal()
                },
            ),
            (
                w.renderers
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.dim(),
            ),
        ];
        if gpus {
            cells.insert(4, (gpu_cell(w), t.normal()));
        }
        let mut line = cols.line(cells);
        if Some(i) == sel {
            line = line.patch_style(t.selected());
        }
        lines.push(line);
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn gpu_count(w: &WorkerInfo) -> u32 {
    w.resources.as_ref().map_or(0, |r| r.gpus.len() as u32)
}

/// `busy/total VRAM` (`1/2 24G`: the largest card's memory), or `-` for a worker without GPUs.
fn gpu_cell(w: &WorkerInfo) -> String {
    let Some(r) = w.resources.as_ref().filter(|r| !r.gpus.is_empty()) else {
        return "-".into();
    };
    let vram = r.gpus.iter().map(|g| g.memory_mib).max().unwrap_or(0);
    format!(
        "{}/{} {}",
        w.gpus_busy.min(r.gpus.len() as u32),
        r.gpus.len(),
        fmt::vram(vram)
    )
}

/// What a worker renders: frames and progress of each running task first (they matter
/// most when the column is narrow), then the job.
fn current(state: &State, w: &WorkerInfo) -> String {
    let mut by_job: Vec<(&suanli_shared::JobId, Vec<String>)> = Vec::new();
    for c in &w.current {
        let item = format!("f{} {:.0}%", c.chunk, c.fraction * 100.0);
        match by_job.iter_mut().find(|(j, _)| *j == &c.job) {
            Some((_, items)) => items.push(item),
            None => by_job.push((&c.job, vec![item])),
        }
    }
    by_job
        .into_iter()
        .map(|(job, items)| format!("{} {}", items.join(" "), state.job_name(job)))
        .collect::<Vec<_>>()
        .join(", ")
}
