//! MTA-STS policies as the relay knows them (pure; times are Unix seconds passed in).
//! RFC 8461 §5.1: a policy holds for `max_age` from when it was fetched or its TXT `id` was
//! last seen unchanged; while it holds, a failed lookup or fetch keeps it, and a vanished
//! TXT record does not end it.

use super::socketmap::Reply;
use crate::probe::{StsMode, StsPolicy};
use std::collections::HashMap;

/// What is known of one domain.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Known {
    Policy {
        id: String,
        policy: StsPolicy,
        /// Until then the policy holds, whatever lookups say.
        expires: i64,
        /// What Postfix gets while it holds (made once: lookups are many).
        reply: Reply,
    },
    /// No policy found (no TXT record, or none could be fetched and none was cached).
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    known: Known,
    /// When DNS was last asked.
    checked: i64,
}

impl Entry {
    /// What Postfix gets at `now`: the policy's reply while it holds.
    fn reply(&self, now: i64) -> Reply {
        match &self.known {
            Known::Policy { reply, expires, .. } if *expires > now => reply.clone(),
            _ => Reply::NotFound,
        }
    }
}

/// The policies of up to `max` domains.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<String, Entry>,
    max: usize,
}

impl Cache {
    pub fn new(max: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Whether `domain` should be looked up again: unknown, or last asked `grace` or more
    /// seconds before `now`.
    pub fn needs_check(&self, domain: &str, now: i64, grace: i64) -> bool {
        self.asked_within(domain, now, grace).is_none()
    }

    /// `domain`'s entry if DNS was asked about it less than `grace` seconds before `now`.
    fn asked_within(&self, domain: &str, now: i64, grace: i64) -> Option<&Entry> {
        self.map.get(domain).filter(|e| now - e.checked < grace)
    }

    /// The id of the policy held for `domain`, if one holds at `now`: a TXT record with the
    /// same id needs no fetch.
    pub fn id(&self, domain: &str, now: i64) -> Option<&str> {
        match self.map.get(domain).map(|e| &e.known) {
            Some(Known::Policy { id, expires, .. }) if *expires > now => Some(id),
            _ => None,
        }
    }

    /// A policy fetched (or its id seen unchanged) at `now`: it holds for its max_age.
    pub fn store(&mut self, domain: &str, id: &str, policy: StsPolicy, now: i64) {
        let expires = now.saturating_add(i64::try_from(policy.max_age).unwrap_or(i64::MAX));
        self.put(
            domain,
            Entry {
                known: Known::Policy {
                    id: id.to_string(),
                    reply: reply(&policy),
                    policy,
                    expires,
                },
                checked: now,
            },
        );
    }

    /// The TXT id was seen unchanged at `now`: the held policy holds for max_age again.
    pub fn confirm(&mut self, domain: &str, now: i64) {
        if let Some(Entry {
            known: Known::Policy {
                policy, expires, ..
            },
            checked,
        }) = self.map.get_mut(domain)
        {
            *expires = now.saturating_add(i64::try_from(policy.max_age).unwrap_or(i64::MAX));
            *checked = now;
        }
    }

    /// A lookup or fetch found nothing new at `now`: a policy that still holds is kept (RFC
    /// 8461 §5.1), anything else is forgotten; either way not asked again for a while.
    pub fn nothing_new(&mut self, domain: &str, now: i64) {
        let keep = matches!(
            self.map.get(domain),
            Some(Entry { known: Known::Policy { expires, .. }, .. }) if *expires > now
        );
        if keep {
            if let Some(e) = self.map.get_mut(domain) {
                e.checked = now;
            }
        } else {
            self.put(
                domain,
                Entry {
                    known: Known::Nothing,
                    checked: now,
                },
            );
        }
    }

    /// What Postfix gets for `domain` at `now`.
    pub fn reply(&self, domain: &str, now: i64) -> Reply {
        self.map
            .get(domain)
            .map_or(Reply::NotFound, |e| e.reply(now))
    }

    /// The reply for `domain` when it needs no lookup (asked within `grace`), in one step.
    pub fn fresh_reply(&self, domain: &str, now: i64, grace: i64) -> Option<Reply> {
        // One map lookup: this runs for every socketmap request.
        self.asked_within(domain, now, grace).map(|e| e.reply(now))
    }

    /// Domains last asked before `before` whose policy holds: refreshed ahead of need.
    pub fn due(&self, before: i64, now: i64) -> Vec<String> {
        self.map
            .iter()
            .filter(|(_, e)| {
                e.checked < before
                    && matches!(&e.known, Known::Policy { expires, .. } if *expires > now)
            })
            .map(|(d, _)| d.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn put(&mut self, domain: &str, entry: Entry) {
        if self.map.len() >= self.max && !self.map.contains_key(domain) {
            // Full: forget the domain asked about longest ago (rare; one scan).
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, e)| e.checked)
                .map(|(d, _)| d.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(domain.to_string(), entry);
    }
}

/// Postfix's TLS policy for an MTA-STS policy: `enforce` requires a verified certificate
/// whose name matches one of the policy's MX patterns (`*.example.net` becomes Postfix's
/// `.example.net`); `testing` and `none` require nothing (RFC 8461 §5).
pub fn reply(policy: &StsPolicy) -> Reply {
    if policy.mode != StsMode::Enforce || policy.mx.is_empty() {
        return Reply::NotFound;
    }
    let mut patterns: Vec<&str> = policy
        .mx
        .iter()
        .map(|p| p.strip_prefix('*').unwrap_or(p))
        .collect();
    patterns.sort_unstable();
    patterns.dedup();
    Reply::Ok(format!(
        "secure match={} servername=hostname",
        patterns.join(":")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: StsMode, mx: &[&str], max_age: u64) -> StsPolicy {
        StsPolicy {
            version: "STSv1".into(),
            mode,
            mx: mx.iter().map(|s| s.to_string()).collect(),
            max_age,
        }
    }

    #[test]
    fn enforce_requires_a_matching_verified_certificate() {
        assert_eq!(
            reply(&policy(
                StsMode::Enforce,
                &["mx2.example.com", "*.example.net", "mx2.example.com"],
                86400
            )),
            Reply::Ok("secure match=.example.net:mx2.example.com servername=hostname".into())
        );
        assert_eq!(
            reply(&policy(StsMode::Testing, &["mx.example.com"], 86400)),
            Reply::NotFound
        );
        assert_eq!(reply(&policy(StsMode::None, &[], 86400)), Reply::NotFound);
    }

    #[test]
    fn a_policy_holds_for_max_age_through_failures() {
        let mut c = Cache::new(10);
        let t = 1_000_000;
        assert!(c.needs_check("a.test", t, 60));
        assert_eq!(c.fresh_reply("a.test", t, 60), None);
        c.store(
            "a.test",
            "id1",
            policy(StsMode::Enforce, &["mx.a.test"], 3600),
            t,
        );
        assert_eq!(
            c.fresh_reply("a.test", t + 59, 60),
            Some(c.reply("a.test", t + 59))
        );
        assert_eq!(c.fresh_reply("a.test", t + 60, 60), None);
        assert!(!c.needs_check("a.test", t + 59, 60));
        assert!(c.needs_check("a.test", t + 60, 60));
        assert_eq!(c.id("a.test", t + 10), Some("id1"));
        let enforced = c.reply("a.test", t + 10);
        assert!(matches!(&enforced, Reply::Ok(v) if v.starts_with("secure match=mx.a.test")));
        // A failed lookup keeps it while it holds...
        c.nothing_new("a.test", t + 1000);
        assert_eq!(c.reply("a.test", t + 1000), enforced);
        assert!(!c.needs_check("a.test", t + 1000, 60));
        // ... and an unchanged id extends it.
        c.confirm("a.test", t + 3000);
        assert_eq!(c.reply("a.test", t + 3000 + 3599), enforced);
        // Expired: nothing, and the id no longer saves a fetch.
        assert_eq!(c.reply("a.test", t + 3000 + 3600), Reply::NotFound);
        assert_eq!(c.id("a.test", t + 3000 + 3600), None);
        c.nothing_new("a.test", t + 9000);
        assert_eq!(c.reply("a.test", t + 9000), Reply::NotFound);
        assert!(!c.needs_check("a.test", t + 9000, 60));
    }

    #[test]
    fn bounded_and_refreshed_ahead() {
        let mut c = Cache::new(2);
        assert!(c.is_empty());
        let p = |max_age| policy(StsMode::Enforce, &["mx.test"], max_age);
        c.store("a.test", "1", p(86400), 10);
        c.store("b.test", "1", p(86400), 20);
        c.nothing_new("c.test", 30);
        assert_eq!((c.len(), c.is_empty()), (2, false));
        assert!(c.needs_check("a.test", 31, 60), "the oldest went");
        // Due: asked before the limit (not at it), and still holding; never "nothing".
        assert_eq!(c.due(25, 40), vec!["b.test".to_string()]);
        assert_eq!(c.due(20, 40), Vec::<String>::new());
        assert_eq!(c.due(100, 40), vec!["b.test".to_string()]);
        let mut c = Cache::new(10);
        c.store("short.test", "1", p(5), 10);
        assert_eq!(
            c.due(100, 16),
            Vec::<String>::new(),
            "expired: not refreshed ahead"
        );
    }
}
