//! The zone shapes of issue 27, for `scripts/bench-report`: a deterministic count
//! of picks (seeded resolvers over a static registry, no timing), written to
//! `criterion/warm/zones.json` beside the warm group's results.
//!
//! Each shape is 9 endpoints over `us-east-1a/b/c`, with one zone-aware resolver
//! per zone picking `PICKS` times (callers spread evenly, as without
//! `ZoneAware::callers`), round-robin inside a zone:
//! - `local_share`: the share of the 1a caller's picks that stayed in 1a;
//! - `spread`: over every endpoint, the largest distance of its picks (from all
//!   three callers) to the mean, over the mean. The issue holds the skewed shape to
//!   within 10%.

use cloudmap_resolver::{Instance, Resolver, Selection, StaticDiscovery, ZoneAware};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
const PICKS: usize = 9_000;
/// (name, endpoints per zone).
const SHAPES: [(&str, [usize; 3]); 2] = [("even", [3, 3, 3]), ("skewed", [1, 4, 4])];

fn registry(per_zone: [usize; 3]) -> StaticDiscovery {
    let r = StaticDiscovery::new();
    let mut n = 0u16;
    for (z, count) in per_zone.iter().enumerate() {
        for _ in 0..*count {
            n += 1;
            r.register(
                "shared",
                "web",
                Instance::new(format!("{}-{n}", ZONES[z]))
                    .ipv4("127.0.0.1".parse().expect("ip"))
                    .port(9000 + n)
                    .attribute("AVAILABILITY_ZONE", ZONES[z]),
            );
        }
    }
    r
}

/// (local share of the 1a caller, per-host spread) of one shape.
fn shape(rt: &tokio::runtime::Runtime, per_zone: [usize; 3]) -> (f64, f64) {
    let source = registry(per_zone);
    let mut per_host = std::collections::HashMap::<String, usize>::new();
    let mut local = 0;
    for zone in ZONES {
        let r = Resolver::builder(source.clone())
            .zone_aware(ZoneAware::new(zone))
            .selection(Selection::RoundRobin)
            .seed(27)
            .build()
            .expect("resolver");
        for _ in 0..PICKS {
            let ep = rt.block_on(r.resolve("shared", "web")).expect("pick");
            if zone == ZONES[0] && ep.attribute("AVAILABILITY_ZONE") == Some(zone) {
                local += 1;
            }
            *per_host.entry(ep.instance_id().to_owned()).or_default() += 1;
        }
    }
    let mean = (3 * PICKS) as f64 / per_zone.iter().sum::<usize>() as f64;
    let spread = per_host
        .values()
        .map(|&v| (v as f64 - mean).abs() / mean)
        .fold(0.0, f64::max);
    (local as f64 / PICKS as f64, spread)
}

/// Counts every shape, prints it and writes `criterion/warm/zones.json`.
pub(crate) fn write(rt: &tokio::runtime::Runtime) {
    let mut out = serde_json::Map::new();
    for (name, per_zone) in SHAPES {
        let (local, spread) = shape(rt, per_zone);
        println!(
            "zones/{name} {per_zone:?}: 1a caller local share {local:.3}, per-host spread {spread:.3}"
        );
        out.insert(
            name.to_owned(),
            serde_json::json!({
                "endpoints": per_zone,
                "local_share": local,
                "spread": spread,
            }),
        );
    }
    // target/<profile>/deps/warm-<hash> -> target/criterion/warm/
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion/warm")));
    if let Some(dir) = dir {
        let _ = std::fs::create_dir_all(&dir);
        let text = serde_json::to_string_pretty(&out).expect("json");
        let _ = std::fs::write(dir.join("zones.json"), text);
    }
}
