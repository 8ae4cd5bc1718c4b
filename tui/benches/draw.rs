//! How long the terminal takes to fold a second's worth of farm news into its state and draw
//! a frame, on a big farm: 1,000 workers in 10 regions, 100 jobs, and 100,000 task records
//! (one job of 100,000 tasks open in the job view; the 99 others are in the jobs table).
//!
//! `cargo bench -p suanli-tui --bench draw`. Frames are drawn into ratatui's `TestBackend`
//! (the same buffers and diff as a real terminal, without the terminal's own I/O). Each figure
//! is the median of many runs; the target is under 10 ms for update + draw.

use std::time::{Duration, Instant};

use ratatui::backend::TestBackend;
use ratatui::Terminal;
use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::{CurrentTask, JobState, TaskState, WorkerState};
use suanli_shared::FrameChunk;
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::{update, Action, FarmEvent, Snapshot, State, Theme, View};

const REGIONS: usize = 10;
const WORKERS: usize = 1_000;
const JOBS: u32 = 100;
const BIG_JOB_TASKS: u32 = 100_000;
const EVENTS_PER_UPDATE: u32 = 100;
const RUNS: usize = 60;

fn region_name(i: usize) -> String {
    format!("region-{i:02}")
}

fn snapshot(at_ms: u64) -> Snapshot {
    let mut jobs = Vec::new();
    for n in 0..JOBS {
        let (total, state) = if n == 0 {
            (BIG_JOB_TASKS, JobState::Running)
        } else if n % 3 == 0 {
            (1_000, JobState::Done)
        } else {
            (1_000, JobState::Running)
        };
        let done = if state == JobState::Done {
            total
        } else {
            total / 2
        };
        let regions: Vec<String> = (0..REGIONS).map(region_name).collect();
        let regions: Vec<&str> = regions.iter().map(|s| s.as_str()).collect();
        jobs.push(fixtures::job(
            JOBS - n,
            &format!("shot{n:03}-comp"),
            state,
            total,
            done,
            done / 10,
            1,
            if state == JobState::Running { 10 } else { 0 },
            &regions,
            120.0,
        ));
    }
    let workers = (0..WORKERS)
        .map(|i| {
            let r = region_name(i % REGIONS);
            let lost = i % 97 == 0;
            let mut w = fixtures::worker(
                &r,
                &format!("{r}-w{i:04}"),
                4,
                if lost { 0 } else { 3 },
                if lost {
                    WorkerState::Lost
                } else {
                    WorkerState::Rendering
                },
                if lost { 60_000 } else { 1_000 },
            );
            if !lost {
                w.current = (0..3)
                    .map(|k| CurrentTask {
                        job: fixtures::job_id(JOBS - (i as u32 % JOBS)),
                        task: (i * 3 + k) as u32,
                        chunk: FrameChunk::single((i * 3 + k) as u32 + 1),
                        fraction: 0.4,
                    })
                    .collect();
            }
            w
        })
        .collect();
    let depths = (0..REGIONS)
        .map(|i| (fixtures::region(&region_name(i)), 40))
        .collect();
    Snapshot {
        at_ms,
        jobs,
        workers,
        depths,
    }
}

/// The farm after a minute of watching, with the big job open and every record loaded.
fn big_state(size: (u16, u16)) -> (State, Duration) {
    let mut s = State::new(Theme::colored(), NOW - 60_000, size);
    update(&mut s, Action::Polled(Box::new(snapshot(NOW - 60_000))));
    update(
        &mut s,
        Action::Catalog(Some(
            (0..REGIONS)
                .map(|i| fixtures::profile(&region_name(i), 0.05 + i as f64 * 0.01, 1.1))
                .collect(),
        )),
    );
    for t in 0..60 {
        update(
            &mut s,
            Action::Tick {
                now_ms: NOW - 60_000 + t * 1000,
            },
        );
    }
    update(&mut s, Action::Polled(Box::new(snapshot(NOW))));
    update(&mut s, Action::Enter);
    let job = fixtures::job_id(JOBS);
    let mut pages = Vec::new();
    for page in 0..BIG_JOB_TASKS / 500 {
        let tasks = (page * 500..(page + 1) * 500)
            .map(|i| {
                let st = match i % 10 {
                    0 => TaskState::Cached,
                    1..=4 => TaskState::Done,
                    5 => TaskState::Running,
                    6 if i % 1000 == 6 => TaskState::Failed,
                    _ => TaskState::Pending,
                };
                fixtures::task(&job, i, st, "region-00", "region-00-w0000")
            })
            .collect();
        pages.push(Action::Tasks {
            job: job.clone(),
            page: TasksPage {
                total: BIG_JOB_TASKS,
                offset: page * 500,
                tasks,
            },
        });
    }
    // Only folding the pages in is timed (decoding them is the poller's work).
    let started = Instant::now();
    for page in pages {
        update(&mut s, page);
    }
    let load = started.elapsed();
    (s, load)
}

/// A second of news: a poll of the whole farm, 100 completions, a tick.
fn news(second: u64) -> Vec<Action> {
    let at = NOW + second * 1000;
    let job = fixtures::job_id(JOBS);
    let mut out = vec![Action::Polled(Box::new(snapshot(at)))];
    for k in 0..EVENTS_PER_UPDATE {
        let idx = (second as u32 * EVENTS_PER_UPDATE + k) * 10 % BIG_JOB_TASKS + 7;
        let r = region_name(k as usize % REGIONS);
        let ev = fixtures::completed(&job, idx, &r, &format!("{r}-w0001"), at, 3_000);
        out.push(Action::Event {
            received_ms: at,
            event: Box::new(FarmEvent::Task(ev)),
        });
    }
    out.push(Action::Tick { now_ms: at });
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    println!(
        "suanli-tui draw benchmark: {WORKERS} workers in {REGIONS} regions, {JOBS} jobs, \
         {BIG_JOB_TASKS} task records in the open job; {EVENTS_PER_UPDATE} events per update; \
         median of {RUNS} runs"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for size in [(80u16, 24u16), (200, 60)] {
        let (mut state, load) = big_state(size);
        println!();
        println!(
            "terminal {}x{}: loading the open job's 200 pages of records took {}",
            size.0,
            size.1,
            ms(load)
        );
        let mut terminal = Terminal::new(TestBackend::new(size.0, size.1)).unwrap();
        for view in View::ALL {
            update(&mut state, Action::ShowView(view));
            let mut updates = Vec::with_capacity(RUNS);
            let mut draws = Vec::with_capacity(RUNS);
            let mut both = Vec::with_capacity(RUNS);
            for run in 0..RUNS {
                // Building the news (cloning 1,000 workers) is the poller's work, not the UI's.
                let actions = news(run as u64 + 1);
                let t0 = Instant::now();
                for a in actions {
                    update(&mut state, a);
                }
                let t1 = Instant::now();
                terminal.draw(|f| suanli_tui::ui::draw(f, &state)).unwrap();
                let t2 = Instant::now();
                updates.push(t1 - t0);
                draws.push(t2 - t1);
                both.push(t2 - t0);
            }
            let total = median(both);
            println!(
                "  {:<9} update {:>10}   draw {:>10}   update+draw {:>10}  {}",
                view.title(),
                ms(median(updates)),
                ms(median(draws)),
                ms(total),
                if total < Duration::from_millis(10) {
                    "(under 10 ms)"
                } else {
                    "(OVER the 10 ms target)"
                }
            );
        }
    }
}
