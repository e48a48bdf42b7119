//! The rounds' figures reduced to one per tool and case: medians, and the goodput's range; the
//! per-packet and wakeup figures are medians of each run's own rates ([`PerPacket`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    Case,
    run::{Outcome, Run},
    tools::Tool,
    wakeups::Wakeups,
};

pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The medians of one tool in one case (the field names are results.json's).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub ok: usize,
    pub runs: usize,
    /// Every run was skipped because the tool is missing (chunk-socket before `--mode socket`).
    pub na: bool,
    #[serde(rename = "goodput_mb_s")]
    pub goodput: Option<f64>,
    pub goodput_min: Option<f64>,
    pub goodput_max: Option<f64>,
    #[serde(rename = "send_cpu_s_per_gib")]
    pub send_cpu_per_gib: Option<f64>,
    #[serde(rename = "recv_cpu_s_per_gib")]
    pub recv_cpu_per_gib: Option<f64>,
    #[serde(rename = "machine_cpu_s_per_gib")]
    pub machine_cpu_per_gib: Option<f64>,
    pub send_rss_mib: Option<f64>,
    pub recv_rss_mib: Option<f64>,
    pub retransmissions: Option<f64>,
    pub junk_kpps: Option<f64>,
    #[serde(flatten)]
    pub per_packet: PerPacket,
    /// What went wrong in each run that was not measured.
    pub errors: Vec<String>,
}

/// The medians of what the path carried and what the machine woke up for, per second of the
/// transfer and per data packet (the packets the router forwarded towards the receiver), so
/// that two machines, or two tools that move different numbers of packets, compare.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerPacket {
    /// Thousands of data packets per second.
    pub data_kpps: Option<f64>,
    /// Thousands of packets per second the other way (acks, status).
    pub reverse_kpps: Option<f64>,
    /// File bytes per data packet: near the MTU's payload for chunk and UFTP; TCP's segments
    /// cross veth and the router as GSO packets of many segments each.
    pub file_bytes_per_data_packet: Option<f64>,
    pub context_switches_per_s: Option<f64>,
    /// LOC + RES + CAL + IWI.
    pub interrupts_per_s: Option<f64>,
    pub loc_per_s: Option<f64>,
    pub res_per_s: Option<f64>,
    pub cal_per_s: Option<f64>,
    pub iwi_per_s: Option<f64>,
    pub context_switches_per_packet: Option<f64>,
    pub interrupts_per_packet: Option<f64>,
    pub send_cpu_us_per_packet: Option<f64>,
    pub recv_cpu_us_per_packet: Option<f64>,
    pub machine_cpu_us_per_packet: Option<f64>,
}

impl PerPacket {
    /// The medians over `ok`, the measured runs of one tool in one case, of a `size`-byte file;
    /// a figure is left out of a run that lacks its counters.
    fn of(ok: &[&Run], size: u64) -> PerPacket {
        let m = |f: &dyn Fn(&Run) -> Option<f64>| median(ok.iter().filter_map(|r| f(r)).collect());
        let wake = |f: fn(&Wakeups) -> u64| move |r: &Run| r.wakeups.map(|w| r.per_second(f(&w)));
        let wake_per_packet = |f: fn(&Wakeups) -> u64| {
            move |r: &Run| r.wakeups.and_then(|w| r.per_data_packet(f(&w) as f64))
        };
        let us = 1e6;
        PerPacket {
            data_kpps: m(&|r| r.data_packets.map(|n| r.per_second(n) / 1e3)),
            reverse_kpps: m(&|r| r.reverse_packets.map(|n| r.per_second(n) / 1e3)),
            file_bytes_per_data_packet: m(&|r| {
                r.per_data_packet(r.partial_bytes.unwrap_or(size) as f64)
            }),
            context_switches_per_s: m(&wake(|w| w.context_switches)),
            interrupts_per_s: m(&wake(Wakeups::interrupts)),
            loc_per_s: m(&wake(|w| w.loc)),
            res_per_s: m(&wake(|w| w.res)),
            cal_per_s: m(&wake(|w| w.cal)),
            iwi_per_s: m(&wake(|w| w.iwi)),
            context_switches_per_packet: m(&wake_per_packet(|w| w.context_switches)),
            interrupts_per_packet: m(&wake_per_packet(Wakeups::interrupts)),
            send_cpu_us_per_packet: m(&|r| r.per_data_packet(r.send_cpu * us)),
            recv_cpu_us_per_packet: m(&|r| r.per_data_packet(r.recv_cpu * us)),
            machine_cpu_us_per_packet: m(&|r| r.per_data_packet(r.machine_cpu * us)),
        }
    }
}

