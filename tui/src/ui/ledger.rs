//! The ledger view: core-hours, cost, energy (with each region's PUE) and input bytes moved
//! into each region, per region and per job, with totals. Figures come from the jobs' status
//! (the coordinator computes and prices them from task records); prices and PUE from the region
//! catalog.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use suanli_shared::ledger::Ledger;
use suanli_shared::protocol::RegionFigures;

use crate::figures;
use crate::fmt::{self, UNKNOWN};
use crate::state::State;
use crate::ui::{page_start, section, Columns};

const MAX_REGION_ROWS: usize = 8;

const REGION_COLS: [(Constraint, bool); 8] = [
    (Constraint::Fill(1), false),
    (Constraint::Length(7), true),
    (Constraint::Length(8), true),
    (Constraint::Length(8), true),
    (Constraint::Length(8), true),
    (Constraint::Length(5), true),
    (Constraint::Length(7), true),
    (Constraint::Length(9), true),
];

const JOB_COLS: [(Constraint, bool); 7] = [
    (Constraint::Fill(1), false),
    (Constraint::Length(8), false),
    (Constraint::Length(7), true),
    (Constraint::Length(8), true),
    (Constraint::Length(8), true),
    (Constraint::Length(8), true),
    (Constraint::Length(9), true),
];

fn figure_cells(state: &State, f: &RegionFigures) -> [String; 5] {
    [
        f.frames_done.to_string(),
        fmt::figure(figures::core_hours(f)),
        fmt::money(figures::cost(state, f)),
        figures::energy_kwh(state, f).map_or(UNKNOWN.to_string(), |k| format!("{k:.3}")),
        fmt::bytes(f.bytes_in),
    ]
}

pub fn draw(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let ledger = Ledger::of(&state.jobs);
    let n_regions = ledger.regions.len().clamp(1, MAX_REGION_ROWS) as u16;
    let top_h = (3 + n_regions).min(area.height);
    let top = Rect::new(area.x, area.y, area.width, top_h);
    let bottom = Rect::new(area.x, area.y + top_h, area.width, area.height - top_h);

    let catalog_note = if state.catalog.is_some() {
        ""
    } else {
        " · no price catalog from the coordinator"
    };
    let inner = section(
        frame,
        state,
        top,
        format!(" Ledger by region{catalog_note} "),
    );
    let cols = Columns::new(&REGION_COLS, inner.width);
    let mut lines = vec![cols.header(
        &[
            "REGION", "FRAMES", "CORE-H", "COST", "KWH", "PUE", "PRICE", "DATA IN",
        ],
        t.header(),
    )];
    if ledger.regions.is_empty() {
        lines.push(Line::styled("nothing rendered yet", t.dim()));
    }
    for (region, s) in ledger.regions.iter().take(MAX_REGION_ROWS) {
        let p = region
            .parse()
            .ok()
            .and_then(|r| figures::profile(state, &r));
        let [frames, core, cost, kwh, bytes] = figure_cells(state, s);
        lines.push(cols.line(vec![
            (region.clone(), t.normal()),
            (frames, t.normal()),
            (core, t.normal()),
            (cost, t.normal()),
            (kwh, t.normal()),
            (
                p.as_ref()
                    .map_or(UNKNOWN.to_string(), |p| format!("{:.2}", p.pue)),
                t.normal(),
            ),
            (
                fmt::opt_figure(p.as_ref().map(|p| p.price_per_core_hour)),
                t.normal(),
            ),
            (bytes, t.normal()),
        ]));
    }
    let [frames, core, cost, kwh, bytes] = figure_cells(state, &ledger.total);
    lines.push(cols.line(vec![
        ("TOTAL".into(), t.header()),
        (frames, t.header()),
        (core, t.header()),
        (cost, t.header()),
        (kwh, t.header()),
        (String::new(), t.header()),
        (String::new(), t.header()),
        (bytes, t.header()),
    ]));
    frame.render_widget(Paragraph::new(lines), inner);

    let inner = section(
        frame,
        state,
        bottom,
        format!(" Ledger by job · {} jobs ", state.jobs.len()),
    );
    let cols = Columns::new(&JOB_COLS, inner.width);
    let mut lines = vec![cols.header(
        &["JOB", "STATE", "FRAMES", "CORE-H", "COST", "KWH", "DATA IN"],
        t.header(),
    )];
    // Header and total take a line each.
    let visible = inner.height.saturating_sub(2) as usize;
    let sel = state.selected_job_index();
    let start = page_start(sel.unwrap_or(0), visible);
    for (i, job) in state.jobs.iter().enumerate().skip(start).take(visible) {
        let [frames, core, cost, kwh, bytes] = figure_cells(state, &job.total_figures());
        let mut line = cols.line(vec![
            (job.name.clone(), t.normal()),
            (job.state.as_str().to_string(), t.job_state(job.state)),
            (frames, t.normal()),
            (core, t.normal()),
            (cost, t.normal()),
            (kwh, t.normal()),
            (bytes, t.normal()),
        ]);
        if Some(i) == sel {
            line = line.patch_style(t.selected());
        }
        lines.push(line);
    }
    let [frames, core, cost, kwh, bytes] = figure_cells(state, &ledger.total);
    lines.push(cols.line(vec![
        ("TOTAL".into(), t.header()),
        (String::new(), t.header()),
        (frames, t.header()),
        (core, t.header()),
        (cost, t.header()),
        (kwh, t.header()),
        (bytes, t.header()),
    ]));
    frame.render_widget(Paragraph::new(lines), inner);
}
