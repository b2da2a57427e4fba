//! Probe throughput: `cargo bench --bench probe`.
//!
//! Starts N STARTTLS servers on 127.x addresses (in a child process, so the memory numbers
//! are the prober's alone) and measures destinations per second at concurrency 1, 16, 64 for
//! - the mailtls probe engine on domains (MX, A/AAAA, TLSA, MTA-STS TXT via a loopback DNS
//!   server, full SMTP dialogue, chain evaluation),
//! - the engine on `[ip]:port` host targets (no DNS),
//! - a raw loop: TCP connect, greeting, EHLO, STARTTLS, rustls handshake, close (the ceiling),
//! - Postfix `posttls-finger` run once per destination (sequentially and 16 in parallel).
//!
//! Also the RSS growth per in-flight probe at concurrency 64.

#[path = "../tests/support/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;

use std::io::{BufRead, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fixtures::*;
use mailtls::api::TlsVersion;
use mailtls::probe::{Expected, ProbeConfig, Prober, Target, Timeouts};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SERVERS: usize = 64;
const SERVE_ENV: &str = "MAILTLS_BENCH_SERVE";

fn main() {
    if std::env::var_os(SERVE_ENV).is_some() {
        serve();
        return;
    }
    // `cargo bench` passes `--bench`; ignore arguments.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

/// Child process: run the servers until stdin closes.
fn serve() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        init();
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::new("bench CA");
        let zone = Zone::default();
        let (listeners, port) = bind_group(SERVERS).await;
        let mut ips = Vec::new();
        for (i, (ip, l)) in listeners.into_iter().enumerate() {
            let domain = format!("d{i}.bench");
            let mx = format!("mx.{domain}");
            zone.mx(&domain, 10, &mx);
            zone.a(&mx, ip);
            spawn_smtp(l, Smtp::Good(server_config(&ca.leaf(&[&mx]), false)));
            ips.push(ip.to_string());
        }
        let dns = spawn_dns(zone).await;
        let ca_path = ca.write_pem(dir.path());
        println!("READY {dns} {port} {} {}", ca_path.display(), ips.join(","));
        std::io::stdout().flush().expect("flush");
        // Serve until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {}
        })
        .await;
        drop(dir);
    });
}

struct Env {
    dns: SocketAddr,
    port: u16,
    ca_path: String,
    ca: CertificateDer<'static>,
    ips: Vec<IpAddr>,
}

const STRICT: Expected = Expected {
    require_tls: true,
    require_ca_signed: true,
    validate_hostname: true,
    min_tls: TlsVersion::V1_2,
};

