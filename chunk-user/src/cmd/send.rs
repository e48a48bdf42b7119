//! `chunk send FILE... --to HOST`: arguments → [`SendConfig`] → the send driver, one file after
//! the other → a report; succeeds only when the receiver confirmed every file's hash.

use std::{
    collections::VecDeque,
    io::IsTerminal,
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use chunk_common::wire::AbortReason;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{
    auth::Psk,
    crypto::{Credentials, KnownHosts, SecretKey, keys::public_key_arg},
    driver::{
        send::{self, Encryption, Jobs, NextJob, Protection, SendConfig, SendDriver},
        wait::Stop,
    },
    net::raw::Transport,
    path_cache::{self, PathCache},
    proto::{SendError, Sender, SenderConfig, SenderStats},
    report::{FileReport, PathReport, SendSummary},
};

#[derive(clap::Args)]
pub struct SendArgs {
    /// Files and directories to send. A file arrives under its file name in the receiver's
    /// directory; a directory as a tree under its own name (`chunk send photos` → `photos/…`),
    /// its regular files with their paths inside it. Symbolic links inside a directory, FIFOs,
    /// devices and sockets are skipped with a warning. `-` is standard input, sent as a stream
    /// of unknown length under `--name` (`tar c dir | chunk send - --name dir.tar --to …`),
    /// verified at its end like a file.
    #[arg(required = true, value_name = "PATH")]
    pub files: Vec<PathBuf>,
    /// The name standard input (`-`) arrives under (below `--dest`).
    #[arg(long, value_name = "NAME", value_parser = super::tree::parse_dest)]
    pub name: Option<String>,
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
    /// Files in flight at once. They share one congestion controller and window, so a tree of
    /// small files does not wait a round trip per file; of files over 8 MiB (and streams) at
    /// most two go at once, so large files finish one after another. The receiver's
    /// `--max-per-source` (default 16) caps it: refused for want of room, the sender goes on
    /// with fewer.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub parallel: u32,
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
    /// The path cache: where the bandwidth and round trip measured to each receiver are kept
    /// for an hour, so that the next send there starts at a safe share of that rate once the
    /// offer's round trip confirms the path, not from a slow start. Default: $CHUNK_PATH_CACHE
    /// (empty: none), else $XDG_STATE_HOME/chunk/paths.json, else
    /// ~/.local/state/chunk/paths.json.
    #[arg(long, value_name = "FILE", conflicts_with = "no_path_cache")]
    pub path_cache: Option<PathBuf>,
    /// Neither use nor update the path cache: every send starts up from scratch.
    #[arg(long)]
    pub no_path_cache: bool,
    /// Without a remembered estimate, start up as TCP does (doubling from 32 chunks each round
    /// trip), not from the rate the first round's acks read off a long path. A TCP flow that
    /// starts at the same moment on the same bottleneck then keeps its share of it.
    #[arg(long)]
    pub no_first_round: bool,
    /// Send every packet through the kernel's IP output path (the raw socket), never through
    /// an AF_PACKET socket. By default, straight over IP on an Ethernet route, packets are
    /// handed to the interface with their IP header written by chunk: cheaper per packet, but
    /// this host's own netfilter output and postrouting rules do not see them (`tc` shaping
    /// does). Also `CHUNK_NO_PACKET_SOCKET=1`.
    #[arg(long)]
    pub no_packet_socket: bool,
    /// Send every file as a transfer of its own. By default the small files of a send (up to
    /// 64 KiB) go in bundles of up to 1 MiB: one offer, hash and verdict for hundreds of files,
    /// each file still verified and put in place whole under its name.
    #[arg(long)]
    pub no_bundle: bool,
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
    let path_cache = if args.no_path_cache {
        None
    } else {
        args.path_cache
            .clone()
            .or_else(PathCache::default_file)
            .map(PathCache::new)
    };
    let path_key = path_cache::key(to, transport);
    let resume = path_cache
        .as_ref()
        .and_then(|c| c.lookup(&path_key, SystemTime::now()));
    if let Some(e) = &resume {
        tracing::debug!(
            key = path_key,
            bandwidth_mbit = e.bandwidth * 8e-6,
            min_rtt_ms = e.min_rtt.as_secs_f64() * 1e3,
            "path cache: starting from the remembered estimate once the offer confirms it"
        );
    }
    let stop = Stop::install().context("installing signal handlers")?;
    let mut driver = SendDriver::new(SendConfig {
        to,
        transport,
        core: SenderConfig {
            chunk_size,
            window: args.window,
            max_rate: args.rate,
            timeout: Duration::from_secs_f64(args.timeout.max(0.1)),
            first_round: !args.no_first_round,
            ..SenderConfig::default()
        },
        // With encryption the pre-shared key is in the handshake: no tags besides.
        key: if encryption.is_some() { None } else { key },
        encryption,
        resume,
        packet_socket: !args.no_packet_socket
            && std::env::var_os("CHUNK_NO_PACKET_SOCKET").is_none_or(|v| v.is_empty() || v == "0"),
    })?;
    let dest = args.dest.as_deref().unwrap_or("");
    let stdin = std::path::Path::new("-");
    let (entries, mut passed_over) = match (
        args.files.iter().filter(|p| p.as_path() == stdin).count(),
        &args.name,
    ) {
        (0, None) => super::tree::expand(&args.files, dest),
        (0, Some(_)) => bail!("--name names standard input: give `-` among the PATHs"),
        (1, None) => bail!("standard input (`-`) needs --name NAME: the name it arrives under"),
        (1, Some(name)) if name.is_empty() => bail!("--name must not be empty"),
        (1, Some(name)) => {
            let others: Vec<_> = args
                .files
                .iter()
                .filter(|p| p.as_path() != stdin)
                .cloned()
                .collect();
            let (mut entries, skipped) = super::tree::expand(&others, dest);
            // First: its producer is running already.
            entries.insert(
                0,
                super::tree::Entry {
                    path: stdin.to_owned(),
                    name: Ok(if dest.is_empty() {
                        name.clone()
                    } else {
                        format!("{dest}/{name}")
                    }),
                    directory: false,
                    symlink: None,
                    stream: true,
                },
            );
            (entries, skipped)
        }
        _ => bail!("standard input (`-`) can be sent once"),
    };
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
                packets_sent: 0,
                send_messages: 0,
                link_packets: 0,
                path: None,
            };
            println!("{}", serde_json::to_string(&summary)?);
        }
        return Err(e);
    }
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let mut queue = Queue::new(&entries, to, transport, show_progress);
    queue.bundle_chunk_size = (!args.no_bundle).then_some(chunk_size);
    let sent = driver.send_files(&mut queue, args.parallel as usize, &stop);
    if let Some(bar) = &queue.bar {
        bar.finish_and_clear();
    }
    let path_report = path_cache
        .as_ref()
        .map(|c| remember_path(c, &path_key, &driver, resume.is_some()));
    let Queue {
        reports,
        passed_over: refused_links,
        ..
    } = queue;
    passed_over.extend(refused_links);
    let links_refused = reports
        .iter()
        .filter(|r| matches!(r, Some(Done::LinkRefused)))
        .count();
    let reports: Vec<FileReport> = reports
        .into_iter()
        .filter_map(|r| match r {
            Some(Done::Report(r)) => Some(r),
            _ => None,
        })
        .collect();
    let failed = reports.iter().filter(|r| !r.ok).count();
    let summary = SendSummary {
        to: summary_to(to, transport),
        skipped: entries.len() - reports.len() - links_refused,
        failed,
        bytes: reports.iter().filter(|r| r.ok).map(|r| r.size).sum(),
        files: reports,
        skipped_entries: passed_over,
        packets_sent: driver.packets_sent().0,
        send_messages: driver.packets_sent().1,
        link_packets: driver.packets_sent().2,
        path: path_report,
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
    sent?;
    if stop.requested().is_some() {
        bail!("interrupted; sending the same files again resumes where this run stopped");
    }
    if failed > 0 {
        bail!("{failed} of {} files failed", entries.len());
    }
    Ok(())
}

