//! The terminal's screens, in tab order. A module of its own because both the vocabulary
//! ([`crate::action::Action::ShowView`]) and the state (the view shown) name them: with it
//! here, `action` needs nothing from `state`, and dependencies run one way.

/// One screen of the terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum View {
    Overview,
    Job,
    Workers,
    Ledger,
    Studios,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Overview,
        View::Job,
        View::Workers,
        View::Ledger,
        View::Studios,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Job => "Job",
            View::Workers => "Workers",
            View::Ledger => "Ledger",
            View::Studios => "Studios",
        }
    }

    pub(crate) fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}
