use super::*;
use crate::discover::instance::Instance;
use crate::endpoint::{EndpointData, EndpointSet, Handles, ParseOptions, StateTable};

fn set(n: usize, table: &StateTable) -> Vec<Endpoint> {
    answer(n, table, None)
}

/// The next answer of the key `prev` was picked from: its first `n` endpoints.
fn set_after(n: usize, table: &StateTable, prev: &Endpoint) -> Vec<Endpoint> {
    answer(n, table, Some(prev))
}

fn answer(n: usize, table: &StateTable, prev: Option<&Endpoint>) -> Vec<Endpoint> {
    let mut items: Box<[EndpointData]> = (0..n)
        .map(|i| {
            ParseOptions::default()
                .parse(
                    Instance::new(format!("i-{i}"))
                        .ipv4("10.0.0.1".parse().unwrap())
                        .port(8000 + i as u16),
                )
                .unwrap()
        })
        .collect();
    table.attach(&mut items, None);
    let handles = Handles::new(&EndpointSet::new(
        items,
        prev.map_or_else(Arc::default, |p| p.answer().lineage().clone()),
    ));
    (0..n).map(|i| handles.get(0, i)).collect()
}

fn fail(d: &OutlierDetector, ep: &Endpoint, times: u32, now: Instant) {
    for _ in 0..times {
        d.record(ep, Outcome::Failure, now);
    }
}

#[tokio::test(start_paused = true)]
async fn ejects_after_consecutive_failures_only() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let eps = set(8, &t);
    let now = Instant::now();
    fail(&d, &eps[0], 4, now);
    d.record(&eps[0], Outcome::Success, now);
    fail(&d, &eps[0], 4, now);
    assert!(!eps[0].is_ejected(), "a success resets the count");
    fail(&d, &eps[0], 1, now);
    assert!(eps[0].is_ejected());
    assert_eq!(d.ejections(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_table_counts_its_ejected_endpoints() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let count = t.ejected();
    let eps = set(8, &t);
    let now = Instant::now();
    assert!(!count.any());
    fail(&d, &eps[0], 5, now);
    fail(&d, &eps[1], 5, now);
    assert!(eps[0].is_ejected() && eps[1].is_ejected() && count.any());
    // One re-admitted when its time is up: the other still counts.
    assert!(!d.is_ejected(eps[0].state(), now + Duration::from_secs(31)));
    assert!(count.any());
    // The other leaves with its answer while ejected: nothing counts any more.
    drop(eps);
    assert!(!count.any());
}

#[tokio::test(start_paused = true)]
async fn share_cap_holds() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let eps = set(8, &t);
    let now = Instant::now();
    for ep in &eps {
        fail(&d, ep, 10, now);
    }
    let ejected = eps.iter().filter(|e| e.is_ejected()).count();
    assert_eq!(ejected, 4, "at most half of 8");
}

/// The cap is the share of the endpoints as written, rounded down: 0.29 of 100 is
/// 29 (0.29 is stored a hair below, and the product was 28.999999999999996: 28).
#[tokio::test(start_paused = true)]
async fn share_cap_is_the_written_share_rounded_down() {
    for (share, n, cap) in [
        (0.29, 100, 29),
        (0.35, 180, 63),
        (0.58, 50, 29),
        (0.3, 7, 2),
    ] {
        let d = OutlierDetector::new(OutlierOptions {
            max_ejection_share: share,
            ..OutlierOptions::default()
        });
        let t = StateTable::default();
        let eps = set(n, &t);
        let now = Instant::now();
        for ep in &eps {
            fail(&d, ep, 5, now);
        }
        let ejected = eps.iter().filter(|e| e.is_ejected()).count();
        assert_eq!(ejected, cap, "{share} of {n}");
    }
}

