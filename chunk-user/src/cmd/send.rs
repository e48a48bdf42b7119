//! `chunk send FILE... --to HOST`: arguments → [`SendConfig`] → the send driver, one file after
//! the other → a report; succeeds only when the receiver confirmed every file's hash.

use std::{io::IsTerminal, net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    auth::Psk,
    crypto::{Credentials, KnownHosts, SecretKey, keys::public_key_arg},
    driver::{
        send::{self, Encryption, Protection, SendConfig, SendDriver},
        wait::Stop,
    },
    net::raw::Transport,
    proto::{SendError, Sender, SenderConfig, SenderStats},
    report::{FileReport, SendSummary},
};

#[derive(clap::Args)]
pub struct SendArgs {
    /// Files and directories to send. A file arrives under its file name in the receiver's
    /// directory; a directory as a tree under its own name (`chunk send photos` → `photos/…`),
    /// its regular files with their paths inside it. Symbolic links inside a directory, FIFOs,
    /// devices and sockets are skipped with a warning.
    #[arg(required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// Place everything under this subdirectory of the receiver's directory (created there).
    #[arg(long, value_name = "SUBDIR", value_parser = super::tree::parse_dest)]
    pub dest: Option<String>,
    #[command(flatten)]
    pub target: super::TargetArgs,
    /// Most chunks unacknowledged at once; 1 is the original tool's stop-and-wait.
    #[arg(long, default_value_t = 1 << 16)]
    pub window: u32,
    /// Cap on the sending rate in bits per second (k, M, G suffixes: `--rate 200M`). Without it
    /// the congestion controller finds the rate.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Payload bytes per chunk packet. Default: the route's MTU minus the headers (IPv4 20 or
    /// IPv6 40, UDP 8 with --udp, chunk 20), at most the receiver's limit of 9180.
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// Give up on a file after this many seconds without an answer from the receiver.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Encrypt, with this private key as the sender's identity (`chunk keygen`; the receiver
    /// lists its public key in `--authorized-keys`). The receiver's key is checked against
    /// `--receiver-key`, or the known-hosts file (remembered there on first contact).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// The receiver's public key (`chunk-x25519 …`), or a file holding it (its FILE.pub): the
    /// transfer stops before anything is sent if the receiver's key is another.
    #[arg(long, value_name = "KEY|FILE", requires = "key")]
    pub receiver_key: Option<String>,
    /// Where the receivers' keys are remembered. Default: $CHUNK_KNOWN_HOSTS, else
    /// ~/.config/chunk/known_hosts.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// The pre-shared key (the receiver's `--psk-file`): encrypts (mixed into the handshake,
    /// with `--key` too if given), or with `--no-encryption` authenticates clear packets.
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
    /// Send in clear: no handshake, contents and names readable on the wire (authenticated
    /// if `--psk-file` is given).
    #[arg(long, conflicts_with_all = ["key", "receiver_key"])]
    pub no_encryption: bool,
}

/// `"200M"` → 200 000 000 (bits per second).
fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim().trim_end_matches("bit").trim_end_matches("bps");
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1e3),
        Some('m' | 'M') => (&s[..s.len() - 1], 1e6),
        Some('g' | 'G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad rate {s:?}: a number of bits/s, like 200M"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("bad rate {s:?}"));
    }
    Ok((v * mult) as u64)
}

/// The chunk size to use: the user's, checked against the route's MTU and the receiver's payload
/// limit, or the largest the route carries unfragmented.
fn chunk_size(args: &SendArgs, to: IpAddr, transport: Transport, prot: Protection) -> Result<u32> {
    let keyed = prot;
    let v6 = to.is_ipv6();
    // The receiver's default payload limit counts the trailer or seal too (docs/PROTOCOL.md).
    let max = chunk_common::ring::MAX_PAYLOAD_LEN as u32 - prot.bytes();
    let overhead = send::packet_overhead(keyed, transport, v6);
    let mtu = send::route_mtu(to);
    match (args.chunk_size, mtu) {
        (Some(n), _) if n == 0 || n > max => {
            bail!("--chunk-size must be 1..={max} (the receiver's default payload limit)")
        }
        (Some(n), Ok(mtu)) if n + overhead > mtu => bail!(
            "--chunk-size {n} does not fit the MTU of {mtu} on the route to {to}: at most {} \
             (the MTU minus {})",
            mtu.saturating_sub(overhead),
            send::overhead_words(keyed, transport, v6)
        ),
        (Some(n), _) => Ok(n),
        (None, Ok(mtu)) if mtu > overhead + 64 => Ok((mtu - overhead).min(max)),
        (None, Ok(mtu)) => bail!("the route to {to} has an MTU of {mtu}: too small"),
        (None, Err(e)) => Err(anyhow::Error::new(e).context(format!("no route to {to}"))),
    }
}

