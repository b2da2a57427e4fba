//! The MTA-STS policy server (edge): answers Postfix's socketmap lookups from the cache,
//! and looks a domain up (the `_mta-sts` TXT record, then the HTTPS policy when its id is
//! new) when it was not asked about for a while. Policies are refreshed ahead of need.
//! For destinations that honour DANE it first asks the (validating) resolver whether their
//! MX hosts have authenticated TLSA records, and if so answers `dane-only`.

use super::cache::Cache;
use super::dane_cache::DaneCache;
use super::scope::Scope;
use super::socketmap::{self, Reply};
use crate::probe::dns::Dns;
use crate::probe::dnssec::{Dane, Validated};
use crate::probe::{AddressPolicy, sts, tls};
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::runtime::Handle;

/// Where Postfix connects: `socketmap:inet:HOST:PORT:name` or `socketmap:unix:PATH:name`
/// (cheaper: no TCP on loopback).
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// How the server looks policies up.
#[derive(Clone, Debug)]
pub struct Config {
    /// DNS server instead of the system's.
    pub resolver: Option<SocketAddr>,
    /// Trusted in addition to the webpki roots for policy hosts.
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Where policy hosts may be: public addresses unless allowed.
    pub addresses: AddressPolicy,
    /// HTTPS port of policy hosts (443; tests override it).
    pub https_port: u16,
    /// Time limit of a TXT lookup, and of a whole policy fetch.
    pub timeout: Duration,
    /// A domain asked about again within this time is answered from the cache alone: its
    /// MTA-STS policy, and its DANE verdict (never longer than its DNS records' TTL).
    pub grace: Duration,
    /// Policies not looked up for this long are refreshed in the background.
    pub refresh_after: Duration,
    /// Most domains cached.
    pub max_domains: usize,
    /// Most connections served at once (a thread each); one more is told to try later.
    /// Postfix holds one per smtp process (100 by default).
    pub max_connections: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            resolver: None,
            extra_roots: Vec::new(),
            addresses: AddressPolicy::default(),
            https_port: 443,
            timeout: Duration::from_secs(10),
            grace: Duration::from_secs(60),
            refresh_after: Duration::from_secs(3600),
            max_domains: 100_000,
            max_connections: 1024,
        }
    }
}

/// Debug shows the configuration only (the cache can hold 100k domains).
impl std::fmt::Debug for PolicyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

pub struct PolicyServer {
    dns: Dns,
    /// The same resolver, asked for the AD bit (DANE).
    validated: Validated,
    tls: Arc<ClientConfig>,
    config: Config,
    cache: Mutex<Cache>,
    /// DANE verdicts: with DANE honoured for every destination, every lookup needs one.
    dane: Mutex<DaneCache>,
    /// The destinations answered for; `None` until the relay agent has read its installed
    /// configuration (Postfix gets TEMP meanwhile and retries: nothing goes out weaker).
    scope: RwLock<Option<Scope>>,
}

