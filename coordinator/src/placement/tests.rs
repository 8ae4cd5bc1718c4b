//! The placement model's arithmetic: estimates, scores per policy, waiting and speeds.

use super::*;

/// A scorer with the default terms (or a value of an hour of `value_of_hour`), width 1 and no
/// patience bound.
fn scorer_at(
    policy: Policy,
    all: &[Estimate],
    deadline_in: Option<f64>,
    value_of_hour: f64,
) -> Scorer {
    let terms = Terms {
        value_of_hour,
        ..Terms::default()
    };
    let due = Due {
        deadline_in,
        fastest_in: None,
        width: 1.0,
    };
    Scorer::new(policy, all, &terms, &due)
}

fn scorer(policy: Policy, all: &[Estimate], deadline_in: Option<f64>) -> Scorer {
    scorer_at(policy, all, deadline_in, DEFAULT_VALUE_OF_HOUR)
}

fn region(name: &str, price: f64) -> RegionProfile {
    let mut p = RegionProfile::neutral(name.parse().unwrap());
    p.price_per_core_hour = price;
    p
}

fn needs(secs: f64, bytes: u64) -> TaskNeeds {
    TaskNeeds {
        core_seconds: secs,
        wall_seconds: secs,
        input_bytes: bytes,
        gpus: 0,
    }
}

#[test]
fn estimates_follow_price_speed_and_transfer() {
    let mut p = region("guian", 0.36);
    p.egress_per_gb = 0.5;
    p.bandwidth_mbps = 800.0;
    p.watts_per_core = 10.0;
    p.pue = 1.2;
    p.carbon_g_per_kwh = 500.0;
    let n = needs(3600.0, 2_000_000_000);
    let cached = Estimate::new(&p, 1.0, &n, Inputs::Held, 1.0);
    assert!((cached.money - 0.36).abs() < 1e-12);
    assert_eq!(cached.transfer_secs, 0.0);
    assert!(
        (cached.carbon_kg - 0.006).abs() < 1e-12,
        "1 core-h x 10 W x 1.2 x 500 g"
    );
    let fast = Estimate::new(&p, 2.0, &n, Inputs::Held, 1.0);
    assert!(
        (fast.money - 0.18).abs() < 1e-12,
        "twice as fast bills half"
    );
    assert_eq!(fast.render_secs, 1800.0);
    let missing = Inputs::Missing {
        link_busy_secs: 0.0,
    };
    let cold = Estimate::new(&p, 1.0, &n, missing, 1.0);
    assert!(
        (cold.money - (0.36 + 1.0)).abs() < 1e-12,
        "2 GB x 0.5 egress"
    );
    let shared = Estimate::new(&p, 1.0, &n, missing, 4.0);
    assert!(
        (shared.money - (0.36 + 0.25)).abs() < 1e-12,
        "paid once for 4 tasks"
    );
    assert_eq!(
        shared.transfer_secs, cold.transfer_secs,
        "but the first waits for all"
    );
    let queued = Inputs::Missing {
        link_busy_secs: 100.0,
    };
    let behind = Estimate::new(&p, 1.0, &n, queued, 1.0);
    assert!(
        (behind.transfer_secs - 120.0).abs() < 1e-9,
        "after the link's backlog"
    );
    let coming = Estimate::new(&p, 1.0, &n, Inputs::Arriving { secs: 7.0 }, 1.0);
    assert_eq!(
        (coming.money, coming.transfer_secs),
        (0.36, 7.0),
        "already paid for"
    );
    assert!(
        (cold.transfer_secs - 20.0).abs() < 1e-9,
        "16 Gbit over 800 Mbit/s"
    );
    assert_eq!(cold.secs(), 3620.0);
    let odd = Estimate::new(&p, f64::NAN, &n, Inputs::Held, 1.0);
    assert_eq!(odd.render_secs, 3600.0, "an unknown speed counts as 1");
}

