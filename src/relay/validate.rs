//! Line syntax of every rendered file, checked by the agent before anything reaches Postfix.
//! The ConfigMap is data: whoever can write it must not be able to set arbitrary Postfix
//! parameters, add a `pipe` service or hide a second setting in a continuation line. So
//! main.cf may only set the parameters mailtls owns (with values of the shape mailtls
//! renders), master.cf may only add `mailtls-*` smtp services with known `-o` options, and
//! map rows are `key value` with values of the shape each table takes.

use super::bundle::Bundle;
use crate::render::{
    BOUNCE_FILTER, DANE, MAIN_CF, MASTER_CF, MTA_STS, MTA_STS_MAP_NAME, OWNED_PARAMS,
    REQUIRE_TLS_CLASS, SENDER_ACCESS, SERVICE_PREFIX, TLS_POLICY, TRANSPORT, mta_sts_map,
};
use std::collections::BTreeSet;

/// What validation extracted for installation.
#[derive(Clone, Debug, Default)]
pub struct Checked {
    /// `name=value` arguments for `postconf -e`, in file order.
    pub main_cf: Vec<String>,
    /// Names of the services master.cf adds.
    pub services: Vec<String>,
    /// The transport table's `service` names (for the cross-check against master.cf).
    pub transport_services: BTreeSet<String>,
}

/// Check every file of `bundle`; `maps_dir` is where the agent installs the maps, which is
/// the only place main.cf and master.cf may point at, and `mta_sts_socket` the agent's own
/// MTA-STS policy server, the only socket they may name (none: MTA-STS is refused).
pub fn check(
    bundle: &Bundle,
    maps_dir: &str,
    mta_sts_socket: Option<&str>,
) -> Result<Checked, String> {
    if bundle.config_dir != maps_dir {
        return Err(format!(
            "rendered for maps in {} but this agent installs them in {maps_dir} \
             (render --config-dir must equal relay-agent --maps-dir)",
            bundle.config_dir
        ));
    }
    let map = |name: &str| format!("{}:{maps_dir}/{name}", bundle.map_type.as_str());
    let services = master_cf(
        bundle.file(MASTER_CF),
        &format!("pcre:{maps_dir}/{BOUNCE_FILTER}"),
        mta_sts_socket,
    )?;
    let mut checked = Checked {
        main_cf: main_cf(bundle.file(MAIN_CF), &map, mta_sts_socket)?,
        ..Default::default()
    };
    for file in [MTA_STS, DANE] {
        table(bundle.file(file), file, |v| {
            crate::sts::scope::is_attribute(v)
                .then_some(())
                .ok_or_else(|| "expected protocols=>=TLSv1.x".to_string())
        })?;
    }
    table(bundle.file(TLS_POLICY), TLS_POLICY, tls_policy_value)?;
    table(bundle.file(SENDER_ACCESS), SENDER_ACCESS, |v| {
        (v == REQUIRE_TLS_CLASS)
            .then_some(())
            .ok_or_else(|| format!("only {REQUIRE_TLS_CLASS} is allowed"))
    })?;
    table(bundle.file(TRANSPORT), TRANSPORT, |v| {
        let (service, nexthop) = v
            .split_once(':')
            .ok_or("expected service:nexthop".to_string())?;
        // Only the plain smtp client and this configuration's own services: Debian's
        // master.cf has pipe services (maildrop, uucp, …) that would run commands.
        if service != "smtp" && !services.iter().any(|s| s == service) {
            return Err(format!(
                "names service {service:?}, which this configuration's master.cf does not define \
                 (only smtp and its own mailtls-* services may be used)"
            ));
        }
        if !nexthop.is_empty() {
            check_nexthop(nexthop)?;
        }
        checked.transport_services.insert(service.to_string());
        Ok(())
    })?;
    pcre(bundle.file(BOUNCE_FILTER))?;
    checked.services = services;
    Ok(checked)
}

