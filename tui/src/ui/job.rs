//! The job view: every task of one job as a cell coloured (and shaped) by its state, the
//! selected task's run and failure, and a preview of a rendered frame.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;
use suanli_shared::protocol::{TaskRecord, TaskState};

use crate::figures;
use crate::fmt::{self, UNKNOWN};
use crate::layout::{job_left_width, JOB_DETAIL_H, JOB_HEADER_H};
use crate::preview::PreviewWidget;
use crate::state::{render_secs, JobView, State};
use crate::theme::task_glyph;
use crate::ui::section;

/// Lines of the stderr tail shown.
const STDERR_LINES: usize = 4;

pub fn draw(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let Some(jv) = &state.job_view else {
        frame.render_widget(
            Paragraph::new(Line::styled(
                "no job open: select one in the overview and press Enter",
                t.dim(),
            )),
            area,
        );
        return;
    };
    let header = Rect::new(area.x, area.y, area.width, JOB_HEADER_H.min(area.height));
    draw_header(frame, state, jv, header);
    let rest = area.height.saturating_sub(header.height);
    let detail_h = JOB_DETAIL_H.min(rest.saturating_sub(2));
    let mid_h = rest - detail_h;
    let mid_y = header.y + header.height;
    let lw = job_left_width(area.width);
    let grid = Rect::new(area.x, mid_y, lw, mid_h);
    let preview = Rect::new(area.x + lw, mid_y, area.width - lw, mid_h);
    let details = Rect::new(area.x, mid_y + mid_h, area.width, detail_h);
    draw_grid(frame, state, jv, grid);
    draw_preview(frame, state, jv, preview);
    draw_details(frame, state, jv, details);
}

