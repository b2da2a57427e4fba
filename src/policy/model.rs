//! The values the policy engine produces: the effective policy of one namespace and what it
//! found about each resource.

use super::entry::Entry;
use super::host::Host;
use super::key_map::{Key, KeyMap};
use crate::api::{Mechanism, OnFailure, TlsVersion};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Names of TlsCompliance policies, sorted and without duplicates. Shared, because one
/// policy can cover a hundred thousand keys: every key with the same policies holds the
/// same set.
pub type Names = std::sync::Arc<[std::sync::Arc<str>]>;

/// How strictly a server certificate is checked, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// TLS is mandatory; any certificate.
    Encrypt,
    /// The certificate must chain to a trusted CA.
    CaSigned,
    /// The certificate must chain to a trusted CA and match the server's host name.
    Hostname,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Encrypt => "TLS required",
            Level::CaSigned => "TLS with a CA-signed certificate",
            Level::Hostname => "TLS with a CA-signed certificate matching the host name",
        })
    }
}

/// A mandatory-TLS requirement for one hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    pub level: Level,
    pub min_tls: TlsVersion,
}

impl Requirement {
    pub fn new(require_ca_signed: bool, validate_hostname: bool, min_tls: TlsVersion) -> Self {
        let level = match (require_ca_signed, validate_hostname) {
            (true, true) => Level::Hostname,
            (true, false) => Level::CaSigned,
            _ => Level::Encrypt,
        };
        Requirement { level, min_tls }
    }

    /// The stricter of two requirements, field by field.
    pub fn strictest(self, other: Requirement) -> Requirement {
        Requirement {
            level: self.level.max(other.level),
            min_tls: self.min_tls.max(other.min_tls),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, TLS {} or newer", self.level, self.min_tls)
    }
}

/// The policies destinations publish that are enforced on top of a requirement.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mechanisms {
    /// A domain's `enforce` MTA-STS policy (RFC 8461), asked of the relay agent's policy
    /// server at delivery time.
    pub mta_sts: bool,
    /// DANE TLSA records (RFC 7672) authenticated by the relay's validating resolver.
    pub dane: bool,
}

impl Mechanisms {
    pub fn from_api(list: &[Mechanism]) -> Mechanisms {
        Mechanisms {
            mta_sts: list.contains(&Mechanism::MtaSts),
            dane: list.contains(&Mechanism::Dane),
        }
    }

    /// Both sets: honouring more is stricter.
    pub fn union(self, other: Mechanisms) -> Mechanisms {
        Mechanisms {
            mta_sts: self.mta_sts || other.mta_sts,
            dane: self.dane || other.dane,
        }
    }

    pub fn is_empty(self) -> bool {
        !self.mta_sts && !self.dane
    }
}

impl fmt::Display for Mechanisms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.dane, self.mta_sts) {
            (true, true) => "DANE, then MTA-STS",
            (true, false) => "DANE",
            (false, true) => "MTA-STS",
            (false, false) => "none",
        })
    }
}

/// An enforced outbound requirement and what happens when it cannot be met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Enforced {
    pub requirement: Requirement,
    pub on_failure: OnFailure,
    /// Published policies honoured on top of `requirement` where mail goes straight to
    /// the destination's MX hosts.
    pub mechanisms: Mechanisms,
}

impl Enforced {
    /// Strictest of both: the higher level and version, `Bounce` over `Defer`, and every
    /// mechanism either honours.
    pub fn strictest(self, other: Enforced) -> Enforced {
        Enforced {
            requirement: self.requirement.strictest(other.requirement),
            on_failure: self.on_failure.max(other.on_failure),
            mechanisms: self.mechanisms.union(other.mechanisms),
        }
    }
}

/// Fold an optional value with a new one using `f`.
pub(crate) fn fold<T: Copy>(acc: Option<T>, new: T, f: impl Fn(T, T) -> T) -> Option<T> {
    Some(acc.map_or(new, |a| f(a, new)))
}

/// A gateway hop: where mail is handed over and the TLS the hop itself requires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Name of the OutboundGateway.
    pub gateway: String,
    pub host: Host,
    pub port: u16,
    pub mx_lookup: bool,
    /// `None`: opportunistic TLS on this hop.
    pub tls: Option<Requirement>,
}

