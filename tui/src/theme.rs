//! Colours, and how to do without them. With `NO_COLOR` set every style keeps only its
//! modifiers (bold, reversed), and every state also has its own glyph, so nothing on the screen
//! is told apart by colour alone.

use ratatui::style::{Color, Modifier, Style};
use suanli_shared::protocol::{JobState, TaskState, WorkerState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    /// Colour unless `NO_COLOR` is set to a non-empty value (<https://no-color.org>).
    pub fn from_env() -> Self {
        Self {
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    pub const fn plain() -> Self {
        Self { color: false }
    }

    pub const fn colored() -> Self {
        Self { color: true }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    pub fn normal(&self) -> Style {
        Style::new()
    }

    pub fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    pub fn header(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    pub fn title(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }

    pub fn good(&self) -> Style {
        self.fg(Color::Green)
    }

    pub fn warn(&self) -> Style {
        self.fg(Color::Yellow).add_modifier(Modifier::BOLD)
    }

    pub fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    /// The disconnected banner: impossible to miss with or without colour.
    pub fn banner(&self) -> Style {
        if self.color {
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD)
        } else {
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
        }
    }

    pub fn cached(&self) -> Style {
        self.fg(Color::Blue)
    }

    pub fn job_state(&self, s: JobState) -> Style {
        match s {
            JobState::Queued => self.dim(),
            JobState::Running => self.fg(Color::Yellow),
            JobState::Done => self.good(),
            JobState::Failed => self.error(),
            JobState::Canceled => self.fg(Color::Magenta),
        }
    }

    pub fn worker_state(&self, s: WorkerState) -> Style {
        match s {
            WorkerState::Idle => self.normal(),
            WorkerState::Rendering => self.good(),
            WorkerState::Draining => self.warn(),
            WorkerState::Lost => self.error(),
        }
    }

    /// Style of a task cell; `None` is a task whose record is not loaded yet.
    pub fn task_state(&self, s: Option<TaskState>) -> Style {
        match s {
            None => self.dim(),
            Some(TaskState::Pending) => self.dim(),
            Some(TaskState::Queued) => self.normal(),
            Some(TaskState::Running) => self.fg(Color::Yellow),
            Some(TaskState::Done) => self.good(),
            Some(TaskState::Cached) => self.cached(),
            Some(TaskState::Failed) => self.error(),
            Some(TaskState::Canceled) => self.fg(Color::Magenta),
        }
    }
}

/// The glyph of a task in the frame grid (shown with or without colour).
pub fn task_glyph(s: Option<TaskState>) -> char {
    match s {
        None => ' ',
        Some(TaskState::Pending) => '·',
        Some(TaskState::Queued) => '○',
        Some(TaskState::Running) => '▸',
        Some(TaskState::Done) => '█',
        Some(TaskState::Cached) => '▒',
        Some(TaskState::Failed) => '✗',
        Some(TaskState::Canceled) => '-',
    }
}
