//! The studios view: each studio's jobs, its part of the tasks in flight, what it rendered and
//! spent, and its month against its budget as a gauge. Figures come from the jobs' status: the
//! coordinator prices them and reports each studio's month with its jobs.

use ratatui::layout::{Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use ratatui::Frame;

use suanli_shared::protocol::BudgetStatus;

use crate::figures::{self, StudioRow};
use crate::fmt;
use crate::state::State;
use crate::ui::{section, Columns};

const COLS: [(Constraint, bool); 9] = [
    (Constraint::Fill(1), false),
    (Constraint::Length(5), true),
    (Constraint::Length(7), true),
    (Constraint::Length(6), true),
    (Constraint::Length(8), true),
    (Constraint::Length(8), true),
    (Constraint::Length(13), false),
    (Constraint::Length(17), true),
    (Constraint::Length(8), false),
];

/// A budget as a gauge of `width` cells and its percentage; past 100 % the gauge is full.
pub fn budget_gauge(b: &BudgetStatus, width: usize) -> String {
    let f = b.fraction();
    let pct = if f.is_finite() {
        format!("{:>4.0}%", f * 100.0)
    } else {
        "  >100%".to_string()
    };
    format!("{}{pct}", fmt::gauge(f, width))
}

fn row_line(state: &State, cols: &Columns, r: &StudioRow) -> Line<'static> {
    let t = state.theme;
    let (gauge, spent, limit, style) = match &r.budget {
        Some(b) => (
            budget_gauge(b, 8),
            format!("{} / {}", fmt::figure(b.spent), fmt::figure(b.budget)),
            if b.stopped {
                format!("{} ■", b.at_limit.as_str())
            } else {
                b.at_limit.as_str().to_string()
            },
            if b.fraction() >= 1.0 {
                t.error()
            } else if b.fraction() >= 0.8 {
                t.warn()
            } else {
                t.good()
            },
        ),
        None => (
            "no budget".to_string(),
            String::new(),
            String::new(),
            t.dim(),
        ),
    };
    cols.line(vec![
        (r.studio.to_string(), t.normal()),
        (r.jobs.to_string(), t.normal()),
        (r.in_flight.to_string(), t.normal()),
        (format!("{:.0}%", r.share * 100.0), t.normal()),
        (fmt::figure(figures::core_hours(&r.figures)), t.normal()),
        (fmt::money(figures::cost(state, &r.figures)), t.normal()),
        (gauge, style),
        (spent, t.normal()),
        (limit, style),
    ])
}

pub fn draw(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let rows = figures::studio_rows(state);
    let month = rows
        .iter()
        .find_map(|r| r.budget.as_ref())
        .map(|b| format!(" · budgets for {} in {}", b.month, b.currency))
        .unwrap_or_default();
    let inner = section(
        frame,
        state,
        area,
        format!(" Studios {}{month} ", rows.len()),
    );
    let cols = Columns::new(&COLS, inner.width);
    let mut lines = vec![cols.header(
        &[
            "STUDIO",
            "JOBS",
            "IN FLT",
            "SHARE",
            "CORE-H",
            "COST",
            "MONTH",
            "SPENT / BUDGET",
            "AT LIMIT",
        ],
        t.header(),
    )];
    if rows.is_empty() {
        lines.push(Line::styled("no jobs yet", t.dim()));
    }
    for r in &rows {
        lines.push(row_line(state, &cols, r));
    }
    frame.render_widget(Paragraph::new(lines), inner);
}