async fn run() {
    init();
    let exe = std::env::current_exe().expect("current exe");
    // With taskset, the fixture servers get CPU 1 and everything measured (this process,
    // posttls-finger) CPU 0, so server work does not count against the client under test.
    let pinned = std::path::Path::new("/usr/bin/taskset").exists()
        && std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let mut command = if pinned {
        let own = std::process::id().to_string();
        let _ = std::process::Command::new("/usr/bin/taskset")
            .args(["-a", "-p", "-c", "0", &own])
            .stdout(std::process::Stdio::null())
            .status();
        let mut c = std::process::Command::new("/usr/bin/taskset");
        c.args(["-c", "1"]).arg(&exe);
        c
    } else {
        std::process::Command::new(&exe)
    };
    let mut child = command
        .env(SERVE_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn server process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("child stdout"))
        .read_line(&mut line)
        .expect("READY line");
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(parts.first(), Some(&"READY"), "server said {line:?}");
    let env = Env {
        dns: parts[1].parse().expect("dns addr"),
        port: parts[2].parse().expect("port"),
        ca_path: parts[3].to_string(),
        ca: CertificateDer::from_pem_file(parts[3]).expect("CA PEM"),
        ips: parts[4]
            .split(',')
            .map(|s| s.parse().expect("ip"))
            .collect(),
    };

    println!(
        "## Probe benchmark ({} STARTTLS servers on loopback)\n",
        env.ips.len()
    );
    println!(
        "Median of {REPEATS} runs (min–max in brackets). {}\n",
        if pinned {
            "Servers pinned to CPU 1, the measured client (and posttls-finger) to CPU 0."
        } else {
            "Servers and client share all CPUs."
        }
    );
    println!("| what | concurrency | destinations per run | destinations/s |");
    println!("| --- | --- | --- | --- |");
    let mut rates = Vec::new();
    let mut mem_line = String::new();
    for c in [1usize, 16, 64] {
        let n = (c * 32).clamp(256, 2048);
        let prober = prober(&env, c);
        // Warm up (resolver cache, lazy statics) with one pass over the servers.
        let _ = probe_domains(&prober, &env, SERVERS).await;

        let sampler = RssSampler::start();
        let domain = measure(n, || probe_domains(&prober, &env, n)).await;
        let (baseline, peak) = sampler.stop();
        report(
            "mailtls probe, domains (DNS + SMTP + TLS + checks)",
            c,
            n,
            domain,
        );
        if c == 64 {
            let per = peak.saturating_sub(baseline) as f64 / c as f64;
            mem_line = format!(
                "RSS before {baseline} KiB, peak {peak} KiB while probing at concurrency 64: \
                 ≈ {per:.0} KiB per in-flight probe"
            );
        }
        let host = measure(n, || probe_hosts(&prober, &env, n)).await;
        report(
            "mailtls probe, hosts `[ip]:port` (SMTP + TLS + checks)",
            c,
            n,
            host,
        );
        let raw = measure(n, || raw_loop(&env, c, n)).await;
        report("raw TCP + STARTTLS + rustls handshake", c, n, raw);
        rates.push((c, domain.0, host.0, raw.0));
    }
    let mut finger = Vec::new();
    if std::path::Path::new("/usr/sbin/posttls-finger").exists() {
        for c in [1usize, 16, 64] {
            let n = (c * 4).max(48);
            let r = measure(n, || posttls_finger(&env, c, n)).await;
            report("posttls-finger, one process per destination", c, n, r);
            finger.push((c, r.0));
        }
    }
    println!();
    for (c, d, h, r) in &rates {
        let f = finger.iter().find(|(fc, _)| fc == c).map(|(_, f)| *f);
        println!(
            "- concurrency {c}: domain probe {:.0}% and host probe {:.0}% of the raw rate{}",
            d / r * 100.0,
            h / r * 100.0,
            f.map(|f| format!(
                "; {:.0}× / {:.0}× posttls-finger at the same concurrency",
                d / f,
                h / f
            ))
            .unwrap_or_default()
        );
    }
    let best = |v: &mut dyn Iterator<Item = f64>| v.fold(0.0_f64, f64::max);
    let best_finger = best(&mut finger.iter().map(|(_, f)| *f));
    if best_finger > 0.0 {
        let best_domain = best(&mut rates.iter().map(|r| r.1));
        let best_host = best(&mut rates.iter().map(|r| r.2));
        println!(
            "- best vs best: domain probe {:.0}×, host probe {:.0}× the best posttls-finger rate",
            best_domain / best_finger,
            best_host / best_finger
        );
    }
    println!("- {mem_line}");
    drop(child.stdin.take());
    let _ = child.wait();
}

const REPEATS: usize = 5;

