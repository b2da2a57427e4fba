//! EffectivePolicy → Postfix files. See DESIGN.md §4 and the README's mapping table.
//!
//! Decisions worth knowing:
//! * A TLS-required key routed directly goes in `tls_policy` (keyed by the next-hop domain,
//!   which is the key itself). Addresses, and any key routed through a gateway, get a
//!   `transport` entry to a dedicated master.cf service that carries the requirement in `-o`
//!   options and empties `smtp_tls_policy_maps`, so no table entry can weaken it. That is
//!   how no route carries TLS-required mail without its own mandatory TLS.
//! * "CA-signed without host name" has no Postfix level of its own: it renders as `verify`
//!   accepting the MX host name, the next-hop domain or any subdomain of it
//!   (`match=hostname:nexthop:dot-nexthop`). Postfix cannot check a chain with no name at
//!   all; this is the closest, and the probe reports the certificate exactly.
//! * `onFailure: Bounce` uses a service with `smtp_delivery_status_filter`, which turns the
//!   SMTP client's own TLS 4.7.x failures into 5.7.x. Never global: `Defer` keys must keep
//!   retrying.
//! * MTA-STS: Postfix asks the relay agent's policy server (socketmap) before the
//!   `tls_policy` table. The `mta_sts` file tells the server which destinations honour it
//!   and what their listed policy adds (the minimum TLS version), so the answer for an
//!   `enforce` domain is the strictest of both; elsewhere it answers "not found" and the
//!   table decides as before. An address's service asks the server under its own name.
//! * DANE: `smtp_dns_support_level = dnssec`, and unlisted destinations get Postfix's own
//!   `dane` level. A listed destination's table row would override that with its weaker
//!   unauthenticated level, and Postfix has no "DANE, else this" level; so the `dane` file
//!   lists those destinations and the policy server answers `dane-only` (plus what the listed
//!   policy adds) when their MX hosts have authenticated TLSA records, before MTA-STS.
//! * Inbound: Postfix access tables match a listed domain's subdomains too (the default
//!   `parent_domain_matches_subdomains`), so `.example.com` is written as `example.com`:
//!   stricter rather than silently unmatched.

use super::{InMemory, MANIFEST, Output, RelayConfig, RenderOptions, Rendered, content_hash, hex};
use crate::api::{OnFailure, TlsVersion};
use crate::policy::{
    EffectivePolicy, Enforced, Hop, Key, Level, Mechanisms, OutboundRule, Requirement, Route,
};
use rustc_hash::FxHashMap;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write};
use std::io;

/// Source files of the indexed maps (built with `postmap`).
pub const TLS_POLICY: &str = "tls_policy";
pub const TRANSPORT: &str = "transport";
pub const SENDER_ACCESS: &str = "sender_access";
/// Which destinations honour MTA-STS, read by the relay agent's policy server (not a map).
pub const MTA_STS: &str = "mta_sts";
/// The socketmap name Postfix's main policy lookups use; services use their own name.
pub const MTA_STS_MAP_NAME: &str = "mailtls";
/// Which listed destinations honour DANE, read by the same policy server (not a map).
pub const DANE: &str = "dane";
/// An `mta_sts` or `dane` key for every destination.
pub const MTA_STS_ALL: &str = "*";
/// The delivery status filter (a pcre table, used as is).
pub const BOUNCE_FILTER: &str = "tls_bounce.pcre";
pub const MAIN_CF: &str = "main.cf";
pub const MASTER_CF: &str = "master.cf";
/// The restriction class inbound senders are sent to.
pub const REQUIRE_TLS_CLASS: &str = "mailtls_require_tls";
/// The service used for direct `Bounce` domains whose level comes from `tls_policy`.
const BOUNCE_SERVICE: &str = "mailtls-bounce";
/// Every master.cf service mailtls renders is named with this prefix.
pub const SERVICE_PREFIX: &str = "mailtls-";
/// The main.cf parameters mailtls owns: the only ones a rendered main.cf may set (the relay
/// agent refuses anything else, so a ConfigMap can never set arbitrary Postfix parameters).
pub const OWNED_PARAMS: &[&str] = &[
    "smtp_tls_policy_maps",
    "transport_maps",
    "relayhost",
    "smtpd_restriction_classes",
    REQUIRE_TLS_CLASS,
    "smtpd_sender_restrictions",
    "plaintext_reject_code",
    "smtp_tls_loglevel",
    "smtp_tls_CAfile",
    "tls_required_enable",
    "smtp_dns_support_level",
    "smtp_tls_security_level",
];

