//! View tests: fixed farm states drawn into ratatui's `TestBackend`, compared line by line with
//! the screen an operator should see. The states come from `suanli_tui::fixtures`; colour is
//! off (as with `NO_COLOR`) except where a test is about colour.

use ratatui::backend::TestBackend;
use ratatui::style::Color;
use ratatui::Terminal;
use suanli_shared::protocol::api::TasksPage;
use suanli_shared::protocol::TaskState;
use suanli_tui::fixtures::{self, NOW};
use suanli_tui::preview::Thumb;
use suanli_tui::state::Connection;
use suanli_tui::{update, Action, Effect, State, Theme, View};

fn terminal(state: &State) -> Terminal<TestBackend> {
    let (w, h) = state.size;
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| suanli_tui::ui::draw(f, state)).unwrap();
    t
}

/// The screen as text lines (trailing spaces kept: column alignment is part of the view).
fn screen(state: &State) -> Vec<String> {
    let t = terminal(state);
    let buf = t.backend().buffer();
    (0..buf.area.height)
        .map(|y| {
            (0..buf.area.width)
                .map(|x| buf[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

/// Compares screens; on a mismatch prints the actual screen as a Rust array, to review.
fn assert_screen(state: &State, expected: &[&str]) {
    let actual = screen(state);
    if actual != expected {
        let mut msg = String::from("screen differs; actual:\n");
        for l in &actual {
            msg.push_str(&format!("        {l:?},\n"));
        }
        panic!("{msg}");
    }
}

fn farm(size: (u16, u16)) -> State {
    fixtures::farm_state(Theme::plain(), size, true)
}

/// The running job opened, with task records: 0-7 cached, 8-19 rendered, 5 failed, 20-22
/// running, the rest pending.
fn job_view(size: (u16, u16)) -> State {
    let mut s = farm(size);
    update(&mut s, Action::Enter);
    let job = fixtures::job_id(3);
    let tasks = (0..48)
        .map(|i| {
            let st = match i {
                5 => TaskState::Failed,
                0..=7 => TaskState::Cached,
                8..=19 => TaskState::Done,
                20..=22 => TaskState::Running,
                _ => TaskState::Pending,
            };
            let mut t = fixtures::task(&job, i, st, "guian", "guian-1");
            if i == 5 {
                t.attempt = 1;
                t.region = Some(fixtures::region("ulanqab"));
                t.worker = Some(fixtures::worker_id("ulanqab-1"));
                t.failures = vec![
                    fixtures::failure("guian", "guian-2", 0),
                    fixtures::failure("ulanqab", "ulanqab-1", 1),
                ];
            }
            t
        })
        .collect();
    let page = TasksPage {
        total: 48,
        offset: 0,
        tasks,
    };
    update(&mut s, Action::Tasks { job, page });
    s
}

#[test]
fn overview_shows_regions_jobs_throughput_and_events() {
    let s = farm((80, 24));
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Regions ───────────────────────────────────────────────────────────────────────",
            "REGION    WORKERS   SLOTS UTIL        LAST 1m           QUEUE FR/MIN  PRICE  PUE",
            "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄▄▄     3      1  0.080 1.12",
            "ulanqab       1/2     1/2 █▌      25%      ▂▂▂▂▂▂▂▂▂▂▂▂     1      1  0.060 1.25",
            " Jobs 3 · 1 active ─────────────────────────────────────────────────────────────",
            "JOB          STATE    PRI PROGRESS    FRAMES CACHED    ETA ELAPSED CORE-H   COST",
            "shot010-lig… running    0 ██▒✗····     20/48      8   ~23s  10m00s  1.200   0.08",
            "shot009      done       0 ▒▒▒▒▒▒▒▒     24/24     24      —   9m00s      0   0.00",
            "shot001-pre… failed     0 ███████✗      9/10      0      —   9m58s  1.800   0.14",
            " Farm     2 frames/min          ▁▁▁▁▁▁▁▁▁▁██▁ 3 running · 0 queued · 24 pending ",
            " Events (UTC) ──────────────────────────────────────────────────────────────────",
            "15:05:40   connected: 4 workers, 3 jobs                                         ",
            "15:06:40 ✗ worker ulanqab/ulanqab-2 lost: no heartbeat for 45s                  ",
            "15:06:40   guian/guian-1: shot010-lighting frame 19 in 3.0s                     ",
            "15:06:40 ✗ ulanqab/ulanqab-1: shot010-lighting task 5 failed, attempt 1: rendere",
            "15:06:40   ulanqab/ulanqab-1: shot010-lighting frame 20 in 2.0s                 ",
            "15:06:40 ✗ job shot001-previs is failed: task 9 failed 3 times                  ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · c cancel · r retry · Tab views              15:06:40 UTC ",
        ],
    );
}

#[test]
fn job_lists_name_the_studio_of_jobs_not_in_the_default_one() {
    let mut s = farm((80, 24));
    s.jobs[1].studio = "acme".parse().unwrap();
    let lines = screen(&s);
    assert!(
        lines.iter().any(|l| l.starts_with("acme/shot009 ")),
        "{lines:#?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("shot010-lig… ")));
    update(&mut s, Action::Down);
    update(&mut s, Action::Enter);
    let lines = screen(&s);
    assert!(
        lines.iter().any(|l| l.starts_with(" acme/shot009 done")),
        "{lines:#?}"
    );
}

#[test]
fn overview_without_a_catalog_shows_dashes_for_price_pue_and_cost() {
    let s = fixtures::farm_state(Theme::plain(), (80, 24), false);
    let lines = screen(&s);
    assert_eq!(
        &lines[3],
        "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄▄▄     3      1      —    —"
    );
    assert_eq!(
        &lines[7],
        "shot010-lig… running    0 ██▒✗····     20/48      8   ~23s  10m00s  1.200      —"
    );
}

#[test]
fn job_view_shows_the_frame_grid_the_selected_failure_and_a_preview() {
    let mut s = job_view((80, 24));
    for _ in 0..5 {
        update(&mut s, Action::Right);
    }
    // The job opened on task 0, whose frame was requested; task 5 failed and has no frame,
    // so the preview moves to the last rendered one (task 19), once the first download lands.
    let first = s
        .preview
        .clone()
        .expect("a preview was requested when the job opened");
    assert_eq!((first.frame, first.name.as_str()), (1, "frame_0001.png"));
    assert!(update(&mut s, Action::Tick { now_ms: NOW + 500 }).is_empty());
    let fx = update(
        &mut s,
        Action::Preview {
            key: first.key,
            name: first.name,
            result: Err("gone".into()),
        },
    );
    let p = s.preview.clone().unwrap();
    assert_eq!((p.frame, p.name.as_str()), (20, "frame_0020.png"));
    assert!(matches!(&fx[..], [Effect::LoadPreview { file, .. }] if file.frame == 20));
    // A horizontal black-to-white gradient, drawn with the luminance ramp without colour.
    let thumb = Thumb {
        width: 16,
        height: 8,
        rgb: (0..8)
            .flat_map(|_| (0..16u32).flat_map(|x| [(x * 17) as u8; 3]))
            .collect(),
        source: (320, 180),
    };
    update(
        &mut s,
        Action::Preview {
            key: p.key,
            name: p.name.clone(),
            result: Ok(thumb),
        },
    );
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " shot010-lighting running  eta ~23s · elapsed 10m01s · 1.200 core-h · cost 0.08 ",
            " ██████████▒▒▒▒▒▒▒✗······················ 20/48 frames · 8 cached · 1 failed    ",
            " █ done 12  ▒ cached 7  ▸ running 3  ○ queued 0  · pending 25  ✗ failed 1       ",
            " 48 tasks · task 5 ───────────────────────── Frame 20 · frame_0020.png ─────────",
            "▒▒▒▒▒✗▒▒████████████▸▸▸····················                                     ",
            "·····                                          ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                               ....:::::--====+++++**#####%%%%@@",
            "                                                                                ",
            " Task 5 · frames 6 · key 5d0cf45879fe ──────────────────────────────────────────",
            " ✗ failed · attempt 2 · ulanqab/ulanqab-1 · 5.000 core-s · 0 B in               ",
            " 2 failures · last: attempt 2 on ulanqab/ulanqab-1, exit 1: renderer exited with",
            " │ loading scene                                                                ",
            " │ building BVH                                                                 ",
            " │ error: out of memory                                                         ",
            " │ render aborted                                                               ",
            " ←→↑↓ task · Esc back · c cancel · r retry · Tab views             15:06:40 UTC ",
        ],
    );
}

#[test]
fn workers_view_lists_state_current_work_and_heartbeats() {
    let mut s = farm((80, 24));
    update(&mut s, Action::ShowView(View::Workers));
    update(&mut s, Action::Down);
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Workers 4 · 3 live ────────────────────────────────────────────────────────────",
            "WORKER      REGION    STATE     SLOTS CURRENT           CORE-S  BEAT RENDERERS  ",
            "guian-1     guian     rendering   2/2 f21 50% f22 25%…    1234    1s builtin su…",
            "guian-2     guian     idle        0/2                     1234    2s builtin su…",
            "ulanqab-1   ulanqab   rendering   1/2 f23 75% shot010…    1234    1s builtin su…",
            "ulanqab-2   ulanqab   lost        0/2                     1234   45s builtin su…",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ worker · d drain · Esc back · Tab views                        15:06:40 UTC ",
        ],
    );
}

