//! Running one probe: DNS, MTA-STS and the SMTP/TLS session of each host, then the verdict.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::smtp::{ReplyError, SmtpConn};
use super::tls::{self, HandshakeFailure, LimitedStream};
use super::verdict::{self, HostFailure};
use super::{
    DestinationReport, Expected, HostReport, Inner, MxHost, MxKind, MxSet, Outcome, StsReport,
    Target, TlsReport, sts,
};

/// Addresses tried per host before giving up (an MTA also tries the next on failure).
const MAX_ADDRESSES_TRIED: usize = 2;

/// The failure of a host whose first reply is not an SMTP greeting.
pub(crate) const NOT_SMTP: &str =
    "not an SMTP server: its greeting is not an SMTP 220, 421 or 554 reply";

/// Codes an SMTP server greets with (RFC 5321 4.2, 3.8).
fn is_smtp_greeting(code: u16) -> bool {
    matches!(code, 220 | 421 | 554)
}

pub(crate) async fn probe_destination(
    inner: &Inner,
    target: &Target,
    req: &Expected,
) -> DestinationReport {
    let started = Instant::now();
    let mut report = DestinationReport::new(target, req);
    let (mx_domain, port, sts_domain) = match target {
        Target::Domain(d) => (Some(d.as_str()), inner.config.smtp_port, Some(d.as_str())),
        Target::Host {
            host,
            port,
            mx_lookup: true,
        } => (Some(host.as_str()), *port, None),
        Target::Host { host, port, .. } => {
            report.mx_kind = MxKind::Host;
            report.mx = vec![MxHost {
                preference: 0,
                host: host.clone(),
            }];
            (None, *port, None)
        }
    };

    let sts_future = async {
        match sts_domain {
            Some(d) if inner.config.check_sts => check_sts(inner, d).await,
            _ => None,
        }
    };
    let mx_future = async {
        match mx_domain {
            Some(d) => Some(inner.dns.mx(d).await),
            None => None,
        }
    };
    // Only DANE needs it; a failed lookup counts as unauthenticated.
    let mx_auth_future = async {
        match mx_domain {
            Some(d) if inner.config.check_tlsa => Some(
                inner
                    .validated
                    .query(d, hickory_resolver::proto::rr::RecordType::MX)
                    .await
                    .is_ok_and(|a| a.authenticated),
            ),
            _ => None,
        }
    };
    let (sts_report, mx_result, mx_authenticated) =
        tokio::join!(sts_future, mx_future, mx_auth_future);
    report.sts = sts_report;
    report.mx_authenticated = mx_authenticated;

    match mx_result {
        None => {}
        Some(Err(e)) => {
            return finish(report, started, Some((Outcome::DnsError, e.to_string())));
        }
        Some(Ok(MxSet::NullMx)) => {
            report.mx_kind = MxKind::Null;
            report.outcome = Outcome::NullMx;
            report.message = "the domain accepts no mail (null MX, RFC 7505)".into();
            report.duration_ms = started.elapsed().as_millis() as u64;
            return report;
        }
        Some(Ok(MxSet::Implicit(h))) => {
            report.mx_kind = MxKind::Implicit;
            report.warnings.push(format!(
                "no MX records: mail goes to {} itself (RFC 5321 implicit MX)",
                h.host
            ));
            report.mx = vec![h];
        }
        Some(Ok(MxSet::Records(hosts))) => {
            report.mx_kind = MxKind::Mx;
            report.mx = hosts;
        }
    }
    if report.mx.len() > inner.config.max_mx_hosts {
        report.warnings.push(format!(
            "{} MX hosts; only the first {} were probed",
            report.mx.len(),
            inner.config.max_mx_hosts
        ));
    }

    // Names are also checked against the mail domain (Postfix `secure` style).
    let domain_for_names = match target {
        Target::Domain(d) => Some(d.as_str()),
        Target::Host {
            host,
            mx_lookup: true,
            ..
        } => Some(host.as_str()),
        Target::Host { .. } => None,
    };
    let with_pref = report.mx_kind == MxKind::Mx;
    let host_futures = report.mx.iter().take(inner.config.max_mx_hosts).map(|mx| {
        probe_host(
            inner,
            &mx.host,
            port,
            with_pref.then_some(mx.preference),
            domain_for_names,
        )
    });
    // Polled together on this task: one slow MX never serialises the others.
    report.hosts = futures::future::join_all(host_futures).await;
    if report.mx_authenticated == Some(false) {
        for h in &mut report.hosts {
            if h.tlsa_authenticated == Some(true) {
                h.tlsa_authenticated = Some(false);
                h.warnings.push(
                    "its TLSA records are signed, but the MX records are not DNSSEC-authenticated"
                        .into(),
                );
            }
        }
    }

    // MX set vs the MTA-STS policy.
    if let Some(policy) = report.sts.as_ref().and_then(|s| s.policy.clone()) {
        let mut all = true;
        for h in &mut report.hosts {
            let ok = policy.mx.iter().any(|p| sts::mx_matches(p, &h.host));
            h.sts_mx_match = Some(ok);
            all &= ok;
        }
        if let Some(s) = report.sts.as_mut() {
            s.mx_match = Some(all);
        }
    }

    report.decided_by = super::DecidedBy::of(req, report.sts.as_ref(), &report.hosts);
    let mut first_failure = None;
    for h in &mut report.hosts {
        let j = verdict::judge_host(h, req, report.sts.as_ref());
        h.outcome = j.outcome;
        h.passed = j.outcome.is_pass();
        h.message = j.message;
        h.warnings.extend(j.warnings);
        if !h.passed && first_failure.is_none() {
            first_failure = Some((h.outcome, format!("{}: {}", h.host, h.message)));
        }
        for w in &h.warnings {
            report.warnings.push(format!("{}: {w}", h.host));
        }
    }
    let sts_failure = report.sts.as_ref().and_then(verdict::judge_sts);
    let failure = match (first_failure, sts_failure) {
        (Some((o, m)), Some((_, sm))) => Some((o, format!("{m} (also {sm})"))),
        (Some(f), None) | (None, Some(f)) => Some(f),
        (None, None) => None,
    };
    if failure.is_none() {
        report.message = match report.hosts.as_slice() {
            [one] => format!("{}: {}", one.host, one.message),
            many => format!("all {} hosts meet the policy", many.len()),
        };
    }
    finish(report, started, failure)
}