/// Turns the SMTP client's own mandatory-TLS failures into permanent ones. Anchored on the
/// text Postfix itself writes; a remote server's reply reads "host X said: …" and never
/// matches.
const BOUNCE_FILTER_RULES: &str = r"/^4(\.7\.[0-9]+ TLS is required, but .*)$/ 5$1
/^4(\.7\.[0-9]+ Cannot start TLS: .*)$/ 5$1
/^4(\.7\.[0-9]+ Server certificate not (verified|trusted).*)$/ 5$1
/^4(\.7\.[0-9]+ Server hostname verification failed.*)$/ 5$1
";

/// A TLS policy table value: opportunistic (for gateway hops) or a requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum TableLevel {
    May,
    Required(Requirement),
}

impl TableLevel {
    fn stricter(self, other: TableLevel) -> TableLevel {
        match (self, other) {
            (TableLevel::Required(a), TableLevel::Required(b)) => {
                TableLevel::Required(a.strictest(b))
            }
            (TableLevel::May, x) | (x, TableLevel::May) => x,
        }
    }
}

/// Written straight into the table: a hundred thousand rows share a handful of values.
impl fmt::Display for TableLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableLevel::May => f.write_str("may"),
            TableLevel::Required(r) => {
                let level = match r.level {
                    Level::Encrypt => "encrypt",
                    Level::CaSigned => "verify match=hostname:nexthop:dot-nexthop",
                    Level::Hostname => "verify match=hostname",
                };
                write!(f, "{level} protocols=>={}", r.min_tls.postfix_name())
            }
        }
    }
}

/// The socketmap Postfix asks the policy server through.
pub fn mta_sts_map(socket: &str, name: &str) -> String {
    format!("socketmap:unix:{socket}:{name}")
}

/// What the policy server adds to an `enforce` MTA-STS answer for a destination.
fn mta_sts_value(min_tls: TlsVersion) -> String {
    format!("protocols=>={}", min_tls.postfix_name())
}

/// The minimum TLS version and the published policies a service honours, read back from its
/// name (the policy server gets the name with each lookup); `None` for any other name and
/// for a service that honours none.
pub fn service_scope(name: &str) -> Option<(TlsVersion, Mechanisms)> {
    let rest = name.strip_prefix(SERVICE_PREFIX)?;
    let parts: Vec<&str> = rest.split('-').collect();
    let mechanisms = Mechanisms {
        mta_sts: parts.last() == Some(&"sts"),
        dane: parts.contains(&"dane"),
    };
    if mechanisms.is_empty() {
        return None;
    }
    let version = parts.iter().find_map(|part| part.strip_prefix("tls"))?;
    let version = [
        TlsVersion::V1_0,
        TlsVersion::V1_1,
        TlsVersion::V1_2,
        TlsVersion::V1_3,
    ]
    .into_iter()
    .find(|v| v.as_str().replace('.', "") == version)?;
    Some((version, mechanisms))
}

/// A dedicated master.cf service: a requirement and failure handling carried in `-o` options.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Service(Enforced);