#[test]
fn each_policy_prefers_its_own_term() {
    let cheap_slow = Estimate {
        money: 1.0,
        carbon_kg: 3.0,
        transfer_secs: 0.0,
        render_secs: 300.0,
        fetches: false,
    };
    let dear_fast = Estimate {
        money: 3.0,
        carbon_kg: 2.0,
        transfer_secs: 0.0,
        render_secs: 100.0,
        fetches: false,
    };
    let green = Estimate {
        money: 2.0,
        carbon_kg: 0.5,
        transfer_secs: 0.0,
        render_secs: 150.0,
        fetches: false,
    };
    let all = [cheap_slow, dear_fast, green];
    let best = |policy, value_of_hour| {
        let s = scorer_at(policy, &all, None, value_of_hour);
        let scores: Vec<f64> = all.iter().map(|e| s.score(e, 0.0)).collect();
        (0..3)
            .min_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            .unwrap()
    };
    let v = DEFAULT_VALUE_OF_HOUR;
    assert_eq!(best(Policy::Cheapest, v), 0);
    assert_eq!(best(Policy::Fastest, v), 1);
    assert_eq!(best(Policy::Greenest, v), 2);
    // Balanced: money + value_of_hour x hours. At 36 an hour (a cent a second): 1 + 3,
    // 3 + 1, 2 + 1.5: the middle one; at 3.6 an hour the cheap one; at 3600 the fast one.
    assert_eq!(best(Policy::Balanced, 36.0), 2);
    assert_eq!(best(Policy::Balanced, 3.6), 0);
    assert_eq!(best(Policy::Balanced, 3600.0), 1);
}

#[test]
fn deadline_risk_outweighs_everything_else() {
    let cheap_slow = Estimate {
        money: 1.0,
        carbon_kg: 0.0,
        transfer_secs: 0.0,
        render_secs: 1000.0,
        fetches: false,
    };
    let dear_fast = Estimate {
        money: 10.0,
        carbon_kg: 0.0,
        transfer_secs: 0.0,
        render_secs: 100.0,
        fetches: false,
    };
    let all = [cheap_slow, dear_fast];
    let relaxed = scorer(Policy::Cheapest, &all, Some(10_000.0));
    assert!(relaxed.score(&cheap_slow, 0.0) < relaxed.score(&dear_fast, 0.0));
    assert!(!relaxed.at_risk(&cheap_slow, 0.0));
    let tight = scorer(Policy::Cheapest, &all, Some(1000.0));
    assert!(tight.at_risk(&cheap_slow, 0.0), "1.2 x 1000 s > 1000 s");
    assert!(tight.score(&dear_fast, 0.0) < tight.score(&cheap_slow, 0.0));
    // Both late: the less late one wins.
    let past = scorer(Policy::Cheapest, &all, Some(-5.0));
    assert!(past.score(&dear_fast, 0.0) < past.score(&cheap_slow, 0.0));
}

#[test]
fn waiting_counts_match_scoring_one_by_one() {
    let cheap = Estimate {
        money: 1.0,
        carbon_kg: 0.0,
        transfer_secs: 5.0,
        render_secs: 100.0,
        fetches: false,
    };
    let dear = Estimate {
        money: 2.0,
        carbon_kg: 0.0,
        transfer_secs: 0.0,
        render_secs: 100.0,
        fetches: false,
    };
    let queue = WaitModel {
        queued: 2.0,
        live_slots: 7.0,
    };
    for policy in Policy::ALL {
        for deadline in [None, Some(400.0), Some(150.0), Some(90.0)] {
            let s = scorer_at(policy, &[cheap, dear], deadline, 36.0);
            let t = s.score(&dear, 0.0);
            for from in [0.0, 3.0] {
                let closed = s.waiting_below(&cheap, &queue, from, t);
                let mut k = from;
                while k < from + 100_000.0
                    && s.score(&cheap, queue.wait_secs(cheap.render_secs, k)) < t
                {
                    k += 1.0;
                }
                assert_eq!(
                    closed,
                    k - from,
                    "{policy} deadline {deadline:?} from {from}"
                );
            }
        }
    }
    // Balanced waits for a few tasks, cheapest for many, fastest for none.
    let count = |policy| {
        let s = scorer_at(policy, &[cheap, dear], None, 36.0);
        s.waiting_below(&cheap, &queue, 0.0, s.score(&dear, 0.0))
    };
    assert_eq!(count(Policy::Fastest), 0.0);
    let (b, c) = (count(Policy::Balanced), count(Policy::Cheapest));
    assert!(b > 0.0 && c > 100.0 * b, "balanced {b}, cheapest {c}");
    let free = Estimate {
        render_secs: 0.0,
        ..cheap
    };
    let s = scorer(Policy::Cheapest, &[free, dear], None);
    assert!(s
        .waiting_below(&free, &queue, 0.0, s.score(&dear, 0.0))
        .is_infinite());
}

