//! The tools the benchmark compares, one driver each: start the receiver in the receiver's
//! namespace, start the clock, run the sender to completion, stop the clock, and fill in the
//! run's figures (CPU, RSS, retransmissions). The caller checks the received file.

pub(super) mod chunk;
pub(super) mod nc;
mod tcp;
mod uftp;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::Netns;
use serde::Serialize;

use super::{run::Run, topology::Net};

/// A tool that moves the file from the sender to the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Tool {
    /// chunk, the receiver on XDP.
    ChunkXdp,
    /// chunk, the receiver on a raw socket (`chunk recv --mode socket`).
    ChunkSocket,
    /// TCP: netcat (OpenBSD) on both sides, the namespace's congestion control.
    Nc,
    /// TCP CUBIC, chosen per socket (the bench's own sender and receiver).
    TcpCubic,
    /// TCP BBR, chosen per socket (the bench's own sender and receiver).
    TcpBbr,
    /// UFTP, multicast-capable file transfer over UDP (unicast here, no encryption).
    Uftp,
}

impl Tool {
    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Tool::ChunkXdp => "chunk-xdp",
            Tool::ChunkSocket => "chunk-socket",
            Tool::Nc => "nc",
            Tool::TcpCubic => "tcp-cubic",
            Tool::TcpBbr => "tcp-bbr",
            Tool::Uftp => "uftp",
        }
    }
}

impl Serialize for Tool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What a driver needs for one transfer.
pub struct Transfer<'a> {
    pub net: &'a Net,
    /// The chunk binary.
    pub bin: &'a str,
    /// Where the drivers keep `/usr/bin/time`'s files.
    pub work: &'a Path,
    /// The file to send.
    pub file: &'a Path,
    /// Where the receiver writes it.
    pub out_dir: &'a Path,
    pub mtu: u32,
    /// How long the sender may take.
    pub timeout: Duration,
}

/// Moves the file with `tool`, filling in `run`'s figures (also those it has when it fails).
pub fn run(tool: Tool, t: &Transfer, run: &mut Run) -> Result<()> {
    match tool {
        Tool::ChunkXdp => chunk::run(t, chunk::Mode::Xdp, run),
        Tool::ChunkSocket => chunk::run(t, chunk::Mode::Socket, run),
        Tool::Nc => nc::run(t, run),
        Tool::TcpCubic => tcp::run(t, "cubic", run),
        Tool::TcpBbr => tcp::run(t, "bbr", run),
        Tool::Uftp => uftp::run(t, run),
    }
}

/// Sends SIGTERM to the children of `pid` (the program `/usr/bin/time` runs), so that time
/// itself lives to write its figures.
pub(super) fn term_children(pid: u32) {
    let _ = Command::new("pkill")
        .args(["-TERM", "-P", &pid.to_string()])
        .status();
}

/// Waits until something listens on `port` (TCP or UDP) in `ns`.
pub(super) fn wait_listening(ns: &Netns, port: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns.exec("ss", &["-lntuH"]).unwrap_or_default();
        if out
            .split_whitespace()
            .any(|w| w.ends_with(&format!(":{port}")))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port}")
}

/// Runs `cmd` to completion, killing it after `limit`.
pub(super) fn output_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            term_children(pid);
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("timeout after {} s", limit.as_secs())
        }
    }
}
