//! State that must outlive a reload while the config that defines it is unchanged: breaker and
//! health state, a rollout's stage, a JWT provider's keys, rate-limit counters, store connections.
//!
//! Each snapshot holds what it uses, keyed by name and by the config that defines it. A compile
//! reads the running snapshot's carry and writes its own; nothing that runs is touched until the
//! new snapshot is swapped in, so a refused reload changes nothing, and what the new config no
//! longer uses is dropped with the old snapshot.

use std::collections::HashMap;

pub struct Carry<K, T> {
    map: HashMap<String, (K, T)>,
}

impl<K, T> Default for Carry<K, T> {
    fn default() -> Self {
        Self { map: HashMap::new() }
    }
}

impl<K: PartialEq + Clone, T: Clone> Carry<K, T> {
    /// The value carried under `name` if the config that made it equals `key`.
    pub fn get(&self, name: &str, key: &K) -> Option<T> {
        match self.map.get(name) {
            Some((k, v)) if k == key => Some(v.clone()),
            _ => None,
        }
    }

    /// Whatever is carried under `name`, made by whichever config.
    pub fn any(&self, name: &str) -> Option<&T> {
        self.map.get(name).map(|(_, v)| v)
    }

    /// Records `value` as this snapshot's, for the next compile.
    pub fn keep(&mut self, name: &str, key: &K, value: T) {
        self.map.insert(name.to_string(), (key.clone(), value));
    }

    /// The value `prev` carries for an unchanged `key`, or a new one; either way this snapshot's.
    pub fn carry_or(&mut self, prev: &Self, name: &str, key: &K, make: impl FnOnce() -> T) -> T {
        let v = prev.get(name, key).unwrap_or_else(make);
        self.keep(name, key, v.clone());
        v
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.map.values().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_carried_only_while_its_config_is_unchanged() {
        let mut prev: Carry<u32, &str> = Carry::default();
        prev.keep("a", &1, "old");
        let mut next = Carry::default();
        assert_eq!(next.carry_or(&prev, "a", &1, || "new"), "old");
        assert_eq!(next.carry_or(&prev, "b", &1, || "new"), "new");
        let mut changed = Carry::default();
        assert_eq!(changed.carry_or(&prev, "a", &2, || "new"), "new");
        // The previous carry is read, never written.
        assert_eq!(prev.get("a", &1), Some("old"));
        assert!(prev.any("b").is_none());
    }
}
