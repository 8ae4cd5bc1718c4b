//! Exit codes and the one mapping from an error to a code, so every command (and `demo`)
//! ends the same way and scripts can tell bad input from a failed job from a broken farm.
//!
//! 0 success; 1 an error (NATS, store, coordinator); 2 bad input (refused before anything is
//! enqueued); 3 the job ended `failed` or `canceled`, or frames are missing; 4 `wait` timed out.

use suanli_shared::protocol::{JobState, JobStatus};

use crate::client::ClientError;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_JOB_FAILED: u8 = 3;
pub const EXIT_TIMEOUT: u8 = 4;

/// Errors that mean the user's input was refused (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The exit code of a command that failed with `e`: bad input when anything in its chain is a
/// [`BadInput`] or a request the coordinator refused as bad, otherwise a plain error.
pub fn code_of(e: &anyhow::Error) -> u8 {
    let bad = e.chain().any(|c| {
        c.downcast_ref::<BadInput>().is_some()
            || c.downcast_ref::<ClientError>()
                .is_some_and(|c| c.is_bad_request())
    });
    if bad {
        EXIT_BAD_INPUT
    } else {
        EXIT_ERROR
    }
}

/// Exit code of a job that ended in `s`: 0 only when every frame is done.
pub fn of_ended_job(s: &JobStatus) -> u8 {
    if s.state == JobState::Done {
        0
    } else {
        EXIT_JOB_FAILED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_anywhere_in_the_chain_is_exit_2() {
        let e = anyhow::Error::new(BadInput("no region".into())).context("starting a worker");
        assert_eq!(code_of(&e), EXIT_BAD_INPUT);
        assert_eq!(code_of(&anyhow::anyhow!("nats is down")), EXIT_ERROR);
    }
}