/// Run `f` REPEATS times; (median, min, max) destinations per second.
async fn measure<F, Fut>(n: usize, mut f: F) -> (f64, f64, f64)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (f64, usize)>,
{
    let mut rates = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let (secs, ok) = f().await;
        if ok != n {
            eprintln!("warning: only {ok} of {n} passed");
        }
        rates.push(n as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    (rates[REPEATS / 2], rates[0], rates[REPEATS - 1])
}

fn report(what: &str, c: usize, n: usize, (median, min, max): (f64, f64, f64)) {
    println!("| {what} | {c} | {n} | {median:.0} ({min:.0}–{max:.0}) |");
}

fn prober(env: &Env, concurrency: usize) -> Prober {
    Prober::new(ProbeConfig {
        addresses: mailtls::probe::AddressPolicy::any(),
        resolver: Some(env.dns),
        extra_roots: vec![env.ca.clone()],
        helo: "bench.test".into(),
        smtp_port: env.port,
        timeouts: Timeouts::from_step(Duration::from_secs(10)),
        concurrency,
        ..ProbeConfig::default()
    })
    .expect("prober")
}

async fn probe_domains(prober: &Prober, env: &Env, n: usize) -> (f64, usize) {
    let items = (0..n)
        .map(|i| {
            (
                Target::Domain(format!("d{}.bench", i % env.ips.len())),
                STRICT,
            )
        })
        .collect();
    timed(prober, items).await
}

async fn probe_hosts(prober: &Prober, env: &Env, n: usize) -> (f64, usize) {
    let req = Expected {
        validate_hostname: false,
        ..STRICT
    };
    let items = (0..n)
        .map(|i| {
            let host = env.ips[i % env.ips.len()].to_string();
            (
                Target::Host {
                    host,
                    port: env.port,
                    mx_lookup: false,
                },
                req,
            )
        })
        .collect();
    timed(prober, items).await
}

async fn timed(prober: &Prober, items: Vec<(Target, Expected)>) -> (f64, usize) {
    let start = Instant::now();
    let reports = prober.probe_many(items).await;
    let secs = start.elapsed().as_secs_f64();
    let ok = reports.iter().filter(|r| r.passed()).count();
    if let Some(bad) = reports.iter().find(|r| !r.passed()) {
        eprintln!(
            "first failure: {} {} {}",
            bad.destination,
            bad.outcome(),
            bad.message
        );
    }
    (secs, ok)
}

/// The ceiling: the least an STARTTLS client must do, with a normal validating verifier.
async fn raw_loop(env: &Env, c: usize, n: usize) -> (f64, usize) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(env.ca.clone()).expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let (ips, port) = (env.ips.clone(), env.port);
    pool(c, n, move |i| {
        let (connector, k) = (connector.clone(), i % ips.len());
        let addr = SocketAddr::new(ips[k], port);
        async move {
            let name = ServerName::try_from(format!("mx.d{k}.bench")).expect("name");
            raw_once(&connector, addr, name).await.is_ok()
        }
    })
    .await
}

/// `c` workers share `n` jobs; returns (seconds, jobs that returned true).
async fn pool<F, Fut>(c: usize, n: usize, job: F) -> (f64, usize)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let job = Arc::new(job);
    let next = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..c {
        let (job, next, ok) = (job.clone(), next.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return;
                }
                if job(i).await {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        start.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed) as usize,
    )
}

async fn raw_once(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    name: ServerName<'static>,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut r = BufReader::new(tcp);
    let mut line = String::new();
    let read_reply =
        async |r: &mut BufReader<TcpStream>, line: &mut String| -> std::io::Result<()> {
            loop {
                line.clear();
                if r.read_line(line).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if line.as_bytes().get(3) != Some(&b'-') {
                    return Ok(());
                }
            }
        };
    read_reply(&mut r, &mut line).await?;
    r.get_mut().write_all(b"EHLO bench.test\r\n").await?;
    read_reply(&mut r, &mut line).await?;
    r.get_mut().write_all(b"STARTTLS\r\n").await?;
    read_reply(&mut r, &mut line).await?;
    let mut tls = connector.connect(name, r.into_inner()).await?;
    tls.shutdown().await?;
    Ok(())
}

/// `posttls-finger -c -l secure -F ca.pem [ip]:port mx.dK.bench`, `c` processes at a time.
async fn posttls_finger(env: &Env, c: usize, n: usize) -> (f64, usize) {
    let (ips, port, ca) = (env.ips.clone(), env.port, env.ca_path.clone());
    pool(c, n, move |i| {
        let k = i % ips.len();
        let mut cmd = tokio::process::Command::new("/usr/sbin/posttls-finger");
        cmd.args(["-c", "-l", "secure", "-F", &ca])
            .arg(format!("[{}]:{port}", ips[k]))
            .arg(format!("mx.d{k}.bench"));
        async move {
            let Ok(out) = cmd.output().await else {
                return false;
            };
            let text = String::from_utf8_lossy(&out.stdout);
            let verified = text.contains("Verified TLS connection established");
            if !verified && i == 0 {
                eprintln!(
                    "posttls-finger said: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            verified
        }
    })
    .await
}

/// Samples VmRSS every 2 ms on a plain thread.
struct RssSampler {
    baseline: u64,
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start() -> RssSampler {
        let baseline = rss_kib();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        });
        RssSampler {
            baseline,
            stop,
            handle,
        }
    }

    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let peak = self.handle.join().unwrap_or(0);
        (self.baseline, peak.max(self.baseline))
    }
}