#[test]
fn ledger_view_has_regions_jobs_and_totals() {
    let mut s = farm((80, 24));
    update(&mut s, Action::ShowView(View::Ledger));
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Ledger by region ──────────────────────────────────────────────────────────────",
            "REGION                 FRAMES   CORE-H     COST      KWH   PUE   PRICE   DATA IN",
            "guian                      15    2.400     0.19    0.027  1.12   0.080    7.5 MB",
            "ulanqab                     6    0.600     0.04    0.007  1.25   0.060    5.0 MB",
            "TOTAL                      21    3.000     0.23    0.034                 12.5 MB",
            " Ledger by job · 3 jobs ────────────────────────────────────────────────────────",
            "JOB                        STATE     FRAMES   CORE-H     COST      KWH   DATA IN",
            "shot010-lighting           running       12    1.200     0.08    0.014    7.5 MB",
            "shot009                    done           0        0     0.00    0.000    2.5 MB",
            "shot001-previs             failed         9    1.800     0.14    0.020    2.5 MB",
            "TOTAL                                    21    3.000     0.23    0.034   12.5 MB",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · Esc back · Tab views                        15:06:40 UTC ",
        ],
    );
}

#[test]
fn help_overlay_lists_every_key() {
    let mut s = farm((80, 24));
    update(&mut s, Action::ToggleHelp);
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Regions ───────────────────────────────────────────────────────────────────────",
            "REGION    WORKERS   SLOTS UTIL        LAST 1m           QUEUE FR/MIN  PRICE  PUE",
            "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄▄▄     3      1  0.080 1.12",
            "ulanqab  ┌ Keys ──────────────────────────────────────────────────────┐.060 1.25",
            " Jobs 3 ·│ Tab / Shift-Tab    next / previous view                    │─────────",
            "JOB      │ 1 2 3 4 5          Overview, Job, Workers, Ledger, Studios │-H   COST",
            "shot010-l│ ↑ ↓  or  k j       select a job, worker or task row        │00   0.08",
            "shot009  │ ← →  or  h l       select a task (job view)                │ 0   0.00",
            "shot001-p│ PgUp PgDn Home End move a page, to the ends                │00   0.14",
            " Farm    │ Enter              open the selected job                   │ pending ",
            " Events (│ Esc                back to the overview, close this        │─────────",
            "15:05:40 │ c                  cancel the selected job (asks first)    │         ",
            "15:06:40 │ r                  retry its failed tasks (asks first)     │         ",
            "15:06:40 │ d                  drain the selected worker (asks first)  │         ",
            "15:06:40 │ ?                  show or hide this help                  │: rendere",
            "15:06:40 │ q  or  Ctrl-C      quit                                    │         ",
            "15:06:40 │                                                            │         ",
            "         │ Actions go through the coordinator's API, like the CLI.    │         ",
            "         └────────────────────────────────────────────────────────────┘         ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · c cancel · r retry · Tab views              15:06:40 UTC ",
        ],
    );
}

