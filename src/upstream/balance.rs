//! Endpoint selection.

use std::sync::atomic::{AtomicUsize, Ordering};

use http::uri::{Authority, Scheme};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
}

/// Plain round robin; the counter is the only shared state, so picking is one atomic add.
#[derive(Debug)]
pub struct RoundRobin {
    endpoints: Vec<Endpoint>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Self {
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// `None` only for an upstream with no endpoints, which config validation refuses.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: &str) -> Endpoint {
        Endpoint {
            scheme: Scheme::HTTP,
            authority: a.parse().unwrap(),
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let rr = RoundRobin::new(vec![ep("a:1"), ep("b:2"), ep("c:3")]);
        let picks: Vec<_> = (0..6).map(|_| rr.pick().unwrap().authority.to_string()).collect();
        assert_eq!(picks, ["a:1", "b:2", "c:3", "a:1", "b:2", "c:3"]);
        assert!(RoundRobin::new(vec![]).pick().is_none());
    }
}