impl Hop {
    /// The Postfix next-hop (also the exact key of its TLS policy entry).
    pub fn nexthop(&self) -> String {
        self.host.nexthop(self.port, self.mx_lookup)
    }
}

/// Where mail for a key goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Route {
    /// Straight to the recipient domain's MX hosts.
    Direct,
    /// Through the organisation's outbound gateway (`AllMail`, Postfix `relayhost`).
    Relayhost(String),
    /// Through the alternate secure route (`SecureTransportRequired`).
    SecureRoute(String),
    /// Through a per-recipient gateway (`Recipients`), decided by `entry`, or by the key
    /// itself when `None`: so the keys of a routed list share one rule instead of one each.
    Recipients {
        gateway: String,
        entry: Option<Entry>,
    },
}

impl Route {
    pub fn gateway(&self) -> Option<&str> {
        match self {
            Route::Direct => None,
            Route::Relayhost(g) | Route::SecureRoute(g) => Some(g),
            Route::Recipients { gateway, .. } => Some(gateway),
        }
    }
}

/// The effective outbound rule for one key, already merged with every less specific entry
/// that covers it, so the most specific key Postfix finds carries the whole answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OutboundRule {
    /// Mandatory TLS, from `Enforce` policies.
    pub enforced: Option<Enforced>,
    /// What `Monitor` policies would require (tested and reported, never rendered).
    pub monitored: Option<Requirement>,
    pub route: Route,
    /// TlsCompliance policies whose entries cover this key (sorted, no duplicates).
    pub policies: Names,
}

/// The effective inbound rule for one sender key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct InboundRule {
    /// An `Enforce` policy requires TLS from these senders.
    pub enforced: bool,
    /// A `Monitor` policy would.
    pub monitored: bool,
    pub policies: Names,
}

/// Everything the renderer needs for one namespace. No I/O went into it and none comes out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub namespace: String,
    pub outbound: KeyMap<OutboundRule>,
    pub inbound: KeyMap<InboundRule>,
    /// Every usable gateway by name.
    pub gateways: BTreeMap<String, Hop>,
    /// The winning `AllMail` gateway.
    pub relayhost: Option<String>,
    /// The winning `SecureTransportRequired` gateway.
    pub secure_route: Option<String>,
    /// What the namespace's `Unlisted` Enforce policies honour for every destination (and
    /// so for the listed ones too).
    pub unlisted: Mechanisms,
    /// Those `Unlisted` policies (sorted, no duplicates).
    pub unlisted_policies: Names,
}

impl EffectivePolicy {
    /// The outbound rule Postfix applies to a recipient: the most specific key covering it.
    pub fn outbound_for(&self, recipient: &Entry) -> Option<(Key<'_>, &OutboundRule)> {
        recipient
            .lookup_chain()
            .into_iter()
            .find_map(|k| self.outbound.get_key_value(&k))
    }

    /// The inbound rule for a sender, found as Postfix's access table finds it (see
    /// [`Entry::access_chain`]).
    pub fn inbound_for(&self, sender: &Entry) -> Option<(Key<'_>, &InboundRule)> {
        sender
            .access_chain()
            .iter()
            .find_map(|k| self.inbound.get_key_value(k))
    }

    /// Where mail for `recipient` goes and what Postfix enforces on that hop: the one answer
    /// `mailtls explain` prints and the periodic tests follow.
    pub fn delivery(&self, recipient: &Entry) -> Delivery<'_> {
        let found = self.outbound_for(recipient);
        let route = found.map_or_else(|| self.default_route(), |(_, r)| r.route.clone());
        let hop = self.hop(&route);
        let enforced = found.and_then(|(_, r)| r.enforced);
        Delivery {
            key: found.map(|(k, _)| k),
            rule: found.map(|(_, r)| r),
            // What the rendered transport demands of the hop: the destination's requirement
            // and the gateway's own, whichever is stricter.
            required: match (enforced.map(|e| e.requirement), hop.and_then(|h| h.tls)) {
                (Some(a), Some(b)) => Some(a.strictest(b)),
                (a, b) => a.or(b),
            },
            route,
            hop,
        }
    }

    /// The route mail takes when no key covers the recipient.
    pub fn default_route(&self) -> Route {
        self.relayhost
            .clone()
            .map_or(Route::Direct, Route::Relayhost)
    }

    pub fn hop(&self, route: &Route) -> Option<&Hop> {
        route.gateway().and_then(|g| self.gateways.get(g))
    }
}

