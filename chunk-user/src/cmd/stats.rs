//! `chunk stats --iface IF`: what a running receiver on IF is doing, seen from outside. The
//! kernel's counters are read live from the XDP program attached to IF (found through the
//! kernel, so this works from any shell in the same network namespace); the receiver's own
//! figures and limits come from its state file in /run/chunk, refreshed every second.

use std::{
    collections::BTreeMap,
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use chunk_common::counters::Counter;
use serde::Serialize;

use crate::{
    net::{paths, rx::Counters, xdp},
    proto::ReceiverStats,
    report::{IntakeCounts, Limits, StateFile},
};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The interface the receiver runs on.
    #[arg(long)]
    pub iface: String,
    /// Print JSON (one object; with --watch, one line per update).
    #[arg(long)]
    pub json: bool,
    /// Keep printing, with rates per second, until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between updates with --watch.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// With --watch: stop after this many updates.
    #[arg(long)]
    pub count: Option<u64>,
}

/// One look at the receiver.
struct Snapshot {
    at: Instant,
    counters: Counters,
    prog: Option<xdp::ProgInfo>,
    /// The receiver's state file, if a live receiver wrote one.
    state: Option<StateFile>,
    state_path: PathBuf,
}

fn snapshot(iface: &str) -> Result<Snapshot> {
    let state_path = paths::state_file(iface);
    let state = std::fs::read_to_string(&state_path)
        .ok()
        .and_then(|s| serde_json::from_str::<StateFile>(&s).ok())
        .filter(|st| pid_alive(st.pid));
    let kernel = xdp::attached_counters(iface)?;
    let (prog, counters) = match (kernel, &state) {
        (Some((info, c)), _) => (Some(info), c),
        (None, Some(st)) => (None, st.receive_path.counters),
        (None, None) => bail!(
            "no chunk receiver on {iface}: no chunk XDP program is attached to it and no live \
             receiver's state file is at {}",
            state_path.display()
        ),
    };
    Ok(Snapshot {
        at: Instant::now(),
        counters,
        prog,
        state,
        state_path,
    })
}

fn rates(prev: &Snapshot, cur: &Snapshot) -> BTreeMap<&'static str, f64> {
    let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    Counter::ALL
        .iter()
        .map(|&c| {
            let r = cur.counters.get(c).saturating_sub(prev.counters.get(c)) as f64 / dt;
            (c.name(), (r * 10.0).round() / 10.0)
        })
        .collect()
}

/// `chunk stats --json`: the kernel's view, and the receiver's own from its state file.
#[derive(Serialize)]
struct StatsReport<'a> {
    iface: &'a str,
    counters: Counters,
    prog: Option<xdp::ProgInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rates: Option<&'a BTreeMap<&'static str, f64>>,
    pid: Option<u32>,
    started_unix_ms: Option<u64>,
    mode: Option<&'a str>,
    pinned: Option<&'a str>,
    out: Option<&'a str>,
    limits: Option<&'a Limits>,
    transfers_open: Option<usize>,
    receiver: Option<&'a ReceiverStats>,
    #[serde(flatten)]
    intake: Option<&'a IntakeCounts>,
}

fn to_json(iface: &str, s: &Snapshot, rates: Option<&BTreeMap<&'static str, f64>>) -> String {
    let st = s.state.as_ref();
    let rs = st.and_then(|st| st.receiver.as_ref());
    let report = StatsReport {
        iface,
        counters: s.counters,
        prog: s.prog,
        rates,
        pid: st.map(|st| st.pid),
        started_unix_ms: st.map(|st| st.started_unix_ms),
        mode: st.map(|st| st.receive_path.mode.as_str()),
        pinned: st.and_then(|st| st.receive_path.pinned.as_deref()),
        out: rs.map(|r| r.out.as_str()),
        limits: rs.map(|r| &r.limits),
        transfers_open: rs.map(|r| r.transfers_open),
        receiver: rs.map(|r| &r.core),
        intake: rs.map(|r| &r.intake),
    };
    serde_json::to_string(&report).expect("plain data serializes")
}

