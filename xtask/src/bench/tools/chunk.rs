//! chunk: `chunk recv --exit-after 1` (XDP, or `--mode socket`) started with the harness's
//! launcher, then `chunk send`, which exits only once the receiver confirmed the file's hash.
//! Retransmissions are the sender's own count; the junk dropped is the receiver's counters.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chunk_tests::{ReadyRecv, spawn_recv};
use serde_json::Value;

use super::{Transfer, output_within, stop_timed};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};

/// Which receive path `chunk recv` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Socket,
}

/// How the packets travel: IPv4 or IPv6, straight over IP or in UDP (`--ipv6`, `--udp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transport {
    pub ipv6: bool,
    pub udp: bool,
}

/// The UDP port the bench's chunk receivers take UDP on.
pub const UDP_PORT: &str = "47000";

/// Appends `send --json --quiet --to TO --timeout SECS FILE` to `chunk` (a command that runs
/// the chunk binary in the sender's namespace, possibly under `/usr/bin/time`).
pub fn send_command(
    mut chunk: std::process::Command,
    to: std::net::IpAddr,
    file: &std::path::Path,
    timeout_s: u32,
) -> std::process::Command {
    chunk
        .args(["send", "--json", "--quiet", "--to"])
        .arg(to.to_string())
        .args(["--timeout", &timeout_s.to_string()])
        .arg(file);
    chunk
}

pub fn run(t: &Transfer, mode: Mode, transport: Transport, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let mut extra = vec!["--exit-after", "1"];
    if mode == Mode::Socket {
        extra.extend(["--mode", "socket"]);
    }
    if transport.udp {
        extra.extend(["--udp", UDP_PORT]);
    }
    let ReadyRecv {
        daemon: receiver,
        lines,
        ..
    } = spawn_recv(
        timed(&net.receiver, &times.recv, t.bin),
        net.receiver_if,
        t.out_dir,
        &extra,
    )?;
    let to = if transport.ipv6 {
        net.receiver_addr6.into()
    } else {
        net.receiver_addr.into()
    };
    let mut sc = send_command(timed(&net.sender, &times.send, t.bin), to, t.file, 60);
    if transport.udp {
        sc.args(["--udp", UDP_PORT]);
    }
    let mark = Mark::start(t.net);
    let out = match output_within(sc, t.timeout) {
        Ok(out) => out,
        Err(e) => {
            // The receiver waits for a transfer that will not come: stop it (not only the
            // `time` it runs under, which would leave it holding the link's XDP program).
            let _ = stop_timed(receiver, Duration::ZERO);
            return Err(e);
        }
    };
    // chunk send exits only once the receiver confirmed the file's hash.
    mark.stop(t.net, run);
    let status = stop_timed(receiver, Duration::from_secs(20))?;
    times.read_into(run);
    if !out.status.success() {
        bail!(
            "chunk send failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !status.success() {
        bail!("chunk recv exited with {status}");
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("chunk send's JSON")?;
    run.retransmissions = v["files"][0]["retransmitted"].as_u64();
    if let Some(exit) = lines
        .try_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["event"] == "exit")
    {
        let c = &exit["counters"];
        run.junk_dropped = Some(
            ["bad_checksum", "bad_magic", "ring_full"]
                .iter()
                .map(|k| c[k].as_u64().unwrap_or(0))
                .sum(),
        );
    }
    Ok(())
}