/// Keeps what the send measured of the path in the cache (when it measured it: long enough to
/// find the bottleneck), and says so for the summary. A cache that cannot be written is logged,
/// never an error.
fn remember_path(
    cache: &PathCache,
    key: &str,
    driver: &SendDriver,
    remembered: bool,
) -> PathReport {
    let path = driver.path();
    let estimate = path.as_ref().and_then(|p| p.estimate());
    let resume = path
        .as_ref()
        .and_then(|p| p.resume_outcome())
        .map(|o| o.name().to_owned());
    let first_round = path
        .as_ref()
        .and_then(|p| p.first_round_outcome())
        .map(|o| o.name().to_owned());
    drop(path);
    if let Some(e) = estimate
        && let Err(err) = cache.record(key, e, SystemTime::now())
    {
        tracing::debug!(file = %cache.file().display(), error = %err, "path cache not written");
    }
    if let Some(r) = &resume {
        tracing::debug!(key, resume = r, "path cache: the remembered estimate");
    }
    PathReport {
        cache: cache.file().display().to_string(),
        remembered,
        resume,
        first_round,
        kept_bandwidth_bps: estimate.map(|e| (e.bandwidth * 8.0) as u64),
        kept_min_rtt_ms: estimate.map(|e| e.min_rtt.as_secs_f64() * 1e3),
    }
}