pub fn run(args: SendArgs) -> Result<()> {
    let (to, transport) = args.target.resolve()?;
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    let key = match &args.psk_file {
        Some(p) => Some(Psk::from_file(p).context("reading the pre-shared key")?),
        None => None,
    };
    let encryption = if args.no_encryption || (args.key.is_none() && key.is_none()) {
        None
    } else {
        let secret = match &args.key {
            Some(p) => Some(SecretKey::load(p).context("reading the private key")?),
            None => None,
        };
        let pin = match &args.receiver_key {
            Some(k) => Some(public_key_arg(k).context("--receiver-key")?),
            None => None,
        };
        Some(Encryption {
            creds: Credentials {
                psk: key.as_ref().map(Psk::noise_key),
                key: secret,
            },
            pin,
            known_hosts: Some(KnownHosts::new(
                args.known_hosts
                    .clone()
                    .unwrap_or_else(KnownHosts::default_path),
            )),
            // The name the user gave, not the address it resolved to: a spoofed name lookup
            // then meets the remembered key (as ssh keys known hosts by name).
            host: match transport {
                Transport::Ip(_) => args.target.to.clone(),
                Transport::Udp(port) => format!("{}:{port}", args.target.to),
            },
        })
    };
    let protection = match (&encryption, &key) {
        (Some(_), _) => Protection::Sealed,
        (None, Some(_)) => Protection::Tagged,
        (None, None) => Protection::Clear,
    };
    let chunk_size = chunk_size(&args, to, transport, protection)?;
    let stop = Stop::install().context("installing signal handlers")?;
    let mut driver = SendDriver::new(SendConfig {
        to,
        transport,
        core: SenderConfig {
            chunk_size,
            window: args.window,
            max_rate: args.rate,
            timeout: Duration::from_secs_f64(args.timeout.max(0.1)),
            ..SenderConfig::default()
        },
        // With encryption the pre-shared key is in the handshake: no tags besides.
        key: if encryption.is_some() { None } else { key },
        encryption,
    })?;
    let (entries, mut passed_over) =
        super::tree::expand(&args.files, args.dest.as_deref().unwrap_or(""));
    for s in &passed_over {
        eprintln!("chunk send: {}: skipped: {}", s.path, s.reason);
    }
    if let Err(e) = driver.connect(&stop) {
        // Nothing was sent: every file failed, for this reason (in the JSON summary too).
        if args.json {
            let files = entries
                .iter()
                .map(|entry| FileReport {
                    file: entry.path.display().to_string(),
                    error: Some(format!("{e:#}")),
                    ..FileReport::default()
                })
                .collect::<Vec<_>>();
            let summary = SendSummary {
                to: summary_to(to, transport),
                skipped: 0,
                failed: files.len(),
                bytes: 0,
                files,
                skipped_entries: passed_over.clone(),
            };
            println!("{}", serde_json::to_string(&summary)?);
        }
        return Err(e);
    }
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    let mut links_refused = 0;
    for entry in &entries {
        if stop.requested().is_some() {
            break;
        }
        let report = send_one(&mut driver, entry, &stop, show_progress);
        // A receiver without --links refuses links: skipped with the reason, not a failure.
        if entry.symlink.is_some()
            && report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("(--links)"))
        {
            let reason = "a symbolic link, and the receiver takes none (it may allow --links)";
            eprintln!("chunk send: {}: skipped: {reason}", report.file);
            passed_over.push(super::tree::Skipped {
                path: report.file,
                reason: reason.into(),
            });
            links_refused += 1;
            continue;
        }
        match &report.error {
            None => tracing::info!(
                file = %report.file, size = report.size, seconds = format!("{:.3}", report.seconds),
                goodput_mb_s = format!("{:.1}", report.goodput_mb_s),
                retransmitted = report.retransmitted, resumed = report.resumed,
                "sent and verified"
            ),
            Some(e) => eprintln!("chunk send: {}: {e}", report.file),
        }
        reports.push(report);
    }
    let failed = reports.iter().filter(|r| !r.ok).count();
    let summary = SendSummary {
        to: summary_to(to, transport),
        skipped: entries.len() - reports.len() - links_refused,
        failed,
        bytes: reports.iter().filter(|r| r.ok).map(|r| r.size).sum(),
        files: reports,
        skipped_entries: passed_over,
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if !args.quiet {
        for r in summary.files.iter().filter(|r| r.ok) {
            println!(
                "{}: {} bytes in {:.2} s ({:.1} MB/s), {} retransmitted{}, hash verified",
                r.file,
                r.size,
                r.seconds,
                r.goodput_mb_s,
                r.retransmitted,
                if r.resumed > 0 {
                    format!(", {} chunks resumed", r.resumed)
                } else {
                    String::new()
                }
            );
        }
        if summary.files.len() + summary.skipped_entries.len() > 1 {
            println!(
                "{} of {} files verified, {} bytes; {} skipped, {} failed",
                summary.files.len() - failed,
                entries.len(),
                summary.bytes,
                summary.skipped_entries.len() + summary.skipped,
                failed
            );
        }
    }
    if stop.requested().is_some() {
        bail!("interrupted; sending the same files again resumes where this run stopped");
    }
    if failed > 0 {
        bail!("{failed} of {} files failed", entries.len());
    }
    Ok(())
}