fn draw_header(frame: &mut Frame, state: &State, jv: &JobView, area: Rect) {
    let t = state.theme;
    let mut lines = Vec::new();
    match state.job(&jv.job) {
        Some(job) => {
            let spent = job.total_figures();
            let eta = figures::eta_secs(state, job)
                .map_or(UNKNOWN.to_string(), |s| format!("~{}", fmt::duration(s)));
            lines.push(Line::from(vec![
                Span::styled(format!(" {} ", fmt::job_name(job)), t.title()),
                Span::styled(job.state.as_str(), t.job_state(job.state)),
                Span::raw(format!(
                    "  eta {eta} · elapsed {} · {} core-h · cost {} · {} ",
                    fmt::duration(figures::elapsed_secs(state, job)),
                    fmt::figure(figures::core_hours(&spent)),
                    fmt::money(figures::cost(state, &spent)),
                    job.renderer
                )),
                Span::styled(job.id.to_string(), t.dim()),
            ]));
            let f = &job.frames;
            let mut text = format!(
                " {}/{} frames · {} cached · {} failed",
                f.done, f.total, f.cached, f.failed
            );
            // What each task needs, and the GPU time spent, when the job asks for any.
            if !job.requirements.is_empty() {
                text.push_str(&format!(" · needs {}", job.requirements.summary()));
            }
            // How much of the input each pre-staging region holds, while any is asked.
            if !job.inputs_in.is_empty() {
                let there: Vec<String> = job
                    .inputs_in
                    .iter()
                    .map(|(region, p)| format!("{region} {}%", p.percent()))
                    .collect();
                text.push_str(&format!(" · inputs {}", there.join(", ")));
            }
            if spent.gpu_seconds > 0.0 {
                text.push_str(&format!(
                    " · {} GPU-h",
                    fmt::figure(spent.gpu_seconds / 3600.0)
                ));
            }
            let bar_w = (area.width as usize)
                .saturating_sub(text.chars().count() + 1)
                .min(40);
            lines.push(Line::from(vec![
                Span::raw(" "),
                Span::styled(
                    fmt::progress_bar(
                        f.done - f.cached.min(f.done),
                        f.cached,
                        f.failed,
                        f.total,
                        bar_w,
                    ),
                    t.good(),
                ),
                Span::raw(text),
            ]));
        }
        None => {
            lines.push(Line::styled(
                format!(" job {} (no longer listed by the coordinator)", jv.job),
                t.title(),
            ));
            lines.push(Line::raw(""));
        }
    }
    let tl = &jv.tally;
    let mut legend = vec![Span::raw(" ")];
    let entries = [
        (Some(TaskState::Done), "done"),
        (Some(TaskState::Cached), "cached"),
        (Some(TaskState::Running), "running"),
        (Some(TaskState::Queued), "queued"),
        (Some(TaskState::Pending), "pending"),
        (Some(TaskState::Failed), "failed"),
        (Some(TaskState::Canceled), "canceled"),
        (None, "loading"),
    ];
    for (s, name) in entries {
        let n = tl.count(s);
        if n == 0 && matches!(s, Some(TaskState::Canceled) | None) {
            continue;
        }
        let glyph = match s {
            None => '?',
            s => task_glyph(s),
        };
        legend.push(Span::styled(format!("{glyph} "), t.task_state(s)));
        legend.push(Span::raw(format!("{name} {n}  ")));
    }
    // Why its tasks wait, when they do: no worker fits, or its licence seats are held.
    if let Some(waiting) = state.job(&jv.job).and_then(|j| j.waiting.as_ref()) {
        legend.push(Span::styled(format!("· {waiting}"), t.warn()));
    }
    lines.push(Line::from(legend));
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_grid(frame: &mut Frame, state: &State, jv: &JobView, area: Rect) {
    let t = state.theme;
    let title = format!(" {} tasks · task {} ", jv.total(), jv.sel);
    let inner = section(frame, state, area, title);
    let cols = inner.width.saturating_sub(1).max(1) as usize;
    let rows = inner.height as usize;
    if rows == 0 || jv.total() == 0 {
        return;
    }
    let sel_row = jv.sel as usize / cols;
    let first_row = sel_row / rows * rows;
    let total = jv.tasks.len();
    let mut lines = Vec::with_capacity(rows);
    for r in first_row..first_row + rows {
        let start = r * cols;
        if start >= total {
            break;
        }
        let end = (start + cols).min(total);
        let mut spans: Vec<Span> = Vec::new();
        let mut run = String::new();
        let mut run_state: Option<Option<TaskState>> = None;
        for i in start..end {
            let s = jv.tasks[i].as_ref().map(|r| r.state);
            if i == jv.sel as usize {
                if let Some(rs) = run_state.take() {
                    spans.push(Span::styled(std::mem::take(&mut run), t.task_state(rs)));
                }
                let glyph = match s {
                    None => '?',
                    s => task_glyph(s),
                };
                spans.push(Span::styled(
                    glyph.to_string(),
                    t.task_state(s).patch(t.selected()),
                ));
                continue;
            }
            if run_state.is_some_and(|rs| rs != s) {
                let rs = run_state.take().unwrap_or(None);
                spans.push(Span::styled(std::mem::take(&mut run), t.task_state(rs)));
            }
            run_state = Some(s);
            run.push(task_glyph(s));
        }
        if let Some(rs) = run_state {
            spans.push(Span::styled(run, t.task_state(rs)));
        }
        lines.push(Line::from(spans));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_preview(frame: &mut Frame, state: &State, jv: &JobView, area: Rect) {
    let t = state.theme;
    let title = match &state.preview {
        Some(p) => format!(" Frame {} · {} ", p.frame, p.name),
        None => " Frame preview ".to_string(),
    };
    let inner = section(frame, state, area, title);
    let message = match &state.preview {
        None if jv.last_rendered.is_none() => "no frame rendered yet".to_string(),
        None => "waiting for the frame".to_string(),
        Some(p) => match &p.image {
            None => format!("loading {}…", p.name),
            Some(Err(e)) => format!("cannot preview: {e}"),
            Some(Ok(thumb)) => {
                frame.render_widget(PreviewWidget { thumb, theme: t }, inner);
                return;
            }
        },
    };
    frame.render_widget(
        Paragraph::new(Line::styled(message, t.dim())).wrap(ratatui::widgets::Wrap { trim: true }),
        inner,
    );
}

fn draw_details(frame: &mut Frame, state: &State, jv: &JobView, area: Rect) {
    let t = state.theme;
    let rec = jv.selected();
    let title = match rec {
        Some(r) => format!(
            " Task {} · frames {} · key {} ",
            r.task,
            r.chunk,
            r.key.short()
        ),
        None => format!(" Task {} ", jv.sel),
    };
    let inner = section(frame, state, area, title);
    let Some(rec) = rec else {
        frame.render_widget(
            Paragraph::new(Line::styled(" loading task records…", t.dim())),
            inner,
        );
        return;
    };
    let mut lines = vec![run_line(state, jv, rec)];
    match rec.failures.last() {
        None => lines.push(Line::styled(" no failures", t.dim())),
        Some(f) => {
            let code = f
                .exit_code
                .map(|c| format!(", exit {c}"))
                .unwrap_or_default();
            lines.push(Line::styled(
                format!(
                    " {} failure{} · last: attempt {} on {}/{}{code}: {}",
                    rec.failures.len(),
                    if rec.failures.len() == 1 { "" } else { "s" },
                    f.attempt + 1,
                    f.region,
                    f.worker,
                    f.reason
                ),
                t.error(),
            ));
            let tail: Vec<&str> = f.stderr_tail.lines().collect();
            for l in &tail[tail.len().saturating_sub(STDERR_LINES)..] {
                lines.push(Line::styled(format!(" │ {l}"), t.dim()));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn run_line(state: &State, jv: &JobView, rec: &TaskRecord) -> Line<'static> {
    let t = state.theme;
    let place = match (&rec.region, &rec.worker) {
        (Some(r), Some(w)) => format!("{r}/{w}"),
        (Some(r), None) => r.to_string(),
        _ => "not placed yet".to_string(),
    };
    let state_word = format!("{:?}", rec.state).to_lowercase();
    let timing = match rec.state {
        TaskState::Running => {
            let pct = jv
                .progress
                .get(&rec.task)
                .map(|f| format!(" {:.0}%", f * 100.0))
                .unwrap_or_default();
            let secs = rec
                .started_ms
                .map(|s| state.now_ms.saturating_sub(s) as f64 / 1000.0);
            format!(
                "{pct} for {}",
                secs.map_or(UNKNOWN.to_string(), fmt::duration_fine)
            )
        }
        _ => match render_secs(rec) {
            Some(s) => format!(" in {}", fmt::duration_fine(s)),
            None => String::new(),
        },
    };
    Line::from(vec![
        Span::raw(" "),
        Span::styled(
            format!("{} {state_word}", task_glyph(Some(rec.state))),
            t.task_state(Some(rec.state)),
        ),
        Span::raw(format!(
            "{timing} · attempt {} · {place} · {} core-s · {} in",
            rec.attempt + 1,
            fmt::figure(rec.core_seconds),
            fmt::bytes(rec.bytes_in)
        )),
    ])
}
