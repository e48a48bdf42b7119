//! The ratios the benchmark exists for, each against its goal where it has one: chunk against
//! TCP and UFTP in the same run, chunk under a flood against itself on a clean link, and the
//! receiver's memory for a large file against a small one.

use serde::Serialize;

use super::{
    Case,
    rss::RssRow,
    stats::{Sums, goodput},
    tools::Tool,
};

/// One ratio: what it compares, its value, the goal (if it has one) and whether it is met (the
/// field names are results.json's).
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    #[serde(rename = "ratio")]
    pub name: String,
    #[serde(rename = "measured")]
    pub value: Option<f64>,
    pub goal: &'static str,
    pub met: Option<bool>,
}

pub fn ratios(sums: &Sums, rss: &[RssRow]) -> Vec<Ratio> {
    let div = |a: Option<f64>, b: Option<f64>| Some(a? / b?);
    let at_least = |name: &str, value: Option<f64>, goal: f64, text: &'static str| Ratio {
        name: name.into(),
        value,
        goal: text,
        met: value.map(|v| v >= goal),
    };
    let report = |name: &str, value: Option<f64>| Ratio {
        name: name.into(),
        value,
        goal: "report",
        met: None,
    };
    let g = |case, tool| goodput(sums, case, tool);
    use {Case::*, Tool::*};
    let mut v = vec![
        at_least(
            "clean: chunk-xdp / nc goodput",
            div(g(Clean, ChunkXdp), g(Clean, Nc)),
            1.0,
            "≥ 1.0",
        ),
        report(
            "clean: chunk-socket / nc goodput",
            div(g(Clean, ChunkSocket), g(Clean, Nc)),
        ),
        at_least(
            "5 % loss: chunk-xdp / nc goodput",
            div(g(Loss5, ChunkXdp), g(Loss5, Nc)),
            1.0,
            "≥ 1.0",
        ),
        at_least(
            "5 % loss: chunk-xdp / uftp goodput",
            div(g(Loss5, ChunkXdp), g(Loss5, Uftp)),
            3.0,
            "≥ 3.0",
        ),
        at_least(
            "flood: chunk-xdp goodput / its clean goodput",
            div(g(Flood, ChunkXdp), g(Clean, ChunkXdp)),
            0.8,
            "≥ 0.8",
        ),
        report(
            "flood: chunk-socket goodput / its clean goodput",
            div(g(Flood, ChunkSocket), g(Clean, ChunkSocket)),
        ),
    ];
    for tool in [ChunkXdp, ChunkSocket] {
        let rss_of = |mib| {
            rss.iter()
                .find(|r| r.tool == tool && r.mib == mib)
                .and_then(|r| r.recv_rss_mib)
        };
        if rss.iter().any(|r| r.tool == tool) {
            let value = div(rss_of(4096), rss_of(64));
            v.push(Ratio {
                name: format!("{}: receiver peak RSS, 4 GiB / 64 MiB file", tool.name()),
                value,
                goal: "≤ 1.1",
                met: value.map(|x| x <= 1.1),
            });
        }
    }
    v
}