#[test]
fn speeds_are_learned_per_region_and_renderer() {
    let mut book = SpeedBook::default();
    let g: Region = "guian".parse().unwrap();
    let u: Region = "ulanqab".parse().unwrap();
    assert_eq!(book.factor(&g, "blender"), 1.0);
    for _ in 0..10 {
        book.record(&g, "blender", 100.0, 50.0);
        book.record(&u, "blender", 100.0, 125.0);
    }
    book.record(&g, "blender", 0.0, 10.0);
    assert!((book.factor(&g, "blender") - 2.0).abs() < 1e-9);
    assert!((book.factor(&u, "blender") - 0.8).abs() < 1e-9);
    assert_eq!(book.factor(&g, "builtin"), 1.0);
    // A change of hardware shows through within the window.
    for _ in 0..200 {
        book.record(&g, "blender", 100.0, 100.0);
    }
    assert!((book.factor(&g, "blender") - 1.0).abs() < 0.01);
    assert_eq!(clamp_speed(1e9), 20.0);
}

#[test]
fn fastest_completion_shares_the_farm_like_fair_share_does() {
    let job = |priority, tasks, wall_seconds| Backlog {
        priority,
        tasks,
        wall_seconds,
    };
    let me = job(0, 100.0, 60.0);
    // Alone on 10 slots: 100 x 60 / 10.
    let alone = share_farm(&[me])[0];
    assert_eq!((alone.completion_secs(10.0), alone.sharing), (600.0, 1.0));
    assert!(alone.completion_secs(0.0).is_infinite());
    // A bigger peer shares every slot until I am done; a smaller one only until it is done;
    // a higher priority job goes first in full; a lower one does not count.
    let all = [
        job(0, 1000.0, 60.0),
        me,
        job(-1, 1e6, 60.0),
        job(0, 10.0, 60.0),
        job(5, 50.0, 120.0),
    ];
    let shares = share_farm(&all);
    let mine = shares[1];
    assert_eq!(mine.work, 6000.0 + 6000.0 + 600.0 + 6000.0);
    assert_eq!(mine.sharing, (6000.0 + 6000.0 + 600.0) / 6000.0);
    // Against the definition, for every job: O(n log n) must agree with O(n²).
    for (i, of) in all.iter().enumerate() {
        let own = of.tasks * of.wall_seconds;
        let work: f64 = all
            .iter()
            .map(|b| {
                let theirs = b.tasks * b.wall_seconds;
                match b.priority.cmp(&of.priority) {
                    std::cmp::Ordering::Greater => theirs,
                    std::cmp::Ordering::Equal => theirs.min(own),
                    std::cmp::Ordering::Less => 0.0,
                }
            })
            .sum();
        assert!((shares[i].work - work).abs() < 1e-6, "job {i}");
    }
    assert_eq!(shares[4].work, 6000.0, "the top job waits for no one");
}

#[test]
fn patience_bounds_cheapest_and_greenest_only() {
    let cheap_slow = Estimate {
        money: 1.0,
        carbon_kg: 1.0,
        transfer_secs: 0.0,
        render_secs: 300.0,
        fetches: false,
    };
    let dear_fast = Estimate {
        money: 3.0,
        carbon_kg: 3.0,
        transfer_secs: 0.0,
        render_secs: 100.0,
        fetches: false,
    };
    let all = [cheap_slow, dear_fast];
    let due = |deadline_in| Due {
        deadline_in,
        fastest_in: Some(200.0),
        width: 1.0,
    };
    let terms = Terms::default();
    for policy in [Policy::Cheapest, Policy::Greenest] {
        // 1.5 x 200 s: the slow region's 300 s fits, a wait of more than 0 does not.
        let s = Scorer::new(policy, &all, &terms, &due(None));
        assert_eq!(s.due_in(), Some(300.0));
        assert!(s.patience_binds());
        assert!(!s.at_risk(&cheap_slow, 0.0) && s.at_risk(&cheap_slow, 1.0));
        assert!(s.score(&cheap_slow, 0.0) < s.score(&dear_fast, 0.0));
        assert!(s.score(&cheap_slow, 60.0) > s.score(&dear_fast, 0.0));
        // An earlier deadline wins over the bound.
        let s = Scorer::new(policy, &all, &terms, &due(Some(240.0)));
        assert_eq!((s.due_in(), s.patience_binds()), (Some(200.0), false));
        // Patience below 1 counts as 1.
        let hasty = Terms {
            patience: 0.2,
            ..terms
        };
        let s = Scorer::new(policy, &all, &hasty, &due(None));
        assert_eq!(s.due_in(), Some(200.0));
    }
    for policy in [Policy::Balanced, Policy::Fastest] {
        let s = Scorer::new(policy, &all, &terms, &due(None));
        assert_eq!(s.due_in(), None, "{policy}");
    }
}