/// The answer of [`EffectivePolicy::delivery`] for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The most specific key covering the recipient, and its rule.
    pub key: Option<Key<'a>>,
    pub rule: Option<&'a OutboundRule>,
    pub route: Route,
    /// The gateway of the route; `None` for direct delivery to the MX hosts.
    pub hop: Option<&'a Hop>,
    /// The mandatory TLS on the next hop, if any.
    pub required: Option<Requirement>,
}

/// The kinds of resource, in the order their files are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    AddressList,
    TlsCompliance,
    OutboundGateway,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::AddressList => "AddressList",
            Kind::TlsCompliance => "TlsCompliance",
            Kind::OutboundGateway => "OutboundGateway",
        })
    }
}

/// A resource within the namespace being evaluated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub name: String,
}

impl ResourceId {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceId {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Something wrong with a resource, with the field it concerns.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// JSON-path-like field (`spec.entries[3]`, `spec.addressLists[0].name`).
    pub field: String,
    pub message: String,
}

impl Problem {
    /// The message without the quoted entry that starts invalid-entry messages.
    pub fn reason(&self) -> &str {
        self.message
            .split_once("': ")
            .map_or(self.message.as_str(), |(_, r)| r)
    }
}

/// Two or more resources claim the same thing; the oldest wins.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    /// What is contested (`the AllMail gateway`, `route for example.com`).
    pub subject: String,
    pub winner: ResourceId,
    /// Every resource involved, winner included.
    pub involved: BTreeSet<ResourceId>,
}

/// Address-list counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListStats {
    pub addresses: u64,
    pub domains: u64,
    pub duplicates: u64,
    /// Every rejected entry, listed or not.
    pub invalid_total: u64,
    /// Rejected entries with the reason (the raw text, escaped and cut).
    pub invalid: Vec<(String, Problem)>,
}

/// Everything the engine found about one resource; becomes its status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceFindings {
    /// Spec errors (the resource, or the part named, is not rendered).
    pub errors: Vec<Problem>,
    pub conflicts: Vec<Conflict>,
    /// Resources that use this one (lists: policies and gateways; gateways: policies).
    pub used_by: BTreeSet<ResourceId>,
    /// Address lists: the counts.
    pub list: Option<ListStats>,
    /// Policies and Recipients gateways: entries matched (addresses, domains).
    pub matched: Option<(u64, u64)>,
    /// Whether anything of this resource made it into the rendered configuration.
    pub rendered: bool,
    /// Which generation is in force (set only by the fail-closed evaluation).
    pub in_force: Option<InForce>,
}

/// What a resource contributes when evaluated fail-closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InForce {
    /// Its current generation (the one given).
    Current(i64),
    /// The current generation cannot be used; this earlier one is still enforced.
    Earlier(i64),
    /// The current generation cannot be used and no earlier one was valid.
    Nothing,
}

impl InForce {
    /// The generation in force, if any.
    pub fn generation(self) -> Option<i64> {
        match self {
            InForce::Current(g) | InForce::Earlier(g) => Some(g),
            InForce::Nothing => None,
        }
    }
}

/// Findings for every resource of the namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub resources: BTreeMap<ResourceId, ResourceFindings>,
}

impl Findings {
    pub fn get_mut(&mut self, id: &ResourceId) -> &mut ResourceFindings {
        self.resources.entry(id.clone()).or_default()
    }

    pub fn get(&self, id: &ResourceId) -> Option<&ResourceFindings> {
        self.resources.get(id)
    }