#[test]
fn a_lost_connection_shows_the_banner_over_the_last_data() {
    let mut s = farm((80, 24));
    update(
        &mut s,
        Action::PollFailed {
            error: "NATS connection lost, reconnecting".into(),
            at_ms: NOW + 1_000,
        },
    );
    update(
        &mut s,
        Action::Tick {
            now_ms: NOW + 12_000,
        },
    );
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " DISCONNECTED (data 12s old, retrying): NATS connection lost, reconnecting      ",
            " Regions ───────────────────────────────────────────────────────────────────────",
            "REGION    WORKERS   SLOTS UTIL        LAST 1m           QUEUE FR/MIN  PRICE  PUE",
            "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄       3      1  0.080 1.12",
            "ulanqab       1/2     1/2 █▌      25%      ▂▂▂▂▂▂▂▂▂▂       1      1  0.060 1.25",
            " Jobs 3 · 1 active ─────────────────────────────────────────────────────────────",
            "JOB          STATE    PRI PROGRESS    FRAMES CACHED    ETA ELAPSED CORE-H   COST",
            "shot010-lig… running    0 ██▒✗····     20/48      8   ~23s  10m12s  1.200   0.08",
            "shot009      done       0 ▒▒▒▒▒▒▒▒     24/24     24      —   9m00s      0   0.00",
            "shot001-pre… failed     0 ███████✗      9/10      0      —   9m58s  1.800   0.14",
            " Farm     2 frames/min        ▁▁▁▁▁▁▁▁▁▁██▁▁▁ 3 running · 0 queued · 24 pending ",
            " Events (UTC) ──────────────────────────────────────────────────────────────────",
            "15:05:40   connected: 4 workers, 3 jobs                                         ",
            "15:06:40 ✗ worker ulanqab/ulanqab-2 lost: no heartbeat for 45s                  ",
            "15:06:40   guian/guian-1: shot010-lighting frame 19 in 3.0s                     ",
            "15:06:40 ✗ ulanqab/ulanqab-1: shot010-lighting task 5 failed, attempt 1: rendere",
            "15:06:40   ulanqab/ulanqab-1: shot010-lighting frame 20 in 2.0s                 ",
            "15:06:40 ✗ job shot001-previs is failed: task 9 failed 3 times                  ",
            "15:06:40 ✗ disconnected: NATS connection lost, reconnecting                     ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · c cancel · r retry · Tab views              15:06:52 UTC ",
        ],
    );
    // The next good poll takes the banner away.
    let mut snap = fixtures::farm_snapshot();
    snap.at_ms = NOW + 13_000;
    update(&mut s, Action::Polled(Box::new(snap)));
    assert_eq!(s.connection, Connection::Up);
    assert!(!screen(&s)[1].contains("DISCONNECTED"));
}