fn finish(
    mut report: DestinationReport,
    started: Instant,
    failure: Option<(Outcome, String)>,
) -> DestinationReport {
    if let Some((outcome, message)) = failure {
        report.outcome = outcome;
        report.passed = false;
        report.message = message;
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report
}

/// MTA-STS for a domain: None when it publishes no `_mta-sts` TXT record.
async fn check_sts(inner: &Inner, domain: &str) -> Option<StsReport> {
    let txts = match inner.dns.txt(&format!("_mta-sts.{domain}")).await {
        Ok(t) => t,
        Err(e) => {
            return Some(StsReport {
                txt: String::new(),
                id: None,
                policy: None,
                mx_match: None,
                error: Some(e.to_string()),
                failure: Some((Outcome::StsPolicyFetchError, format!("TXT lookup: {e}"))),
            });
        }
    };
    let sts_txts: Vec<&String> = txts.iter().filter(|t| t.starts_with("v=STSv1")).collect();
    let mut report = StsReport {
        txt: sts_txts.first().map(|s| s.to_string()).unwrap_or_default(),
        id: None,
        policy: None,
        mx_match: None,
        error: None,
        failure: None,
    };
    let fail = |mut r: StsReport, outcome: Outcome, msg: String| {
        r.error = Some(msg.clone());
        r.failure = Some((outcome, msg));
        Some(r)
    };
    match sts_txts.as_slice() {
        [] => return None,
        [one] => match sts::parse_txt(one) {
            Ok(id) => report.id = Some(id),
            Err(e) => return fail(report, Outcome::StsPolicyInvalid, e),
        },
        many => {
            return fail(
                report,
                Outcome::StsPolicyInvalid,
                format!("{} _mta-sts TXT records (exactly one allowed)", many.len()),
            );
        }
    }
    let policy_host = format!("mta-sts.{domain}");
    let addrs = match inner.dns.addresses(&policy_host).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            return fail(
                report,
                Outcome::StsPolicyFetchError,
                format!("{policy_host} has no address"),
            );
        }
        Err(e) => return fail(report, Outcome::StsPolicyFetchError, e.to_string()),
    };
    let addr = SocketAddr::new(addrs[0], inner.config.sts_port);
    if let Err(refused) = inner.config.addresses.check(addrs[0]) {
        return fail(
            report,
            Outcome::StsPolicyFetchError,
            format!("{policy_host}: {refused}"),
        );
    }
    let fetched = {
        let _permit = inner.permits.acquire().await;
        sts::fetch_policy(
            inner.https_tls.clone(),
            &policy_host,
            addr,
            inner.config.timeouts.sts_fetch,
        )
        .await
    };
    match fetched {
        Err(sts::FetchError::Webpki(m)) => fail(report, Outcome::StsWebpkiInvalid, m),
        Err(sts::FetchError::Fetch(m)) => fail(report, Outcome::StsPolicyFetchError, m),
        Ok(body) => match sts::parse_policy(&body) {
            Ok(policy) => {
                report.policy = Some(policy);
                Some(report)
            }
            Err(e) => fail(report, Outcome::StsPolicyInvalid, e.to_string()),
        },
    }
}