fn summary_to(to: IpAddr, transport: Transport) -> String {
    match transport {
        Transport::Ip(_) => to.to_string(),
        Transport::Udp(port) => std::net::SocketAddr::new(to, port).to_string(),
    }
}

/// Bundles in flight at most. They go one after another (the oldest transfer sends first, see
/// `SendDriver::queue_from`): one is put in place while the next travels and the others wait
/// for their offer's or their manifest's answer. A 10 000-file tree over veth took 0.40-0.43 s
/// with five, 0.46-0.48 s with three (medians of 7 runs, two sets); six gained nothing more.
const BUNDLES_IN_FLIGHT: usize = 5;

/// Whether the receiver can take `name` in a bundle (else the file goes alone, and gets the
/// receiver's own answer): a name it would take in an offer, not like its work files, whose
/// components leave room for a bundle member's work name (`.NAME.XXXXXXXX.part`, 15 bytes more).
fn bundle_name_ok(name: &str) -> bool {
    name.len() <= 4096
        && crate::proto::validate_name(name.as_bytes()).is_ok()
        && !name
            .rsplit('/')
            .next()
            .is_some_and(crate::store::is_work_file)
        && name.split('/').all(|c| c.len() <= 255 - 15)
}

/// Entries looked at, while the bundles in flight are at their most, for a file to start alone.
const SCAN_PAST_BUNDLES: usize = 256;

/// A bundle under way: its members (entry keys) and what the sender knows of each, and the
/// directories they go in (a directory's verdict waits for them).
struct InFlightBundle {
    members: Vec<usize>,
    layout: Vec<send::BundleMember>,
    dirs: Vec<String>,
    started: Instant,
}

/// How an entry ended.
enum Done {
    Report(FileReport),
    /// A link the receiver does not take (no `--links`): skipped, not failed.
    LinkRefused,
}

/// Who reads the small files that go in bundles.
enum Readers {
    /// Not decided yet: at the first bundle.
    NotYet,
    /// Threads reading ahead ([`super::prefetch`]).
    Threads(super::prefetch::Prefetch),
    /// The send loop, as it makes each bundle: the files are in memory (tmpfs), there is
    /// nothing to read, no thread could start, or the receiver takes no bundles.
    Inline,
}

impl Readers {
    fn threads(&mut self) -> Option<&mut super::prefetch::Prefetch> {
        match self {
            Readers::Threads(p) => Some(p),
            _ => None,
        }
    }
}

/// The entries of one `chunk send`, handed to the driver in order ([`Jobs`]), and what became
/// of each.
struct Queue<'a> {
    entries: &'a [super::tree::Entry],
    /// The receiver, for messages.
    to: IpAddr,
    transport: Transport,
    /// Entries not started yet, in order (one the receiver had no room for goes back first).
    todo: VecDeque<usize>,
    /// When each entry's transfer started.
    started: Vec<Option<Instant>>,
    /// Sent once more, whole, after a resume from a partial copy that was not this file.
    resent_whole: Vec<bool>,
    reports: Vec<Option<Done>>,
    passed_over: Vec<super::tree::Skipped>,
    bar: Option<ProgressBar>,
    /// Bytes of the entries that are over (for the progress bar).
    bytes_done: u64,
    /// Small files go in bundles of this chunk size (`None`: `--no-bundle`, or the receiver
    /// takes no bundles).
    bundle_chunk_size: Option<u32>,
    /// Entries that go alone (their bundle failed: alone each gets its own verdict).
    alone: Vec<bool>,
    /// Bundles under way, by key (`entries.len()` and up).
    bundles: std::collections::HashMap<usize, InFlightBundle>,
    next_bundle_key: usize,
    /// Who reads the small files for the bundles.
    readers: Readers,
}

