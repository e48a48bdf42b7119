//! The WAN cases' tools, one driver each, on a [`Bridged`] link: chunk (its receiver on XDP),
//! TCP with a congestion control chosen per socket, and UFTP given the link's rate. Each
//! fills in what it knows of a [`WanRun`]; the caller checks the file and reads the bridge.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::{Bridged, Daemon, ReadyRecv, spawn_recv};
use serde::Serialize;
use serde_json::Value;

use super::WanRun;
use crate::bench::tools::output_within;

/// A tool of the WAN cases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum WanTool {
    /// chunk, the receiver on XDP: a first transfer, from an empty path cache (cold).
    ChunkXdp,
    /// chunk again on the same link, starting from the path cache the cold transfer of the same
    /// case left (or, without one, a warm-up transfer of its own first): a warm start.
    ChunkXdpWarm,
    /// TCP CUBIC (most distributions' default), chosen per socket with `TCP_CONGESTION`.
    TcpCubic,
    /// TCP BBR (this machine's default), chosen per socket with `TCP_CONGESTION`.
    TcpBbr,
    /// UFTP by unicast, given the link's rate (`-R`), as its users would.
    Uftp,
}

impl WanTool {
    pub fn name(self) -> &'static str {
        match self {
            WanTool::ChunkXdp => "chunk-xdp",
            WanTool::ChunkXdpWarm => "chunk-xdp-warm",
            WanTool::TcpCubic => "tcp-cubic",
            WanTool::TcpBbr => "tcp-bbr",
            WanTool::Uftp => "uftp",
        }
    }
}

impl Serialize for WanTool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What a driver needs for one transfer.
pub struct Job<'a> {
    pub net: &'a Bridged,
    pub bin: &'a str,
    pub file: &'a Path,
    pub out_dir: &'a Path,
    /// The link's rate, bits per second (UFTP is told it).
    pub rate_bps: u64,
    /// How long the transfer may take: TCP and UFTP are then measured by what arrived.
    pub cut_off: Duration,
    /// chunk's path cache (`CHUNK_PATH_CACHE`); `None`: off, as everywhere in the harness.
    pub path_cache: Option<&'a Path>,
}

impl Job<'_> {
    fn dest(&self) -> std::path::PathBuf {
        self.out_dir
            .join(self.file.file_name().expect("a file name"))
    }
}

/// Moves the file with `tool`; `started` is called when the sender starts (the clock's zero).
pub fn run(tool: WanTool, job: &Job, run: &mut WanRun, started: &mut dyn FnMut()) -> Result<()> {
    match tool {
        WanTool::ChunkXdp | WanTool::ChunkXdpWarm => chunk(job, run, started),
        WanTool::TcpCubic => tcp(job, "cubic", run, started),
        WanTool::TcpBbr => tcp(job, "bbr", run, started),
        WanTool::Uftp => uftp(job, run, started),
    }
}

/// `chunk recv --exit-after 1` on XDP, then `chunk send --json`, which returns once the
/// receiver confirmed the file's hash.
fn chunk(job: &Job, run: &mut WanRun, started: &mut dyn FnMut()) -> Result<()> {
    let receiver = chunk_receiver(job, 1)?;
    let sent = chunk_sender(job, run, started);
    let status = receiver.daemon.wait(Duration::from_secs(20));
    sent?;
    let status = status?;
    if !status.success() {
        bail!("chunk recv exited with {status}");
    }
    Ok(())
}

/// `chunk recv` on XDP into `job.out_dir`, exiting after `files` files.
pub fn chunk_receiver(job: &Job, files: u32) -> Result<ReadyRecv> {
    let net = job.net;
    spawn_recv(
        net.receiver.command(job.bin),
        net.receiver_if,
        job.out_dir,
        &["--exit-after", &files.to_string()],
    )
}

