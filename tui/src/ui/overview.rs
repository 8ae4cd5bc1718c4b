//! The overview: where the compute is (regions), where the work is (jobs), how fast it goes
//! (farm throughput) and what is going wrong (the event log).

use ratatui::layout::{Constraint, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use crate::figures::{self, RegionRow, StudioRow};
use crate::fmt::{self, UNKNOWN};
use crate::state::{Level, State, BUCKET_MS};
use crate::ui::studios::budget_gauge;
use crate::ui::{page_start, section, Columns};

/// At most this many region rows: past it, the jobs need the room more.
const MAX_REGION_ROWS: usize = 8;

pub fn draw(frame: &mut Frame, state: &State, area: Rect) {
    let rows = figures::region_rows(state);
    let studios: Vec<StudioRow> = figures::studio_rows(state)
        .into_iter()
        .filter(|r| r.budget.is_some())
        .collect();
    let budgets_h = u16::from(!studios.is_empty());
    let regions_h = 2 + rows.len().clamp(1, MAX_REGION_ROWS) as u16;
    let rest = area.height.saturating_sub(regions_h + 1 + budgets_h);
    // Jobs take the room they need, up to three fifths; the event log the rest.
    let jobs_wanted = 2 + state.jobs.len().max(1) as u16;
    let jobs_h = jobs_wanted.clamp(3, (rest * 3 / 5).max(3)).min(rest);
    let events_h = rest - jobs_h;
    let mut y = area.y;
    let mut take = |h: u16| {
        let r = Rect::new(area.x, y, area.width, h.min(area.y + area.height - y));
        y += r.height;
        r
    };
    let regions_area = take(regions_h);
    let jobs_area = take(jobs_h);
    let farm_area = take(1);
    let budgets_area = take(budgets_h);
    let events_area = take(events_h);
    draw_regions(frame, state, &rows, regions_area);
    draw_jobs(frame, state, jobs_area);
    draw_farm(frame, state, farm_area);
    draw_budgets(frame, state, &studios, budgets_area);
    draw_events(frame, state, events_area);
}

const REGION_COLS: [(Constraint, bool); 9] = [
    (Constraint::Fill(1), false),
    (Constraint::Length(7), true),
    (Constraint::Length(7), true),
    (Constraint::Length(11), false),
    (Constraint::Fill(2), false),
    (Constraint::Length(5), true),
    (Constraint::Length(6), true),
    (Constraint::Length(6), true),
    (Constraint::Length(4), true),
];

fn draw_regions(frame: &mut Frame, state: &State, rows: &[RegionRow], area: Rect) {
    let t = state.theme;
    let inner = section(frame, state, area, " Regions ".into());
    // A GPUS column (busy/total and the largest card's VRAM) only on a farm with GPUs.
    let gpus = rows.iter().any(|r| r.gpus > 0);
    let mut spec = REGION_COLS.to_vec();
    if gpus {
        spec.insert(3, (Constraint::Length(11), true));
    }
    let cols = Columns::new(&spec, inner.width);
    let spark_col = if gpus { 5 } else { 4 };
    // Whole minutes of history when there is room for one.
    let per_minute = (60_000 / BUCKET_MS) as usize;
    let col_w = cols.width(spark_col) as usize;
    let spark_w = if col_w >= per_minute {
        col_w / per_minute * per_minute
    } else {
        col_w
    };
    let spark_title = format!("LAST {}", fmt::window(spark_w as u64 * BUCKET_MS / 1000));
    let mut titles = vec![
        "REGION",
        "WORKERS",
        "SLOTS",
        "UTIL",
        &spark_title,
        "QUEUE",
        "FR/MIN",
        "PRICE",
        "PUE",
    ];
    if gpus {
        titles.insert(3, "GPUS");
    }
    let mut lines = vec![cols.header(&titles, t.header())];
    if rows.is_empty() {
        lines.push(Line::styled(
            "no regions yet: start workers (`suanli worker` or `suanli up`)",
            t.dim(),
        ));
    }
    for r in rows.iter().take(MAX_REGION_ROWS) {
        let util = match r.utilization {
            Some(u) => format!("{} {:>3.0}%", fmt::gauge(u, 6), u * 100.0),
            None => format!("{:<6} {:>4}", "", UNKNOWN),
        };
        let spark = fmt::sparkline(
            &figures::utilization_history(state, &r.region, spark_w),
            1.0,
        );
        let workers_style = if r.live_workers < r.known_workers {
            t.error()
        } else {
            t.normal()
        };
        let mut cells = vec![
            (r.region.to_string(), t.normal()),
            (
                format!("{}/{}", r.live_workers, r.known_workers),
                workers_style,
            ),
            (format!("{}/{}", r.busy_slots, r.live_slots), t.normal()),
            (util, t.good()),
            (format!("{spark:>col_w$}"), t.good()),
            (
                r.queue.map_or(UNKNOWN.to_string(), |q| q.to_string()),
                t.normal(),
            ),
            (format!("{:.0}", r.frames_per_min), t.normal()),
            (fmt::opt_figure(r.price), t.normal()),
            (
                r.pue.map_or(UNKNOWN.to_string(), |p| format!("{p:.2}")),
                t.normal(),
            ),
        ];
        if gpus {
            let cell = if r.gpus == 0 {
                "-".to_string()
            } else {
                format!("{}/{} {}", r.busy_gpus, r.gpus, fmt::vram(r.vram_mib))
            };
            cells.insert(3, (cell, t.normal()));
        }
        lines.push(cols.line(cells));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

const JOB_COLS: [(Constraint, bool); 10] = [
    (Constraint::Fill(3), false),
    (Constraint::Length(8), false),
    (Constraint::Length(3), true),
    (Constraint::Fill(2), false),
    (Constraint::Length(9), true),
    (Constraint::Length(6), true),
    (Constraint::Length(6), true),
    (Constraint::Length(7), true),
    (Constraint::Length(6), true),
    (Constraint::Length(6), true),
];

fn draw_jobs(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let running = state.jobs.iter().filter(|j| !j.state.is_final()).count();
    let title = format!(" Jobs {} · {} active ", state.jobs.len(), running);
    let inner = section(frame, state, area, title);
    let cols = Columns::new(&JOB_COLS, inner.width);
    let bar_w = cols.width(3) as usize;
    let mut lines = vec![cols.header(
        &[
            "JOB", "STATE", "PRI", "PROGRESS", "FRAMES", "CACHED", "ETA", "ELAPSED", "CORE-H",
            "COST",
        ],
        t.header(),
    )];
    let visible = inner.height.saturating_sub(1) as usize;
    if state.jobs.is_empty() {
        lines.push(Line::styled(
            "no jobs yet: submit one with `suanli submit`",
            t.dim(),
        ));
    }
    let sel = state.selected_job_index();
    let start = page_start(sel.unwrap_or(0), visible);
    for (i, job) in state.jobs.iter().enumerate().skip(start).take(visible) {
        let f = &job.frames;
        let rendered = f.done.saturating_sub(f.cached);
        let spent = job.total_figures();
        let eta = figures::eta_secs(state, job)
            .map_or(UNKNOWN.to_string(), |s| format!("~{}", fmt::duration(s)));
        let mut line = cols.line(vec![
            (fmt::job_name(job), t.normal()),
            (job.state.as_str().to_string(), t.job_state(job.state)),
            (job.priority.to_string(), t.normal()),
            (
                fmt::progress_bar(rendered, f.cached, f.failed, f.total, bar_w),
                t.good(),
            ),
            (format!("{}/{}", f.done, f.total), t.normal()),
            (f.cached.to_string(), t.cached()),
            (eta, t.normal()),
            (fmt::duration(figures::elapsed_secs(state, job)), t.normal()),
            (fmt::figure(figures::core_hours(&spent)), t.normal()),
            (fmt::money(figures::cost(state, &spent)), t.normal()),
        ]);
        if Some(i) == sel {
            line = line.patch_style(t.selected());
        }
        lines.push(line);
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_farm(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let fpm = figures::frames_per_min(&state.farm_frames, state.now_ms);
    let left = format!(" Farm {fpm:>5.0} frames/min ");
    let (pending, queued, running) = state.jobs.iter().fold((0, 0, 0), |(p, q, r), j| {
        (p + j.tasks.pending, q + j.tasks.queued, r + j.tasks.running)
    });
    let right = format!(" {running} running · {queued} queued · {pending} pending ");
    let spark_w =
        (area.width as usize).saturating_sub(left.chars().count() + right.chars().count());
    let history = figures::throughput_history(state, spark_w);
    let max = history.iter().flatten().fold(1.0f64, |m, v| m.max(*v));
    let line = Line::from(vec![
        Span::styled(left, t.header()),
        Span::styled(fmt::sparkline(&history, max), t.good()),
        Span::styled(right, t.normal()),
    ]);
    frame.render_widget(Paragraph::new(line), area);
}

/// One line: each studio with a budget, its month's spend as a gauge (the studios view has
/// the figures).
fn draw_budgets(frame: &mut Frame, state: &State, studios: &[StudioRow], area: Rect) {
    if area.height == 0 {
        return;
    }
    let t = state.theme;
    let mut spans = vec![Span::styled(" Budgets ", t.header())];
    for r in studios {
        let Some(b) = &r.budget else { continue };
        let style = if b.fraction() >= 1.0 {
            t.error()
        } else if b.fraction() >= 0.8 {
            t.warn()
        } else {
            t.good()
        };
        spans.push(Span::styled(format!(" {} ", r.studio), t.normal()));
        spans.push(Span::styled(budget_gauge(b, 6), style));
        if b.stopped {
            spans.push(Span::styled(" stopped", t.error()));
        }
        spans.push(Span::raw(" "));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_events(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let inner = section(frame, state, area, " Events (UTC) ".into());
    let n = inner.height as usize;
    let skip = state.log.len().saturating_sub(n);
    let lines: Vec<Line> = state
        .log
        .iter()
        .skip(skip)
        .map(|l| {
            let (mark, style) = match l.level {
                Level::Info => ("  ", t.normal()),
                Level::Warn => ("! ", t.warn()),
                Level::Error => ("✗ ", t.error()),
            };
            Line::from(vec![
                Span::styled(format!("{} ", fmt::clock(l.at_ms)), t.dim()),
                Span::styled(format!("{mark}{}", l.text), style),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}
