//! `chunk stats --iface IF`: what a running receiver on IF is doing, seen from outside. The
//! kernel's counters are read live from the XDP program attached to IF (found through the
//! kernel, so this works from any shell in the same network namespace); the receiver's own
//! figures and limits come from its state file in /run/chunk, refreshed every second.

use std::{
    io::IsTerminal,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use chunk_common::counters::Counter;
use serde_json::{Value, json};

use crate::net::{
    place,
    xdp::{self, Counters},
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
    state: Option<Value>,
    state_path: PathBuf,
}

fn snapshot(iface: &str) -> Result<Snapshot> {
    let state_path = place::state_file(iface);
    let state = std::fs::read_to_string(&state_path)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .filter(|v| {
            v["pid"]
                .as_u64()
                .is_some_and(|pid| place::pid_alive(pid as u32))
        });
    let kernel = xdp::attached_counters(iface)?;
    let (prog, counters) = match (kernel, &state) {
        (Some((info, c)), _) => (Some(info), c),
        (None, Some(st)) => (None, counters_from_json(&st["receive_path"]["counters"])),
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

fn counters_from_json(v: &Value) -> Counters {
    let mut c = Counters::default();
    for k in Counter::ALL {
        c.0[k as usize] = v[k.name()].as_u64().unwrap_or(0);
    }
    c
}

fn rates(prev: &Snapshot, cur: &Snapshot) -> Vec<f64> {
    let dt = cur.at.duration_since(prev.at).as_secs_f64().max(1e-3);
    Counter::ALL
        .iter()
        .map(|&c| cur.counters.get(c).saturating_sub(prev.counters.get(c)) as f64 / dt)
        .collect()
}

fn to_json(iface: &str, s: &Snapshot, rates: Option<&[f64]>) -> Value {
    let mut v = json!({
        "iface": iface,
        "counters": s.counters.to_json(),
        "prog": s.prog,
    });
    if let Some(r) = rates {
        v["rates"] = Counter::ALL
            .iter()
            .zip(r)
            .map(|(c, r)| (c.name().to_string(), json!((r * 10.0).round() / 10.0)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(st) = &s.state {
        for k in [
            "pid",
            "started_unix_ms",
            "out",
            "limits",
            "transfers_open",
            "receiver",
            "packets",
            "unparsable",
            "auth_rejected",
            "stale_offers",
            "ack_send_errors",
        ] {
            v[k] = st[k].clone();
        }
        v["mode"] = st["receive_path"]["mode"].clone();
        v["pinned"] = st["receive_path"]["pinned"].clone();
    }
    v
}

fn human(iface: &str, s: &Snapshot, rates: Option<&[f64]>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let st = s.state.as_ref();
    let mode = st
        .and_then(|v| v["receive_path"]["mode"].as_str())
        .unwrap_or("xdp");
    let _ = write!(o, "chunk receiver on {iface}, {mode} mode");
    if let Some(pid) = st.and_then(|v| v["pid"].as_u64()) {
        let _ = write!(o, ", pid {pid}");
    }
    if let Some(started) = st.and_then(|v| v["started_unix_ms"].as_u64()) {
        let up = crate::auth::now_ms().saturating_sub(started) / 1000;
        let _ = write!(o, ", up {up} s");
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
    if let Some(dir) = st.and_then(|v| v["receive_path"]["pinned"].as_str()) {
        let _ = writeln!(o, "maps pinned under {dir}");
    }
    let _ = writeln!(
        o,
        "\n{:<12} {:>14}{}",
        "packets",
        "total",
        if rates.is_some() { "        per s" } else { "" }
    );
    for (i, c) in Counter::ALL.iter().enumerate() {
        let _ = write!(o, "{:<12} {:>14}", c.name(), s.counters.get(*c));
        if let Some(r) = rates {
            let _ = write!(o, " {:>12.0}", r[i]);
        }
        o.push('\n');
    }
    let Some(st) = st else {
        let _ = writeln!(
            o,
            "\n(no state file from the receiver at {}: only the kernel's counters are shown)",
            s.state_path.display()
        );
        return o;
    };
    let r = &st["receiver"];
    let _ = writeln!(
        o,
        "\ntransfers: {} open, {} finished, {} offers refused, {} idle-closed",
        st["transfers_open"], r["transfers_finished"], r["offers_refused"], r["transfers_idle"]
    );
    let _ = writeln!(
        o,
        "chunks: {} written, {} duplicates, {} for unknown transfers, {} malformed, {} over the state cap",
        r["chunks_written"],
        r["duplicates"],
        r["unknown_transfer"],
        r["malformed"],
        r["state_limited"]
    );
    let _ = writeln!(
        o,
        "refused in userspace: {} unauthenticated, {} stale offers, {} unparsable bodies",
        st["auth_rejected"], st["stale_offers"], st["unparsable"]
    );
    let l = &st["limits"];
    let allow = l["allow"]
        .as_array()
        .filter(|a| !a.is_empty())
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "any source".into());
    let _ = writeln!(
        o,
        "limits: files up to {} bytes; {} transfers ({} per source); {} KiB of state per \
         transfer; idle after {} s; payload up to {} bytes; ring buffer {} bytes; allow {}; \
         pre-shared key {}",
        l["max_size"],
        l["max_transfers"],
        l["max_per_source"],
        l["max_state_kib"],
        l["idle_timeout_s"],
        l["max_payload"],
        l["ring_bytes"],
        allow,
        if l["psk"].as_bool() == Some(true) {
            "required"
        } else {
            "not required"
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