/// Probe one host: addresses and TLSA, then the SMTP session within the host time limit.
async fn probe_host(
    inner: &Inner,
    host: &str,
    port: u16,
    preference: Option<u16>,
    domain: Option<&str>,
) -> HostReport {
    let started = Instant::now();
    let mut h = HostReport::new(host, port, preference, domain);
    let addrs = match inner.dns.addresses(host).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => {
            h.failure = Some(HostFailure::Dns(format!("{host} has no A or AAAA records")));
            return h;
        }
        Err(e) => {
            h.failure = Some(HostFailure::Dns(e.to_string()));
            return h;
        }
    };
    h.addresses = addrs.iter().map(IpAddr::to_string).collect();
    let is_ip = host.parse::<IpAddr>().is_ok();
    if inner.config.check_tlsa && !is_ip {
        match inner.validated.tlsa(host, port).await {
            Ok(t) => {
                h.tlsa_authenticated = (!t.records.is_empty()).then_some(t.authenticated);
                h.tlsa = t.records;
            }
            Err(e) => h.warnings.push(format!("TLSA lookup failed: {e}")),
        }
    }
    // The permit bounds sessions globally; waiting for it is not part of the host's time.
    let Ok(_permit) = inner.permits.acquire().await else {
        h.failure = Some(HostFailure::Connect("prober shut down".into()));
        return h;
    };
    let total = inner.config.timeouts.host_total;
    let session_started = Instant::now();
    if tokio::time::timeout(total, smtp_session(inner, &mut h, &addrs))
        .await
        .is_err()
    {
        h.failure = Some(HostFailure::Timeout(format!(
            "the session with {host} did not finish within {total:?}"
        )));
    }
    h.duration_ms = session_started.elapsed().max(started.elapsed()).as_millis() as u64;
    h
}

fn reply_failure(stage: &str, e: ReplyError) -> HostFailure {
    match e {
        ReplyError::Timeout(d) => {
            HostFailure::Timeout(format!("{stage}: no complete reply within {d:?}"))
        }
        other => HostFailure::Smtp(format!("{stage}: {other}")),
    }
}