impl<'a> Queue<'a> {
    fn new(
        entries: &'a [super::tree::Entry],
        to: IpAddr,
        transport: Transport,
        show_progress: bool,
    ) -> Self {
        let bar = show_progress.then(|| {
            // The regular files' sizes, for the bar's length and its ETA (a stat each).
            let total = entries
                .iter()
                .filter(|e| !e.directory && e.symlink.is_none())
                .filter_map(|e| std::fs::metadata(&e.path).ok())
                .map(|m| m.len())
                .sum();
            let prefix = match entries {
                [one] if one.stream => one.name.clone().unwrap_or_default(),
                [one] => one.path.display().to_string(),
                _ => format!("{} files", entries.len()),
            };
            // A stream's length is not known: no total then.
            let total = (!entries.iter().any(|e| e.stream)).then_some(total);
            progress_bar(&prefix, total)
        });
        Queue {
            entries,
            to,
            transport,
            todo: (0..entries.len()).collect(),
            started: vec![None; entries.len()],
            resent_whole: vec![false; entries.len()],
            reports: (0..entries.len()).map(|_| None).collect(),
            passed_over: Vec::new(),
            bar,
            bytes_done: 0,
            bundle_chunk_size: None,
            // What cannot go in a bundle goes alone from the start.
            alone: entries
                .iter()
                .map(|e| {
                    e.directory
                        || e.stream
                        || e.symlink.is_some()
                        || !e.name.as_ref().is_ok_and(|n| bundle_name_ok(n))
                })
                .collect(),
            bundles: std::collections::HashMap::new(),
            next_bundle_key: entries.len(),
            readers: Readers::NotYet,
        }
    }

    /// Whether directory `name` must wait: something inside it is under way (a transfer the
    /// driver names in `busy`, or a bundle's member).
    fn dir_busy(&self, name: &str, busy: &[&str]) -> bool {
        let inside = |b: &str| b.strip_prefix(name).is_some_and(|r| r.starts_with('/'));
        busy.iter().any(|b| inside(b))
            || self
                .bundles
                .values()
                .flat_map(|b| b.dirs.iter())
                .any(|d| d == name || inside(d))
    }

    /// Whether entry `key` may go in a bundle, by what the walk knows: a plain file with a
    /// name the receiver takes in one (its size is known once it is open). Asked for every
    /// entry a scan passes: two lookups.
    fn may_bundle(&self, key: usize) -> bool {
        self.bundle_chunk_size.is_some() && !self.alone[key]
    }