    /// Every error and invalid entry, in resource order.
    pub fn problems(&self) -> impl Iterator<Item = (&ResourceId, &Problem)> {
        self.resources.iter().flat_map(|(id, f)| {
            let invalid = f.list.iter().flat_map(|l| l.invalid.iter().map(|(_, p)| p));
            f.errors.iter().chain(invalid).map(move |p| (id, p))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_errors_then_invalid_entries_per_resource() {
        let mut f = Findings::default();
        let problem = |field: &str| Problem {
            field: field.into(),
            message: "bad".into(),
        };
        let list = ResourceId::new(Kind::AddressList, "l");
        let policy = ResourceId::new(Kind::TlsCompliance, "p");
        f.get_mut(&policy)
            .errors
            .push(problem("spec.addressLists[0].name"));
        f.get_mut(&list).errors.push(problem("spec.bulk"));
        f.get_mut(&list).list = Some(ListStats {
            invalid: vec![("x".into(), problem("spec.entries[3]"))],
            ..Default::default()
        });
        let seen: Vec<(String, String)> = f
            .problems()
            .map(|(id, p)| (id.to_string(), p.field.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                ("AddressList/l".to_string(), "spec.bulk".to_string()),
                ("AddressList/l".into(), "spec.entries[3]".into()),
                ("TlsCompliance/p".into(), "spec.addressLists[0].name".into()),
            ]
        );
    }

    #[test]
    fn requirements_read_as_explain_prints_them() {
        let r = |ca, host| Requirement::new(ca, host, TlsVersion::V1_2).to_string();
        assert_eq!(r(false, false), "TLS required, TLS 1.2 or newer");
        assert_eq!(
            r(true, false),
            "TLS with a CA-signed certificate, TLS 1.2 or newer"
        );
        assert_eq!(
            r(true, true),
            "TLS with a CA-signed certificate matching the host name, TLS 1.2 or newer"
        );
    }

    #[test]
    fn a_hop_is_its_postfix_next_hop() {
        let hop = Hop {
            gateway: "relay".into(),
            host: Host::parse("relay.example.net").expect("host"),
            port: 587,
            mx_lookup: false,
            tls: None,
        };
        assert_eq!(hop.nexthop(), "[relay.example.net]:587");
    }

    #[test]
    fn the_most_specific_key_covering_an_address_decides() {
        let (loaded, errors) = crate::cli::load::load_str(
            "p.yaml",
            "apiVersion: mailtls.io/v1alpha1\nkind: AddressList\nmetadata: {name: l}\n\
             spec: {entries: [.partner.example, a.partner.example]}\n---\n\
             apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {name: out}\n\
             spec: {direction: Outbound, addressLists: [{name: l}]}\n---\n\
             apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata: {name: in}\n\
             spec: {direction: Inbound, addressLists: [{name: l}]}\n",
            "default",
        );
        assert!(errors.is_empty());
        let policy = crate::policy::evaluate(&loaded.namespaces["default"]).policy;
        let key = |found: Option<Key>| found.map(|k| k.as_str().to_string());
        let e = |s: &str| crate::policy::parse_entry(s).expect(s);
        assert_eq!(
            key(policy
                .outbound_for(&e("bob@b.partner.example"))
                .map(|(k, _)| k))
            .as_deref(),
            Some(".partner.example")
        );
        assert_eq!(
            key(policy
                .outbound_for(&e("bob@a.partner.example"))
                .map(|(k, _)| k))
            .as_deref(),
            Some("a.partner.example")
        );
        // Inbound goes by Postfix's access table, where a listed domain covers its
        // subdomains and `.partner.example` is written as `partner.example`.
        let inbound = |s: &str| key(policy.inbound_for(&e(s)).map(|(k, _)| k));
        assert_eq!(
            inbound("eve@x.a.partner.example").as_deref(),
            Some("a.partner.example")
        );
        assert_eq!(
            inbound("eve@b.partner.example").as_deref(),
            Some(".partner.example")
        );
        assert_eq!(
            inbound("eve@partner.example").as_deref(),
            Some(".partner.example")
        );
        assert_eq!(
            inbound("partner.example").as_deref(),
            Some(".partner.example")
        );
        assert_eq!(inbound("eve@elsewhere.example"), None);
        assert!(policy.outbound_for(&e("bob@elsewhere.example")).is_none());
    }

    #[test]
    fn a_problems_reason_drops_the_quoted_entry() {
        let p = |message: &str| Problem {
            field: "spec.entries[3]".into(),
            message: message.into(),
        };
        assert_eq!(
            p("'bad..example': domain has an empty label").reason(),
            "domain has an empty label"
        );
        assert_eq!(
            p("AddressList 'x' does not exist").reason(),
            "AddressList 'x' does not exist"
        );
    }
}
