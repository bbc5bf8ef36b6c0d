//! Round-robin across answers: where a changed answer's rotation goes on, so that
//! a caller picking in sequence keeps visiting every endpoint in turn.

use std::collections::HashMap;
use std::sync::Arc;

use super::{LocalZone, PickContext, Picker, Selection};
use crate::endpoint::{EndpointSet, EndpointState};
use crate::select::rotation;
use crate::util::modulus::Modulus;

/// Where round-robin goes on in a changed answer: each endpoint of the old
/// rotation at its place in the new one (the same endpoint: the same state, shared
/// by `StateTable::attach`). The rotation is over the whole answer, or over the
/// local zone's endpoints when every pick stayed and stays there (zone-aware
/// routing's all-local picks rotate over that slice).
pub(super) struct Resume {
    at: Vec<Option<usize>>,
    old: Modulus,
    new: Modulus,
}

impl Picker {
    /// Whether `set` is another answer than this picker's, picked by round-robin:
    /// the case [`Resume`] moves the cursors for.
    pub(super) fn set_changed(&self, set: &Arc<EndpointSet>, ctx: &PickContext) -> bool {
        !Arc::ptr_eq(&self.set, set) && matches!(ctx.selection, Selection::RoundRobin)
    }
}

impl Resume {
    /// From `prev`'s rotation to that of `set`, whose all-local zone is `local`.
    pub(super) fn new(prev: &Picker, set: &EndpointSet, local: Option<&LocalZone>) -> Resume {
        let (old, new): (Vec<usize>, Vec<usize>) = match (prev.local.as_deref(), local) {
            (Some(a), Some(b)) => (members(&a.members), members(&b.members)),
            _ => (
                (0..prev.set.items.len()).collect(),
                (0..set.items.len()).collect(),
            ),
        };
        let index: HashMap<*const EndpointState, usize> = new
            .iter()
            .enumerate()
            .map(|(k, &i)| (Arc::as_ptr(set.items[i].state()), k))
            .collect();
        let at = old
            .iter()
            .map(|&i| index.get(&Arc::as_ptr(prev.set.items[i].state())).copied())
            .collect();
        Resume {
            at,
            old: Modulus::new(old.len()),
            new: Modulus::new(new.len()),
        }
    }

    /// Cursor `c` of the old rotation moved to draw, in the new one, the endpoint
    /// after the one its last draw gave (or, if that one left, the first after it
    /// in the old order that stayed); `c` when none stayed. Only the low 32 bits
    /// move, by less than the new rotation's length.
    pub(super) fn cursor(&self, c: u64) -> u64 {
        let (n, m) = (self.old.n(), self.new.n() as u64);
        if n == 0 || m == 0 {
            return c;
        }
        let last = rotation(self.old, c.wrapping_sub(1));
        let Some(target) = (0..n).find_map(|k| {
            let j = self.at[(last + k) % n]?;
            Some(if k == 0 { (j as u64 + 1) % m } else { j as u64 })
        }) else {
            return c;
        };
        let lo = u64::from(c as u32);
        let mut moved = lo - lo % m + target;
        if moved > u64::from(u32::MAX) {
            moved -= m;
        }
        (c & !u64::from(u32::MAX)) | moved
    }
}

fn members(m: &[u32]) -> Vec<usize> {
    m.iter().map(|&i| i as usize).collect()
}
