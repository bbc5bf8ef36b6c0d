//! Which endpoint, in what order: the [`Selection`] a resolver picks by, the
//! per-answer picking state ([`Picker`]) that applies it while skipping ejected
//! endpoints, load-aware picks (two choices over `endpoint/load/`) and slow start
//! (`slow_start.rs`).

use crate::discover::instance::Shown;
use crate::endpoint::{EndpointData, WarnOnce};
use crate::util::hash::splitmix64;
use crate::util::modulus::Modulus;

mod picker;
pub(crate) mod slow_start;
pub(crate) mod zone;

pub(crate) use picker::{PickContext, Picker};

/// The largest weight [`Selection::WeightedRandom`] uses; larger ones are capped. Even
/// millions of endpoints at this weight sum far below `f64`'s exact-integer range.
pub(crate) const MAX_WEIGHT: f64 = 1e9;

/// How [`Resolver::resolve`](crate::Resolver::resolve) picks one endpoint.
///
/// # Examples
///
/// ```
/// # async fn run() -> Result<(), cloudmap_resolver::Error> {
/// use cloudmap_resolver::{Instance, Resolver, Selection, StaticDiscovery};
///
/// // Canary routing: an instance registered with `weight=1` beside two with
/// // `weight=2` gets a fifth of the traffic.
/// let ip = "127.0.0.1".parse().unwrap();
/// let registry = StaticDiscovery::new()
///     .with_instance("shared", "web", Instance::new("canary").ipv4(ip).port(1).attribute("weight", "1"))
///     .with_instance("shared", "web", Instance::new("a").ipv4(ip).port(2).attribute("weight", "2"))
///     .with_instance("shared", "web", Instance::new("b").ipv4(ip).port(3).attribute("weight", "2"));
/// let canary = Selection::WeightedRandom { attribute: "weight".into() };
/// let resolver = Resolver::builder(registry).selection(canary).seed(7).build()?;
/// let mut to_canary = 0;
/// for _ in 0..1_000 {
///     to_canary += usize::from(resolver.resolve("shared", "web").await?.instance_id() == "canary");
/// }
/// assert!((150..=250).contains(&to_canary), "{to_canary} of 1,000");
/// # Ok(()) }
/// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Selection {
    /// Each endpoint in turn: an even spread per key. The default. Each picking
    /// thread's turn starts one endpoint after the last's, from an endpoint the
    /// key's seed gives (random unless [`seed`](crate::ResolverBuilder::seed) is
    /// set), so threads and processes do not pick in step; a key loaded again
    /// after an eviction starts from another.
    #[default]
    RoundRobin,
    /// At random, in proportion to a weight read from an instance attribute. A
    /// missing weight counts as 1; a weight that is not a non-negative finite number
    /// (`-3`, `NaN`, `inf`, `abc`) counts as 1, with a warning; a weight above
    /// 1,000,000,000 counts as 1,000,000,000, with a warning (so that `1e308` weights
    /// cannot overflow the sum; `1e309`, beyond `f64`, too); weight 0 is never picked unless every weight is 0,
    /// and a [`call`](crate::Resolver::call) tries it only once every endpoint with
    /// weight has failed (draining).
    WeightedRandom {
        /// The attribute holding the weight, e.g. `"weight"`.
        attribute: String,
    },
    /// Uniformly at random.
    Random,
    /// Load-aware: of two endpoints drawn at random, the one with the lower cost,
    /// where cost = peak-EWMA round-trip time x (requests in flight + 1) (the
    /// "power of two choices", as tower's `p2c::Balance` over `PeakEwma`). Every
    /// attempt of [`Resolver::call`](crate::Resolver::call) (and so `FailoverClient`
    /// and `FailoverLayer`) is measured; callers doing their own I/O take a
    /// [`Lease`](crate::Lease). A failed attempt counts as a slow one
    /// ([`LoadOptions::failure_penalty`](crate::LoadOptions::failure_penalty)), so an
    /// endpoint failing fast does not attract traffic. Settings:
    /// [`LoadOptions`](crate::LoadOptions).
    ///
    /// ```
    /// # async fn run() -> Result<(), cloudmap_resolver::Error> {
    /// use cloudmap_resolver::{Instance, Resolver, Selection, StaticDiscovery};
    ///
    /// let registry = StaticDiscovery::new().with_instance("shared", "web",
    ///     Instance::new("i-1").ipv4("127.0.0.1".parse().unwrap()).port(8080));
    /// let resolver = Resolver::builder(registry).selection(Selection::LeastLoaded).build()?;
    /// assert_eq!(resolver.resolve("shared", "web").await?.instance_id(), "i-1");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    LeastLoaded,
}

