//! The rounds' figures reduced to one per tool and case: medians, and the goodput's range.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    Case,
    run::{Outcome, Run},
    tools::Tool,
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
    /// What went wrong in each run that was not measured.
    pub errors: Vec<String>,
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
    let gib = size as f64 / (1u64 << 30) as f64;
    let mut groups: BTreeMap<(Case, Tool), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        groups.entry((r.case, r.tool)).or_default().push(r);
    }
    for (k, rs) in groups {
        let ok: Vec<&&Run> = rs.iter().filter(|r| r.outcome.is_measured()).collect();
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
                send_cpu_per_gib: m(&|r| r.send_cpu / gib),
                recv_cpu_per_gib: m(&|r| r.recv_cpu / gib),
                machine_cpu_per_gib: m(&|r| r.machine_cpu / gib),
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
                errors: rs.iter().filter_map(|r| r.outcome.error()).collect(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{fixtures, report::markdown};

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
        let md = markdown(&fixtures::args(), &sums, &[]);
        assert!(md.contains("| clean | chunk-socket | n/a |"), "{md}");
        assert!(
            md.contains("| 5 % loss: chunk-xdp / uftp goodput |"),
            "{md}"
        );
    }
}