fn human(iface: &str, s: &Snapshot, rates: Option<&BTreeMap<&'static str, f64>>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let st = s.state.as_ref();
    let mode = st.map_or("xdp", |st| st.receive_path.mode.as_str());
    let _ = write!(o, "chunk receiver on {iface}, {mode} mode");
    if let Some(st) = st {
        let up = crate::auth::now_ms().saturating_sub(st.started_unix_ms) / 1000;
        let _ = write!(o, ", pid {}, up {up} s", st.pid);
    }
    o.push('\n');
    if let Some(p) = &s.prog {
        let _ = writeln!(
            o,
            "XDP program id {}, counters map id {}, verifier processed {} instructions",
            p.prog_id,
            p.counters_map_id,
            p.verified_insns
                .map_or("an unknown number of".into(), |n| n.to_string())
        );
    }
    if let Some(dir) = st.and_then(|st| st.receive_path.pinned.as_deref()) {
        let _ = writeln!(o, "maps pinned under {dir}");
    }
    let _ = writeln!(
        o,
        "\n{:<15} {:>14}{}",
        "packets",
        "total",
        if rates.is_some() { "        per s" } else { "" }
    );
    for c in Counter::ALL {
        let _ = write!(o, "{:<15} {:>14}", c.name(), s.counters.get(c));
        if let Some(r) = rates {
            let _ = write!(o, " {:>12.0}", r[c.name()]);
        }
        o.push('\n');
    }
    let Some(rs) = st.and_then(|st| st.receiver.as_ref()) else {
        let _ = writeln!(
            o,
            "\n(no state file from a receiver at {}: only the kernel's counters are shown)",
            s.state_path.display()
        );
        return o;
    };
    let r = &rs.core;
    let _ = writeln!(
        o,
        "\ntransfers: {} open, {} finished, {} offers refused, {} idle-closed",
        rs.transfers_open, r.transfers_finished, r.offers_refused, r.transfers_idle
    );
    let _ = writeln!(
        o,
        "chunks: {} written, {} duplicates, {} for unknown transfers, {} malformed, {} over the state cap",
        r.chunks_written, r.duplicates, r.unknown_transfer, r.malformed, r.state_limited
    );
    let _ = writeln!(
        o,
        "refused in userspace: {} unauthenticated, {} stale offers, {} unparsable bodies",
        rs.intake.auth_rejected, rs.intake.stale_offers, rs.intake.unparsable
    );
    if rs.limits.encryption || rs.intake.sessions.handshakes > 0 {
        let s = &rs.intake.sessions;
        let _ = writeln!(
            o,
            "encryption: {} sessions open, {} opened, {} expired; handshakes {} refused, {} \
             failed, {} rate-limited; sealed packets {} failed authentication, {} replayed, {} \
             for no session; {} clear packets refused",
            rs.intake.sessions_open,
            s.handshakes,
            s.sessions_expired,
            s.handshakes_refused,
            s.handshakes_failed,
            s.handshakes_limited,
            s.seal_failures,
            s.replayed,
            s.unknown_session,
            s.clear_refused,
        );
    }
    let l = &rs.limits;
    let allow = if l.allow.is_empty() {
        "any source".to_string()
    } else {
        l.allow.join(", ")
    };
    let _ = writeln!(
        o,
        "limits: files up to {} bytes; {} transfers ({} per source); {} KiB of state per \
         transfer; idle after {} s; payload up to {} bytes; ring buffer {} bytes; allow {}; \
         pre-shared key {}; encryption {}; IPv4 and IPv6 straight over IP{}",
        l.max_size,
        l.max_transfers,
        l.max_per_source,
        l.max_state_kib,
        l.idle_timeout_s,
        l.max_payload,
        l.ring_bytes,
        allow,
        if l.psk { "required" } else { "not required" },
        match (l.encryption, l.require_encryption) {
            (true, true) => "required",
            (true, false) => "offered",
            _ => "off (no keys)",
        },
        match l.udp_port {
            Some(p) => format!(" and in UDP to port {p}"),
            None => String::new(),
        }
    );
    o
}

pub fn run(args: StatsArgs) -> Result<()> {
    if !args.watch {
        let s = snapshot(&args.iface)?;
        if args.json {
            println!("{}", to_json(&args.iface, &s, None));
        } else {
            print!("{}", human(&args.iface, &s, None));
        }
        return Ok(());
    }
    let interval = Duration::from_secs_f64(args.interval.max(0.05));
    let clear = !args.json && std::io::stdout().is_terminal();
    let mut prev = snapshot(&args.iface)?;
    let mut shown = 0u64;
    loop {
        std::thread::sleep(interval);
        let cur = snapshot(&args.iface)?;
        let r = rates(&prev, &cur);
        if args.json {
            println!("{}", to_json(&args.iface, &cur, Some(&r)));
        } else {
            if clear {
                print!("\x1b[2J\x1b[H");
            }
            println!("{}", human(&args.iface, &cur, Some(&r)));
        }
        prev = cur;
        shown += 1;
        if args.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
    }
}

/// Whether process `pid` is alive.
fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}