#[test]
fn balanced_puts_a_price_on_time_and_carbon() {
    let dirty_cheap = Estimate {
        money: 1.0,
        carbon_kg: 100.0,
        transfer_secs: 0.0,
        render_secs: 3600.0,
        fetches: false,
    };
    let clean_dear = Estimate {
        money: 2.0,
        carbon_kg: 0.0,
        transfer_secs: 0.0,
        render_secs: 3600.0,
        fetches: false,
    };
    let all = [dirty_cheap, clean_dear];
    let due = Due {
        deadline_in: None,
        fastest_in: None,
        width: 10.0,
    };
    let pick = |terms: &Terms| {
        let s = Scorer::new(Policy::Balanced, &all, terms, &due);
        s.score(&dirty_cheap, 0.0) < s.score(&clean_dear, 0.0)
    };
    // Free carbon: the cheap one. At 20 a tonne, its 0.1 t cost 2 more: the clean one.
    let free = Terms::default();
    assert!(pick(&free));
    assert!(!pick(&Terms {
        carbon_per_tonne: 20.0,
        ..free
    }));
    // Waiting an hour for the cheap one costs value_of_hour / width: worth it below 10 an hour.
    let waits = |value_of_hour| {
        let terms = Terms {
            value_of_hour,
            ..free
        };
        let s = Scorer::new(Policy::Balanced, &all, &terms, &due);
        s.score(&dirty_cheap, 3600.0) < s.score(&clean_dear, 0.0)
    };
    assert!(waits(9.0) && !waits(11.0));
    // The default value of an hour follows priority.
    assert_eq!(Terms::value_of_hour_at(1000.0, 0), 1000.0);
    assert_eq!(Terms::value_of_hour_at(1000.0, 10), 4000.0);
    assert_eq!(Terms::value_of_hour_at(1000.0, -5), 500.0);
}

#[test]
fn gpu_time_is_priced_and_powered_on_top_of_cores() {
    let mut p = region("guian", 0.36);
    p.price_per_gpu_hour = 7.2;
    p.watts_per_gpu = 350.0;
    p.watts_per_core = 10.0;
    p.pue = 1.12;
    p.carbon_g_per_kwh = 500.0;
    let cpu = Estimate::new(&p, 1.0, &needs(3600.0, 0), Inputs::Held, 1.0);
    let gpu_needs = TaskNeeds {
        gpus: 2,
        ..needs(3600.0, 0)
    };
    let gpu = Estimate::new(&p, 1.0, &gpu_needs, Inputs::Held, 1.0);
    // One core-hour at 0.36 plus two GPU-hours at 7.2.
    assert!((cpu.money - 0.36).abs() < 1e-9, "{cpu:?}");
    assert!((gpu.money - (0.36 + 14.4)).abs() < 1e-9, "{gpu:?}");
    // (10 W + 2 x 350 W) for an hour, x PUE 1.12, x 500 g/kWh.
    let kwh = (10.0 + 700.0) / 1000.0 * 1.12;
    assert!((gpu.carbon_kg - kwh * 0.5).abs() < 1e-9, "{gpu:?}");
    // A model priced apart in the catalog is charged its own rate in the ledger.
    p.gpu_prices.insert("h100".into(), 20.0);
    assert_eq!(p.gpu_price(Some("NVIDIA H100 80GB HBM3")), 20.0);
    assert_eq!(p.gpu_price(Some("NVIDIA GeForce RTX 4090")), 7.2);
    assert_eq!(p.gpu_price(None), 7.2);
}
