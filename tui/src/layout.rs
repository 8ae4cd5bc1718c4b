//! Screen geometry that the state needs as well as the drawing: the job view's grid moves its
//! selection by rows and pages, so [`crate::state::update`] must know how many cells a row and
//! a page hold on the current terminal. Kept apart from `ui` so that pure state code never
//! imports drawing code; `ui::job` lays the grid out with the same numbers.

/// Job view: lines above the grid (name and figures, progress, legend).
pub const JOB_HEADER_H: u16 = 3;
/// Job view: the task details below the grid (a title rule and six lines).
pub const JOB_DETAIL_H: u16 = 7;

/// Job view: width of the grid's column (the rest is the preview).
pub fn job_left_width(width: u16) -> u16 {
    width * 11 / 20
}

/// Cells per grid row and grid rows on a terminal of `size` (tab and status bars included):
/// update() moves the selection by rows with it, draw() lays the grid out with it.
pub fn grid_size((width, height): (u16, u16)) -> (u16, u16) {
    let cols = job_left_width(width).saturating_sub(1).max(1);
    let rows = height
        .saturating_sub(2 + JOB_HEADER_H + JOB_DETAIL_H + 1)
        .max(1);
    (cols, rows)
}