impl fmt::Display for Service {
    /// The service's name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Enforced {
            requirement,
            on_failure,
            mechanisms,
        } = self.0;
        let level = match requirement.level {
            Level::Encrypt => "encrypt",
            Level::CaSigned => "ca",
            Level::Hostname => "verify",
        };
        let version = requirement.min_tls.as_str().replace('.', "");
        let fail = match on_failure {
            OnFailure::Bounce => "bounce",
            OnFailure::Defer => "defer",
        };
        let dane = if mechanisms.dane { "-dane" } else { "" };
        let sts = if mechanisms.mta_sts { "-sts" } else { "" };
        write!(f, "mailtls-{level}-tls{version}-{fail}{dane}{sts}")
    }
}

impl Service {
    fn name(self) -> String {
        self.to_string()
    }

    fn render(self, filter: &str, mta_sts_socket: &str) -> String {
        let Enforced {
            requirement,
            on_failure,
            mechanisms,
        } = self.0;
        let mut s = service_line(&self.name());
        let (level, matching) = match requirement.level {
            Level::Encrypt => ("encrypt", None),
            Level::CaSigned => ("verify", Some("hostname,nexthop,dot-nexthop")),
            Level::Hostname => ("verify", Some("hostname")),
        };
        let _ = writeln!(s, "  -o smtp_tls_security_level={level}");
        if let Some(m) = matching {
            let _ = writeln!(s, "  -o smtp_tls_verify_cert_match={m}");
        }
        let _ = writeln!(
            s,
            "  -o smtp_tls_mandatory_protocols=>={}",
            requirement.min_tls.postfix_name()
        );
        // No table may weaken the service's own level; the policy server only answers with
        // a stricter one (DANE or an `enforce` MTA-STS policy, plus this version).
        let maps = if !mechanisms.is_empty() {
            mta_sts_map(mta_sts_socket, &self.name())
        } else {
            String::new()
        };
        let _ = writeln!(s, "  -o smtp_tls_policy_maps={maps}");
        if on_failure == OnFailure::Bounce {
            let _ = writeln!(s, "  -o smtp_delivery_status_filter={filter}");
        }
        s
    }
}

/// A master.cf service line for an SMTP client transport. `chroot = n` so the service needs
/// no resolver files inside the queue directory.
fn service_line(name: &str) -> String {
    format!("{name} unix  -       -       n       -       -       smtp\n")
}

/// A transport table value, written straight into the table: no string per row.
enum Transport<'n> {
    /// `smtp:<nexthop>`: a plain change of route.
    Smtp(Cow<'n, str>),
    /// The bounce service, to the recipient domain.
    Bounce,
    /// A dedicated service, to the recipient domain or through a gateway's next-hop.
    Service(Service, Option<Cow<'n, str>>),
}

impl fmt::Display for Transport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Smtp(nexthop) => write!(f, "smtp:{nexthop}"),
            Transport::Bounce => write!(f, "{BOUNCE_SERVICE}:"),
            Transport::Service(service, nexthop) => {
                write!(f, "{service}:{}", nexthop.as_deref().unwrap_or_default())
            }
        }
    }
}

/// What each resource contributed, for the manifest: (kind, name, file) → rows. Hashed while
/// counting (a few lookups per row), sorted once for the manifest.
#[derive(Default)]
struct Contributions<'a>(FxHashMap<(&'static str, &'a str, &'static str), u64>);

impl<'a> Contributions<'a> {
    fn add(
        &mut self,
        who: impl IntoIterator<Item = &'a str>,
        kind: &'static str,
        file: &'static str,
    ) {
        for name in who {
            *self.0.entry((kind, name, file)).or_default() += 1;
        }
    }

    fn to_json(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        let mut out: BTreeMap<String, BTreeMap<&'static str, u64>> = BTreeMap::new();
        for ((kind, name, file), rows) in &self.0 {
            out.entry(format!("{kind}/{name}"))
                .or_default()
                .insert(file, *rows);
        }
        out
    }
}