impl Selection {
    /// Prefix sums of the weights, for weighted selection. All-zero weights fall back
    /// to equal weights, as the doc promises. Weights are capped at [`MAX_WEIGHT`], so
    /// the sum stays finite (and exact enough to pick by) for any number of
    /// endpoints a registry can return.
    pub(crate) fn cumulative(
        &self,
        items: &[EndpointData],
        namespace: &str,
        service: &str,
        warned: &WarnOnce,
    ) -> Option<Box<[f64]>> {
        let Selection::WeightedRandom { attribute } = self else {
            return None;
        };
        let mut weights: Vec<f64> = items
            .iter()
            .map(|ep| {
                let raw = ep.attribute(attribute)?;
                let (w, problem) = match raw.trim().parse::<f64>() {
                    Ok(w) if (0.0..=MAX_WEIGHT).contains(&w) => return Some(w),
                    // A number too large for f64 (`1e309`, 400 digits) parses as
                    // infinity; written in digits it is a number above the cap, as
                    // `1e308` is, not the word `inf`.
                    Ok(w) if w > MAX_WEIGHT && (w.is_finite() || has_digit(raw)) => {
                        (MAX_WEIGHT, "capped")
                    }
                    _ => (1.0, "counted as 1"),
                };
                if warned.first_time((namespace, service, ep.instance_id(), attribute, raw)) {
                    tracing::warn!(
                        namespace,
                        service,
                        instance_id = %Shown(ep.instance_id()),
                        attribute = %Shown(attribute),
                        value = %Shown(raw),
                        max = MAX_WEIGHT,
                        "weight is not a number from 0 to the maximum; {problem}"
                    );
                }
                Some(w)
            })
            .map(|w| w.unwrap_or(1.0))
            .collect();
        if weights.iter().all(|w| *w == 0.0) {
            weights.iter_mut().for_each(|w| *w = 1.0);
        }
        let mut sum = 0.0;
        Some(
            weights
                .into_iter()
                .map(|w| {
                    sum += w;
                    sum
                })
                .collect(),
        )
    }