#[test]
fn cancel_asks_for_confirmation_in_a_dialog() {
    let mut s = farm((80, 24));
    assert!(update(&mut s, Action::CancelJob).is_empty());
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Regions ───────────────────────────────────────────────────────────────────────",
            "REGION    WORKERS   SLOTS UTIL        LAST 1m           QUEUE FR/MIN  PRICE  PUE",
            "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄▄▄     3      1  0.080 1.12",
            "ulanqab       1/2     1/2 █▌      25%      ▂▂▂▂▂▂▂▂▂▂▂▂     1      1  0.060 1.25",
            " Jobs 3 · 1 active ─────────────────────────────────────────────────────────────",
            "JOB          STATE    PRI PROGRESS    FRAMES CACHED    ETA ELAPSED CORE-H   COST",
            "shot010-lig… running    0 ██▒✗····     20/48      8   ~23s  10m00s  1.200   0.08",
            "shot009      done       0 ▒▒▒▒▒▒▒▒     24/24     24      —   9m00s      0   0.00",
            "shot001-┌ Confirm ─────────────────────────────────────────────────────┐0   0.14",
            " Farm   │Cancel job shot010-lighting?                                  │pending ",
            " Events │Running renders stop; pending tasks are dropped.              │────────",
            "15:05:40│                                                              │        ",
            "15:06:40│y: yes    n or Esc: no                                        │        ",
            "15:06:40└──────────────────────────────────────────────────────────────┘        ",
            "15:06:40 ✗ ulanqab/ulanqab-1: shot010-lighting task 5 failed, attempt 1: rendere",
            "15:06:40   ulanqab/ulanqab-1: shot010-lighting frame 20 in 2.0s                 ",
            "15:06:40 ✗ job shot001-previs is failed: task 9 failed 3 times                  ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · c cancel · r retry · Tab views              15:06:40 UTC ",
        ],
    );
    let fx = update(&mut s, Action::Confirm(true));
    assert_eq!(
        fx,
        vec![Effect::Cancel {
            job: fixtures::job_id(3),
            name: "shot010-lighting".into()
        }]
    );
}