/// What the tables need besides their rows, gathered in one pass over the policy. The rows
/// themselves are made again as each table is written, in key order, so a hundred thousand
/// of them are never held at once.
#[derive(Default)]
struct Tables<'a> {
    /// The `tls_policy` rows of the gateways' next-hops: sorted, unique, and merged in where
    /// they sort as the table is written.
    hops: Vec<(String, TableLevel)>,
    /// Listed destinations that honour MTA-STS, with what their policy adds.
    mta_sts: Vec<(&'a str, String)>,
    /// Listed destinations that honour DANE, with what their policy adds.
    dane: Vec<(&'a str, String)>,
    services: BTreeSet<Service>,
    bounce_service: bool,
    made_by: Contributions<'a>,
}

/// Each gateway's next-hop, made once rather than once per row.
struct Nexthops<'a>(FxHashMap<&'a str, String>);

impl<'a> Nexthops<'a> {
    fn new(policy: &'a EffectivePolicy) -> Self {
        Nexthops(
            policy
                .gateways
                .iter()
                .map(|(name, hop)| (name.as_str(), hop.nexthop()))
                .collect(),
        )
    }

    fn of(&self, hop: &Hop) -> Cow<'_, str> {
        match self.0.get(hop.gateway.as_str()) {
            Some(nexthop) => Cow::Borrowed(nexthop),
            None => Cow::Owned(hop.nexthop()),
        }
    }
}