    /// The index picked by the `n`th draw of a stripe; `draw` is a counter value,
    /// `seed` the key's seed. Deterministic in its inputs, so seeded tests repeat.
    #[inline]
    pub(crate) fn pick(
        &self,
        len: Modulus,
        cumulative: Option<&[f64]>,
        draw: u64,
        seed: u64,
    ) -> usize {
        match (self, cumulative) {
            (Selection::RoundRobin, _) => rotation(len, draw),
            (_, Some(cum)) => {
                let total = cum[cum.len() - 1];
                let unit = (splitmix64(seed ^ draw) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                let x = unit * total;
                // First endpoint whose cumulative weight exceeds x; zero-weight
                // endpoints have no width and are never hit.
                cum.partition_point(|&c| c <= x)
                    .min(len.n().saturating_sub(1))
            }
            _ => ((u128::from(splitmix64(seed ^ draw)) * len.n() as u128) >> 64) as usize,
        }
    }
}

/// Whether a weight is written with digits: a number, as opposed to the words
/// `inf`, `infinity` and `NaN` that `f64`'s parser also reads.
fn has_digit(raw: &str) -> bool {
    raw.bytes().any(|b| b.is_ascii_digit())
}

/// Round-robin's index for counter value `draw` over `len` endpoints. The
/// cursor's low 32 bits: a stripe's rotation skips a step once in 2^32 picks, and
/// the remainder needs no divide.
#[inline]
pub(crate) fn rotation(len: Modulus, draw: u64) -> usize {
    len.of(draw as u32)
}

/// Endpoint `i`'s weight in the prefix sums `cum`: its width there, 1 without them.
#[inline]
pub(crate) fn width(cum: Option<&[f64]>, i: usize) -> f64 {
    match cum {
        Some(cum) if i > 0 => cum[i] - cum[i - 1],
        Some(cum) => cum[0],
        None => 1.0,
    }
}

/// The pick among the admitted ones of `n` endpoints, by weight: each in proportion
/// to its `weight`, weight 0 never while an admitted endpoint has weight, all evenly
/// when none has (the promise of [`Selection::WeightedRandom`], with the ejected
/// ones left out). `unit` gives a uniform number in [0, 1), asked only when some
/// endpoint is admitted; `None` when none is. The last resort of a pick whose
/// draws kept landing on ejected endpoints, with or without zones (`Picker::redraw`,
/// `Zone::pick`): a scan in the registry's order instead would hand an ejected
/// endpoint's turn to its neighbour, draining or not.
pub(crate) fn by_weight_among(
    n: usize,
    weight: impl Fn(usize) -> f64,
    admitted: impl Fn(usize) -> bool,
    unit: impl FnOnce() -> f64,
) -> Option<usize> {
    let (mut total, mut count) = (0.0, 0usize);
    for i in (0..n).filter(|&i| admitted(i)) {
        total += weight(i);
        count += 1;
    }
    if count == 0 {
        return None;
    }
    // Admitted endpoints of weight 0 only: equal weights among them, as when every
    // weight is 0.
    let equal = total <= 0.0;
    let mut x = unit() * if equal { count as f64 } else { total };
    let mut last = None;
    for i in (0..n).filter(|&i| admitted(i)) {
        let w = if equal { 1.0 } else { weight(i) };
        if w > 0.0 {
            last = Some(i);
            if x < w {
                return Some(i);
            }
            x -= w;
        }
    }
    // Rounding can leave x a hair above the last width.
    last.or_else(|| (0..n).find(|&i| admitted(i)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::instance::Instance;
    use crate::endpoint::ParseOptions;

    fn items(weights: &[Option<&str>]) -> Vec<EndpointData> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let mut inst = Instance::new(format!("i-{i}")).ipv4("10.0.0.1".parse().unwrap());
                if let Some(w) = w {
                    inst = inst.attribute("weight", *w);
                }
                ParseOptions::default().parse(inst).unwrap()
            })
            .collect()
    }

    fn shares(sel: &Selection, weights: &[Option<&str>], draws: u64) -> Vec<u64> {
        let items = items(weights);
        let cum = sel.cumulative(&items, "ns", "svc", &WarnOnce::default());
        let mut counts = vec![0; items.len()];
        for d in 0..draws {
            counts[sel.pick(Modulus::new(items.len()), cum.as_deref(), d, 42)] += 1;
        }
        counts
    }

    fn weighted() -> Selection {
        Selection::WeightedRandom {
            attribute: "weight".into(),
        }
    }

    #[test]
    fn round_robin_is_even() {
        let c = shares(&Selection::RoundRobin, &[None, None, None], 1000);
        assert!(
            c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
            "{c:?}"
        );
    }

    #[test]
    fn weights_two_to_one() {
        let c = shares(&weighted(), &[Some("2"), Some("1")], 30_000);
        let share = c[1] as f64 / 30_000.0;
        assert!((share - 1.0 / 3.0).abs() < 0.02, "share {share}");
    }

    #[test]
    fn zero_weight_never_picked_unless_all_zero() {
        let c = shares(&weighted(), &[Some("0"), Some("1"), Some("0")], 5_000);
        assert_eq!((c[0], c[2]), (0, 0));
        let c = shares(&weighted(), &[Some("0"), Some("0")], 5_000);
        assert!(c[0] > 2_000 && c[1] > 2_000, "{c:?}");
    }