/// `chunk send --json` of `job.file`, which returns once the receiver confirmed its hash.
pub fn chunk_sender(job: &Job, run: &mut WanRun, started: &mut dyn FnMut()) -> Result<()> {
    let net = job.net;
    let mut sc = crate::bench::tools::chunk::send_command(
        net.sender.command(job.bin),
        net.receiver_addr.into(),
        job.file,
        30,
    );
    if let Some(cache) = job.path_cache {
        sc.env("CHUNK_PATH_CACHE", cache);
    }
    // A debugging aid: the sender's own account of each run (its controller's start among it)
    // appended to this file.
    let log = std::env::var_os("CHUNK_BENCH_SENDER_LOG");
    if log.is_some() {
        sc.env("RUST_LOG", "chunk::cmd::send=debug");
    }
    started();
    let t0 = Instant::now();
    let out = output_within(sc, job.cut_off)?;
    run.seconds = t0.elapsed().as_secs_f64();
    if let Some(path) = log {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        f.write_all(&out.stderr)?;
    }
    if !out.status.success() {
        bail!(
            "chunk send failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("chunk send's JSON")?;
    let f = &v["files"][0];
    run.retransmissions = f["retransmitted"].as_u64();
    run.rtos = f["rtos"].as_u64();
    run.srtt_ms = f["srtt_ms"].as_f64();
    run.chunks = f["chunks"].as_u64();
    run.resume = match &v["path"] {
        Value::Null => None,
        p => Some(match (p["resume"].as_str(), p["first_round"].as_str()) {
            (Some(how), _) => how.to_owned(),
            (None, Some(how)) => format!("first round {how}"),
            (None, None) => "none".to_owned(),
        }),
    };
    Ok(())
}

/// TCP with `cc` chosen per socket ([`crate::bench::tcp`]), measured by the bytes that
/// arrived if cut off.
fn tcp(job: &Job, cc: &str, run: &mut WanRun, started: &mut dyn FnMut()) -> Result<()> {
    let net = job.net;
    let t = crate::bench::tcp::transfer(
        &net.sender,
        &net.receiver,
        net.receiver_addr,
        cc,
        job.file,
        &job.dest(),
        job.cut_off,
        started,
    )?;
    run.seconds = t.seconds;
    run.retransmissions = t.retransmissions;
    run.partial_bytes = t.partial_bytes;
    Ok(())
}

/// UFTP's block for a 1500-byte MTU (as the LAN cases' driver picks it).
const UFTP_BLOCK: u64 = 1400;

/// `uftpd` on the receiver; `uftp` to it by unicast at the link's rate (`-R`, in Kbit/s).
fn uftp(job: &Job, run: &mut WanRun, started: &mut dyn FnMut()) -> Result<()> {
    let net = job.net;
    let mut rc = net.receiver.command("uftpd");
    // A group in 239.255.0.0/16 to listen on, not uftpd's default 230.4.4.1 (the data is
    // unicast).
    rc.args([
        "-d",
        "-x",
        "0",
        "-M",
        crate::bench::tools::uftp::UFTPD_GROUP,
        "-D",
    ])
    .arg(job.out_dir);
    let receiver = Daemon::spawn(rc, "uftpd")?;
    crate::bench::tools::wait_listening(&net.receiver, "1044")?;
    let mut sc = net.sender.command("uftp");
    sc.args([
        "-M",
        &net.receiver_addr.to_string(),
        "-R",
        &(job.rate_bps / 1000).to_string(),
        "-Y",
        "none",
        "-x",
        "0",
        "-b",
        &UFTP_BLOCK.to_string(),
    ])
    .arg(job.file);
    started();
    let t0 = Instant::now();
    let out = output_within(sc, job.cut_off);
    run.seconds = t0.elapsed().as_secs_f64();
    crate::bench::tools::term_children(receiver.id());
    receiver.signal(libc::SIGTERM);
    let _ = receiver.wait(Duration::from_secs(10));
    let out = out?;
    if !out.status.success() {
        bail!(
            "uftp failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // UFTP does not count its retransmissions: the data packets the bridge took in beyond
    // the file's blocks stand in for them (a handful are its announcements and status).
    let size = std::fs::metadata(job.file)?.len();
    let d = &net.stats.dirs[chunk_tests::impair::TO_RECEIVER];
    let seen = [&d.delivered, &d.lost, &d.queue_drops]
        .iter()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
        .sum::<u64>();
    run.retransmissions = Some(seen.saturating_sub(size.div_ceil(UFTP_BLOCK)));
    Ok(())
}
