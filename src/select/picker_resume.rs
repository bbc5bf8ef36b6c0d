//! Round-robin across answers: where a changed answer's rotation goes on, so that
//! a caller picking in sequence keeps visiting every endpoint in turn.

use std::collections::HashMap;
use std::sync::Arc;

use crate::endpoint::{EndpointSet, EndpointState};
use crate::select::rotation;
use crate::util::modulus::Modulus;

/// Where round-robin goes on in a changed answer: each endpoint of the old answer
/// at its index in the new one (the same endpoint: the same state, shared by
/// `StateTable::attach`).
pub(super) struct Resume {
    at: Vec<Option<usize>>,
    len: Modulus,
}

impl Resume {
    pub(super) fn new(old: &EndpointSet, new: &EndpointSet) -> Resume {
        let index: HashMap<*const EndpointState, usize> = new
            .items
            .iter()
            .enumerate()
            .map(|(i, d)| (Arc::as_ptr(d.state()), i))
            .collect();
        let at = old
            .items
            .iter()
            .map(|d| index.get(&Arc::as_ptr(d.state())).copied())
            .collect();
        Resume {
            at,
            len: Modulus::new(new.items.len()),
        }
    }

    /// Cursor `c` of the old answer (of size `old`) moved to draw, in the new one,
    /// the endpoint after the one its last draw gave (or, if that one left, the
    /// first after it in the old order that stayed); `c` when none stayed. Only the
    /// low 32 bits move, by less than the new size.
    pub(super) fn cursor(&self, old: Modulus, c: u64) -> u64 {
        let (n, m) = (old.n(), self.len.n() as u64);
        if n == 0 || m == 0 {
            return c;
        }
        let last = rotation(old, c.wrapping_sub(1));
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
