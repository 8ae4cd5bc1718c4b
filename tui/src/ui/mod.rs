//! Drawing: a pure function of the state onto a ratatui frame. The frame is a tab bar, the
//! disconnected banner when there is one, the current view, a status bar, and the help or
//! confirmation overlay on top.

pub mod job;
pub mod ledger;
pub mod overview;
pub mod studios;
pub mod workers;

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Wrap};
use ratatui::Frame;

use crate::fmt;
use crate::state::{Connection, State};
use crate::view::View;

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, state: &State) {
    let area = frame.area();
    if area.height < 3 || area.width < 20 {
        frame.render_widget(Paragraph::new("suanli: terminal too small"), area);
        return;
    }
    let banners = banner_lines(state, area.width as usize);
    let [tabs, banner, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(banners.len() as u16),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_tabs(frame, state, tabs);
    if !banners.is_empty() {
        frame.render_widget(Paragraph::new(banners), banner);
    }
    match state.view {
        View::Overview => overview::draw(frame, state, body),
        View::Job => job::draw(frame, state, body),
        View::Workers => workers::draw(frame, state, body),
        View::Ledger => ledger::draw(frame, state, body),
        View::Studios => studios::draw(frame, state, body),
    }
    draw_status(frame, state, status);
    if state.help {
        draw_help(frame, state, area);
    } else if let Some(c) = &state.confirm {
        let lines = vec![
            Line::styled(c.question(), state.theme.title()),
            Line::raw(c.consequence()),
            Line::raw(""),
            Line::raw("y: yes    n or Esc: no"),
        ];
        popup(frame, state, area, " Confirm ", lines, 64);
    }
}

/// The disconnected banner (and a quieter one when only live events are missing).
fn banner_lines(state: &State, width: usize) -> Vec<Line<'static>> {
    let t = state.theme;
    let mut out = Vec::new();
    if let Connection::Down { error, .. } = &state.connection {
        let data = match state.last_update_ms {
            Some(at) => format!(
                "data {} old",
                fmt::duration(state.now_ms.saturating_sub(at) as f64 / 1000.0)
            ),
            None => "no data yet".to_string(),
        };
        // The error goes last: on a narrow screen it is what gets cut.
        let text = format!(" DISCONNECTED ({data}, retrying): {error} ");
        out.push(Line::styled(pad(&text, width), t.banner()));
    } else if let Some(e) = &state.events_down {
        out.push(Line::styled(
            format!(" live events unavailable ({e}): figures update once a second "),
            t.warn(),
        ));
    }
    out
}

fn pad(s: &str, width: usize) -> String {
    let s = fmt::truncate(s, width);
    let n = s.chars().count();
    format!("{s}{}", " ".repeat(width.saturating_sub(n)))
}

fn draw_tabs(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let mut spans = vec![Span::styled(" Suanli ", t.title()), Span::raw(" ")];
    for (i, v) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, v.title());
        let style = if *v == state.view {
            t.selected()
        } else if *v == View::Job && state.selected_job.is_none() {
            t.dim()
        } else {
            t.normal()
        };
        spans.push(Span::styled(label, style));
    }
    let left = Line::from(spans);
    let right = Line::from(Span::styled("? help  q quit ", t.dim())).right_aligned();
    frame.render_widget(Paragraph::new(left), area);
    if area.width >= 66 {
        frame.render_widget(Paragraph::new(right), area);
    }
}

fn hints(state: &State) -> &'static str {
    match state.view {
        View::Overview => "↑↓ job · Enter open · c cancel · r retry · Tab views",
        View::Job => "←→↑↓ task · Esc back · c cancel · r retry · Tab views",
        View::Workers => "↑↓ worker · d drain · Esc back · Tab views",
        View::Ledger => "↑↓ job · Enter open · Esc back · Tab views",
        View::Studios => "Esc back · Tab views",
    }
}

fn draw_status(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let clock = format!("{} UTC ", fmt::clock(state.now_ms));
    let room = (area.width as usize).saturating_sub(clock.chars().count() + 1);
    let left = match (&state.flash, &state.hint) {
        (Some(f), _) => Span::styled(format!(" {}", fmt::truncate(f, room)), t.warn()),
        (None, Some(h)) => Span::styled(
            format!(
                " {}",
                fmt::truncate(&format!("{h} · {}", hints(state)), room)
            ),
            t.dim(),
        ),
        (None, None) => Span::styled(format!(" {}", fmt::truncate(hints(state), room)), t.dim()),
    };
    frame.render_widget(Paragraph::new(Line::from(left)), area);
    frame.render_widget(
        Paragraph::new(Line::styled(clock, t.dim()).right_aligned()),
        area,
    );
}