    /// Gathers small files from `todo` into a bundle, starting with the one at `first`; none
    /// if fewer than two would go (those it opened go alone then, as files).
    fn take_bundle(&mut self, first: usize, chunk_size: u32) -> Option<NextJob> {
        let mut picked = Vec::new();
        let mut files = Vec::new();
        let mut total = 0u64;
        let mut i = first;
        // Looked at from `first` on, so many entries at most: a tree of large files is not
        // scanned whole for each of them.
        let end = self.todo.len().min(first + 4 * send::BUNDLE_MAX_MEMBERS);
        if matches!(self.readers, Readers::NotYet) {
            // Every file that may go in a bundle, from here on, read ahead in order.
            let mut files: Vec<_> = (first..self.todo.len())
                .map(|i| self.todo[i])
                .filter(|&k| self.may_bundle(k))
                .filter_map(|k| {
                    let e = &self.entries[k];
                    Some((k, e.path.clone(), e.name.clone().ok()?))
                })
                .collect();
            files.sort_unstable_by_key(|f| f.0);
            // Files in memory (tmpfs) are read without waiting: threads would only add their
            // wakeups (1 000 files of 100 KiB, which each reader opens to find too large).
            let in_memory = files.first().is_some_and(|f| {
                let dir = (f.1.parent())
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(std::path::Path::new("."));
                rustix::fs::statfs(dir).is_ok_and(|st| crate::store::memory_fs(&st))
            });
            self.readers = match (!in_memory)
                .then(|| super::prefetch::Prefetch::start(files))
                .flatten()
            {
                Some(p) => Readers::Threads(p),
                None => Readers::Inline,
            };
        }
        while i < end && picked.len() < send::BUNDLE_MAX_MEMBERS {
            let key = self.todo[i];
            i += 1;
            if !self.may_bundle(key) {
                continue;
            }
            let entry = &self.entries[key];
            let read = match self.readers.threads().and_then(|p| p.take(key)) {
                Some(read) => read,
                None => {
                    let name = entry.name.clone().expect("may_bundle: a name");
                    send::read_small(&entry.path, name)
                }
            };
            // What cannot be opened or read, or is not a small regular file, goes alone (with
            // its message, if any, from there), and is not opened again to be looked at.
            let Some((meta, bytes)) = read else {
                self.alone[key] = true;
                continue;
            };
            let cost = meta.size.div_ceil(chunk_size as u64) * chunk_size as u64
                + chunk_common::bundle::ENTRY_LEN as u64
                + meta.name.len() as u64;
            if total + cost > send::BUNDLE_MAX && !picked.is_empty() {
                // For the next bundle.
                if let Some(p) = self.readers.threads() {
                    p.put_back(key, (meta, bytes));
                }
                break;
            }
            total += cost;
            picked.push(i - 1);
            files.push((meta, bytes));
        }
        if picked.len() < 2 {
            if let Some(&at) = picked.first() {
                self.alone[self.todo[at]] = true;
            }
            return None;
        }
        let members: Vec<usize> = picked.iter().map(|&i| self.todo[i]).collect();
        for &i in picked.iter().rev() {
            self.todo.remove(i);
        }
        let mut dirs: Vec<String> = files
            .iter()
            .filter_map(|(m, _)| m.name.rsplit_once('/').map(|(d, _)| d.to_owned()))
            .collect();
        dirs.sort_unstable();
        dirs.dedup();
        match send::open_bundle(files, chunk_size) {
            Ok((file, meta, layout)) => {
                let key = self.next_bundle_key;
                self.next_bundle_key += 1;
                for &m in &members {
                    self.started[m] = Some(Instant::now());
                }
                self.bundles.insert(
                    key,
                    InFlightBundle {
                        members,
                        layout,
                        dirs,
                        started: Instant::now(),
                    },
                );
                Some(NextJob::Start { key, file, meta })
            }
            Err(e) => {
                // A file changed or could not be read: each goes alone, with its own message.
                tracing::debug!(error = %format!("{e:#}"), "no bundle; the files go one by one");
                for &m in members.iter().rev() {
                    self.alone[m] = true;
                    self.todo.push_front(m);
                }
                None
            }
        }
    }