/// Render one namespace's effective policy into relay files, each handed to `out` as it is
/// made (the manifest last).
pub fn render_to(
    policy: &EffectivePolicy,
    opts: &RenderOptions,
    out: &mut dyn Output,
) -> io::Result<Rendered> {
    let nexthops = Nexthops::new(policy);
    let mut t = Tables::default();
    outbound(policy, &nexthops, &mut t);
    gateway_hops(policy, &mut t);
    for (_, rule) in &policy.inbound {
        if rule.enforced {
            t.made_by.add(
                rule.policies.iter().map(|n| &**n),
                "TlsCompliance",
                SENDER_ACCESS,
            );
        }
    }

    let map = |name: &str| format!("{}:{}/{}", opts.map_type.as_str(), opts.config_dir, name);
    let filter = format!("pcre:{}/{}", opts.config_dir, BOUNCE_FILTER);
    if policy.unlisted.mta_sts {
        t.mta_sts
            .insert(0, (MTA_STS_ALL, mta_sts_value(TlsVersion::default())));
    }
    // Unlisted destinations get Postfix's own `dane` level; when the policy server is asked
    // anyway, it must try DANE first for them too.
    if policy.unlisted.dane && !(t.mta_sts.is_empty() && t.dane.is_empty()) {
        t.dane
            .insert(0, (MTA_STS_ALL, mta_sts_value(TlsVersion::default())));
    }
    let server = !(t.mta_sts.is_empty() && t.dane.is_empty());
    let dnssec = policy.unlisted.dane
        || !t.dane.is_empty()
        || t.services.iter().any(|s| s.0.mechanisms.dane);
    // The namespace is a Kubernetes name already; filtered anyway, since it lands in files.
    let namespace: String = policy
        .namespace
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    let header = format!(
        "# Generated by mailtls for namespace \"{namespace}\". Do not edit: every change is overwritten.\n"
    );

    let mut files = Files {
        out,
        hashes: BTreeMap::new(),
    };
    let main = main_cf(policy, opts, &header, &map, server, dnssec);
    files.write(MAIN_CF, |w| w.write_str(&main))?;
    files.write(MASTER_CF, |w| {
        w.write_str(&master_cf(&t, &header, &filter, &opts.mta_sts_socket))
    })?;
    // Only when used: a configuration without them stays byte for byte what it was.
    if !t.mta_sts.is_empty() {
        files.write(MTA_STS, |w| {
            table(
                w,
                &format!("{header}# Destinations whose `enforce` MTA-STS policy is enforced, and what their listed policy adds (read by the relay agent's policy server; `*` is every destination).\n"),
                t.mta_sts.iter().map(|(k, v)| (*k, v.as_str())),
            )
            .map(drop)
        })?;
    }
    if !t.dane.is_empty() {
        files.write(DANE, |w| {
            table(
                w,
                &format!("{header}# Destinations that get `dane-only` when their MX hosts have DNSSEC-authenticated TLSA records, and what their listed policy adds (read by the relay agent's policy server; `*` is every destination).\n"),
                t.dane.iter().map(|(k, v)| (*k, v.as_str())),
            )
            .map(drop)
        })?;
    }
    let (mut tls_rows, mut transport_rows, mut sender_rows) = (0, 0, 0);
    files.write(TLS_POLICY, |w| {
        let keys = policy.outbound.iter().filter_map(|(key, rule)| {
            Some((key.as_str(), key_rows(policy, &nexthops, key, rule).0?))
        });
        let hops = t.hops.iter().map(|(k, v)| (k.as_str(), *v));
        tls_rows = table(w, &header, merge_sorted(keys, hops, TableLevel::stricter))?;
        Ok(())
    })?;
    files.write(TRANSPORT, |w| {
        let rows = policy.outbound.iter().filter_map(|(key, rule)| {
            Some((key.as_str(), key_rows(policy, &nexthops, key, rule).1?))
        });
        transport_rows = table(w, &header, rows)?;
        Ok(())
    })?;
    files.write(SENDER_ACCESS, |w| {
        sender_rows = table(
            w,
            &format!("{header}# A domain here also covers its subdomains (Postfix access table semantics).\n"),
            sender_keys(policy).map(|k| (k, REQUIRE_TLS_CLASS)),
        )?;
        Ok(())
    })?;
    files.write(BOUNCE_FILTER, |w| {
        w.write_str(&header)?;
        w.write_str(BOUNCE_FILTER_RULES)
    })?;

    let file_hashes = files.hashes;
    let hash = content_hash(&file_hashes);
    let rendered = Rendered {
        hash: hash.clone(),
        tls_policy: tls_rows,
        transport: transport_rows,
        sender_access: sender_rows,
        services: t.services.len() + usize::from(t.bounce_service),
    };
    let mut manifest = json!({
        "generator": format!("mailtls {}", env!("CARGO_PKG_VERSION")),
        "namespace": policy.namespace,
        "hash": hash,
        "options": {
            "configDir": opts.config_dir,
            "mapType": opts.map_type.as_str(),
            "caFile": opts.ca_file,
            "postfixVersion": opts.postfix_version.to_string(),
        },
        "maps": [TLS_POLICY, TRANSPORT, SENDER_ACCESS],
        "files": file_hashes.iter().map(|(name, h)| (name.clone(), format!("sha256:{h}"))).collect::<BTreeMap<_, _>>(),
        "entries": {
            TLS_POLICY: rendered.tls_policy,
            TRANSPORT: rendered.transport,
            SENDER_ACCESS: rendered.sender_access,
            "services": rendered.services,
        },
        "resources": t.made_by.to_json(),
    });
    if server {
        manifest["options"]["mtaStsSocket"] = json!(opts.mta_sts_socket);
    }
    if !t.mta_sts.is_empty() {
        manifest["entries"][MTA_STS] = json!(t.mta_sts.len());
    }
    if !t.dane.is_empty() {
        manifest["entries"][DANE] = json!(t.dane.len());
    }
    let mut manifest = serde_json::to_string_pretty(&manifest).unwrap_or_default();
    manifest.push('\n');
    files.out.open(MANIFEST)?;
    files.out.append(&manifest)?;
    files.out.close()?;
    Ok(rendered)
}

/// Render one namespace's effective policy into relay files kept in memory.
pub fn render(policy: &EffectivePolicy, opts: &RenderOptions) -> RelayConfig {
    let mut out = InMemory::default();
    let hash = match render_to(policy, opts, &mut out) {
        Ok(rendered) => rendered.hash,
        Err(e) => unreachable!("files in memory cannot fail to be written: {e}"),
    };
    RelayConfig {
        files: out.files,
        hash,
    }
}

