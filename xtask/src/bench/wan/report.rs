//! The WAN results: markdown tables (goodput by case and tool, every run's details, the
//! simulator next to the real run, the sharing pairs), the goals met or not, and JSON.

use std::fmt::Write;

use serde::Serialize;

use super::{ShareRun, WanArgs, WanCase, WanRun, WanTool};
use crate::bench::machine::Machine;

pub struct Findings<'a> {
    pub args: &'a WanArgs,
    pub machine: &'a Machine,
    pub runs: &'a [WanRun],
    pub shares: &'a [ShareRun],
    /// What the bridge forwarded with no rate limit, Mbit/s.
    pub ceiling_mbit: Option<f64>,
    pub minutes: f64,
}

impl Findings<'_> {
    fn get(&self, case: &WanCase, tool: WanTool) -> Option<&WanRun> {
        self.runs
            .iter()
            .find(|r| r.case == *case && r.tool == tool && r.outcome.is_measured())
    }

    fn cases(&self) -> Vec<WanCase> {
        let mut c: Vec<WanCase> = self.runs.iter().map(|r| r.case).collect();
        c.dedup();
        c
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.1} %", x * 100.0))
}

/// One cell of the goodput table: whole (steady), "cut off" or the failure.
fn cell(f: &Findings, case: &WanCase, tool: WanTool) -> String {
    match f.runs.iter().find(|r| r.case == *case && r.tool == tool) {
        None => "–".into(),
        Some(r) if !r.outcome.is_measured() => "failed".into(),
        Some(r) => format!(
            "{} ({}){}",
            pct(r.goodput_share),
            pct(r.steady_share),
            if r.partial_bytes.is_some() {
                " cut"
            } else {
                ""
            }
        ),
    }
}

/// The goals of the WAN issue, each with what was measured and whether it is met (None: not
/// measured in this run).
pub fn goals(f: &Findings) -> Vec<(String, Option<bool>, String)> {
    let mut g = Vec::new();
    let case = |rtt_ms, loss_pct| WanCase {
        rtt_ms,
        loss_pct,
        burst: false,
    };
    let share = |c: &WanCase, t| f.get(c, t).and_then(|r| r.goodput_share);
    let c = case(100, 1);
    let chunk = f.get(&c, WanTool::ChunkXdp);
    g.push((
        "100 ms, 1 %: chunk ≥ 90 % of the link in steady state, ≥ 80 % over the whole file".into(),
        chunk
            .map(|r| r.steady_share.unwrap_or(0.0) >= 0.9 && r.goodput_share.unwrap_or(0.0) >= 0.8),
        format!(
            "steady {}, whole {}",
            pct(chunk.and_then(|r| r.steady_share)),
            pct(chunk.and_then(|r| r.goodput_share))
        ),
    ));
    for (tool, want) in [
        (WanTool::TcpCubic, 5.0),
        (WanTool::TcpBbr, 1.0),
        (WanTool::Uftp, 1.5),
    ] {
        let ratio = share(&c, WanTool::ChunkXdp)
            .zip(share(&c, tool))
            .map(|(a, b)| a / b.max(1e-9));
        g.push((
            format!("100 ms, 1 %: chunk ≥ {want} × {}", tool.name()),
            ratio.map(|r| r >= want),
            ratio.map_or("–".into(), |r| format!("{r:.2} ×")),
        ));
    }
    // The goals that are chunk's alone, for its first transfer to a receiver (cold: an empty
    // path cache) and, where measured, its next one (warm: from the estimate the first left).
    for tool in [WanTool::ChunkXdp, WanTool::ChunkXdpWarm] {
        if !f.runs.iter().any(|r| r.tool == tool) {
            continue;
        }
        chunk_goals(f, tool, &mut g);
    }
    for s in f.shares {
        let (goal, met) = match s.pair {
            super::Pair::TwoChunk => (
                "two chunk flows each get 40–60 %",
                s.shares
                    .map(|[a, b]| (0.4..=0.6).contains(&a) && (0.4..=0.6).contains(&b)),
            ),
            _ => (
                if matches!(s.pair, super::Pair::WithCubic) {
                    "next to chunk, TCP CUBIC keeps ≥ 25 %"
                } else {
                    "next to chunk, TCP BBR keeps ≥ 25 %"
                },
                s.shares.map(|[_, t]| t >= 0.25),
            ),
        };
        g.push((
            goal.into(),
            met,
            s.shares.map_or("failed".into(), |[a, b]| {
                format!("{:.0} % / {:.0} %", a * 100.0, b * 100.0)
            }),
        ));
    }
    let diffs: Vec<f64> = f
        .runs
        .iter()
        .filter(|r| r.outcome.is_measured())
        .filter_map(|r| Some((r.goodput_share? - r.sim.as_ref()?.goodput_share).abs()))
        .collect();
    let worst_diff = diffs.iter().copied().fold(0.0, f64::max);
    g.push((
        "simulator and real run within 10 % of the link rate (every case)".into(),
        (!diffs.is_empty()).then_some(worst_diff <= 0.1),
        if diffs.is_empty() {
            "–".into()
        } else {
            format!("worst {:.1} points", worst_diff * 100.0)
        },
    ));
    g
}

