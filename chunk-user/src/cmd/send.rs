//! `chunk send FILE... --to HOST`: drives the sender core over a raw socket, one file after the
//! other, and succeeds only when the receiver confirmed every file's hash.

use std::{
    fs::File,
    io::{IsTerminal, Read},
    net::Ipv4Addr,
    os::{
        fd::AsRawFd,
        unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_common::wire::{self, Packet, Repr};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::{
    auth::{self, Key},
    net::{
        raw::RawSocket,
        tx::{self, BatchSender},
    },
    proto::{ChunkSource, FileMeta, SendError, Sender, SenderConfig, SenderStats},
};

#[derive(clap::Args)]
pub struct SendArgs {
    /// Files to send (each arrives under its file name in the receiver's directory).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The receiving host (where `chunk recv` runs).
    #[arg(long)]
    pub to: Ipv4Addr,
    /// Most chunks unacknowledged at once; 1 is the original tool's stop-and-wait.
    #[arg(long, default_value_t = 1 << 16)]
    pub window: u32,
    /// Cap on the sending rate in bits per second (k, M, G suffixes: `--rate 200M`). Without it
    /// the congestion controller finds the rate.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// Payload bytes per chunk packet. Default: the route's MTU minus 40 (IPv4 and chunk
    /// headers), at most the receiver's limit of 4060.
    #[arg(long)]
    pub chunk_size: Option<u32>,
    /// The IP protocol number chunk packets use.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL)]
    pub protocol: u8,
    /// Give up on a file after this many seconds without an answer from the receiver.
    #[arg(long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    /// Authenticate every packet with this pre-shared key (the receiver's `--psk-file`).
    #[arg(long, value_name = "FILE")]
    pub psk_file: Option<PathBuf>,
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

/// One file's result.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    pub name: String,
    pub size: u64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
    /// File bytes per second over the whole transfer (offer to verdict), in MB/s (10^6).
    pub goodput_mb_s: f64,
    pub chunks: u32,
    pub chunks_sent: u64,
    pub retransmitted: u64,
    /// Chunks the receiver already had (resume).
    pub resumed: u64,
    pub hash: String,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// The MTU of the route to `to`, as the kernel knows it (interface MTU, or a smaller path MTU
/// learnt from ICMP).
fn route_mtu(to: Ipv4Addr) -> std::io::Result<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.connect(&std::net::SocketAddrV4::new(to, 9).into())?;
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized option into an int.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(mtu as u32)
}

/// Bytes a chunk packet carries besides its chunk: the IPv4 header (without options), the chunk
/// header, and with a key the authentication trailer.
fn packet_overhead(keyed: bool) -> u32 {
    let trailer = if keyed { auth::TRAILER_LEN as u32 } else { 0 };
    20 + wire::HEADER_LEN as u32 + trailer
}

/// What [`packet_overhead`] is made of, for messages.
fn overhead_words(keyed: bool) -> &'static str {
    if keyed {
        "20 for IPv4, 20 for the chunk header, 24 for the authentication trailer"
    } else {
        "20 for IPv4, 20 for the chunk header"
    }
}

/// The chunk size to use: the user's, checked against the route's MTU and the receiver's payload
/// limit, or the largest the route carries unfragmented.
fn chunk_size(args: &SendArgs) -> Result<u32> {
    let keyed = args.psk_file.is_some();
    // The receiver's default payload limit counts the trailer too (docs/PROTOCOL.md).
    let trailer = if keyed { auth::TRAILER_LEN as u32 } else { 0 };
    let max = chunk_common::ring::MAX_PAYLOAD_LEN as u32 - trailer;
    let overhead = packet_overhead(keyed);
    let mtu = route_mtu(args.to);
    match (args.chunk_size, mtu) {
        (Some(n), _) if n == 0 || n > max => {
            bail!("--chunk-size must be 1..={max} (the receiver's default payload limit)")
        }
        (Some(n), Ok(mtu)) if n + overhead > mtu => bail!(
            "--chunk-size {n} does not fit the MTU of {mtu} on the route to {}: at most {} \
             (the MTU minus {})",
            args.to,
            mtu.saturating_sub(overhead),
            overhead_words(keyed)
        ),
        (Some(n), _) => Ok(n),
        (None, Ok(mtu)) if mtu > overhead + 64 => Ok((mtu - overhead).min(max)),
        (None, Ok(mtu)) => bail!("the route to {} has an MTU of {mtu}: too small", args.to),
        (None, Err(e)) => Err(anyhow::Error::new(e).context(format!("no route to {}", args.to))),
    }
}

pub fn run(args: SendArgs) -> Result<()> {
    let chunk_size = chunk_size(&args)?;
    if args.window == 0 {
        bail!("--window must be at least 1");
    }
    let sock = RawSocket::new(args.protocol)
        .context("opening a raw IP socket (chunk send needs root or CAP_NET_RAW)")?;
    for (opt, size) in [(libc::SO_SNDBUF, 4 << 20), (libc::SO_RCVBUF, 4 << 20)] {
        set_sockopt(sock.socket().as_raw_fd(), opt, size);
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    let mut tx = BatchSender::new(sock, wire::HEADER_LEN + chunk_size as usize);
    let cfg = SenderConfig {
        chunk_size,
        window: args.window,
        max_rate: args.rate,
        give_up: Duration::from_secs_f64(args.timeout.max(0.1)),
        ..SenderConfig::default()
    };
    let key = match &args.psk_file {
        Some(p) => Some(Key::from_file(p).context("reading the pre-shared key")?),
        None => None,
    };
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let mut reports = Vec::new();
    for path in &args.files {
        if INTERRUPTED.load(Ordering::Relaxed) {
            break;
        }
        let report = match prepare(path) {
            Ok((file, meta)) => send_file(
                &mut tx,
                &args,
                &cfg,
                key.as_ref(),
                path,
                file,
                meta,
                show_progress,
            ),
            Err(e) => failed_report(path, format!("{e:#}")),
        };
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
    let skipped = args.files.len() - reports.len();
    if args.json {
        println!(
            "{}",
            serde_json::json!({"to": args.to.to_string(), "files": reports,
                "failed": failed, "skipped": skipped})
        );
    } else if !args.quiet {
        for r in reports.iter().filter(|r| r.ok) {
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
    }
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted; sending the same files again resumes where this run stopped");
    }
    if failed > 0 {
        bail!("{failed} of {} files failed", args.files.len());
    }
    Ok(())
}

fn set_sockopt(fd: i32, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: a plain int option on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn failed_report(path: &Path, error: String) -> FileReport {
    FileReport {
        file: path.display().to_string(),
        name: String::new(),
        size: 0,
        ok: false,
        error: Some(error),
        seconds: 0.0,
        goodput_mb_s: 0.0,
        chunks: 0,
        chunks_sent: 0,
        retransmitted: 0,
        resumed: 0,
        hash: String::new(),
    }
}

/// Opens the file and describes it for the offer (hashing it whole first).
fn prepare(path: &Path) -> Result<(File, FileMeta)> {
    // O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer; what is not a
    // regular file is refused right after, before anything is read from it.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the file name is not UTF-8", path.display()))?
        .to_owned();
    let mut hasher = blake3::Hasher::new();
    // Large reads hashed on every core: the whole file is hashed before the offer goes out,
    // so this is time the transfer waits for.
    let mut buf = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        if n >= 1 << 20 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        size += n as u64;
    }
    if size != md.len() {
        bail!("{} changed while it was being hashed", path.display());
    }
    let meta = FileMeta {
        name,
        size,
        mode: md.mode() & 0o777,
        mtime: md.mtime(),
        hash: *hasher.finalize().as_bytes(),
    };
    Ok((file, meta))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Chunks read from the file at their offsets.
struct FileSource {
    file: File,
    chunk_size: u64,
}

impl ChunkSource for FileSource {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = index as u64 * self.chunk_size;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

#[allow(clippy::too_many_arguments)]
fn send_file(
    tx: &mut BatchSender,
    args: &SendArgs,
    cfg: &SenderConfig,
    key: Option<&Key>,
    path: &Path,
    file: File,
    meta: FileMeta,
    show_progress: bool,
) -> FileReport {
    let mut report = failed_report(path, String::new());
    report.name = meta.name.clone();
    report.size = meta.size;
    report.hash = meta.hash.iter().map(|b| format!("{b:02x}")).collect();
    let start = Instant::now();
    let result = drive(tx, args, cfg, key, file, meta, show_progress, start);
    report.seconds = start.elapsed().as_secs_f64();
    let (stats, outcome) = match result {
        Ok(x) => x,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    tracing::debug!(file = %report.file, ?stats, "sender core at the end");
    report.chunks = stats.chunk_count;
    report.chunks_sent = stats.chunks_sent;
    report.retransmitted = stats.chunks_retransmitted;
    report.resumed = stats.chunks_resumed;
    match outcome {
        Ok(()) => {
            report.ok = true;
            report.error = None;
            report.goodput_mb_s = report.size as f64 / report.seconds.max(1e-9) / 1e6;
        }
        Err(e) => report.error = Some(explain(&e, args.to, &stats)),
    }
    report
}

/// The sender core's error, said for a user.
fn explain(e: &SendError, to: Ipv4Addr, stats: &SenderStats) -> String {
    match e {
        SendError::Timeout(t) if !stats.offer_accepted => format!(
            "no answer from {to} for {:.0} s: is `chunk recv` running there, and does IP protocol \
             traffic reach it (firewalls often drop unknown protocols)?",
            t.as_secs_f64()
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

#[allow(clippy::too_many_arguments)]
fn drive(
    tx: &mut BatchSender,
    args: &SendArgs,
    cfg: &SenderConfig,
    key: Option<&Key>,
    file: File,
    meta: FileMeta,
    show_progress: bool,
    start: Instant,
) -> Result<(SenderStats, Result<(), SendError>)> {
    let size = meta.size;
    let to = args.to;
    let tid: u32 = rand::random();
    let mut sender = Sender::new(tid, meta, cfg.clone(), start)?;
    tx.ensure_packet_len(sender.max_packet_len() + auth::TRAILER_LEN);
    let mut opened = vec![0u8; 1 << 16];
    let mut source = FileSource {
        file,
        chunk_size: cfg.chunk_size as u64,
    };
    let fd = tx.socket().socket().as_raw_fd();
    let mut rbuf = vec![0u8; 65536];
    let bar = show_progress.then(|| progress_bar(&sender.meta().name, size));
    let mut last_draw = start;
    let mut interrupted = false;
    loop {
        let now = Instant::now();
        if !interrupted && INTERRUPTED.load(Ordering::Relaxed) {
            interrupted = true;
            sender.abort();
        }
        // Everything the receiver said.
        while let Some(n) = tx::recv_nonblocking(fd, &mut rbuf)? {
            let Some((src, body)) = tx::ipv4_payload(&rbuf[..n]) else {
                continue;
            };
            if src != to {
                continue;
            }
            // CRC first (as the kernel does for the receiver), then the tag.
            if Packet::new_checked(body)
                .and_then(|p| p.validate())
                .is_err()
            {
                continue;
            }
            let Ok((n, _)) = auth::open_with(key, body, &mut opened) else {
                continue;
            };
            if let Ok(repr) = Repr::parse_crc_checked(&opened[..n]) {
                sender.handle_packet(&repr, now);
            }
        }
        if sender.poll_timeout().is_some_and(|t| t <= now) {
            sender.handle_timeout(now);
        }
        // Everything the core wants sent now, a batch at a time.
        let mut batch_full = false;
        while let Some(buf) = tx.next_buf() {
            let Some(n) = sender.poll_transmit(now, &mut source, buf) else {
                break;
            };
            let n = seal(key, buf, n);
            tx.commit(n, to);
            if tx.is_full() {
                batch_full = true;
                break;
            }
        }
        if let Err(e) = tx.flush() {
            // Tell the receiver, so that it closes the transfer now (and keeps no part file)
            // rather than at its idle timeout. The abort is small enough for any path.
            tx.discard();
            sender.abort();
            while let Some(buf) = tx.next_buf() {
                let Some(n) = sender.poll_transmit(now, &mut source, buf) else {
                    break;
                };
                let n = seal(key, buf, n);
                tx.commit(n, to);
            }
            let _ = tx.flush();
            if e.raw_os_error() == Some(libc::EMSGSIZE) {
                let keyed = key.is_some();
                let packet = cfg.chunk_size + packet_overhead(keyed);
                let limit = match route_mtu(to) {
                    Ok(mtu) => format!(
                        "at most {} on this path (its MTU of {mtu} minus {})",
                        mtu.saturating_sub(packet_overhead(keyed)),
                        overhead_words(keyed)
                    ),
                    Err(_) => format!("the path MTU minus {}", overhead_words(keyed)),
                };
                bail!(
                    "chunk packets of {packet} bytes do not fit the path MTU to {to}: use a \
                     smaller --chunk-size ({limit})"
                );
            }
            return Err(anyhow::Error::new(e).context(format!("sending to {to}")));
        }
        if let Some(bar) = &bar {
            if now.duration_since(last_draw) >= Duration::from_millis(100) {
                last_draw = now;
                update_bar(bar, &sender, cfg.chunk_size as u64, size);
            }
        }
        if let Some(outcome) = sender.outcome() {
            // A final abort may still be due.
            while let Some(buf) = tx.next_buf() {
                let Some(n) = sender.poll_transmit(now, &mut source, buf) else {
                    break;
                };
                let n = seal(key, buf, n);
                tx.commit(n, to);
            }
            let _ = tx.flush();
            if let Some(bar) = &bar {
                update_bar(bar, &sender, cfg.chunk_size as u64, size);
                bar.finish_and_clear();
            }
            return Ok((sender.stats(), outcome));
        }
        if !batch_full {
            let timeout = sender
                .poll_timeout()
                .map(|t| t.saturating_duration_since(Instant::now()));
            tx::wait_readable(fd, timeout)?;
        }
    }
}

/// Adds the authentication trailer when a key is set.
fn seal(key: Option<&Key>, buf: &mut [u8], n: usize) -> usize {
    match key {
        Some(k) => k
            .seal(buf, n, auth::now_ms())
            .expect("packet buffers have room for the trailer"),
        None => n,
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
