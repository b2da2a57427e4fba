//! Which destinations the policy server answers for (pure). The rendered `mta_sts` and
//! `dane` files list them: `*` for every destination, `example.com` for one domain,
//! `.example.com` for its subdomains, each with what the listed TlsCompliance adds to the
//! answer (`protocols=>=TLSv1.3`). A master.cf service asks under its own name instead,
//! which carries its minimum version and mechanisms (see [`crate::render::service_scope`]).

use crate::render::service_scope;
use std::collections::HashMap;

/// The destinations one mechanism is honoured for, and what each adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rows {
    /// Added for a destination no row names, when `*` is present.
    all: Option<String>,
    keys: HashMap<String, String>,
}

/// What the policy server answers for, per mechanism.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    mta_sts: Rows,
    dane: Rows,
}

/// What a destination honours: for each mechanism, what the listed policy adds to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Honoured {
    pub dane: Option<String>,
    pub mta_sts: Option<String>,
}

impl Scope {
    /// MTA-STS for every destination, nothing added: a hand-kept Postfix asking
    /// `mta-sts-server`.
    pub fn everything() -> Scope {
        Scope {
            mta_sts: Rows::all(),
            dane: Rows::default(),
        }
    }

    /// [`Scope::everything`], and DANE first for every destination (`mta-sts-server --dane`).
    pub fn everything_with_dane() -> Scope {
        Scope {
            dane: Rows::all(),
            ..Scope::everything()
        }
    }

    /// Read the rendered `mta_sts` and `dane` files (empty when absent; the relay agent
    /// validated their rows already).
    pub fn parse(mta_sts: &str, dane: &str) -> Result<Scope, String> {
        Ok(Scope {
            mta_sts: Rows::parse(crate::render::MTA_STS, mta_sts)?,
            dane: Rows::parse(crate::render::DANE, dane)?,
        })
    }

    /// Everything either honours; where both name a key, the higher version. Used while
    /// Postfix may still run the configuration before the one just installed.
    pub fn union(self, other: &Scope) -> Scope {
        Scope {
            mta_sts: self.mta_sts.union(&other.mta_sts),
            dane: self.dane.union(&other.dane),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.mta_sts.is_empty() && self.dane.is_empty()
    }

    /// What `domain`, asked under the socketmap `name`, honours.
    pub fn honoured(&self, name: &str, domain: &str) -> Honoured {
        if let Some((version, mechanisms)) = service_scope(name) {
            let extra = || Some(format!("protocols=>={}", version.postfix_name()));
            return Honoured {
                dane: mechanisms.dane.then(extra).flatten(),
                mta_sts: mechanisms.mta_sts.then(extra).flatten(),
            };
        }
        Honoured {
            dane: self.dane.extra(domain),
            mta_sts: self.mta_sts.extra(domain),
        }
    }
}

impl Rows {
    /// Every destination, nothing added.
    fn all() -> Rows {
        Rows {
            all: Some(String::new()),
            keys: HashMap::new(),
        }
    }

    fn parse(file: &str, text: &str) -> Result<Rows, String> {
        let mut rows = Rows::default();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("{file} line {}: expected 'key value'", n + 1))?;
            if !is_attribute(value) {
                return Err(format!(
                    "{file} line {}: {value:?} is not protocols=>=TLSv1.x",
                    n + 1
                ));
            }
            if key == "*" {
                rows.all = Some(value.to_string());
            } else {
                rows.keys.insert(key.to_string(), value.to_string());
            }
        }
        Ok(rows)
    }

    fn union(mut self, other: &Rows) -> Rows {
        let stricter = |a: &mut String, b: &String| {
            if *b > *a {
                a.clone_from(b);
            }
        };
        match (&mut self.all, &other.all) {
            (Some(a), Some(b)) => stricter(a, b),
            (a @ None, b) => a.clone_from(b),
            (Some(_), None) => {}
        }
        for (k, v) in &other.keys {
            self.keys
                .entry(k.clone())
                .and_modify(|a| stricter(a, v))
                .or_insert_with(|| v.clone());
        }
        self
    }

    fn is_empty(&self) -> bool {
        self.all.is_none() && self.keys.is_empty()
    }

    /// As Postfix's policy table matches: the exact domain, then `.parent` rows, then `*`.
    fn extra(&self, domain: &str) -> Option<String> {
        if let Some(v) = self.keys.get(domain) {
            return Some(v.clone());
        }
        let parents = domain.match_indices('.').map(|(i, _)| &domain[i..]);
        for parent in parents {
            if let Some(v) = self.keys.get(parent) {
                return Some(v.clone());
            }
        }
        self.all.clone()
    }
}