/// The goals about chunk alone, for `tool` (chunk-xdp: cold; chunk-xdp-warm: warm).
fn chunk_goals(f: &Findings, tool: WanTool, g: &mut Vec<(String, Option<bool>, String)>) {
    let case = |rtt_ms, loss_pct| WanCase {
        rtt_ms,
        loss_pct,
        burst: false,
    };
    let share = |c: &WanCase| f.get(c, tool).and_then(|r| r.goodput_share);
    let name = tool.name();
    if tool == WanTool::ChunkXdpWarm {
        let c = case(100, 1);
        let r = f.get(&c, tool);
        g.push((
            format!("{name}: 100 ms, 1 %: ≥ 90 % of the link in steady state, ≥ 80 % over the whole file"),
            r.map(|r| r.steady_share.unwrap_or(0.0) >= 0.9 && r.goodput_share.unwrap_or(0.0) >= 0.8),
            format!(
                "steady {}, whole {}",
                pct(r.and_then(|r| r.steady_share)),
                pct(r.and_then(|r| r.goodput_share))
            ),
        ));
    }
    let c5 = case(100, 5);
    g.push((
        format!("{name}: 100 ms, 5 %: ≥ 85 % of the link"),
        share(&c5).map(|s| s >= 0.85),
        pct(share(&c5)),
    ));
    let long: Vec<&WanRun> = f
        .runs
        .iter()
        .filter(|r| r.tool == tool && r.case.rtt_ms >= 300 && !r.case.burst)
        .collect();
    let worst = long
        .iter()
        .map(|r| {
            if r.outcome.is_measured() {
                r.goodput_share.unwrap_or(0.0)
            } else {
                0.0
            }
        })
        .fold(f64::INFINITY, f64::min);
    g.push((
        format!("{name}: 300 and 600 ms, 0–5 %: ≥ 70 % of the link over the whole file"),
        (!long.is_empty()).then_some(worst >= 0.7),
        if long.is_empty() {
            "–".into()
        } else {
            format!("worst {}", pct(Some(worst)))
        },
    ));
    let retx: Vec<f64> = long.iter().filter_map(|r| r.retx_per_lost()).collect();
    let worst_retx = retx.iter().copied().fold(0.0, f64::max);
    g.push((
        format!("{name}: 300 and 600 ms: retransmissions per lost packet ≤ 1.1"),
        (!retx.is_empty()).then_some(worst_retx <= 1.1),
        if retx.is_empty() {
            "–".into()
        } else {
            format!("worst {worst_retx:.2}")
        },
    ));
    let t90: Vec<Option<f64>> = f
        .runs
        .iter()
        .filter(|r| r.tool == tool && r.outcome.is_measured())
        .map(|r| r.t90_rtts)
        .collect();
    let worst_t90 = t90
        .iter()
        .map(|t| t.unwrap_or(f64::INFINITY))
        .fold(0.0, f64::max);
    g.push((
        format!("{name}: reaches 90 % of the link in ≤ 10 RTTs (every case)"),
        (!t90.is_empty()).then_some(worst_t90 <= 10.0),
        if t90.is_empty() {
            "–".into()
        } else if worst_t90.is_finite() {
            format!("worst {worst_t90:.1} RTTs")
        } else {
            format!(
                "never in {} of {} cases",
                t90.iter().filter(|t| t.is_none()).count(),
                t90.len()
            )
        },
    ));
    if tool == WanTool::ChunkXdpWarm {
        let started_cold: Vec<String> = f
            .runs
            .iter()
            .filter(|r| r.tool == tool && r.outcome.is_measured())
            .filter(|r| r.resume.as_deref() != Some("validated"))
            .map(|r| {
                format!(
                    "{}: {}",
                    r.case.label(),
                    r.resume.as_deref().unwrap_or("no cache")
                )
            })
            .collect();
        g.push((
            format!("{name}: every warm run started from the estimate (validated)"),
            Some(started_cold.is_empty()),
            if started_cold.is_empty() {
                "all".into()
            } else {
                started_cold.join("; ")
            },
        ));
    }
}