fn now() -> i64 {
    crate::observe::follow::now()
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl PolicyServer {
    /// A server answering for `scope`, or for nobody until [`PolicyServer::set_scope`].
    pub fn new(config: Config, scope: Option<Scope>) -> Result<Arc<PolicyServer>, String> {
        let dns = Dns::new(config.resolver, config.timeout).map_err(|e| e.to_string())?;
        let validated =
            Validated::new(config.resolver, config.timeout).map_err(|e| e.to_string())?;
        let tls = tls::validating_config_with(&config.extra_roots)?;
        Ok(Arc::new(PolicyServer {
            dns,
            validated,
            tls,
            cache: Mutex::new(Cache::new(config.max_domains)),
            dane: Mutex::new(DaneCache::new(config.max_domains)),
            config,
            scope: RwLock::new(scope),
        }))
    }

    /// Answer for these destinations from now on.
    pub fn set_scope(&self, scope: Scope) {
        if let Ok(mut s) = self.scope.write() {
            *s = Some(scope);
        }
    }

    /// Answer for these destinations too, keeping the current ones.
    pub fn widen_scope(&self, scope: &Scope) {
        if let Ok(mut s) = self.scope.write() {
            let current = s.take().unwrap_or_default();
            *s = Some(current.union(scope));
        }
    }

    /// Serve socketmap lookups on `listener` for good, and refresh policies ahead of need.
    ///
    /// Each connection gets its own thread with blocking reads and writes: Postfix sends
    /// one request and waits for the reply, so an event loop only adds system calls and
    /// wake-ups to a lookup that takes two microseconds (BENCHMARKS.md). Lookups that must
    /// wait (DNS, HTTPS) run on this runtime.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let refresher = self.clone();
        tokio::spawn(async move { refresher.refresh_ahead().await });
        let runtime = tokio::runtime::Handle::current();
        let started = match listener {
            // tokio's sockets are non-blocking; these threads wait in accept and read.
            Listener::Tcp(l) => l.into_std().and_then(|l| {
                l.set_nonblocking(false)?;
                self.accept_on_thread(runtime, move || l.accept().map(|(c, _)| c))
            }),
            Listener::Unix(l) => l.into_std().and_then(|l| {
                l.set_nonblocking(false)?;
                self.accept_on_thread(runtime, move || l.accept().map(|(c, _)| c))
            }),
        };
        if let Err(e) = started {
            tracing::error!("MTA-STS policy server: cannot serve: {e}");
        }
        std::future::pending::<()>().await;
    }

    /// A plain thread, not the runtime's blocking pool: that would hold the runtime's
    /// shutdown until the next connection.
    fn accept_on_thread<C: Read + Write + Send + 'static>(
        self: &Arc<Self>,
        runtime: Handle,
        accept: impl Fn() -> std::io::Result<C> + Send + 'static,
    ) -> std::io::Result<()> {
        let server = self.clone();
        let open = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("mta-sts-accept".into())
            .spawn(move || {
                loop {
                    let conn = match accept() {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::warn!("MTA-STS policy server: accept: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    };
                    server.start_connection(&runtime, &open, conn);
                }
            })
            .map(drop)
    }

    fn start_connection<C: Read + Write + Send + 'static>(
        self: &Arc<Self>,
        runtime: &Handle,
        open: &Arc<AtomicUsize>,
        mut conn: C,
    ) {
        if open.fetch_add(1, Ordering::Relaxed) >= self.config.max_connections {
            open.fetch_sub(1, Ordering::Relaxed);
            // Postfix defers the lookup and asks again later; nothing goes out weaker.
            let _ = conn.write_all(&Reply::Temp("too many connections".into()).encode());
            return;
        }
        let (server, runtime, done) = (self.clone(), runtime.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("mta-sts-conn".into())
            .spawn(move || {
                server.connection(&runtime, conn);
                done.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("MTA-STS policy server: no thread for a connection: {e}");
        }
    }

    /// One Postfix connection: requests in order, each answered before the next is read.
    fn connection(&self, runtime: &Handle, mut conn: impl Read + Write) {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        loop {
            match socketmap::parse(&buf) {
                Ok(Some((request, used))) => {
                    buf.drain(..used);
                    let reply = answer(runtime, self.lookup(&request.name, &request.key));
                    if conn.write_all(&reply.encode()).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    // Postfix closes and reconnects on a broken reply; so do we here.
                    tracing::warn!("MTA-STS policy server: bad request: {e}");
                    let _ = conn.write_all(&Reply::Perm(e.to_string()).encode());
                    return;
                }
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The answer for a next-hop domain asked under the socketmap `name`, with what the
    /// destination's listed policy adds: `dane-only` where DANE is honoured and applies,
    /// else an `enforce` MTA-STS policy where that is honoured, else "not found".
    pub async fn lookup(&self, name: &str, key: &str) -> Reply {
        let Some(domain) = domain_of(key) else {
            // `[host]:port`, an address, a parent-domain lookup: neither applies there.
            return Reply::NotFound;
        };
        let honoured = match self.scope.read().as_deref() {
            Ok(Some(scope)) => scope.honoured(name, &domain),
            _ => return Reply::Temp("the relay agent has not read its configuration yet".into()),
        };
        if let Some(extra) = honoured.dane {
            match self.dane_usable(&domain).await {
                Ok(true) => return with_extra("dane-only".into(), &extra),
                Ok(false) => {}
                // Nothing is known, so nothing may go out weaker: Postfix retries later.
                Err(e) => return Reply::Temp(format!("DANE: {e}")),
            }
        }
        let Some(extra) = honoured.mta_sts else {
            return Reply::NotFound;
        };
        match self.policy_reply(&domain).await {
            Reply::Ok(value) => with_extra(value, &extra),
            other => other,
        }
    }

    /// Whether `domain`'s MX hosts have authenticated TLSA records: from the cache while
    /// its verdict holds, else asked of the resolver.
    async fn dane_usable(&self, domain: &str) -> Result<bool, crate::probe::dns::DnsError> {
        let cached = self
            .dane
            .lock()
            .ok()
            .and_then(|c| c.get(domain, now()).map(|d| matches!(d, Dane::Usable(_))));
        if let Some(usable) = cached {
            return Ok(usable);
        }
        let (dane, ttl) = self.validated.dane(domain).await?;
        let usable = matches!(dane, Dane::Usable(_));
        if let Ok(mut c) = self.dane.lock() {
            c.put(domain, dane, ttl, now(), secs(self.config.grace));
        }
        Ok(usable)
    }

    async fn policy_reply(&self, domain: &str) -> Reply {
        let grace = secs(self.config.grace);
        let fresh = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.fresh_reply(domain, now(), grace));
        if let Some(reply) = fresh {
            return reply;
        }
        self.refresh(domain).await;
        self.cache
            .lock()
            .map(|c| c.reply(domain, now()))
            .unwrap_or_else(|_| Reply::Temp("policy cache unavailable".into()))
    }

    /// Look `domain` up now: its TXT record, and the policy when the id is new.
    async fn refresh(&self, domain: &str) {
        let fetched = tokio::time::timeout(self.config.timeout * 2, self.discover(domain)).await;
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = now();
        match fetched {
            Ok(Found::Policy(id, policy)) => {
                tracing::info!(domain, id, mode = ?policy.mode, "MTA-STS policy fetched");
                cache.store(domain, &id, *policy, now);
            }
            Ok(Found::Unchanged) => cache.confirm(domain, now),
            Ok(Found::Nothing) => cache.nothing_new(domain, now),
            Ok(Found::Failed(why)) => {
                tracing::warn!(
                    domain,
                    "MTA-STS lookup failed: {why}; a cached policy is kept while it holds"
                );
                cache.nothing_new(domain, now);
            }
            Err(_) => {
                tracing::warn!(
                    domain,
                    "MTA-STS lookup timed out; a cached policy is kept while it holds"
                );
                cache.nothing_new(domain, now);
            }
        }
    }

    async fn discover(&self, domain: &str) -> Found {
        let txts = match self.dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(t) => t,
            Err(crate::probe::dns::DnsError::NxDomain { .. }) => return Found::Nothing,
            Err(e) => return Found::Failed(e.to_string()),
        };
        let ours: Vec<&String> = txts.iter().filter(|t| t.starts_with("v=STSv1")).collect();
        let id = match ours.as_slice() {
            [] => return Found::Nothing,
            [one] => match sts::parse_txt(one) {
                Ok(id) => id,
                Err(e) => return Found::Failed(e),
            },
            many => return Found::Failed(format!("{} _mta-sts TXT records", many.len())),
        };
        let held = self
            .cache
            .lock()
            .ok()
            .and_then(|c| c.id(domain, now()).map(str::to_string));
        if held.as_deref() == Some(id.as_str()) {
            return Found::Unchanged;
        }
        let host = format!("mta-sts.{domain}");
        let addrs = match self.dns.addresses(&host).await {
            Ok(a) => a,
            Err(e) => return Found::Failed(e.to_string()),
        };
        let Some(ip) = addrs
            .iter()
            .copied()
            .find(|ip| self.config.addresses.check(*ip).is_ok())
        else {
            return Found::Failed(format!(
                "{host} has no address a policy may be fetched from"
            ));
        };
        let addr = SocketAddr::new(ip, self.config.https_port);
        let body = match sts::fetch_policy(self.tls.clone(), &host, addr, self.config.timeout).await
        {
            Ok(b) => b,
            Err(e) => return Found::Failed(e.to_string()),
        };
        match sts::parse_policy(&body) {
            Ok(p) => Found::Policy(id, Box::new(p)),
            Err(e) => Found::Failed(format!("policy of {domain}: {e}")),
        }
    }

    /// Every minute, look up again the policies not asked about for `refresh_after`, so
    /// they do not expire while mail keeps flowing (RFC 8461 §10.3).
    async fn refresh_ahead(&self) {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            let due = self
                .cache
                .lock()
                .map(|c| c.due(now() - secs(self.config.refresh_after), now()))
                .unwrap_or_default();
            for domain in due {
                self.refresh(&domain).await;
            }
        }
    }
}

/// Most lookups are answered from the cache without waiting: poll once, and only a
/// lookup that must wait (DNS, HTTPS) is handed to the runtime. (`Send` is not needed
/// here; it keeps lock guards from being held across an await, as `tokio::spawn` did.)
fn answer(runtime: &Handle, lookup: impl Future<Output = Reply> + Send) -> Reply {
    let mut lookup = std::pin::pin!(lookup);
    let first = {
        let _inside = runtime.enter();
        lookup
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
    };
    match first {
        Poll::Ready(reply) => reply,
        Poll::Pending => runtime.block_on(lookup),
    }
}

fn with_extra(value: String, extra: &str) -> Reply {
    if extra.is_empty() {
        Reply::Ok(value)
    } else {
        Reply::Ok(format!("{value} {extra}"))
    }
}

enum Found {
    Policy(String, Box<crate::probe::StsPolicy>),
    Unchanged,
    Nothing,
    Failed(String),
}

/// The domain of a policy lookup key, lowercase without a trailing dot; none for what
/// MTA-STS does not cover.
fn domain_of(key: &str) -> Option<String> {
    let key = key.trim_end_matches('.');
    if key.is_empty() || key.starts_with(['.', '[']) || key.parse::<std::net::IpAddr>().is_ok() {
        return None;
    }
    crate::policy::entry::normalize_domain(key, 2).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real sockets: each connection is answered on its own; one beyond the limit is told
    /// to try later, and a closed one frees its place.
    #[tokio::test]
    async fn connections_beyond_the_limit_are_told_to_try_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sts.sock");
        let config = Config {
            max_connections: 2,
            ..Config::default()
        };
        let server = PolicyServer::new(config, Some(Scope::everything())).unwrap();
        let listener = Listener::Unix(UnixListener::bind(&path).unwrap());
        tokio::spawn(server.serve(listener));
        let path2 = path.clone();
        let replies = tokio::task::spawn_blocking(move || {
            // An address as next hop: answered at once, without DNS.
            let ask = |conn: &mut std::os::unix::net::UnixStream| {
                // A refused connection may be closed before the request gets there (a
                // broken pipe); its reply is waiting all the same.
                let _ = conn.write_all(b"22:mailtls [192.0.2.1]:25,");
                let mut reply = [0u8; 64];
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let n = conn.read(&mut reply).expect("a reply within 10 s");
                String::from_utf8_lossy(&reply[..n]).into_owned()
            };
            let connect = || std::os::unix::net::UnixStream::connect(&path2).unwrap();
            let (mut first, mut second) = (connect(), connect());
            let mut replies = vec![ask(&mut first), ask(&mut second)];
            // Asked twice on one connection, as Postfix does.
            replies.push(ask(&mut first));
            replies.push(ask(&mut connect()));
            drop(second);
            // The freed place is taken by the next connection (its thread ends first).
            let mut again = String::new();
            for _ in 0..500 {
                again = ask(&mut connect());
                if again.contains("NOTFOUND") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            replies.push(again);
            replies
        })
        .await
        .unwrap();
        assert_eq!(replies[0], "9:NOTFOUND ,");
        assert_eq!(replies[1], "9:NOTFOUND ,");
        assert_eq!(replies[2], "9:NOTFOUND ,");
        assert_eq!(replies[3], "25:TEMP too many connections,");
        assert_eq!(replies[4], "9:NOTFOUND ,");
    }

    #[test]
    fn keys_that_are_domains() {
        use super::domain_of;
        assert_eq!(domain_of("Example.COM.").as_deref(), Some("example.com"));
        for none in [
            ".example.com",
            "[192.0.2.1]:25",
            "192.0.2.1",
            "",
            "com",
            "a b.test",
        ] {
            assert_eq!(domain_of(none), None, "{none}");
        }
    }
}