/// Lines that carry nothing: comments and blank lines.
fn is_comment(line: &str) -> bool {
    line.is_empty() || line.starts_with('#')
}

fn at(file: &str, n: usize, line: &str, why: impl std::fmt::Display) -> String {
    let shown: String = line
        .chars()
        .take(120)
        .flat_map(char::escape_debug)
        .collect();
    format!("{file} line {}: {why}: \"{shown}\"", n + 1)
}

/// Why a configuration that names an MTA-STS policy server is refused.
fn no_policy_server(named: &str, ours: Option<&str>) -> String {
    match ours {
        Some(path) => format!(
            "names the MTA-STS policy server {named:?}, but this agent serves it on \
             unix:{path} (render --mta-sts-socket must equal relay-agent --mta-sts-listen)"
        ),
        None => format!(
            "honours MTA-STS or DANE through {named:?}, but this agent runs no policy server \
             (relay-agent --mta-sts-listen unix:PATH); the last good configuration stays"
        ),
    }
}

fn main_cf(
    text: &str,
    map: &dyn Fn(&str) -> String,
    mta_sts_socket: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if is_comment(line) {
            continue;
        }
        let bad = |why: &str| at(MAIN_CF, n, line, why);
        if line.starts_with(char::is_whitespace) {
            return Err(bad("continuation lines are not allowed"));
        }
        let (name, value) = line
            .split_once(" = ")
            .ok_or_else(|| bad("expected 'name = value'"))?;
        if !OWNED_PARAMS.contains(&name) {
            return Err(bad("not a parameter mailtls owns"));
        }
        if !seen.insert(name) {
            return Err(bad("parameter set twice"));
        }
        if value.chars().any(|c| c.is_control() || c == '$') {
            return Err(bad("control characters or '$' in the value"));
        }
        if name == "smtp_tls_policy_maps"
            && let Some((first, rest)) = value.split_once(", ")
            && first.starts_with("socketmap:")
            && rest == map(TLS_POLICY)
        {
            let ours = mta_sts_socket.map(|s| mta_sts_map(s, MTA_STS_MAP_NAME));
            if ours.as_deref() != Some(first) {
                return Err(bad(&no_policy_server(first, mta_sts_socket)));
            }
            out.push(format!("{name}={value}"));
            continue;
        }
        let ok = match name {
            "smtp_tls_policy_maps" => value == map(TLS_POLICY),
            "transport_maps" => value == map(TRANSPORT),
            "smtpd_sender_restrictions" => {
                value == format!("check_sender_access {}", map(SENDER_ACCESS))
            }
            "relayhost" => value.is_empty() || check_nexthop(value).is_ok(),
            "smtpd_restriction_classes" => value == REQUIRE_TLS_CLASS,
            REQUIRE_TLS_CLASS => value == "reject_plaintext_session",
            "plaintext_reject_code" => {
                value.len() == 3
                    && value.starts_with(['4', '5'])
                    && value.bytes().all(|b| b.is_ascii_digit())
            }
            "smtp_tls_loglevel" => matches!(value, "0" | "1" | "2" | "3" | "4"),
            "tls_required_enable" => matches!(value, "yes" | "no"),
            "smtp_tls_CAfile" => is_safe_path(value),
            "smtp_dns_support_level" => value == "dnssec",
            "smtp_tls_security_level" => value == "dane",
            _ => false,
        };
        if !ok {
            return Err(bad("value not of the form mailtls renders"));
        }
        out.push(format!("{name}={value}"));
    }
    Ok(out)
}

fn is_safe_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("/../")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
}