/// Bytes of a file gathered before they are hashed and handed to the output.
const PIECE: usize = 64 * 1024;

/// The files being written, and the SHA-256 of each one done.
struct Files<'o> {
    out: &'o mut dyn Output,
    hashes: BTreeMap<String, String>,
}

impl Files<'_> {
    /// Write the file `name` with `body`, hashing it on the way out.
    fn write(
        &mut self,
        name: &str,
        body: impl FnOnce(&mut FileWriter) -> fmt::Result,
    ) -> io::Result<()> {
        self.out.open(name)?;
        let mut w = FileWriter {
            out: &mut *self.out,
            piece: String::with_capacity(PIECE),
            sha: Sha256::new(),
            failed: None,
        };
        let written = body(&mut w).and_then(|()| w.pass_on());
        if let Some(e) = w.failed.take() {
            return Err(e);
        }
        written.map_err(|_| io::Error::other(format!("cannot render {name}")))?;
        self.hashes.insert(name.to_string(), hex(&w.sha.finalize()));
        self.out.close()
    }
}

/// One file's text on its way to the output, in pieces of [`PIECE`] bytes.
struct FileWriter<'o> {
    out: &'o mut dyn Output,
    piece: String,
    sha: Sha256,
    /// The output's error, kept: `fmt::Write` can only say that something failed.
    failed: Option<io::Error>,
}

impl FileWriter<'_> {
    fn pass_on(&mut self) -> fmt::Result {
        self.sha.update(self.piece.as_bytes());
        let passed = self.out.append(&self.piece);
        self.piece.clear();
        passed.map_err(|e| {
            self.failed = Some(e);
            fmt::Error
        })
    }
}

impl Write for FileWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.piece.push_str(s);
        if self.piece.len() >= PIECE {
            self.pass_on()?;
        }
        Ok(())
    }
}

/// The `tls_policy` and `transport` rows of one outbound key.
fn key_rows<'n>(
    policy: &EffectivePolicy,
    nexthops: &'n Nexthops,
    key: Key<'_>,
    rule: &OutboundRule,
) -> (Option<TableLevel>, Option<Transport<'n>>) {
    match (rule.enforced, policy.hop(&rule.route)) {
        // A plain change of route, written only where the route is declared; keys below it
        // fall through to that entry.
        (None, Some(hop)) => match &rule.route {
            Route::Recipients { entry: None, .. } => {
                (None, Some(Transport::Smtp(nexthops.of(hop))))
            }
            _ => (None, None),
        },
        (None, None) => (None, None),
        // A domain delivered directly: its level in `tls_policy`, and the bounce service
        // when its failures must bounce.
        (Some(e), None) if !key.is_address() => (
            Some(TableLevel::Required(e.requirement)),
            (e.on_failure == OnFailure::Bounce).then_some(Transport::Bounce),
        ),
        // An address, delivered directly: empty next-hop = the recipient domain.
        (Some(e), None) => (None, Some(Transport::Service(Service(e), None))),
        (Some(e), Some(hop)) => {
            // Through a gateway: the hop must meet the destination's requirement and the
            // gateway's own, whichever is stricter. MTA-STS and DANE name the destination's
            // MX hosts; a gateway is not one.
            let requirement = hop
                .tls
                .map_or(e.requirement, |g| g.strictest(e.requirement));
            let service = Service(Enforced {
                requirement,
                on_failure: e.on_failure,
                mechanisms: Mechanisms::default(),
            });
            (
                None,
                Some(Transport::Service(service, Some(nexthops.of(hop)))),
            )
        }
    }
}

