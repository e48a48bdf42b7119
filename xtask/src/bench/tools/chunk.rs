//! chunk: `chunk recv --exit-after 1` (XDP, or `--mode socket`) started with the harness's
//! launcher, then `chunk send`, which exits only once the receiver confirmed the file's hash.
//! Retransmissions are the sender's own count; the junk dropped is the receiver's counters.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use chunk_tests::{ReadyRecv, spawn_recv};
use serde_json::Value;

use super::{Transfer, output_within};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};

/// Which receive path `chunk recv` uses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Socket,
}

/// Appends `send --json --quiet --to TO --timeout SECS FILE` to `chunk` (a command that runs
/// the chunk binary in the sender's namespace, possibly under `/usr/bin/time`).
pub fn send_command(
    mut chunk: std::process::Command,
    to: std::net::Ipv4Addr,
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

pub fn run(t: &Transfer, mode: Mode, run: &mut Run) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let mut extra = vec!["--exit-after", "1"];
    if mode == Mode::Socket {
        extra.extend(["--mode", "socket"]);
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
    let sc = send_command(
        timed(&net.sender, &times.send, t.bin),
        net.receiver_addr,
        t.file,
        60,
    );
    let mark = Mark::start(t.net);
    let out = output_within(sc, t.timeout)?;
    // chunk send exits only once the receiver confirmed the file's hash.
    mark.stop(t.net, run);
    let status = receiver.wait(Duration::from_secs(20))?;
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