#[tokio::test(start_paused = true)]
async fn ejection_time_grows_and_is_capped() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let eps = set(4, &t);
    let h = eps[1].state().clone();
    let mut now = Instant::now();
    let mut times = Vec::new();
    for _ in 0..12 {
        fail(&d, &eps[1], 5, now);
        assert!(eps[1].is_ejected());
        let until = h.ejection.lock().until.unwrap();
        times.push((until - now).as_secs());
        now = until;
        assert!(!d.is_ejected(&h, now), "re-admitted when its time is up");
        // On probation one failure is enough to eject it again.
        fail(&d, &eps[1], 1, now);
        assert!(eps[1].is_ejected());
        let until = h.ejection.lock().until.unwrap();
        now = until;
        assert!(!d.is_ejected(&h, now));
        d.record(&eps[1], Outcome::Success, now);
    }
    assert_eq!(&times[..3], [30, 90, 150]);
    assert_eq!(*times.last().unwrap(), 300, "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn a_long_healthy_spell_resets_the_streak() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let eps = set(4, &t);
    let h = eps[2].state().clone();
    let now = Instant::now();
    fail(&d, &eps[2], 5, now);
    let until = h.ejection.lock().until.unwrap();
    assert!(!d.is_ejected(&h, until));
    d.record(&eps[2], Outcome::Success, until);
    let later = until + Duration::from_secs(301);
    fail(&d, &eps[2], 5, later);
    assert_eq!(
        h.ejection.lock().until.unwrap() - later,
        Duration::from_secs(30)
    );
}

#[tokio::test(start_paused = true)]
async fn timer_readmits_on_probation() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let eps = set(4, &t);
    fail(&d, &eps[3], 5, Instant::now());
    assert!(eps[3].is_ejected());
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert!(eps[3].is_ejected());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!eps[3].is_ejected());
    assert_eq!(d.readmissions(), 1);
    assert!(eps[3].state().ejection.lock().probation);
}

#[tokio::test(start_paused = true)]
async fn health_survives_a_new_answer() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let old = set(4, &t);
    fail(&d, &old[0], 5, Instant::now());
    let new = set(4, &t);
    assert!(new[0].is_ejected(), "same instance at the same address");
    assert!(Arc::ptr_eq(old[0].state(), new[0].state()));
    assert!(!new[1].is_ejected());
}

#[tokio::test(start_paused = true)]
async fn disabled_never_ejects() {
    let d = OutlierDetector::new(OutlierOptions {
        enabled: false,
        ..OutlierOptions::default()
    });
    let t = StateTable::default();
    let eps = set(4, &t);
    fail(&d, &eps[0], 100, Instant::now());
    assert!(!eps[0].is_ejected());
}

#[test]
fn options_are_validated() {
    let bad = [
        OutlierOptions {
            consecutive_failures: 0,
            ..OutlierOptions::default()
        },
        OutlierOptions {
            max_ejection_share: 1.5,
            ..OutlierOptions::default()
        },
        OutlierOptions {
            max_ejection_share: f64::NAN,
            ..OutlierOptions::default()
        },
        OutlierOptions {
            max_ejection_time: Duration::from_secs(1),
            ..OutlierOptions::default()
        },
    ];
    for o in bad {
        assert!(o.validate().is_err(), "{o:?}");
    }
    assert!(OutlierOptions::default().validate().is_ok());
}

/// Failure-percentage options of the interval tests: 10 s intervals, 20 attempts,
/// half of them failed.
fn percentage() -> OutlierDetector {
    OutlierDetector::new(OutlierOptions::default().failure_percentage(0.5))
}