/// Everything the outbound rows need besides themselves: services, MTA-STS and DANE
/// destinations, and who made which rows.
fn outbound<'a>(policy: &'a EffectivePolicy, nexthops: &Nexthops, t: &mut Tables<'a>) {
    for (key, rule) in &policy.outbound {
        let policies = rule.policies.iter().map(|n| &**n);
        let gateway = policy.hop(&rule.route).map(|hop| hop.gateway.as_str());
        let (tls, transport) = key_rows(policy, nexthops, key, rule);
        if let (Some(_), Some(e)) = (tls, rule.enforced) {
            t.made_by.add(policies.clone(), "TlsCompliance", TLS_POLICY);
            if e.mechanisms.mta_sts {
                t.mta_sts
                    .push((key.as_str(), mta_sts_value(e.requirement.min_tls)));
            }
            if e.mechanisms.dane {
                t.dane
                    .push((key.as_str(), mta_sts_value(e.requirement.min_tls)));
            }
        }
        match transport {
            None => {}
            Some(Transport::Smtp(_)) => t.made_by.add(gateway, "OutboundGateway", TRANSPORT),
            Some(Transport::Bounce) => {
                t.bounce_service = true;
                t.made_by.add(policies, "TlsCompliance", TRANSPORT);
            }
            Some(Transport::Service(service, nexthop)) => {
                t.services.insert(service);
                t.made_by.add(policies, "TlsCompliance", TRANSPORT);
                if nexthop.is_some() {
                    t.made_by.add(gateway, "OutboundGateway", TRANSPORT);
                }
            }
        }
    }
}

/// Every gateway in use gets a TLS policy entry for its exact next-hop, so a recipient
/// domain's entry can never apply to the hop by accident. The secure route's is mandatory.
fn gateway_hops<'a>(policy: &'a EffectivePolicy, t: &mut Tables<'a>) {
    let mut used: BTreeSet<&str> = policy
        .relayhost
        .iter()
        .chain(&policy.secure_route)
        .map(String::as_str)
        .collect();
    used.extend(policy.outbound.values().filter_map(|r| r.route.gateway()));
    let mut hops: BTreeMap<String, TableLevel> = BTreeMap::new();
    for name in used {
        let Some(hop) = policy.gateways.get(name) else {
            continue;
        };
        let mut level = hop.tls.map_or(TableLevel::May, TableLevel::Required);
        if policy.secure_route.as_deref() == Some(name) {
            level = level.stricter(TableLevel::Required(Requirement::new(
                false,
                false,
                Default::default(),
            )));
        }
        // Two gateways may share a next-hop: one row, the stricter of both.
        hops.entry(hop.nexthop())
            .and_modify(|l| *l = l.stricter(level))
            .or_insert(level);
        t.made_by.add([name], "OutboundGateway", TLS_POLICY);
    }
    t.hops = hops.into_iter().collect();
}

/// Two sorted row sequences as one, a key in both once with `combine` of its values.
fn merge_sorted<'k, V>(
    a: impl Iterator<Item = (&'k str, V)>,
    b: impl Iterator<Item = (&'k str, V)>,
    combine: impl Fn(V, V) -> V,
) -> impl Iterator<Item = (&'k str, V)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || {
        let order = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0.cmp(y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => return None,
        };
        match order {
            std::cmp::Ordering::Less => a.next(),
            std::cmp::Ordering::Greater => b.next(),
            std::cmp::Ordering::Equal => {
                let (key, x) = a.next()?;
                let (_, y) = b.next()?;
                Some((key, combine(x, y)))
            }
        }
    })
}

/// The `sender_access` keys, sorted and unique. `.example.com` is written as `example.com`;
/// wildcards sort before every other key (`.` before letters and digits), so the policy's
/// keys are two sorted runs, merged here.
fn sender_keys(policy: &EffectivePolicy) -> impl Iterator<Item = &str> {
    let enforced = || {
        policy
            .inbound
            .iter()
            .filter(|(_, rule)| rule.enforced)
            .map(|(key, _)| key)
    };
    let wildcards = enforced()
        .take_while(|key| key.is_subdomains())
        .map(|key| (key.domain(), ()));
    let others = enforced()
        .skip_while(|key| key.is_subdomains())
        .map(|key| (key.as_str(), ()));
    merge_sorted(wildcards, others, |(), ()| ()).map(|(key, ())| key)
}