    /// A bundle ended: each member verified with it, or (it failed) sent alone, where it gets
    /// its own verdict and reason.
    fn bundle_finished(
        &mut self,
        bundle: InFlightBundle,
        result: Result<(SenderStats, Result<(), SendError>)>,
    ) {
        let chunk_size = self.bundle_chunk_size.unwrap_or(1);
        let seconds = bundle.started.elapsed().as_secs_f64();
        if let Ok((stats, _)) = &result {
            tracing::debug!(
                files = bundle.members.len(),
                seconds,
                ?stats,
                "bundle: sender core at the end"
            );
        }
        match result {
            Ok((stats, Ok(()))) => {
                let sent = stats.sent.clone().unwrap_or_default();
                // The bundle's retransmissions are told with its first file (so that they add
                // up over the files).
                let mut retransmitted = Some(stats.chunks_retransmitted);
                let mut rtos = Some(stats.rto_expiries);
                for (&key, m) in bundle.members.iter().zip(&bundle.layout) {
                    let entry = &self.entries[key];
                    let span = m.chunks(chunk_size);
                    let chunks = span.len() as u32;
                    let went = span.clone().filter(|&c| sent.contains(c)).count() as u64;
                    let report = FileReport {
                        file: entry.path.display().to_string(),
                        name: entry.name.clone().unwrap_or_default(),
                        size: m.size,
                        ok: true,
                        seconds,
                        goodput_mb_s: m.size as f64 / seconds.max(1e-9) / 1e6,
                        chunks,
                        chunks_sent: went,
                        resumed: chunks as u64 - went,
                        retransmitted: retransmitted.take().unwrap_or(0),
                        rtos: rtos.take().unwrap_or(0),
                        hash: m.hash.iter().map(|b| format!("{b:02x}")).collect(),
                        srtt_ms: stats.srtt.map(|d| d.as_secs_f64() * 1e3),
                        bundled: true,
                        ..FileReport::default()
                    };
                    self.record(key, report);
                }
            }
            other => {
                let why = match &other {
                    Ok((_, Err(e))) => e.to_string(),
                    Err(e) => format!("{e:#}"),
                    Ok((_, Ok(()))) => unreachable!(),
                };
                // A receiver that predates bundles refuses the nameless offer: no more then.
                if let Ok((stats, Err(SendError::Refused(reason, _)))) = &other
                    && !stats.offer_accepted
                    && matches!(
                        reason,
                        AbortReason::BadName | AbortReason::Unsupported | AbortReason::TooLarge
                    )
                {
                    tracing::info!(
                        why,
                        "the receiver takes no bundles; sending files one by one"
                    );
                    self.bundle_chunk_size = None;
                    // Nothing read ahead is needed any more.
                    self.readers = Readers::Inline;
                } else if !matches!(&other, Ok((_, Err(SendError::Cancelled)))) {
                    tracing::info!(
                        why,
                        files = bundle.members.len(),
                        "a bundle failed; sending its files one by one"
                    );
                }
                // Cancelled: they go back untried, and the summary counts them skipped.
                for &m in bundle.members.iter().rev() {
                    self.alone[m] = true;
                    self.started[m] = None;
                    self.todo.push_front(m);
                }
            }
        }
    }
}