fn is_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `[host]`, `[host]:port`, `host` or `host:port` (host a DNS name, `[IPv4]` or
/// `[ipv6:…]`).
fn check_nexthop(hop: &str) -> Result<(), String> {
    let bad = || format!("bad next-hop {hop:?}");
    let (host, port) = if let Some(rest) = hop.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        };
        let inner = host.strip_prefix("ipv6:").unwrap_or(host);
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:".contains(&b))
        {
            return Err(bad());
        }
        (None, port)
    } else {
        match hop.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(hop), None),
        }
    };
    if let Some(host) = host
        && (host.is_empty()
            || host.starts_with(['-', '.'])
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)))
    {
        return Err(bad());
    }
    if let Some(port) = port
        && !port.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(bad());
    }
    Ok(())
}

/// master.cf additions: only `NAME unix - - n - - smtp` services named `mailtls-…`, each
/// followed by `-o` options mailtls renders.
fn master_cf(
    text: &str,
    filter: &str,
    mta_sts_socket: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut services: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if is_comment(line) {
            continue;
        }
        let bad = |why: &str| at(MASTER_CF, n, line, why);
        if let Some(option) = line.strip_prefix("  -o ") {
            if services.is_empty() {
                return Err(bad("option before any service"));
            }
            let (name, value) = option
                .split_once('=')
                .ok_or_else(|| bad("expected -o name=value"))?;
            let ok = match name {
                "smtp_tls_security_level" => matches!(value, "encrypt" | "verify" | "secure"),
                "smtp_tls_verify_cert_match" => is_match_list(value, ','),
                "smtp_tls_mandatory_protocols" => is_min_protocol(value),
                "smtp_tls_policy_maps" if value.is_empty() => true,
                // Only this agent's policy server, asked under the service's own name.
                "smtp_tls_policy_maps" if value.starts_with("socketmap:") => {
                    let ours = services
                        .last()
                        .zip(mta_sts_socket)
                        .map(|(service, socket)| mta_sts_map(socket, service));
                    if ours.as_deref() != Some(value) {
                        return Err(bad(&no_policy_server(value, mta_sts_socket)));
                    }
                    true
                }
                "smtp_delivery_status_filter" => value == filter,
                _ => false,
            };
            if !ok {
                return Err(bad("option not of the form mailtls renders"));
            }
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [name, "unix", "-", "-", "n", "-", "-", "smtp"]
                if name.starts_with(SERVICE_PREFIX) && is_service_name(name) =>
            {
                if services.iter().any(|s| s == name) {
                    return Err(bad("service defined twice"));
                }
                services.push(name.to_string());
            }
            _ => return Err(bad("only mailtls-* smtp client services may be added")),
        }
    }
    Ok(services)
}

fn table(
    text: &str,
    file: &str,
    mut value_ok: impl FnMut(&str) -> Result<(), String>,
) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        if is_comment(line) {
            continue;
        }
        let bad = |why: &dyn std::fmt::Display| at(file, n, line, why);
        let (key, value) = line
            .split_once(' ')
            .ok_or_else(|| bad(&"expected 'key value'"))?;
        // `#` only starts a comment at the beginning of a line (skipped above), so an
        // address like `a#b@example.com` is a key like any other.
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b",;={}\"<>()\\".contains(&b));
        if !key_ok {
            return Err(bad(&"bad key"));
        }
        if value.is_empty() || value.chars().any(|c| c.is_control()) {
            return Err(bad(&"bad value"));
        }
        value_ok(value).map_err(|e| bad(&e))?;
    }
    Ok(())
}

/// The certificate name checks mailtls renders (`,` in master.cf, `:` in the policy table).
fn is_match_list(value: &str, sep: char) -> bool {
    value
        .split(sep)
        .all(|m| matches!(m, "hostname" | "nexthop" | "dot-nexthop"))
}

/// `>=TLSv1.2` and its kin.
fn is_min_protocol(value: &str) -> bool {
    value
        .strip_prefix(">=TLSv1")
        .is_some_and(|v| matches!(v, "" | ".1" | ".2" | ".3"))
}