#[test]
fn no_color_means_no_colour_anywhere() {
    for view in View::ALL {
        let mut s = job_view((80, 24));
        update(&mut s, Action::ShowView(view));
        let t = terminal(&s);
        for cell in t.backend().buffer().content() {
            assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "{view:?}");
        }
    }
    // With colour, failures are red.
    let s = fixtures::farm_state(Theme::colored(), (80, 24), true);
    let t = terminal(&s);
    let buf = t.backend().buffer();
    let lost_line = (0..24)
        .find(|y| {
            (0..80)
                .map(|x| buf[(x, *y)].symbol())
                .collect::<String>()
                .contains("lost: no heartbeat")
        })
        .expect("the lost worker is in the event log");
    assert_eq!(buf[(11, lost_line)].fg, Color::Red);
}

#[test]
fn every_view_draws_at_any_size() {
    for (w, h) in [
        (80, 24),
        (120, 40),
        (200, 60),
        (60, 16),
        (40, 10),
        (20, 3),
        (10, 2),
    ] {
        for view in View::ALL {
            let mut s = job_view((w, h));
            update(&mut s, Action::ShowView(view));
            update(
                &mut s,
                Action::Resize {
                    width: w,
                    height: h,
                },
            );
            let lines = screen(&s);
            assert_eq!(lines.len(), h as usize);
            if w >= 40 && h >= 10 {
                assert!(lines[0].contains("Suanli"), "{w}x{h} {view:?}");
            }
            update(&mut s, Action::ToggleHelp);
            assert_eq!(screen(&s).len(), h as usize);
        }
    }
    let s = farm((10, 2));
    assert_eq!(screen(&s)[0], "suanli: te");
}

