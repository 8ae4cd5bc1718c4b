//! Keys to actions. Context-free: what a key means in a mode (a confirmation, the help) is
//! decided by `update`, so this table is the whole keymap.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::action::Action;
use crate::view::View;

pub fn map_key(key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    if key.modifiers.contains(KeyModifiers::CONTROL) {
        return match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') => Some(Action::Quit),
            _ => None,
        };
    }
    Some(match key.code {
        KeyCode::Char('q') => Action::Quit,
        KeyCode::Char('?') => Action::ToggleHelp,
        KeyCode::Esc => Action::Back,
        KeyCode::Enter => Action::Enter,
        KeyCode::Tab => Action::NextView,
        KeyCode::BackTab => Action::PrevView,
        KeyCode::Up | KeyCode::Char('k') => Action::Up,
        KeyCode::Down | KeyCode::Char('j') => Action::Down,
        KeyCode::Left | KeyCode::Char('h') => Action::Left,
        KeyCode::Right | KeyCode::Char('l') => Action::Right,
        KeyCode::PageUp => Action::PageUp,
        KeyCode::PageDown => Action::PageDown,
        KeyCode::Home | KeyCode::Char('g') => Action::Home,
        KeyCode::End | KeyCode::Char('G') => Action::End,
        KeyCode::Char('1') => Action::ShowView(View::Overview),
        KeyCode::Char('2') => Action::ShowView(View::Job),
        KeyCode::Char('3') => Action::ShowView(View::Workers),
        KeyCode::Char('4') => Action::ShowView(View::Ledger),
        KeyCode::Char('5') => Action::ShowView(View::Studios),
        KeyCode::Char('c') => Action::CancelJob,
        KeyCode::Char('r') => Action::RetryJob,
        KeyCode::Char('d') => Action::DrainWorker,
        KeyCode::Char('y') | KeyCode::Char('Y') => Action::Confirm(true),
        KeyCode::Char('n') | KeyCode::Char('N') => Action::Confirm(false),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_actions() {
        assert_eq!(map_key(key(KeyCode::Char('q'))), Some(Action::Quit));
        assert_eq!(
            map_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(map_key(key(KeyCode::Char('c'))), Some(Action::CancelJob));
        assert_eq!(map_key(key(KeyCode::Char('j'))), Some(Action::Down));
        assert_eq!(map_key(key(KeyCode::Up)), Some(Action::Up));
        assert_eq!(map_key(key(KeyCode::Tab)), Some(Action::NextView));
        assert_eq!(map_key(key(KeyCode::Char('?'))), Some(Action::ToggleHelp));
        assert_eq!(
            map_key(key(KeyCode::Char('3'))),
            Some(Action::ShowView(View::Workers))
        );
        assert_eq!(
            map_key(key(KeyCode::Char('5'))),
            Some(Action::ShowView(View::Studios))
        );
        assert_eq!(map_key(key(KeyCode::Char('x'))), None);
        let mut release = key(KeyCode::Char('q'));
        release.kind = KeyEventKind::Release;
        assert_eq!(map_key(release), None);
    }
}