/// Every key, for the `?` overlay.
pub const HELP: &[(&str, &str)] = &[
    ("Tab / Shift-Tab", "next / previous view"),
    ("1 2 3 4 5", "Overview, Job, Workers, Ledger, Studios"),
    ("↑ ↓  or  k j", "select a job, worker or task row"),
    ("← →  or  h l", "select a task (job view)"),
    ("PgUp PgDn Home End", "move a page, to the ends"),
    ("Enter", "open the selected job"),
    ("Esc", "back to the overview, close this"),
    ("c", "cancel the selected job (asks first)"),
    ("r", "retry its failed tasks (asks first)"),
    ("d", "drain the selected worker (asks first)"),
    ("?", "show or hide this help"),
    ("q  or  Ctrl-C", "quit"),
];

fn draw_help(frame: &mut Frame, state: &State, area: Rect) {
    let t = state.theme;
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!(" {k:<19}"), t.header()),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        " Actions go through the coordinator's API, like the CLI.",
        t.dim(),
    ));
    popup(frame, state, area, " Keys ", lines, 62);
}

/// A bordered box centred in `area`.
fn popup(frame: &mut Frame, state: &State, area: Rect, title: &str, lines: Vec<Line>, width: u16) {
    let w = width.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::new()
                .borders(Borders::ALL)
                .title(Span::styled(title.to_string(), state.theme.title())),
        ),
        rect,
    );
}

/// A section: a rule with a title across the top of `area`; returns the area below it.
pub(crate) fn section(frame: &mut Frame, state: &State, area: Rect, title: String) -> Rect {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(state.theme.dim())
        .title(Span::styled(title, state.theme.header()));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    inner
}

/// Widths of `constraints` laid out across `width` cells with one space between columns.
pub(crate) fn column_widths(constraints: &[Constraint], width: u16) -> Vec<u16> {
    Layout::horizontal(constraints.iter().copied())
        .spacing(1)
        .split(Rect::new(0, 0, width, 1))
        .iter()
        .map(|r| r.width)
        .collect()
}

/// The first row of a list page that keeps `sel` in view with `rows` rows showing.
pub(crate) fn page_start(sel: usize, rows: usize) -> usize {
    sel.checked_div(rows).map_or(0, |page| page * rows)
}

/// `s` cut or padded to exactly `width` cells, left or right aligned.
pub(crate) fn fit(s: &str, width: u16, right: bool) -> String {
    let w = width as usize;
    let s = fmt::truncate(s, w);
    let pad = " ".repeat(w - s.chars().count());
    if right {
        format!("{pad}{s}")
    } else {
        format!("{s}{pad}")
    }
}

/// A table: column constraints, alignment and titles; rows are laid out by hand into lines
/// (one space between columns) so that only visible rows cost anything to draw.
pub(crate) struct Columns {
    pub widths: Vec<u16>,
    pub right: Vec<bool>,
    pub total: u16,
}

impl Columns {
    pub fn new(spec: &[(Constraint, bool)], width: u16) -> Self {
        let constraints: Vec<Constraint> = spec.iter().map(|(c, _)| *c).collect();
        Self {
            widths: column_widths(&constraints, width),
            right: spec.iter().map(|(_, r)| *r).collect(),
            total: width,
        }
    }

    pub fn width(&self, col: usize) -> u16 {
        self.widths.get(col).copied().unwrap_or(0)
    }

    /// One row: each cell fitted to its column, the line padded to the full width.
    pub fn line(&self, cells: Vec<(String, ratatui::style::Style)>) -> Line<'static> {
        let mut spans = Vec::with_capacity(cells.len() * 2 + 1);
        let mut used = 0usize;
        for (i, (text, style)) in cells.into_iter().enumerate() {
            let w = self.width(i);
            if i > 0 {
                spans.push(Span::raw(" "));
                used += 1;
            }
            spans.push(Span::styled(
                fit(&text, w, self.right.get(i).copied().unwrap_or(false)),
                style,
            ));
            used += w as usize;
        }
        let rest = (self.total as usize).saturating_sub(used);
        if rest > 0 {
            spans.push(Span::raw(" ".repeat(rest)));
        }
        Line::from(spans)
    }

    pub fn header(&self, titles: &[&str], style: ratatui::style::Style) -> Line<'static> {
        self.line(titles.iter().map(|t| (t.to_string(), style)).collect())
    }
}