#[test]
fn the_job_grid_scrolls_to_the_selected_task() {
    // 2,000 tasks at 80x24 (43 per row, 11 rows): End shows the last page.
    let mut s = farm((80, 24));
    let job = fixtures::job_id(3);
    s.jobs[0].tasks.total = 2000;
    update(&mut s, Action::Enter);
    let tasks = (0..500)
        .map(|i| fixtures::task(&job, 1500 + i, TaskState::Done, "guian", "guian-1"))
        .collect();
    let page = TasksPage {
        total: 2000,
        offset: 1500,
        tasks,
    };
    update(&mut s, Action::Tasks { job, page });
    update(&mut s, Action::End);
    let lines = screen(&s);
    assert!(lines[4].contains("2000 tasks · task 1999"), "{}", lines[4]);
    // Page of rows 44..=54 holds tasks 1892..=1999: all rendered, the last row partial.
    let grid = |y: usize| lines[y].chars().take(43).collect::<String>();
    let last_row = 1999 / 43 - 1999 / 43 / 11 * 11;
    assert_eq!(grid(5 + last_row).trim_end(), "█".repeat(1999 % 43 + 1));
    assert_eq!(grid(5), "█".repeat(43));
}

#[test]
fn studios_view_shows_shares_spend_and_budget_gauges() {
    let mut s = fixtures::studios_state(Theme::plain(), (100, 12));
    update(&mut s, Action::ShowView(View::Studios));
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios                          ? help  q quit ",
            " Studios 3 · budgets for 2026-11 in CNY ────────────────────────────────────────────────────────────",
            "STUDIO                JOBS  IN FLT  SHARE   CORE-H     COST MONTH            SPENT / BUDGET AT LIMIT",
            "acme                     1       3   100%    1.200     0.08 ██████▌   82%     41.00 / 50.00 stop    ",
            "bolt                     1       0     0%    1.800     0.14 ████████ 125%     12.50 / 10.00 warn    ",
            "default                  1       0     0%        0     0.00 no budget                               ",
            "                                                                                                    ",
            "                                                                                                    ",
            "                                                                                                    ",
            "                                                                                                    ",
            "                                                                                                    ",
            " Esc back · Tab views                                                                  15:06:40 UTC ",
        ],
    );
}

#[test]
fn overview_shows_a_budget_gauge_per_studio() {
    let s = fixtures::studios_state(Theme::plain(), (80, 24));
    assert_screen(
        &s,
        &[
            " Suanli   1 Overview  2 Job  3 Workers  4 Ledger  5 Studios      ? help  q quit ",
            " Regions ───────────────────────────────────────────────────────────────────────",
            "REGION    WORKERS   SLOTS UTIL        LAST 1m           QUEUE FR/MIN  PRICE  PUE",
            "guian         2/2     2/4 ███     50%      ▄▄▄▄▄▄▄▄▄▄▄▄     3      1  0.080 1.12",
            "ulanqab       1/2     1/2 █▌      25%      ▂▂▂▂▂▂▂▂▂▂▂▂     1      1  0.060 1.25",
            " Jobs 3 · 1 active ─────────────────────────────────────────────────────────────",
            "JOB          STATE    PRI PROGRESS    FRAMES CACHED    ETA ELAPSED CORE-H   COST",
            "acme/shot01… running    0 ██▒✗····     20/48      8   ~23s  10m00s  1.200   0.08",
            "shot009      done       0 ▒▒▒▒▒▒▒▒     24/24     24      —   9m00s      0   0.00",
            "bolt/shot00… failed     0 ███████✗      9/10      0      —   9m00s  1.800   0.14",
            " Farm     2 frames/min          ▁▁▁▁▁▁▁▁▁▁██▁ 3 running · 0 queued · 24 pending ",
            " Budgets  acme ████▉   82%  bolt ██████ 125%                                    ",
            " Events (UTC) ──────────────────────────────────────────────────────────────────",
            "15:05:40   connected: 4 workers, 3 jobs                                         ",
            "15:06:40 ✗ worker ulanqab/ulanqab-2 lost: no heartbeat for 45s                  ",
            "15:06:40   guian/guian-1: shot010-lighting frame 19 in 3.0s                     ",
            "15:06:40 ✗ ulanqab/ulanqab-1: shot010-lighting task 5 failed, attempt 1: rendere",
            "15:06:40   ulanqab/ulanqab-1: shot010-lighting frame 20 in 2.0s                 ",
            "15:06:40 ✗ job shot001-previs is failed: task 9 failed 3 times                  ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            "                                                                                ",
            " ↑↓ job · Enter open · c cancel · r retry · Tab views              15:06:40 UTC ",
        ],
    );
}