pub fn markdown(f: &Findings) -> String {
    let mut md = String::new();
    let a = f.args;
    let _ = writeln!(md, "# chunk WAN benchmark\n");
    md.push_str(&f.machine.markdown());
    let _ = writeln!(
        md,
        "\nA delay line between two namespaces (`chunk_tests::Bridged`): {} Mbit/s each way, \
         a drop-tail queue of one bandwidth-delay product (at least 64 KiB), half the RTT of \
         delay each way, loss each way at random (or in Gilbert–Elliott bursts: good → bad \
         {:.2} %, bad → good {:.0} % per slot of a full frame's time at the link's rate: 1 % \
         lost, in bursts of 4 slots on average). The bridge \
         forwarded {} with no rate limit (its ceiling, loaded by chunk). {} MiB file; TCP with \
         buffers autotuned up to 64 MiB, its congestion control set per socket; UFTP given the \
         link's rate (`-R`). A transfer is cut off after {} s (TCP then measured by the bytes \
         that arrived: \"cut\"). Goodput counts file bytes over the link rate (the ceiling for \
         1460-byte chunks, 1538 bytes each on the wire, is 94.9 %).\n",
        a.wan_rate_mbit,
        super::BURST.0 * 100.0,
        super::BURST.1 * 100.0,
        f.ceiling_mbit
            .map_or("an unmeasured rate".into(), |c| format!("{c:.0} Mbit/s")),
        a.wan_size_mib,
        a.wan_cut_off_s,
    );
    let cases = f.cases();
    let tools = &a.wan_tools;
    if !cases.is_empty() {
        let _ = writeln!(
            md,
            "## Goodput, share of the link rate: whole transfer (steady state, between 50 and \
             90 % delivered)\n"
        );
        let _ = write!(md, "| RTT, loss |");
        for t in tools {
            let _ = write!(md, " {} |", t.name());
        }
        let _ = write!(md, "\n|---|");
        for _ in tools {
            let _ = write!(md, "---:|");
        }
        md.push('\n');
        for c in &cases {
            let _ = write!(md, "| {} |", c.label());
            for &t in tools {
                let _ = write!(md, " {} |", cell(f, c, t));
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "\n## Every run\n\n| RTT, loss | tool | whole | steady | s | to 90 % (RTTs) | \
             retx | lost data | retx / lost | RTOs | lost acks | queue peak | srtt |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let rate = a.wan_rate_mbit as f64 * 1e6;
        for r in f.runs {
            if !r.outcome.is_measured() {
                let _ = writeln!(
                    md,
                    "| {} | {} | failed: {} |||||||||||",
                    r.case.label(),
                    r.tool.name(),
                    r.error.as_deref().unwrap_or("?").replace('|', "/")
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1}{} | {} | {} | {} | {} | {} | {} | {} KiB ({:.0} ms) | {} |",
                r.case.label(),
                match (r.tool, r.resume.as_deref()) {
                    (WanTool::ChunkXdpWarm, Some(how)) => format!("{} ({how})", r.tool.name()),
                    (WanTool::ChunkXdp, Some(how)) if how.starts_with("first round") => {
                        format!("{} ({how})", r.tool.name())
                    }
                    _ => r.tool.name().to_owned(),
                },
                pct(r.goodput_share),
                pct(r.steady_share),
                r.seconds,
                if r.partial_bytes.is_some() {
                    " cut"
                } else {
                    ""
                },
                r.t90_rtts.map_or("never".into(), |t| format!("{t:.1}")),
                r.retransmissions.map_or("–".into(), |n| n.to_string()),
                r.lost,
                r.retx_per_lost().map_or("–".into(), |x| format!("{x:.2}")),
                r.rtos.map_or("–".into(), |n| n.to_string()),
                r.lost_reverse,
                r.peak_queue_bytes >> 10,
                r.peak_queue_bytes as f64 * 8.0 / rate * 1e3,
                r.srtt_ms.map_or("–".into(), |s| format!("{s:.0} ms")),
            );
        }
        let _ = writeln!(
            md,
            "\n## The simulator next to the real run (chunk)\n\n`chunk sim`: the protocol \
             core on a simulated link of the same rate, RTT, loss, queue and framing (58 bytes \
             per packet), the real sender's chunk size; for chunk-xdp-warm, `chunk sim --warm` (a \
             second transfer from the estimate a first one left).\n\n| RTT, loss | tool | real \
             whole | sim whole | difference | real steady | sim steady | real retx / lost | sim \
             retx / lost | real to 90 % (RTTs) | sim to 90 % |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for r in f
            .runs
            .iter()
            .filter(|r| matches!(r.tool, WanTool::ChunkXdp | WanTool::ChunkXdpWarm))
        {
            let Some(s) = &r.sim else { continue };
            let real = r.goodput_share.filter(|_| r.outcome.is_measured());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
                r.case.label(),
                r.tool.name(),
                pct(real),
                pct(Some(s.goodput_share)),
                if s.verified { "" } else { " (unverified)" },
                real.map_or("–".into(), |g| format!(
                    "{:+.1} points",
                    (s.goodput_share - g) * 100.0
                )),
                pct(r.steady_share.filter(|_| r.outcome.is_measured())),
                pct(Some(s.steady_share)),
                r.retx_per_lost().map_or("–".into(), |x| format!("{x:.2}")),
                if s.lost > 0 {
                    format!("{:.2}", s.retransmitted as f64 / s.lost as f64)
                } else {
                    format!("{} retx, 0 lost", s.retransmitted)
                },
                r.t90_rtts
                    .filter(|_| r.outcome.is_measured())
                    .map_or("–".into(), |t| format!("{t:.1}")),
                s.t90_rtts.map_or("never".into(), |t| format!("{t:.1}")),
            );
        }
    }
    if !f.shares.is_empty() {
        let _ = writeln!(
            md,
            "\n## Sharing one bottleneck ({} ms, no loss; both flows start together; shares \
             of the bytes delivered while both ran, from 1 s after both were sending)\n\n\
             | flows | first (chunk) | second | window | link used |\n|---|---:|---:|---:|---:|",
            f.args.share_rtt_ms
        );
        for s in f.shares {
            match s.shares {
                Some([x, y]) => {
                    let _ = writeln!(
                        md,
                        "| {} | {:.1} % | {:.1} % | {:.1} s | {} |",
                        s.label,
                        x * 100.0,
                        y * 100.0,
                        s.window_s,
                        pct(s.utilisation)
                    );
                }
                None => {
                    let _ = writeln!(
                        md,
                        "| {} | failed: {} ||||",
                        s.label,
                        s.error.as_deref().unwrap_or("?").replace('|', "/")
                    );
                }
            }
        }
    }
    let _ = writeln!(md, "\n## Goals\n\n| goal | measured | met |\n|---|---|---|");
    for (goal, met, measured) in goals(f) {
        let _ = writeln!(
            md,
            "| {goal} | {measured} | {} |",
            match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "not measured",
            }
        );
    }
    let _ = writeln!(md, "\nThe WAN cases ran in {:.1} min.", f.minutes);
    md
}

#[derive(Serialize)]
pub struct Json<'a> {
    rate_mbit: u64,
    size_mib: u64,
    cut_off_s: u64,
    bridge_ceiling_mbit: Option<f64>,
    runs: &'a [WanRun],
    shares: &'a [ShareRun],
    goals: Vec<JsonGoal>,
}

#[derive(Serialize)]
struct JsonGoal {
    goal: String,
    met: Option<bool>,
    measured: String,
}

pub fn json<'a>(f: &Findings<'a>) -> Json<'a> {
    Json {
        rate_mbit: f.args.wan_rate_mbit,
        size_mib: f.args.wan_size_mib,
        cut_off_s: f.args.wan_cut_off_s,
        bridge_ceiling_mbit: f.ceiling_mbit,
        runs: f.runs,
        shares: f.shares,
        goals: goals(f)
            .into_iter()
            .map(|(goal, met, measured)| JsonGoal {
                goal,
                met,
                measured,
            })
            .collect(),
    }
}