/// The summaries, by case and tool.
pub type Sums = BTreeMap<(Case, Tool), Summary>;

/// Goodput median of one tool in one case.
pub fn goodput(sums: &Sums, case: Case, tool: Tool) -> Option<f64> {
    sums.get(&(case, tool)).and_then(|s| s.goodput)
}

/// Summarizes `runs` of a `size`-byte file: only measured runs count towards the figures.
pub fn summarize(runs: &[Run], size: u64) -> Sums {
    let mut out = Sums::new();
    // GiB a run moved: the file, or what arrived before a cut-off.
    let gib = |r: &Run| r.partial_bytes.unwrap_or(size) as f64 / (1u64 << 30) as f64;
    let mut groups: BTreeMap<(Case, Tool), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        groups.entry((r.case, r.tool)).or_default().push(r);
    }
    for (k, rs) in groups {
        let ok: Vec<&Run> = rs
            .iter()
            .copied()
            .filter(|r| r.outcome.is_measured())
            .collect();
        let m = |f: &dyn Fn(&Run) -> f64| median(ok.iter().map(|r| f(r)).collect());
        let goodputs = ok.iter().map(|r| r.goodput(size));
        out.insert(
            k,
            Summary {
                ok: ok.len(),
                runs: rs.len(),
                na: rs
                    .iter()
                    .all(|r| matches!(r.outcome, Outcome::NotAvailable(_))),
                goodput: m(&|r| r.goodput(size)),
                goodput_min: goodputs.clone().reduce(f64::min),
                goodput_max: goodputs.reduce(f64::max),
                send_cpu_per_gib: m(&|r| r.send_cpu / gib(r)),
                recv_cpu_per_gib: m(&|r| r.recv_cpu / gib(r)),
                machine_cpu_per_gib: m(&|r| r.machine_cpu / gib(r)),
                send_rss_mib: m(&|r| r.send_rss_kib as f64 / 1024.0),
                recv_rss_mib: m(&|r| r.recv_rss_kib as f64 / 1024.0),
                retransmissions: median(
                    ok.iter()
                        .filter_map(|r| r.retransmissions.map(|n| n as f64))
                        .collect(),
                ),
                junk_kpps: median(
                    ok.iter()
                        .filter_map(|r| r.junk_pps.map(|p| p / 1e3))
                        .collect(),
                ),
                per_packet: PerPacket::of(&ok, size),
                errors: rs.iter().filter_map(|r| r.outcome.error()).collect(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{
        fixtures,
        report::{Findings, markdown},
    };

    #[test]
    fn summaries_take_medians_and_mark_missing_tools() {
        let sums = summarize(&fixtures::runs(), 64 << 20);
        let s = &sums[&(Case::Clean, Tool::ChunkXdp)];
        assert_eq!((s.ok, s.runs), (3, 3));
        let median = (64u64 << 20) as f64 / 0.21 / 1e6;
        assert!((s.goodput.unwrap() - median).abs() < 1e-9);
        assert!(s.goodput_min.unwrap() < median && median < s.goodput_max.unwrap());
        assert_eq!(s.retransmissions, Some(1.0));
        assert!(sums[&(Case::Clean, Tool::ChunkSocket)].na);
        let (args, machine, cost) = (fixtures::args(), fixtures::machine(), fixtures::xdp_cost());
        let md = markdown(&Findings {
            args: &args,
            machine: &machine,
            sums: &sums,
            rss: &[],
            xdp_cost: &cost,
            tree: None,
        });
        assert!(md.contains("| clean | chunk-socket | n/a |"), "{md}");
        assert!(
            md.contains("| 5 % loss: chunk-xdp / uftp goodput |"),
            "{md}"
        );
    }
}
