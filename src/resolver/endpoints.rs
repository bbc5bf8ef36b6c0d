//! [`Endpoints`]: every endpoint of a service, as `resolve_all` returns them.

use std::ops::Deref;

use crate::endpoint::Endpoint;

/// Every endpoint of a service; derefs to `[Endpoint]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(Vec<Endpoint>);

impl Endpoints {
    pub(super) fn new(endpoints: Vec<Endpoint>) -> Self {
        Endpoints(endpoints)
    }
}

impl Deref for Endpoints {
    type Target = [Endpoint];

    fn deref(&self) -> &[Endpoint] {
        &self.0
    }
}

impl IntoIterator for Endpoints {
    type Item = Endpoint;
    type IntoIter = std::vec::IntoIter<Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Endpoints {
    type Item = &'a Endpoint;
    type IntoIter = std::slice::Iter<'a, Endpoint>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl From<Endpoints> for Vec<Endpoint> {
    fn from(e: Endpoints) -> Self {
        e.0
    }
}