    #[test]
    fn bad_weights_count_as_one() {
        let c = shares(
            &weighted(),
            &[Some("abc"), Some("-3"), None, Some("NaN")],
            40_000,
        );
        for n in &c {
            assert!((*n as f64 / 40_000.0 - 0.25).abs() < 0.02, "{c:?}");
        }
    }

    #[test]
    fn huge_weights_are_capped_so_the_sum_stays_finite() {
        let c = shares(
            &weighted(),
            &[Some("1e308"), Some("1e308"), Some("1")],
            30_000,
        );
        // Capped to equal maxima, the two huge weights share the traffic; the
        // weight-1 instance gets next to nothing (it got everything when the sum
        // overflowed to infinity).
        assert!(c[2] < 10, "{c:?}");
        assert!(c[0] > 13_000 && c[1] > 13_000, "{c:?}");
        let items = items(&[
            Some("1e308"),
            Some("inf"),
            Some("-inf"),
            Some("NaN"),
            Some("5e9"),
        ]);
        let cum = weighted()
            .cumulative(&items, "ns", "svc", &WarnOnce::default())
            .unwrap();
        assert!(cum.iter().all(|c| c.is_finite()), "{cum:?}");
        assert_eq!(cum[0], MAX_WEIGHT);
        assert_eq!(cum[cum.len() - 1], MAX_WEIGHT * 2.0 + 3.0);
    }

    /// A weight too large for `f64` is capped as `1e308` is, not counted as 1: `f64`
    /// reads `1e309` and a 400-digit number as infinity, which was taken for the
    /// word `inf` (0 picks of 30,000 for each beside a `1e308`).
    #[test]
    fn weights_beyond_f64_are_capped_like_huge_ones() {
        let digits = "9".repeat(400);
        let c = shares(
            &weighted(),
            &[Some("1e309"), Some("1e308"), Some(&digits), Some("1")],
            30_000,
        );
        assert!(c[3] < 10, "{c:?}");
        for n in &c[..3] {
            assert!((*n as f64 / 30_000.0 - 1.0 / 3.0).abs() < 0.02, "{c:?}");
        }
        // The words stay words: counted as 1.
        let items = items(&[Some("inf"), Some("+Infinity"), Some("-1e309")]);
        let cum = weighted()
            .cumulative(&items, "ns", "svc", &WarnOnce::default())
            .unwrap();
        assert_eq!(&cum[..], [1.0, 2.0, 3.0]);
    }

    #[test]
    fn random_is_uniform_and_seeded() {
        let c = shares(&Selection::Random, &[None; 4], 40_000);
        for n in &c {
            assert!((*n as f64 / 40_000.0 - 0.25).abs() < 0.02, "{c:?}");
        }
        assert_eq!(c, shares(&Selection::Random, &[None; 4], 40_000));
    }

    #[test]
    fn the_last_resort_pick_is_by_weight_among_the_admitted() {
        // Weights 1, 0, 1, 2 with endpoint 0 ejected: 1 never, 2 and 3 by 1:2.
        let w = [1.0, 0.0, 1.0, 2.0];
        let pick = |u: f64| by_weight_among(4, |i| w[i], |i| i != 0, || u);
        let mut got = [0usize; 4];
        for k in 0..3_000 {
            got[pick(f64::from(k) / 3_000.0).unwrap()] += 1;
        }
        assert_eq!(got, [0, 0, 1_000, 2_000]);
        assert_eq!(pick(1.0 - f64::EPSILON), Some(3), "rounding at the top");
        // Only weight 0 admitted: evenly among them; none admitted: none.
        let zeros = |u: f64| by_weight_among(3, |_| 0.0, |i| i != 1, || u);
        assert_eq!((zeros(0.2), zeros(0.7)), (Some(0), Some(2)));
        assert_eq!(
            by_weight_among(3, |_| 1.0, |_| false, || unreachable!()),
            None
        );
    }
}