#[test]
fn gpus_show_in_the_regions_and_workers_views_and_requirements_in_the_job_view() {
    use suanli_shared::protocol::{Gpu, Requirements, Resources};
    let mut s = farm((100, 24));
    // Before any worker has a GPU there is no GPUS column at all.
    assert!(!screen(&s).iter().any(|l| l.contains("GPUS")));
    let card = |index| Gpu {
        index,
        name: "NVIDIA GeForce RTX 4090".into(),
        memory_mib: 24564,
        uuid: String::new(),
    };
    let w = s
        .workers
        .iter_mut()
        .find(|w| w.id.as_str() == "guian-1")
        .unwrap();
    w.resources = Some(Resources {
        cores: 16,
        memory_mib: 64 * 1024,
        gpus: vec![card(0), card(1)],
        tags: Vec::new(),
    });
    w.gpus_busy = 1;
    let lines = screen(&s);
    let header = lines.iter().find(|l| l.contains("REGION")).unwrap();
    assert!(header.contains("GPUS"), "{header}");
    let guian = lines.iter().find(|l| l.starts_with("guian")).unwrap();
    assert!(guian.contains("1/2 24G"), "{guian}");
    let ulanqab = lines.iter().find(|l| l.starts_with("ulanqab")).unwrap();
    assert!(ulanqab.contains(" - "), "{ulanqab}");

    update(&mut s, Action::ShowView(View::Workers));
    let lines = screen(&s);
    assert!(lines.iter().any(|l| l.contains("GPUS")), "{lines:#?}");
    let g1 = lines.iter().find(|l| l.starts_with("guian-1")).unwrap();
    assert!(g1.contains("1/2 24G"), "{g1}");
    let g2 = lines.iter().find(|l| l.starts_with("guian-2")).unwrap();
    assert!(g2.contains(" - "), "{g2}");

    // The open job's requirements, and why its tasks wait.
    let mut s = job_view((120, 30));
    let job = s
        .jobs
        .iter_mut()
        .find(|j| j.id == fixtures::job_id(3))
        .unwrap();
    job.requirements = Requirements {
        gpus: 1,
        gpu_memory_mib: Some(48 * 1024),
        ..Default::default()
    };
    job.waiting = Some("no live worker meets its requirements: gpu_memory = 48 GiB".into());
    let lines = screen(&s);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("needs gpus = 1, gpu_memory = 48 GiB")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("no live worker meets its requirements")),
        "{lines:#?}"
    );
}

#[test]
fn the_job_view_shows_how_much_input_each_pre_staging_region_holds() {
    use suanli_shared::protocol::InputPresence;
    let mut s = job_view((120, 30));
    // Nothing is said while no region was asked.
    assert!(!screen(&s).iter().any(|l| l.contains("inputs ")));
    let job = s
        .jobs
        .iter_mut()
        .find(|j| j.id == fixtures::job_id(3))
        .unwrap();
    let presence = |present, done| InputPresence {
        present_bytes: present,
        total_bytes: 400,
        moved_bytes: present,
        done,
    };
    job.inputs_in.insert("guian".into(), presence(100, false));
    job.inputs_in.insert("ulanqab".into(), presence(400, true));
    let lines = screen(&s);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("· inputs guian 25%, ulanqab 100%")),
        "{lines:#?}"
    );
}