fn tls_policy_value(value: &str) -> Result<(), String> {
    let mut words = value.split(' ');
    if !matches!(words.next(), Some("may" | "encrypt" | "verify" | "secure")) {
        return Err("unknown security level".into());
    }
    for word in words {
        let (attr, v) = word
            .split_once('=')
            .ok_or_else(|| format!("expected attribute=value, got {word:?}"))?;
        let ok = match attr {
            "match" => is_match_list(v, ':'),
            "protocols" => is_min_protocol(v),
            _ => false,
        };
        if !ok {
            return Err(format!(
                "attribute {word:?} not of the form mailtls renders"
            ));
        }
    }
    Ok(())
}

/// The bounce filter: `/regex/ replacement` rows; Postfix itself compiles the patterns
/// (the installer runs `postmap -q` on it and refuses on any warning).
fn pcre(text: &str) -> Result<(), String> {
    for (n, line) in text.lines().enumerate() {
        if is_comment(line) {
            continue;
        }
        let ok = line.starts_with('/')
            && line.rsplit_once("/ ").is_some_and(|(_, r)| {
                !r.is_empty()
                    && r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"$.{}".contains(&b))
            })
            && !line.chars().any(char::is_control);
        if !ok {
            return Err(at(BOUNCE_FILTER, n, line, "expected '/regex/ replacement'"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{RenderOptions, render};

    const MAPS: &str = "/etc/postfix/mailtls";
    const SOCKET: &str = crate::render::DEFAULT_MTA_STS_SOCKET;

    /// The examples rendered, as the agent would read them.
    fn bundle() -> Bundle {
        bundle_of(&["address-lists", "gateways", "tls-compliance"], "")
    }

    /// The namespace's default for destinations no policy lists: honour MTA-STS.
    const PUBLISHED: &str = "apiVersion: mailtls.io/v1alpha1\nkind: TlsCompliance\nmetadata:\n  name: published\nspec:\n  direction: Outbound\n  scope: Unlisted\n  mechanisms: [MtaSts]\n";

    fn bundle_of(examples: &[&str], extra: &str) -> Bundle {
        let yaml = examples
            .iter()
            .map(|f| {
                std::fs::read_to_string(format!("{}/examples/{f}.yaml", env!("CARGO_MANIFEST_DIR")))
                    .expect("example")
            })
            .chain([extra.to_string()])
            .collect::<Vec<_>>()
            .join("\n---\n");
        let (loaded, errors) = crate::cli::load::load_str("examples.yaml", &yaml, "default");
        assert!(errors.is_empty());
        let policy = crate::policy::evaluate(&loaded.namespaces["default"]).policy;
        let opts = RenderOptions {
            ca_file: Some("/etc/ssl/private-ca.pem".into()),
            ..Default::default()
        };
        let config = render(&policy, &opts);
        Bundle {
            hash: config.hash,
            map_type: opts.map_type,
            config_dir: MAPS.into(),
            files: config.files,
        }
    }

    fn with_in(
        mut b: Bundle,
        file: &str,
        change: impl FnOnce(&str) -> String,
    ) -> Result<Checked, String> {
        let text = change(b.file(file));
        b.files.insert(file.into(), text);
        check(&b, MAPS, Some(SOCKET))
    }

    #[test]
    fn rendered_output_passes() {
        let checked = check(&bundle(), MAPS, Some(SOCKET)).expect("rendered examples are valid");
        assert!(checked.main_cf.iter().any(|l| l.starts_with("relayhost=")));
        assert!(checked.services.iter().all(|s| s.starts_with("mailtls-")));
        assert!(!checked.transport_services.is_empty());
    }

    /// With MTA-STS honoured for every destination, the examples without their gateways
    /// name this agent's policy server, in main.cf and in every address's service, and
    /// nothing else may.
    #[test]
    fn mta_sts_needs_this_agents_policy_server() {
        let b = bundle_of(&["address-lists", "tls-compliance"], PUBLISHED);
        let sts_main =
            format!("smtp_tls_policy_maps=socketmap:unix:{SOCKET}:mailtls, lmdb:{MAPS}/tls_policy");
        let checked = check(&b, MAPS, Some(SOCKET)).expect("valid");
        assert!(checked.main_cf.contains(&sts_main), "{:?}", checked.main_cf);
        assert!(
            b.file(MASTER_CF)
                .contains(&format!("socketmap:unix:{SOCKET}:mailtls-"))
        );
        let err = check(&b, MAPS, None).expect_err("no server");
        assert!(err.contains("runs no policy server"), "{err}");
        assert!(err.starts_with("master.cf"), "{err}");
        let err = check(&b, MAPS, Some("/run/other.sock")).expect_err("other socket");
        assert!(
            err.contains("must equal relay-agent --mta-sts-listen"),
            "{err}"
        );

        // Another service's name, another socket, another table after it.
        let first = b
            .file(MASTER_CF)
            .lines()
            .find(|l| l.starts_with("mailtls-") && l.contains("-sts "))
            .and_then(|l| l.split(' ').next())
            .expect("an -sts service")
            .to_string();
        let swapped = |t: &str| {
            t.replacen(
                &format!("{SOCKET}:{first}\n"),
                &format!("{SOCKET}:mailtls-encrypt-tls10-defer-sts\n"),
                1,
            )
        };
        refused_in(
            b.clone(),
            MASTER_CF,
            swapped,
            "names the MTA-STS policy server",
            "tls10",
        );
        let other = |t: &str| t.replacen(&format!("unix:{SOCKET}:"), "unix:/tmp/x.sock:", 1);
        refused_in(
            b.clone(),
            MASTER_CF,
            other,
            "names the MTA-STS policy server",
            "/tmp/x.sock",
        );
        let line =
            format!("smtp_tls_policy_maps = socketmap:unix:{SOCKET}:mailtls, lmdb:/etc/passwd");
        refused_in(
            b.clone(),
            MAIN_CF,
            replace("smtp_tls_policy_maps =", &line),
            MAIN_FORM,
            "/etc/passwd",
        );
        let line = format!(
            "smtp_tls_policy_maps = socketmap:inet:10.0.0.1:25:mailtls, lmdb:{MAPS}/tls_policy"
        );
        refused_in(
            b.clone(),
            MAIN_CF,
            replace("smtp_tls_policy_maps =", &line),
            "names the MTA-STS policy server",
            "10.0.0.1",
        );
        refused_in(
            b.clone(),
            MTA_STS,
            append("example.com secure\n"),
            "protocols=>=TLSv1.x",
            "secure",
        );
        refused_in(
            b.clone(),
            MTA_STS,
            append("a,b.example protocols=>=TLSv1.2\n"),
            "bad key",
            "a,b",
        );
    }

    #[test]
    fn other_maps_dir_is_refused() {
        let err = check(&bundle(), "/elsewhere", Some(SOCKET)).expect_err("mismatch");
        assert!(err.contains("--config-dir"), "{err}");
    }

    /// Append `extra` to the file.
    fn append(extra: &str) -> impl Fn(&str) -> String + '_ {
        move |t: &str| format!("{t}{extra}")
    }

    /// Replace the line starting with `prefix` by `line`.
    fn replace(prefix: &str, line: &str) -> impl Fn(&str) -> String {
        let (prefix, line) = (prefix.to_string(), line.to_string());
        move |t: &str| {
            assert!(
                t.lines().any(|l| l.starts_with(&prefix)),
                "no line {prefix:?} to replace in:\n{t}"
            );
            t.lines()
                .map(|l| {
                    if l.starts_with(&prefix) {
                        line.as_str()
                    } else {
                        l
                    }
                })
                .map(|l| format!("{l}\n"))
                .collect()
        }
    }

    /// Each case reaches the rule it names: the refusal must carry that rule's reason and
    /// show the offending line, so a case refused for another reason (say, "set twice")
    /// fails here.
    fn refused(file: &str, change: impl Fn(&str) -> String, reason: &str, shown: &str) {
        refused_in(bundle(), file, change, reason, shown);
    }

    fn refused_in(
        b: Bundle,
        file: &str,
        change: impl Fn(&str) -> String,
        reason: &str,
        shown: &str,
    ) {
        let err = match with_in(b, file, change) {
            Ok(_) => panic!("a change to {file} ({shown:?}) was accepted"),
            Err(e) => e,
        };
        assert!(
            err.contains(reason),
            "{file}: expected {reason:?}, got: {err}"
        );
        assert!(err.contains(shown), "{file}: expected {shown:?} in: {err}");
    }

    const NOT_OWNED: &str = "not a parameter mailtls owns";
    const MAIN_FORM: &str = "value not of the form mailtls renders";

    #[test]
    fn main_cf_refusals_name_their_rule() {
        let m = MAIN_CF;
        refused(
            m,
            append("mailbox_command = /bin/sh -c id\n"),
            NOT_OWNED,
            "mailbox_command",
        );
        refused(
            m,
            append("  continued = x\n"),
            "continuation lines",
            "continued",
        );
        refused(
            m,
            append("relayhost=x\n"),
            "expected 'name = value'",
            "relayhost=x",
        );
        refused(
            m,
            append("relayhost = b.example\n"),
            "parameter set twice",
            "b.example",
        );
        refused(
            m,
            append("plaintext_reject_code = 550\n"),
            "set twice",
            "550",
        );
        let control = "relayhost = a\u{7}b";
        refused(
            m,
            replace("relayhost =", control),
            "control characters",
            "a\\u{7}b",
        );
        let dollar = "smtp_tls_CAfile = /etc/ssl/$x";
        refused(m, replace("smtp_tls_CAfile =", dollar), "'$'", "$x");
        for (name, value) in [
            ("relayhost", "a b"),
            ("relayhost", "[a.example]:0"),
            ("plaintext_reject_code", "250"),
            ("plaintext_reject_code", "5500"),
            ("plaintext_reject_code", "5x0"),
            ("smtp_tls_policy_maps", "lmdb:/etc/passwd"),
            ("transport_maps", "lmdb:/etc/passwd"),
            ("smtpd_sender_restrictions", "permit"),
            ("smtpd_restriction_classes", "other"),
            (REQUIRE_TLS_CLASS, "permit"),
            ("smtp_tls_loglevel", "5"),
            ("tls_required_enable", "maybe"),
            ("smtp_tls_CAfile", "relative/ca.pem"),
            ("smtp_tls_CAfile", "/etc/ssl/../../etc/shadow"),
            ("smtp_tls_CAfile", "/etc/ssl/ca pem"),
        ] {
            let line = format!("{name} = {value}");
            refused(m, replace(&format!("{name} ="), &line), MAIN_FORM, &line);
        }
    }

    const MASTER_FORM: &str = "option not of the form mailtls renders";
    const ONLY_SMTP: &str = "only mailtls-* smtp client services may be added";

    #[test]
    fn master_cf_refusals_name_their_rule() {
        let m = MASTER_CF;
        let evil = "evil unix - n n - - pipe\n  flags=F argv=/bin/sh\n";
        refused(m, append(evil), ONLY_SMTP, "evil unix");
        let pipe = "mailtls-x unix - - n - - pipe\n";
        refused(m, append(pipe), ONLY_SMTP, "mailtls-x unix");
        let upper = "mailtls-X unix - - n - - smtp\n";
        refused(m, append(upper), ONLY_SMTP, "mailtls-X");
        let chroot = "mailtls-x unix - - y - - smtp\n";
        refused(m, append(chroot), ONLY_SMTP, "mailtls-x");
        let twice = "mailtls-x unix - - n - - smtp\nmailtls-x unix - - n - - smtp\n";
        refused(m, append(twice), "service defined twice", "mailtls-x");
        let first = |t: &str| format!("  -o smtp_tls_policy_maps=\n{t}");
        refused(
            m,
            first,
            "option before any service",
            "smtp_tls_policy_maps",
        );
        let bare = "  -o smtp_tls_security_level\n";
        refused(
            m,
            append(bare),
            "expected -o name=value",
            "smtp_tls_security_level",
        );
        for option in [
            "content_filter=evil:",
            "smtp_tls_security_level=may",
            "smtp_tls_security_level=none",
            "smtp_tls_security_level=dane",
            "smtp_tls_verify_cert_match=nexthop,subject",
            "smtp_tls_verify_cert_match=",
            "smtp_tls_mandatory_protocols=!SSLv2",
            "smtp_tls_mandatory_protocols=>=TLSv1.4",
            "smtp_tls_policy_maps=lmdb:/etc/postfix/other",
            "smtp_delivery_status_filter=pcre:/etc/passwd",
        ] {
            let line = format!("  -o {option}\n");
            refused(m, append(&line), MASTER_FORM, option);
        }
    }

    #[test]
    fn map_refusals_name_their_rule() {
        let p = TLS_POLICY;
        refused(
            p,
            append("weak.example none\n"),
            "unknown security level",
            "weak.example",
        );
        refused(
            p,
            append("a.example Encrypt\n"),
            "unknown security level",
            "a.example",
        );
        let ciphers = "a.example encrypt ciphers=null\n";
        refused(
            p,
            append(ciphers),
            "not of the form mailtls renders",
            "ciphers=null",
        );
        let bare = "a.example encrypt protocols\n";
        refused(p, append(bare), "expected attribute=value", "protocols");
        let matches = "a.example verify match=hostname:subject\n";
        refused(
            p,
            append(matches),
            "not of the form mailtls renders",
            "match=",
        );
        let sslv3 = "a.example verify protocols=>=SSLv3\n";
        refused(p, append(sslv3), "not of the form mailtls renders", "SSLv3");
        refused(p, append("a,b.example encrypt\n"), "bad key", "a,b.example");
        refused(
            p,
            append("a.example\n"),
            "expected 'key value'",
            "a.example",
        );
        refused(p, append("a.example \n"), "bad value", "a.example");
        refused(
            p,
            append("a.example encrypt\u{7f}\n"),
            "bad value",
            "a.example",
        );

        let s = SENDER_ACCESS;
        let only = "only mailtls_require_tls is allowed";
        refused(s, append("a.example OK\n"), only, "a.example OK");

        let t = TRANSPORT;
        refused(t, append("a.example smtp:[a b]\n"), "bad next-hop", "[a b]");
        refused(
            t,
            append("a.example smtp\n"),
            "expected service:nexthop",
            "a.example",
        );
        for service in ["Pipe", "maildrop", "mailtls-nope", "relay"] {
            let line = format!("a.example {service}:\n");
            refused(t, append(&line), "names service", service);
        }
        refused(t, append(" a.example smtp:\n"), "bad key", "a.example");

        let b = BOUNCE_FILTER;
        let form = "expected '/regex/ replacement'";
        refused(b, append("/x/ 5.7.1 ${evil}\n"), form, "${evil}");
        refused(b, append("if /x/\n"), form, "if /x/");
        refused(b, append("/x/ \n"), form, "/x/");
        refused(b, append("/x\u{7}/ 5$1\n"), form, "/x");
    }

    #[test]
    fn nexthops() {
        for ok in [
            "[a.example]",
            "[a.example]:587",
            "a.example",
            "a.example:25",
            "[192.0.2.1]",
            "[ipv6:2001:db8::1]:25",
        ] {
            assert!(check_nexthop(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "[a", "[a]x", "a:0", "a:99999", "-a", "a b", "[a,b]", "a:",
        ] {
            assert!(check_nexthop(bad).is_err(), "{bad}");
        }
    }
}