impl Jobs for Queue<'_> {
    fn next(&mut self, busy: &[&str]) -> NextJob {
        loop {
            // A directory's verdict sets its mode and mtime: it goes once nothing inside it is
            // under way. The walk lists it after its contents, so what follows it is elsewhere
            // and may go first.
            // Bundles go a few at a time (see `BUNDLES_IN_FLIGHT`); the files that would go in
            // one wait for it meanwhile, and others pass.
            // A file passed over may be inside any directory listed after it: none of those
            // goes before it.
            let bundles_full = self.bundles.len() >= BUNDLES_IN_FLIGHT;
            let mut passed_a_file = false;
            // While they are, what may start is a file that goes alone: looked for among the
            // next entries only, not through a whole tree for each wake-up of the send loop.
            let scan = if bundles_full {
                self.todo.len().min(SCAN_PAST_BUNDLES)
            } else {
                self.todo.len()
            };
            let Some(at) = (0..scan).find(|&i| {
                let key = self.todo[i];
                let entry = &self.entries[key];
                match (entry.directory, &entry.name) {
                    (true, Ok(name)) => !passed_a_file && !self.dir_busy(name, busy),
                    _ if bundles_full && self.may_bundle(key) => {
                        passed_a_file = true;
                        false
                    }
                    _ => true,
                }
            }) else {
                return if self.todo.is_empty() {
                    NextJob::Done
                } else {
                    NextJob::Wait
                };
            };
            if let Some(cs) = self.bundle_chunk_size
                && self.may_bundle(self.todo[at])
            {
                if let Some(job) = self.take_bundle(at, cs) {
                    return job;
                }
                if !self.todo.get(at).is_some_and(|&k| self.may_bundle(k)) {
                    // Its files were taken, or went back in front to go alone.
                    continue;
                }
                // Not a small file (or the only one): it goes alone, below.
            }
            let key = self.todo.remove(at).expect("found above");
            if let Some(p) = self.readers.threads() {
                p.forget(key);
            }
            let entry = &self.entries[key];
            let path = entry.path.as_path();
            let opened = entry
                .name
                .clone()
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))
                .and_then(|name| {
                    if entry.stream {
                        send::open_stdin(name)
                    } else if entry.directory {
                        send::open_dir(path, name)
                    } else if let Some(target) = &entry.symlink {
                        send::open_link(path, name, target)
                    } else {
                        send::open_file(path, name)
                    }
                });
            match opened {
                Ok((file, meta)) => {
                    self.started[key] = Some(Instant::now());
                    return NextJob::Start { key, file, meta };
                }
                Err(e) => {
                    let report = FileReport {
                        file: path.display().to_string(),
                        error: Some(format!("{e:#}")),
                        ..FileReport::default()
                    };
                    self.record(key, report);
                }
            }
        }
    }

    fn again(&mut self, key: usize) {
        match self.bundles.remove(&key) {
            // No room at the receiver: its files go back, to be bundled again.
            Some(b) => {
                for &m in b.members.iter().rev() {
                    self.started[m] = None;
                    self.todo.push_front(m);
                }
            }
            None => self.todo.push_front(key),
        }
    }

    fn finished(&mut self, key: usize, result: Result<(SenderStats, Result<(), SendError>)>) {
        if let Some(bundle) = self.bundles.remove(&key) {
            return self.bundle_finished(bundle, result);
        }
        let entry = &self.entries[key];
        let mut report = FileReport {
            file: entry.path.display().to_string(),
            name: entry.name.clone().unwrap_or_default(),
            seconds: self.started[key].map_or(0.0, |t| t.elapsed().as_secs_f64()),
            ..FileReport::default()
        };
        let (stats, outcome) = match result {
            Ok(x) => x,
            Err(e) => {
                report.error = Some(format!("{e:#}"));
                return self.record(key, report);
            }
        };
        tracing::debug!(file = %report.file, ?stats, "sender core at the end");
        report.size = stats.file_size;
        report.chunks = stats.chunk_count;
        report.chunks_sent = stats.chunks_sent;
        report.retransmitted = stats.chunks_retransmitted;
        report.rtos = stats.rto_expiries;
        report.resumed = stats.chunks_resumed;
        report.srtt_ms = stats.srtt.map(|d| d.as_secs_f64() * 1e3);
        if let Some(h) = stats.hash {
            report.hash = h.iter().map(|b| format!("{b:02x}")).collect();
        }
        match outcome {
            Ok(()) => {
                report.ok = true;
                report.goodput_mb_s = report.size as f64 / report.seconds.max(1e-9) / 1e6;
            }
            // A resumed transfer whose verdict is a hash mismatch held a partial copy of other
            // content under the same tag (the file was changed in a way its times do not show,
            // or the copy was damaged); the receiver has removed it, so the file goes once
            // more, whole.
            Err(SendError::HashMismatch { .. })
                if stats.chunks_resumed > 0 && !self.resent_whole[key] =>
            {
                tracing::warn!(
                    file = %report.file,
                    resumed = stats.chunks_resumed,
                    "the receiver's partial copy was not this file; sending it whole"
                );
                self.resent_whole[key] = true;
                self.todo.push_front(key);
                return;
            }
            Err(e) => report.error = Some(explain(&e, self.to, self.transport, &stats)),
        }
        // A receiver without --links refuses links: skipped with the reason, not a failure.
        if entry.symlink.is_some()
            && report
                .error
                .as_deref()
                .is_some_and(|e| e.contains("(--links)"))
        {
            let reason = "a symbolic link, and the receiver takes none (it may allow --links)";
            eprintln!("chunk send: {}: skipped: {reason}", report.file);
            self.passed_over.push(super::tree::Skipped {
                path: report.file,
                reason: reason.into(),
            });
            self.reports[key] = Some(Done::LinkRefused);
            return;
        }
        self.record(key, report);
    }

    fn progress(&mut self, under_way: &[&Sender]) {
        let Some(bar) = &self.bar else {
            return;
        };
        let mut pos = self.bytes_done;
        let mut retransmitted = 0;
        for s in under_way {
            let (acked, _) = s.progress();
            let size = s.meta().size;
            pos += (acked * s.chunk_size() as u64).min(size);
            retransmitted += s.stats().chunks_retransmitted;
        }
        bar.set_position(pos);
        let done = self.reports.iter().filter(|r| r.is_some()).count();
        bar.set_message(if self.entries.len() > 1 {
            format!("{done}/{} files, retx {retransmitted}", self.entries.len())
        } else {
            format!("retx {retransmitted}")
        });
    }
}