/// 20 attempts at `now`, every other one failed (never 5 in a row): a failure
/// share of exactly the threshold.
fn alternate(d: &OutlierDetector, ep: &Endpoint, now: Instant) {
    for i in 0..20 {
        let outcome = if i % 2 == 0 {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        d.record(ep, outcome, now);
    }
}

#[tokio::test(start_paused = true)]
async fn the_interval_just_ended_is_judged_by_the_next_attempt() {
    let d = percentage();
    let t = StateTable::default();
    let eps = set(4, &t);
    let t0 = Instant::now();
    alternate(&d, &eps[0], t0);
    assert!(!eps[0].is_ejected(), "judged at the end of its interval");
    d.record(&eps[0], Outcome::Success, t0 + Duration::from_secs(10));
    assert!(eps[0].is_ejected());
    assert_eq!(d.ejections_by_cause(), [0, 1, 0]);
}

/// An interval followed by a quiet one is stale: the first attempt of a burst a
/// minute later is not the end of it, and judges nothing.
#[tokio::test(start_paused = true)]
async fn an_interval_long_past_is_not_judged() {
    let d = percentage();
    let t = StateTable::default();
    let eps = set(4, &t);
    let t0 = Instant::now();
    alternate(&d, &eps[0], t0);
    d.record(&eps[0], Outcome::Success, t0 + Duration::from_secs(60));
    assert!(!eps[0].is_ejected(), "ejected for a burst a minute old");
    assert_eq!(d.ejections(), 0);
    // The stale counts are gone: the new interval is judged on its own.
    d.record(&eps[0], Outcome::Success, t0 + Duration::from_secs(70));
    assert!(!eps[0].is_ejected());
}

/// Its probe passed while an ejection for failed requests still ran: it ramps up
/// when that ejection ends (and is re-admitted only after its ramp began), while
/// one whose health check never failed comes back without a ramp.
#[tokio::test(start_paused = true)]
async fn back_from_its_probe_during_an_ejection_ramps_when_readmitted() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let ramps = Arc::new(Mutex::new(Vec::new()));
    let seen = ramps.clone();
    d.on_rejoin(Box::new(move |h: &Arc<EndpointState>, now: Instant| {
        // Ramped before it is back in the picks.
        assert!(h.is_ejected());
        seen.lock().unwrap().push((h.name.clone(), now));
    }));
    let t = StateTable::default();
    let eps = set(4, &t);
    let t0 = Instant::now();
    fail(&d, &eps[0], 5, t0);
    fail(&d, &eps[1], 5, t0);
    d.probe_down(&eps[0]);
    assert!(
        !d.probe_up(&eps[0], t0 + Duration::from_secs(1)),
        "still ejected"
    );
    assert!(ramps.lock().unwrap().is_empty(), "not while it is out");
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(!eps[0].is_ejected() && !eps[1].is_ejected());
    assert_eq!(d.readmissions(), 2);
    let ramps = ramps.lock().unwrap().clone();
    assert_eq!(ramps.len(), 1, "{ramps:?}");
    assert_eq!(&*ramps[0].0, &*eps[0].state().name);
    let from = ramps[0].1 - t0;
    assert!(
        from >= Duration::from_secs(30) && from <= Duration::from_secs(31),
        "ramp from {from:?}: from the ejection's end, not the probe's pass (1 s)"
    );
}

/// How many re-admission threads the process runs now (Linux: thread names are
/// cut to 15 bytes).
fn readmit_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("cloudmap-readm"))
        .count()
}

/// Ejections made off any runtime (`report` from a plain thread) are re-admitted
/// by one thread for the process, not a thread each: 50 endpoints ejected for a
/// minute were 50 threads sleeping out their ejections (departed endpoints' too),
/// now 1. It still re-admits on time, the soonest first whatever the order the
/// ejections were handed over in.
#[test]
fn ejections_off_a_runtime_share_one_thread() {
    let minute = OutlierDetector::new(OutlierOptions {
        base_ejection_time: Duration::from_secs(60),
        ..OutlierOptions::default()
    });
    let t = StateTable::default();
    let eps = set(100, &t);
    for ep in &eps[..50] {
        fail(&minute, ep, 5, Instant::now());
    }
    assert!(eps[..50].iter().all(Endpoint::is_ejected));
    let threads = readmit_threads();
    assert!(threads <= 1, "{threads} re-admission threads");

    let short = OutlierDetector::new(OutlierOptions {
        base_ejection_time: Duration::from_millis(50),
        ..OutlierOptions::default()
    });
    let other = set(2, &StateTable::default());
    fail(&short, &other[0], 5, Instant::now());
    assert!(other[0].is_ejected());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while short.readmissions() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(short.readmissions(), 1, "re-admitted on the thread");
    assert!(!other[0].is_ejected());
    assert_eq!(minute.readmissions(), 0);
    assert!(eps[..50].iter().all(Endpoint::is_ejected));
    assert!(readmit_threads() <= 1);
}

/// The cap counts the endpoints the key serves now: a service shrinking from 4
/// endpoints (cap 2) to 2 (cap 1) has at most 1 of the 2 ejected, even when the
/// failures come through handles picked from the answer of 4.
#[tokio::test(start_paused = true)]
async fn share_cap_counts_the_keys_newest_answer() {
    let d = OutlierDetector::new(OutlierOptions::default());
    let t = StateTable::default();
    let old = set(4, &t);
    let new = set_after(2, &t, &old[0]);
    let now = Instant::now();
    for ep in &old[..2] {
        fail(&d, ep, 10, now);
    }
    let ejected = new.iter().filter(|e| e.is_ejected()).count();
    assert_eq!(ejected, 1, "at most half of the 2 endpoints served now");
}
