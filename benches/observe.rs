//! Mail log benchmark: how fast the relay agent reads Postfix's log, and its memory with
//! 100k distinct recipient domains. Run: `cargo bench --bench observe`.
//!
//! The log is what a busy relay writes: per message an smtpd connect, cleanup, qmgr from=,
//! the smtp client's TLS line (for TLS deliveries) and its status line, and qmgr removed,
//! over 5,000 domains; 70% verified TLS, 20% plaintext, 10% deferred for TLS. Each part runs
//! in its own child process so its peak RSS (VmHWM) is its own. Each part runs again with
//! the days kept for TLS reports (`relay-agent --tls-rpt-organization`).

mod support;
use mailtls::observe::Observed;
use std::time::Instant;
use support::vm_hwm_kib;

/// Lines of one message; `n` makes ids, pids and domains vary.
fn message(n: usize, domains: usize, out: &mut Vec<String>) {
    let qid = format!("{:010X}", n * 7919);
    let pid = 1000 + n % 64;
    let domain = format!("d{}.example", n % domains);
    let t = "Dec  2 16:35:01 relay";
    out.push(format!(
        "{t} postfix/smtpd[900]: connect from app[10.0.0.{}]",
        n % 250
    ));
    out.push(format!(
        "{t} postfix/cleanup[901]: {qid}: message-id=<{n}@app.example>"
    ));
    out.push(format!(
        "{t} postfix/qmgr[902]: {qid}: from=<app@corp.example>, size=2048, nrcpt=1 (queue active)"
    ));
    let mx = format!("mx.{domain}[192.0.2.{}]:25", n % 250);
    match n % 10 {
        0..=6 => {
            out.push(format!(
                "{t} postfix/smtp[{pid}]: Verified TLS connection established to {mx}: TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048 bits) server-digest SHA256"
            ));
            out.push(format!(
                "{t} postfix/smtp[{pid}]: {qid}: to=<user{n}@{domain}>, relay={mx}, delay=0.42, delays=0.01/0/0.2/0.21, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {n})"
            ));
        }
        7 | 8 => out.push(format!(
            "{t} postfix/smtp[{pid}]: {qid}: to=<user{n}@{domain}>, relay={mx}, delay=0.3, delays=0.01/0/0.1/0.19, dsn=2.0.0, status=sent (250 2.0.0 Ok)"
        )),
        _ => out.push(format!(
            "{t} postfix/smtp[{pid}]: {qid}: to=<user{n}@{domain}>, relay={mx}, delay=0.2, delays=0.01/0/0.2/0, dsn=4.7.5, status=deferred (Server certificate not verified)"
        )),
    }
    out.push(format!("{t} postfix/qmgr[902]: {qid}: removed"));
}

fn observed(days: bool) -> Observed {
    let mut o = Observed::default();
    if days {
        o.keep_days();
    }
    o
}

/// Lines per second through `Observed::feed`, median of 7 passes over 200k messages.
fn throughput(days: bool) {
    let mut lines = Vec::new();
    for n in 0..200_000 {
        message(n, 5_000, &mut lines);
    }
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    let mut rates = Vec::new();
    for _ in 0..7 {
        let mut o = observed(days);
        let start = Instant::now();
        for l in &lines {
            o.feed(l, 1_796_000_000);
        }
        let secs = start.elapsed().as_secs_f64();
        rates.push(lines.len() as f64 / secs);
        std::hint::black_box(&o);
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let busy = 1000.0 * lines.len() as f64 / 200_000.0;
    println!(
        "throughput{}\t{} lines ({:.0} MB)\tmedian {:.0} lines/s (min {:.0}, max {:.0})\t{:.1} MB/s\t{:.0}x a relay delivering 1,000 messages/s ({busy:.0} lines/s)",
        if days { " (TLS-report days kept)" } else { "" },
        lines.len(),
        bytes as f64 / 1e6,
        median,
        rates[0],
        rates[rates.len() - 1],
        median * bytes as f64 / lines.len() as f64 / 1e6,
        median / busy
    );
}

/// Peak memory growth with `domains` distinct recipient domains, one TLS delivery each.
fn memory(domains: usize, days: bool) {
    let mut lines = Vec::new();
    for n in 0..domains {
        message(n, domains, &mut lines);
    }
    let mut o = observed(days);
    let baseline = vm_hwm_kib();
    for l in &lines {
        o.feed(l, 1_796_000_000);
    }
    let grown = vm_hwm_kib().saturating_sub(baseline);
    // The 24-hour view /observed serves, built once as the endpoint would.
    let start = Instant::now();
    let window = o.window(1_796_000_000, 24);
    let json = serde_json::to_string(&window).map(|s| s.len()).unwrap_or(0);
    let served = start.elapsed();
    println!(
        "memory{}\t{} domains tracked\t+{} KiB peak RSS ({:.0} B per domain)\t/observed: {} domains, {:.1} MB JSON in {:.0} ms\t+{} KiB with the view",
        if days { " (TLS-report days kept)" } else { "" },
        o.domains(),
        grown,
        grown as f64 * 1024.0 / o.domains() as f64,
        window.len(),
        json as f64 / 1e6,
        served.as_secs_f64() * 1000.0,
        vm_hwm_kib().saturating_sub(baseline)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--child-throughput") => return throughput(false),
        Some("--child-memory") => return memory(100_000, false),
        Some("--child-throughput-days") => return throughput(true),
        Some("--child-memory-days") => return memory(100_000, true),
        _ => {}
    }
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return; // `cargo test --benches` probes bench binaries; nothing to test here.
    }
    let exe = std::env::current_exe().expect("own path");
    for part in [
        "--child-throughput",
        "--child-memory",
        "--child-throughput-days",
        "--child-memory-days",
    ] {
        let out = std::process::Command::new(&exe)
            .arg(part)
            .output()
            .expect("child");
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }
}
