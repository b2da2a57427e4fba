//! DANE verdicts as the policy server last found them (pure; times are Unix seconds passed
//! in). A verdict is kept no longer than the records it rests on say (their TTL), and no
//! longer than the policy server's recheck time, as MTA-STS lookups are; failed lookups are
//! never kept, so Postfix waits and asks again.

use crate::probe::dnssec::Dane;
use std::collections::HashMap;

#[derive(Debug)]
pub struct DaneCache {
    /// Domain → verdict, and until when it holds.
    map: HashMap<String, (Dane, i64)>,
    max: usize,
}

impl DaneCache {
    pub fn new(max: usize) -> DaneCache {
        DaneCache {
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The verdict for `domain` if one holds at `now`.
    pub fn get(&self, domain: &str, now: i64) -> Option<&Dane> {
        match self.map.get(domain) {
            Some((dane, until)) if *until > now => Some(dane),
            _ => None,
        }
    }

    /// A verdict found at `now`, resting on records of `ttl` seconds (`None`: on no record),
    /// kept for at most `recheck` seconds.
    pub fn put(&mut self, domain: &str, dane: Dane, ttl: Option<u32>, now: i64, recheck: i64) {
        let hold = ttl.map_or(recheck, |t| recheck.min(i64::from(t)));
        if hold <= 0 {
            self.map.remove(domain);
            return;
        }
        if self.map.len() >= self.max && !self.map.contains_key(domain) {
            self.map.retain(|_, (_, until)| *until > now);
            if self.map.len() >= self.max {
                // Still full: forget the verdict that would end first (rare; one scan).
                let first = self
                    .map
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(d, _)| d.clone());
                if let Some(first) = first {
                    self.map.remove(&first);
                }
            }
        }
        self.map
            .insert(domain.to_string(), (dane, now.saturating_add(hold)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable() -> Dane {
        Dane::Usable(vec!["mx.example.net".into()])
    }

    #[test]
    fn a_verdict_holds_for_the_least_of_its_ttl_and_the_recheck_time() {
        let mut c = DaneCache::new(10);
        c.put("a.test", usable(), Some(30), 1000, 60);
        assert_eq!(c.get("a.test", 1029), Some(&usable()));
        assert_eq!(c.get("a.test", 1030), None, "the TTL ends it");
        c.put("b.test", usable(), Some(3600), 1000, 60);
        assert_eq!(c.get("b.test", 1059), Some(&usable()));
        assert_eq!(c.get("b.test", 1060), None, "the recheck time ends it");
        let none = Dane::NotUsable("no TLSA".into());
        c.put("c.test", none.clone(), None, 1000, 60);
        assert_eq!(c.get("c.test", 1059), Some(&none));
        assert_eq!(c.get("c.test", 1060), None);
        assert_eq!(c.get("unknown.test", 1000), None);
    }

    #[test]
    fn a_zero_ttl_is_not_kept_and_forgets_what_was() {
        let mut c = DaneCache::new(10);
        c.put("a.test", usable(), Some(300), 1000, 60);
        c.put("a.test", Dane::NotUsable("gone".into()), Some(0), 1010, 60);
        assert_eq!(c.get("a.test", 1010), None);
    }

    #[test]
    fn a_full_cache_forgets_ended_verdicts_first_then_the_one_ending_first() {
        let mut c = DaneCache::new(2);
        c.put("old.test", usable(), Some(10), 1000, 60);
        c.put("long.test", usable(), Some(60), 1000, 60);
        c.put("new.test", usable(), Some(60), 1020, 60);
        assert_eq!(c.get("old.test", 1005), None, "ended, so forgotten first");
        assert!(c.get("long.test", 1030).is_some());
        assert!(c.get("new.test", 1030).is_some());
        c.put("third.test", usable(), Some(60), 1030, 60);
        assert!(
            c.get("long.test", 1030).is_none(),
            "it would have ended first"
        );
        assert!(c.get("new.test", 1030).is_some());
        assert!(c.get("third.test", 1030).is_some());
    }
}
