//! `publish_services`: the gauges of a service gone from the cache are set to zero
//! as they were set.

use metrics_util::debugging::{DebugValue, DebuggingRecorder};

use super::published::ServiceGauges;
use super::*;

/// The other bucket is never published per endpoint, so, gone, its aggregate
/// gauges are what must go to zero (they kept their last value).
#[test]
fn the_other_bucket_is_zeroed_as_it_was_set() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let mut gauges = ServiceGauges::default();
        gauges.endpoints.insert("e1".into(), false);
        gauges.endpoints.insert("e2".into(), false);
        let mut census = Census::new();
        census.insert((OTHER.to_owned(), OTHER.to_owned()), gauges);
        let last = publish_services(census, true, Published::new());
        publish_services(Census::new(), true, last);
    });
    let healthy = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == ENDPOINTS
                && key
                    .labels()
                    .any(|l| l.key() == "namespace" && l.value() == OTHER)
                && key
                    .labels()
                    .any(|l| l.key() == "state" && l.value() == "healthy")
        })
        .map(|(.., value)| value);
    assert_eq!(
        healthy,
        Some(DebugValue::Gauge(0.0.into())),
        "the other bucket's healthy endpoints once it is gone"
    );
}