/// The SMTP dialogue; fills `h` as it goes so a total-time cut keeps what was seen.
async fn smtp_session(inner: &Inner, h: &mut HostReport, addrs: &[IpAddr]) {
    let t = inner.config.timeouts;
    let mut last_err = String::new();
    let mut connected = None;
    // Checked here, on the addresses about to be dialled: a name resolving to an internal
    // address is refused like the literal.
    let mut allowed = Vec::new();
    for ip in addrs {
        match inner.config.addresses.check(*ip) {
            Ok(()) => allowed.push(*ip),
            Err(refused) => last_err = refused.to_string(),
        }
    }
    if allowed.is_empty() {
        h.failure = Some(HostFailure::NotAllowed(last_err));
        return;
    }
    if allowed.len() < addrs.len() {
        h.warnings.push(format!("not connected to: {last_err}"));
    }
    for ip in allowed.iter().take(MAX_ADDRESSES_TRIED) {
        let addr = SocketAddr::new(*ip, h.port);
        match connect(addr, t.connect).await {
            Ok(s) => {
                h.connected = Some(addr.to_string());
                connected = Some((s, addr));
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let Some((stream, addr)) = connected else {
        h.failure = Some(HostFailure::Connect(last_err));
        return;
    };
    let Some(mut raw) = until_starttls(inner, h, stream).await else {
        return;
    };
    raw.start_capture();
    let connector = TlsConnector::from(inner.smtp_tls.clone());
    let mut handshake = connector.connect(server_name(&h.host), raw).into_fallible();
    let tls_stream = match tokio::time::timeout(t.step, &mut handshake).await {
        Err(_) => {
            h.failure = Some(HostFailure::Timeout(format!(
                "TLS handshake did not finish within {:?}",
                t.step
            )));
            return;
        }
        Ok(Ok(s)) => s,
        Ok(Err((e, raw))) => {
            let failure = match tls::classify_handshake_error(&e, raw.captured()) {
                HandshakeFailure::LegacyOnly(v) => HostFailure::LegacyTls(v.to_string()),
                HandshakeFailure::ProtocolVersionAlert => {
                    drop(raw);
                    // Ask again with a TLS 1.0/1.1-style ClientHello to learn which old
                    // version the server speaks.
                    match legacy_version_probe(inner, &h.host, addr).await {
                        Ok(v) => HostFailure::LegacyTls(v.to_string()),
                        Err(why) => HostFailure::Handshake(format!(
                            "server rejected TLS 1.2 and 1.3 (protocol_version alert); {why}"
                        )),
                    }
                }
                HandshakeFailure::Other(m) => HostFailure::Handshake(m),
            };
            if let HostFailure::LegacyTls(v) = &failure {
                h.legacy_tls = Some(v.clone());
            }
            h.failure = Some(failure);
            return;
        }
    };
    record_tls(inner, h, &tls_stream);
    let limits = inner.config.limits;
    let helo = inner.config.helo.as_str();
    let mut conn = SmtpConn::new(tls_stream, limits);
    match conn.command(&format!("EHLO {helo}"), t.step).await {
        Ok(r) if r.is_positive() => {
            if let Some(tls) = h.tls.as_mut() {
                tls.ehlo_after_tls = true;
            }
        }
        Ok(r) => h
            .warnings
            .push(format!("EHLO after STARTTLS rejected: {}", r.summary())),
        Err(e) => h.warnings.push(format!("EHLO after STARTTLS: {e}")),
    }
    // QUIT is a courtesy; its failure changes nothing.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.command("QUIT", t.step)).await;
}

async fn connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, String> {
    match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            // Small command writes: don't let Nagle delay them.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(format!("connect to {addr}: {e}")),
        Err(_) => Err(format!("connect to {addr}: no answer within {limit:?}")),
    }
}

/// Greeting, EHLO, STARTTLS. Returns the stream ready for the TLS handshake, or None
/// with `h.failure` set.
async fn until_starttls(
    inner: &Inner,
    h: &mut HostReport,
    stream: TcpStream,
) -> Option<LimitedStream<TcpStream>> {
    let t = inner.config.timeouts;
    let limits = inner.config.limits;
    let mut conn = SmtpConn::new(LimitedStream::new(stream, limits.max_session_bytes), limits);
    let greeting = match conn.read_reply(t.step).await {
        Ok(r) if is_smtp_greeting(r.code) => r,
        // Whatever else answered (an SSH or HTTP server, say) is not quoted: the text of
        // an internal service must not end up in a report.
        Ok(_) | Err(ReplyError::Malformed(_) | ReplyError::CodeChanged { .. }) => {
            h.failure = Some(HostFailure::Smtp(NOT_SMTP.into()));
            return None;
        }
        Err(e) => {
            h.failure = Some(reply_failure("greeting", e));
            return None;
        }
    };
    h.greeting = Some(greeting.summary());
    if !greeting.is_positive() {
        h.failure = Some(HostFailure::Smtp(format!(
            "server refused the session: {}",
            greeting.summary()
        )));
        let _ = conn.command("QUIT", t.step).await;
        return None;
    }
    let helo = inner.config.helo.as_str();
    let ehlo = match conn.command(&format!("EHLO {helo}"), t.step).await {
        Ok(r) => r,
        Err(e) => {
            h.failure = Some(reply_failure("EHLO", e));
            return None;
        }
    };
    if !ehlo.is_positive() {
        h.starttls_offered = Some(false);
        h.failure = Some(HostFailure::NoStarttls(format!(
            "EHLO rejected ({}), so STARTTLS is not available",
            ehlo.summary()
        )));
        let _ = conn.command("QUIT", t.step).await;
        return None;
    }
    h.extensions = ehlo.ehlo_keywords();
    let offered = h.extensions.iter().any(|k| k == "STARTTLS");
    h.starttls_offered = Some(offered);
    if !offered {
        h.failure = Some(HostFailure::NoStarttls(
            "STARTTLS not offered in the EHLO reply".into(),
        ));
        let _ = conn.command("QUIT", t.step).await;
        return None;
    }
    let reply = match conn.command("STARTTLS", t.step).await {
        Ok(r) => r,
        Err(e) => {
            h.failure = Some(reply_failure("STARTTLS", e));
            return None;
        }
    };
    if reply.code != 220 {
        h.failure = Some(HostFailure::StarttlsRefused(format!(
            "STARTTLS refused: {}",
            reply.summary()
        )));
        let _ = conn.command("QUIT", t.step).await;
        return None;
    }
    if conn.pending() > 0 {
        // Plaintext sent after the 220 would be read as if it came over TLS (CVE-2011-0411).
        h.failure = Some(HostFailure::Smtp(
            "server sent data after the STARTTLS reply, before the TLS handshake".into(),
        ));
        return None;
    }
    Some(conn.into_inner())
}

/// Record version, cipher and the judged chain of an established session.
fn record_tls<S>(
    inner: &Inner,
    h: &mut HostReport,
    tls_stream: &tokio_rustls::client::TlsStream<S>,
) {
    let (_, session) = tls_stream.get_ref();
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
        _ => "unknown",
    };
    let cipher = session
        .negotiated_cipher_suite()
        .map(|c| c.suite().as_str().unwrap_or("unknown").to_string())
        .unwrap_or_default();
    let chain = session.peer_certificates().unwrap_or(&[]);
    let report = tls::evaluate_chain(
        chain,
        &h.host,
        h.domain.as_deref(),
        &inner.roots,
        &inner.algs,
        super::now_unix(),
        inner.config.max_recorded_certs,
    );
    if !h.tlsa.is_empty() {
        h.tlsa_match = Some(h.tlsa.iter().any(|r| tls::tlsa_matches(r, chain)));
    }
    h.tls = Some(TlsReport {
        version: version.to_string(),
        cipher,
        chain: report,
        ehlo_after_tls: false,
    });
}

/// A second session that offers only TLS 1.0/1.1 (hand-made ClientHello, no TLS 1.3
/// supported_versions), to learn which legacy version a server that refused 1.2/1.3 speaks.
async fn legacy_version_probe(
    inner: &Inner,
    host: &str,
    addr: SocketAddr,
) -> Result<&'static str, String> {
    let t = inner.config.timeouts;
    let stream = connect(addr, t.connect).await?;
    let mut scratch = HostReport::new(host, addr.port(), None, None);
    let Some(mut raw) = until_starttls(inner, &mut scratch, stream).await else {
        return Err("the second session for a TLS 1.0/1.1 check failed".into());
    };
    let mut random = [0u8; 32];
    tls::provider()
        .secure_random
        .fill(&mut random)
        .map_err(|_| "no random source".to_string())?;
    let hello = tls::legacy_client_hello(host, random);
    let mut first = [0u8; 16];
    let exchange = async {
        raw.write_all(&hello).await?;
        let mut got = 0;
        while got < first.len() {
            match raw.read(&mut first[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        Ok::<usize, std::io::Error>(got)
    };
    let got = match tokio::time::timeout(t.step, exchange).await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(format!("TLS 1.0/1.1 check: {e}")),
        Err(_) => return Err("TLS 1.0/1.1 check timed out".into()),
    };
    match tls::sniff_server_hello_version(&first[..got]) {
        Some(v) if v < 0x0303 => Ok(tls::legacy_name(v)),
        Some(_) => Err("the server answered a TLS 1.1 hello with a newer version".into()),
        None => Err("it also rejected TLS 1.0 and 1.1".into()),
    }
}

/// SNI name for a host. A name rustls rejects (odd characters from DNS) falls back to the
/// unspecified address, which sends no SNI; the recording verifier does not use the name.
fn server_name(host: &str) -> ServerName<'static> {
    match host.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::IpAddress(IpAddr::from([0, 0, 0, 0]).into())),
    }
}