fn summary_to(to: IpAddr, transport: Transport) -> String {
    match transport {
        Transport::Ip(_) => to.to_string(),
        Transport::Udp(port) => std::net::SocketAddr::new(to, port).to_string(),
    }
}

/// Sends one file; its report, success or not. A resumed transfer whose verdict is a hash
/// mismatch held a partial copy of other content under the same tag (the file was changed in a
/// way its times do not show, or the copy was damaged); the receiver has removed it, so the
/// file is sent once more, whole.
fn send_one(
    driver: &mut SendDriver,
    entry: &super::tree::Entry,
    stop: &Stop,
    show_progress: bool,
) -> FileReport {
    let (report, mismatch) = send_once(driver, entry, stop, show_progress);
    if !(mismatch && report.resumed > 0) || stop.requested().is_some() {
        return report;
    }
    tracing::warn!(
        file = %report.file,
        resumed = report.resumed,
        "the receiver's partial copy was not this file; sending it whole"
    );
    send_once(driver, entry, stop, show_progress).0
}

/// Opens and sends one file; its report, success or not, and whether the verdict was a hash
/// mismatch.
fn send_once(
    driver: &mut SendDriver,
    entry: &super::tree::Entry,
    stop: &Stop,
    show_progress: bool,
) -> (FileReport, bool) {
    let path = entry.path.as_path();
    let mut report = FileReport {
        file: path.display().to_string(),
        ..FileReport::default()
    };
    let start = std::time::Instant::now();
    let opened = entry
        .name
        .clone()
        .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
        .and_then(|name| {
            if entry.directory {
                send::open_dir(path, name)
            } else if let Some(target) = &entry.symlink {
                send::open_link(path, name, target)
            } else {
                send::open_file(path, name)
            }
        });
    let (file, meta) = match opened {
        Ok(x) => x,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return (report, false);
        }
    };
    report.name = meta.name.clone();
    report.size = meta.size;
    let chunk_size = driver.config().core.chunk_size as u64;
    let size = meta.size;
    let bar = show_progress.then(|| progress_bar(&meta.name, size));
    let mut on_progress = |sender: &Sender| {
        if let Some(bar) = &bar {
            update_bar(bar, sender, chunk_size, size);
        }
    };
    let result = driver.send_file(file, meta, stop, &mut on_progress);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    report.seconds = start.elapsed().as_secs_f64();
    let (stats, outcome) = match result {
        Ok(x) => x,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return (report, false);
        }
    };
    tracing::debug!(file = %report.file, ?stats, "sender core at the end");
    report.chunks = stats.chunk_count;
    report.chunks_sent = stats.chunks_sent;
    report.retransmitted = stats.chunks_retransmitted;
    report.resumed = stats.chunks_resumed;
    report.srtt_ms = stats.srtt.map(|d| d.as_secs_f64() * 1e3);
    if let Some(h) = stats.hash {
        report.hash = h.iter().map(|b| format!("{b:02x}")).collect();
    }
    let mismatch = matches!(outcome, Err(SendError::HashMismatch { .. }));
    match outcome {
        Ok(()) => {
            report.ok = true;
            report.goodput_mb_s = report.size as f64 / report.seconds.max(1e-9) / 1e6;
        }
        Err(e) => {
            let cfg = driver.config();
            report.error = Some(explain(&e, cfg.to, cfg.transport, &stats))
        }
    }
    (report, mismatch)
}

/// The sender core's error, said for a user.
fn explain(e: &SendError, to: IpAddr, transport: Transport, stats: &SenderStats) -> String {
    match e {
        SendError::Timeout(t) if !stats.offer_accepted => format!(
            "no answer from {to} for {:.0} s: is `chunk recv` running there, does it speak chunk \
             protocol version {} (as this chunk {} does), and {}",
            t.as_secs_f64(),
            chunk_common::wire::VERSION,
            env!("CARGO_PKG_VERSION"),
            match transport {
                Transport::Ip(p) => format!(
                    "does IP protocol {p} traffic reach it? NATs, many firewalls and cloud \
                     security groups drop protocols other than TCP, UDP and ICMP: then run both \
                     ends with `--udp PORT`"
                ),
                Transport::Udp(port) => format!(
                    "was it started with `--udp {port}`, and does UDP to port {port} reach it?"
                ),
            }
        ),
        SendError::Timeout(t) if stats.chunks_acked == stats.chunks_resumed => format!(
            "{to} accepted the offer, then acknowledged none of the {} chunks sent in {:.0} s: \
             something on the path drops the data packets (are they larger than the path MTU? \
             try a smaller --chunk-size)",
            stats.chunks_sent,
            t.as_secs_f64()
        ),
        SendError::Timeout(t) => format!(
            "{to} stopped answering for {:.0} s; sending the file again resumes it",
            t.as_secs_f64()
        ),
        other => other.to_string(),
    }
}

fn progress_bar(name: &str, size: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

fn update_bar(bar: &ProgressBar, sender: &Sender, chunk_size: u64, size: u64) {
    let (acked, _) = sender.progress();
    bar.set_position((acked * chunk_size).min(size));
    let s = sender.stats();
    bar.set_message(format!("retx {}", s.chunks_retransmitted));
}
