//! One run of a shape and a row's client (simulated or on loopback), its figures,
//! and the tables: medians over rounds, printed and written for
//! `scripts/bench-report`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::backends::{Backends, Shape};
use crate::clients::Client;
use crate::{CALLERS, PERIOD};

/// Where a run's backends answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// In this process, on tokio's paused clock: exact and fast.
    Simulated,
    /// TCP backends on 127.0.0.1, on the real clock.
    Loopback,
}

/// What one run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Figures {
    /// Call latency percentiles in ms.
    p50: f64,
    p99: f64,
    p999: f64,
    /// The last backend's share of every call, warm-up included.
    last_share: f64,
    /// Calls a second over the whole run, warm-up included.
    rate: f64,
    /// Extra load: requests sent to the backends beyond one per call (retries and
    /// hedges, cancelled ones included), per measured call: from the first measured
    /// call's start on (the hedges of warm-up calls still in flight then count too,
    /// alike for every row).
    extra: f64,
}

/// One run: `calls` measured after `warm_up`.
fn run(shape: Shape, row: &str, mode: Mode, (warm_up, calls): (u64, u64)) -> Figures {
    let rt = match mode {
        Mode::Simulated => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build(),
        Mode::Loopback => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .expect("runtime");
    let (latencies, backends, elapsed, before) = rt.block_on(async {
        let backends = match mode {
            Mode::Simulated => Backends::new(shape),
            Mode::Loopback => Backends::on_loopback(shape).await,
        };
        let began = tokio::time::Instant::now();
        let issued = Arc::new(AtomicU64::new(0));
        // Requests sent before the first measured call.
        let before = Arc::new(OnceLock::new());
        let mut callers = tokio::task::JoinSet::new();
        let client = Client::new(row, &backends);
        for caller in 0..CALLERS {
            // Loopback callers start spread over one period and keep to it.
            let mut pace = (mode == Mode::Loopback).then(|| {
                let offset = PERIOD * caller as u32 / CALLERS as u32;
                let mut pace =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, PERIOD);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                pace
            });
            let (client, backends, issued, before) = (
                client.clone(),
                backends.clone(),
                issued.clone(),
                before.clone(),
            );
            callers.spawn(async move {
                let mut took = Vec::new();
                loop {
                    if let Some(pace) = &mut pace {
                        pace.tick().await;
                    }
                    let nth = issued.fetch_add(1, Ordering::Relaxed);
                    if nth >= warm_up + calls {
                        break;
                    }
                    if nth == warm_up {
                        let _ = before.set(backends.sent());
                    }
                    let start = tokio::time::Instant::now();
                    client.call(&backends).await;
                    if nth >= warm_up {
                        took.push(start.elapsed().as_micros() as u64);
                    }
                }
                took
            });
        }
        let mut all = Vec::new();
        while let Some(took) = callers.join_next().await {
            all.extend(took.expect("caller"));
        }
        let before = before.get().copied().unwrap_or(0);
        (all, backends, began.elapsed(), before)
    });
    let mut latencies = latencies;
    latencies.sort_unstable();
    let total = backends.sent();
    let last = backends.served.last().unwrap().load(Ordering::Relaxed);
    Figures {
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        p999: percentile(&latencies, 0.999),
        last_share: last as f64 / total as f64,
        rate: total as f64 / elapsed.as_secs_f64(),
        extra: (total - before) as f64 / calls as f64 - 1.0,
    }
}

/// Each figure's median over runs (the upper middle one of an even count).
fn median(runs: &[Figures]) -> Figures {
    let mid = |f: fn(&Figures) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Figures {
        p50: mid(|f| f.p50),
        p99: mid(|f| f.p99),
        p999: mid(|f| f.p999),
        last_share: mid(|f| f.last_share),
        rate: mid(|f| f.rate),
        extra: mid(|f| f.extra),
    }
}

/// How far one figure moved from run to run: (largest - smallest) / median (0 when
/// the median is 0). `scripts/bench-report` reads a difference between two loopback
/// rows smaller than this as no difference.
fn spread(runs: &[Figures], f: fn(&Figures) -> f64) -> f64 {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let (lo, hi) = v.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    });
    let mid = f(&median(runs));
    if mid == 0.0 {
        0.0
    } else {
        (hi - lo) / mid
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1e3
}

/// Runs every shape and row in `mode` `rounds` times (each row the median of its
/// runs, the rounds interleaved so that the machine's slow moments fall on all
/// rows), prints the table and writes it to `criterion/balance/<file>` for
/// `scripts/bench-report`.
pub(crate) fn table(
    mode: Mode,
    shapes: &[Shape],
    rows: &[&str],
    counts: (u64, u64),
    rounds: usize,
    file: &str,
) {
    let (warm_up, calls) = counts;
    let mut runs: BTreeMap<(&str, &str), Vec<Figures>> = BTreeMap::new();
    for _ in 0..rounds {
        for &shape in shapes {
            for &row in rows {
                let figures = run(shape, row, mode, counts);
                runs.entry((shape.name, row)).or_default().push(figures);
            }
        }
    }
    println!(
        "balance, {mode:?}: {CALLERS} callers, {calls} calls measured after {warm_up}, \
         median of {rounds} run(s); ms"
    );
    println!(
        "{:<12} {:<20} {:>8} {:>8} {:>8} {:>11} {:>9} {:>7}",
        "shape", "row", "p50", "p99", "p999", "last share", "calls/s", "extra"
    );
    let mut out: BTreeMap<String, BTreeMap<String, serde_json::Value>> = BTreeMap::new();
    for &shape in shapes {
        for &row in rows {
            let r = &runs[&(shape.name, row)];
            let f = median(r);
            println!(
                "{:<12} {:<20} {:>8.2} {:>8.2} {:>8.2} {:>10.2}% {:>9.0} {:>6.2}%",
                shape.name,
                row,
                f.p50,
                f.p99,
                f.p999,
                f.last_share * 100.0,
                f.rate,
                f.extra * 100.0
            );
            out.entry(shape.name.to_owned()).or_default().insert(
                row.to_owned(),
                serde_json::json!({
                    "p50": f.p50, "p99": f.p99, "p999": f.p999,
                    "last_share": f.last_share, "calls_per_s": f.rate, "extra": f.extra,
                    "runs": r.len(),
                    // One run has no spread to speak of (the simulation is exact).
                    "spread": (r.len() > 1).then(|| serde_json::json!({
                        "p50": spread(r, |f| f.p50),
                        "p99": spread(r, |f| f.p99),
                        "p999": spread(r, |f| f.p999),
                        "extra": spread(r, |f| f.extra),
                    })),
                }),
            );
        }
    }
    // target/<profile>/deps/balance-<hash> -> target/criterion/balance/
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion/balance")));
    if let Some(dir) = dir {
        let _ = std::fs::create_dir_all(&dir);
        let text = serde_json::to_string_pretty(&out).expect("json");
        let _ = std::fs::write(dir.join(file), text);
    }
}