impl Queue<'_> {
    fn record(&mut self, key: usize, report: FileReport) {
        match &report.error {
            // Each file's line comes with the summary (stdout); here only with RUST_LOG=debug:
            // a tree of 10 000 files would write 10 000 log lines (5 % of the sender's time).
            None => tracing::debug!(
                file = %report.file, size = report.size, seconds = format!("{:.3}", report.seconds),
                goodput_mb_s = format!("{:.1}", report.goodput_mb_s),
                retransmitted = report.retransmitted, resumed = report.resumed,
                "sent and verified"
            ),
            Some(e) => eprintln!("chunk send: {}: {e}", report.file),
        }
        if !self.entries[key].directory && self.entries[key].symlink.is_none() {
            self.bytes_done += report.size;
        }
        self.reports[key] = Some(Done::Report(report));
    }
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

fn progress_bar(name: &str, size: Option<u64>) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(size, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(match size {
            Some(_) => "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            None => "{prefix} {spinner} {bytes} {bytes_per_sec} {msg}",
        })
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Large files ahead of small ones: the small ones still go in one bundle, and the large
    /// ones alone, marked so once looked at (a later bundle's scan does not open them again).
    #[test]
    fn small_files_behind_large_ones_are_bundled_and_the_large_go_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        std::fs::create_dir_all(&root).unwrap();
        for i in 0..5 {
            std::fs::write(root.join(format!("a-large-{i}")), vec![1u8; 100_000]).unwrap();
        }
        for i in 0..20 {
            std::fs::write(root.join(format!("b-small-{i:02}")), vec![2u8; 4_000]).unwrap();
        }
        let entries = super::super::tree::expand(&[root], "").0;
        let to = std::net::Ipv4Addr::new(198, 18, 0, 2).into();
        let mut q = Queue::new(&entries, to, Transport::Ip(253), false);
        q.bundle_chunk_size = Some(1400);
        let mut alone = Vec::new();
        let mut bundles = 0;
        while let NextJob::Start { meta, .. } = q.next(&[]) {
            if meta.directory {
                break;
            }
            match meta.bundle {
                Some(_) => bundles += 1,
                None => alone.push(meta.name),
            }
        }
        assert_eq!(bundles, 1);
        assert_eq!(
            alone,
            (0..5).map(|i| format!("t/a-large-{i}")).collect::<Vec<_>>()
        );
        let first_bundle = q.bundles.values().next().unwrap();
        assert_eq!(first_bundle.members.len(), 20);
        let large: Vec<bool> = (0..entries.len())
            .filter(|&k| entries[k].name.as_ref().unwrap().contains("large"))
            .map(|k| q.alone[k])
            .collect();
        assert_eq!(large, [true; 5]);
    }

    /// With the bundles in flight at their most, the files left wait, and so does every
    /// directory listed after them (it may hold them): a directory's verdict comes after its
    /// files'.
    #[test]
    fn no_directory_goes_before_files_left_waiting_for_a_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("t");
        for d in ["a", "b", "c", "d"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
            for i in 0..20 {
                std::fs::write(root.join(format!("{d}/f{i:02}")), vec![3u8; 60_000]).unwrap();
            }
        }
        let entries = super::super::tree::expand(&[root], "").0;
        let to = std::net::Ipv4Addr::new(198, 18, 0, 2).into();
        let mut q = Queue::new(&entries, to, Transport::Ip(253), false);
        q.bundle_chunk_size = Some(1400);
        for _ in 0..BUNDLES_IN_FLIGHT {
            match q.next(&[]) {
                NextJob::Start { meta, .. } => assert!(meta.bundle.is_some(), "{}", meta.name),
                _ => panic!("a bundle"),
            }
        }
        match q.next(&[]) {
            NextJob::Wait => {}
            NextJob::Start { meta, .. } => panic!("{} started before its files", meta.name),
            NextJob::Done => panic!("done with files left"),
        }
    }
}