/// The one attribute mailtls renders into `mta_sts` and `dane`.
pub fn is_attribute(value: &str) -> bool {
    value
        .strip_prefix("protocols=>=TLSv1")
        .is_some_and(|v| matches!(v, "" | ".1" | ".2" | ".3"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is added to an `enforce` MTA-STS answer; `None` when not honoured.
    fn sts(scope: &Scope, name: &str, domain: &str) -> Option<String> {
        scope.honoured(name, domain).mta_sts
    }

    #[test]
    fn rows_match_as_the_policy_table_does() {
        let scope = Scope::parse(
            "# header\nexample.com protocols=>=TLSv1.3\n.example.org protocols=>=TLSv1.2\n",
            "",
        )
        .expect("scope");
        let tls13 = Some("protocols=>=TLSv1.3".to_string());
        let tls12 = Some("protocols=>=TLSv1.2".to_string());
        assert_eq!(sts(&scope, "mailtls", "example.com"), tls13);
        // `example.com` does not cover its subdomains; `.example.org` covers only them.
        assert_eq!(sts(&scope, "mailtls", "mx.example.com"), None);
        assert_eq!(sts(&scope, "mailtls", "a.b.example.org"), tls12);
        assert_eq!(sts(&scope, "mailtls", "example.org"), None);
        assert_eq!(sts(&scope, "mailtls", "other.test"), None);
        // A service's name carries its version, whatever the rows say.
        assert_eq!(
            sts(&scope, "mailtls-verify-tls13-bounce-sts", "other.test"),
            tls13
        );
        assert_eq!(
            sts(&scope, "mailtls-verify-tls13-bounce", "other.test"),
            None
        );

        let all = Scope::parse(
            "* protocols=>=TLSv1.2\nexample.com protocols=>=TLSv1.3\n",
            "",
        )
        .expect("scope");
        assert_eq!(sts(&all, "mailtls", "other.test"), tls12);
        assert_eq!(sts(&all, "mailtls", "example.com"), tls13);
        assert!(!all.is_empty());
        assert!(Scope::parse("# nothing\n", "").expect("empty").is_empty());
        assert_eq!(
            sts(&Scope::everything(), "postfix", "any.test"),
            Some(String::new())
        );
        assert_eq!(
            Scope::everything().honoured("postfix", "any.test").dane,
            None
        );
        let both = Scope::everything_with_dane().honoured("postfix", "any.test");
        assert_eq!(
            (both.dane, both.mta_sts),
            (Some(String::new()), Some(String::new()))
        );
    }

    #[test]
    fn bad_rows_are_refused() {
        for bad in [
            "example.com\n",
            "example.com secure\n",
            "example.com protocols=>=TLSv1.4\n",
        ] {
            assert!(Scope::parse(bad, "").is_err(), "{bad}");
        }
    }

    #[test]
    fn a_union_keeps_the_stricter_of_both() {
        let old = Scope::parse(
            "a.test protocols=>=TLSv1.3\nb.test protocols=>=TLSv1.2\n",
            "",
        )
        .expect("old");
        let new =
            Scope::parse("* protocols=>=TLSv1.2\na.test protocols=>=TLSv1.2\n", "").expect("new");
        let both = new.union(&old);
        let v = |d: &str| sts(&both, "mailtls", d);
        assert_eq!(v("a.test").as_deref(), Some("protocols=>=TLSv1.3"));
        assert_eq!(v("b.test").as_deref(), Some("protocols=>=TLSv1.2"));
        assert_eq!(v("c.test").as_deref(), Some("protocols=>=TLSv1.2"));
        let none = Scope::default().union(&old);
        assert_eq!(sts(&none, "mailtls", "c.test"), None);
        assert_eq!(
            sts(&none, "mailtls", "a.test").as_deref(),
            Some("protocols=>=TLSv1.3")
        );
    }
}