fn relay_hop(policy: &EffectivePolicy) -> Option<&Hop> {
    policy
        .relayhost
        .as_ref()
        .and_then(|g| policy.gateways.get(g))
}

fn main_cf(
    policy: &EffectivePolicy,
    opts: &RenderOptions,
    header: &str,
    map: &dyn Fn(&str) -> String,
    server: bool,
    dnssec: bool,
) -> String {
    let mut s = String::from(header);
    s.push_str("# Only parameters mailtls owns; apply with `postconf -e` or append to the relay's main.cf.\n");
    let mut set = |name: &str, value: &str| {
        let _ = writeln!(s, "{name} = {value}");
    };
    let policy_maps = if server {
        format!(
            "{}, {}",
            mta_sts_map(&opts.mta_sts_socket, MTA_STS_MAP_NAME),
            map(TLS_POLICY)
        )
    } else {
        map(TLS_POLICY)
    };
    set("smtp_tls_policy_maps", &policy_maps);
    set("transport_maps", &map(TRANSPORT));
    set(
        "relayhost",
        &relay_hop(policy).map(Hop::nexthop).unwrap_or_default(),
    );
    set("smtpd_restriction_classes", REQUIRE_TLS_CLASS);
    set(REQUIRE_TLS_CLASS, "reject_plaintext_session");
    set(
        "smtpd_sender_restrictions",
        &format!("check_sender_access {}", map(SENDER_ACCESS)),
    );
    set("plaintext_reject_code", "550");
    set("smtp_tls_loglevel", "1");
    if let Some(ca) = &opts.ca_file {
        set("smtp_tls_CAfile", ca);
    }
    if opts.postfix_version.has_tls_required_header() {
        set("tls_required_enable", "no");
    }
    if dnssec {
        set("smtp_dns_support_level", "dnssec");
    }
    if policy.unlisted.dane {
        set("smtp_tls_security_level", "dane");
    }
    s
}

fn master_cf(t: &Tables, header: &str, filter: &str, mta_sts_socket: &str) -> String {
    let mut s = String::from(header);
    s.push_str("# mailtls delivery services; append to the relay's master.cf.\n");
    if t.bounce_service {
        s.push_str(&service_line(BOUNCE_SERVICE));
        let _ = writeln!(s, "  -o smtp_delivery_status_filter={filter}");
    }
    for service in &t.services {
        s.push_str(&service.render(filter, mta_sts_socket));
    }
    s
}

/// Write a table's rows after `header`; the number of rows.
fn table<'a, V: fmt::Display>(
    w: &mut impl Write,
    header: &str,
    rows: impl Iterator<Item = (&'a str, V)>,
) -> Result<usize, fmt::Error> {
    w.write_str(header)?;
    let mut written = 0;
    for (key, value) in rows {
        w.write_str(key)?;
        w.write_char(' ')?;
        write!(w, "{value}")?;
        w.write_char('\n')?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys of either side come once, in order; a key on both sides gets both values.
    #[test]
    fn sorted_rows_merge_in_order_and_combine_once() {
        let a = [("a", 1), ("c", 2), ("e", 3)];
        let b = [("b", 10), ("c", 20), ("f", 30)];
        let merged: Vec<(&str, i32)> =
            merge_sorted(a.into_iter(), b.into_iter(), |x, y| x + y).collect();
        assert_eq!(
            merged,
            [("a", 1), ("b", 10), ("c", 22), ("e", 3), ("f", 30)]
        );
        let one_side: Vec<(&str, i32)> =
            merge_sorted(std::iter::empty(), b.into_iter(), |x, y| x + y).collect();
        assert_eq!(one_side, b);
    }
}
