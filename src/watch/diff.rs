//! From one answer to the next: which endpoints to report inserted or removed.

use std::collections::HashMap;

use super::Change;
use crate::endpoint::Endpoint;

/// What a stream reported last, by instance id.
pub(super) type Known = HashMap<Box<str>, Endpoint>;

/// The changes from `known` to `answer` (the registry's order), applied to `known`:
/// inserts first (new endpoints, or the same instance id with another address,
/// attributes or health), then removes, sorted by instance id, so that a balancer
/// fed in this order never goes through an empty set when one endpoint replaces
/// another. Of two endpoints with one instance id in an answer, the first counts.
pub(super) fn diff(known: &mut Known, answer: Vec<Endpoint>) -> Vec<Change> {
    let mut next = Known::with_capacity(answer.len());
    let mut changes = Vec::new();
    for ep in answer {
        if next.contains_key(ep.instance_id()) {
            continue;
        }
        let unchanged = known
            .get(ep.instance_id())
            .is_some_and(|old| same(old, &ep));
        if !unchanged {
            changes.push(Change::Insert(ep.clone()));
        }
        next.insert(ep.instance_id().into(), ep);
    }
    let mut gone: Vec<Endpoint> = known
        .drain()
        .filter(|(id, _)| !next.contains_key(id))
        .map(|(_, ep)| ep)
        .collect();
    gone.sort_by(|a, b| a.instance_id().cmp(b.instance_id()));
    changes.extend(gone.into_iter().map(Change::Remove));
    *known = next;
    changes
}

/// Whether a stream would report nothing new about the endpoint: the same address
/// (`Endpoint`'s equality), attributes and health.
fn same(a: &Endpoint, b: &Endpoint) -> bool {
    a == b && a.health() == b.health() && a.attributes() == b.attributes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Instance;

    fn ep(id: &str, last: u8, stage: &str) -> Endpoint {
        Endpoint::from_instance(
            Instance::new(id)
                .ipv4([10, 0, 0, last].into())
                .port(80)
                .attribute("stage", stage),
        )
        .unwrap()
    }

    fn kinds(changes: &[Change]) -> Vec<(&'static str, String)> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(e) => ("insert", e.instance_id().to_owned()),
                Change::Remove(e) => ("remove", e.instance_id().to_owned()),
            })
            .collect()
    }

    #[test]
    fn first_answer_is_all_inserts_then_nothing_while_unchanged() {
        let mut known = Known::new();
        let answer = || vec![ep("a", 1, "prod"), ep("b", 2, "prod")];
        let first = diff(&mut known, answer());
        assert_eq!(
            kinds(&first),
            [("insert", "a".into()), ("insert", "b".into())]
        );
        for _ in 0..1_000 {
            assert!(diff(&mut known, answer()).is_empty());
        }
    }

    #[test]
    fn changed_address_or_attribute_is_an_insert_and_gone_is_a_remove() {
        let mut known = Known::new();
        diff(
            &mut known,
            vec![ep("a", 1, "prod"), ep("b", 2, "prod"), ep("c", 3, "prod")],
        );
        let changes = diff(
            &mut known,
            vec![ep("a", 9, "prod"), ep("b", 2, "dev"), ep("d", 4, "prod")],
        );
        assert_eq!(
            kinds(&changes),
            [
                ("insert", "a".into()),
                ("insert", "b".into()),
                ("insert", "d".into()),
                ("remove", "c".into()),
            ]
        );
        // The removal names the endpoint as reported before.
        assert_eq!(changes[3].endpoint().ip(), Some([10, 0, 0, 3].into()));
        let all_gone = diff(&mut known, Vec::new());
        assert_eq!(
            kinds(&all_gone),
            [
                ("remove", "a".into()),
                ("remove", "b".into()),
                ("remove", "d".into())
            ]
        );
        assert!(known.is_empty());
    }

    #[test]
    fn a_duplicate_instance_id_counts_once() {
        let mut known = Known::new();
        let changes = diff(&mut known, vec![ep("a", 1, "prod"), ep("a", 2, "prod")]);
        assert_eq!(kinds(&changes), [("insert", "a".into())]);
        assert_eq!(known["a"].ip(), Some([10, 0, 0, 1].into()));
    }
}
