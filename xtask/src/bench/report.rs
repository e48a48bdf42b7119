//! The results as people and programs read them: `results.md` (the table, the ratios, the RSS
//! check, the failed runs) and `results.json`, written from the serde types here, whose field
//! names are the ones results.json has always had.

use serde::Serialize;

use super::{
    BenchArgs, Case,
    goals::{Ratio, ratios},
    rss::RssRow,
    run::Run,
    stats::{Summary, Sums},
    tools::Tool,
};

/// `results.json`.
#[derive(Serialize)]
pub struct Results<'a> {
    size_mib: u64,
    mtu: u32,
    rounds: u32,
    cases: &'a [Case],
    tools: &'a [Tool],
    /// How long the whole benchmark took.
    seconds: f64,
    loadavg_before: String,
    loadavg_after: String,
    summary: Vec<SummaryJson<'a>>,
    ratios: Vec<Ratio>,
    rss_check: &'a [RssRow],
    runs: Vec<RunJson>,
}

/// One summary, with the case and tool it is of.
#[derive(Serialize)]
struct SummaryJson<'a> {
    case: Case,
    tool: Tool,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// One run as results.json has it: `ok` and `error` for its outcome, goodput only if measured.
#[derive(Serialize)]
struct RunJson {
    tool: Tool,
    case: Case,
    round: u32,
    ok: bool,
    error: Option<String>,
    seconds: f64,
    goodput_mb_s: Option<f64>,
    send_cpu_s: f64,
    recv_cpu_s: f64,
    machine_cpu_s: f64,
    send_rss_kib: u64,
    recv_rss_kib: u64,
    retransmissions: Option<u64>,
    junk_pps: Option<f64>,
    junk_dropped: Option<u64>,
}

impl RunJson {
    fn new(r: &Run, size: u64) -> Self {
        let ok = r.outcome.is_measured();
        RunJson {
            tool: r.tool,
            case: r.case,
            round: r.round,
            ok,
            error: r.outcome.error(),
            seconds: r.seconds,
            goodput_mb_s: ok.then(|| r.goodput(size)),
            send_cpu_s: r.send_cpu,
            recv_cpu_s: r.recv_cpu,
            machine_cpu_s: r.machine_cpu,
            send_rss_kib: r.send_rss_kib,
            recv_rss_kib: r.recv_rss_kib,
            retransmissions: r.retransmissions,
            junk_pps: r.junk_pps,
            junk_dropped: r.junk_dropped,
        }
    }
}

impl<'a> Results<'a> {
    pub fn new(
        args: &'a BenchArgs,
        seconds: f64,
        (loadavg_before, loadavg_after): (String, String),
        sums: &'a Sums,
        rss: &'a [RssRow],
        runs: &'a [Run],
    ) -> Self {
        let size = args.size_mib << 20;
        Results {
            size_mib: args.size_mib,
            mtu: args.mtu,
            rounds: args.rounds,
            cases: &args.cases,
            tools: &args.tools,
            seconds,
            loadavg_before,
            loadavg_after,
            summary: sums
                .iter()
                .map(|(&(case, tool), summary)| SummaryJson {
                    case,
                    tool,
                    summary,
                })
                .collect(),
            ratios: ratios(sums, rss),
            rss_check: rss,
            runs: runs.iter().map(|r| RunJson::new(r, size)).collect(),
        }
    }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.prec$}"))
}

pub fn markdown(args: &BenchArgs, sums: &Sums, rss: &[RssRow]) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{} MiB file, MTU {}, median of {} rounds. Goodput = file size / time until the file \
         is complete at the receiver (chunk and UFTP: until the sender has the receiver's \
         confirmation; chunk's includes hashing the file on both sides), range = slowest and \
         fastest round. CPU s/GiB: user + system of each process (`/usr/bin/time`); machine = \
         both cores' busy time during the transfer (kernel receive work, router, flood \
         included). Retransmissions: chunk's own count of chunks sent again; TCP's \
         TcpRetransSegs; UFTP: UDP packets beyond the file's blocks, counted at the router. \
         Junk: packets per second the router forwarded from the junk sender.\n\n",
        args.size_mib, args.mtu, args.rounds
    ));
    o.push_str(
        "| case | tool | goodput MB/s | range | sender CPU s/GiB | receiver CPU s/GiB \
         | machine CPU s/GiB | sender RSS MiB | receiver RSS MiB | retransmissions \
         | junk kpps | ok |\n",
    );
    o.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for &case in &args.cases {
        for &tool in &args.tools {
            let Some(s) = sums.get(&(case, tool)) else {
                continue;
            };
            let (case, tool) = (case.name(), tool.name());
            if s.na {
                o.push_str(&format!(
                    "| {case} | {tool} | n/a | | | | | | | | | 0/{} |\n",
                    s.runs
                ));
                continue;
            }
            let range = match (s.goodput_min, s.goodput_max) {
                (Some(a), Some(b)) => format!("{a:.0}–{b:.0}"),
                _ => "–".into(),
            };
            o.push_str(&format!(
                "| {case} | {tool} | {} | {range} | {} | {} | {} | {} | {} | {} | {} | {}/{} |\n",
                fmt(s.goodput, 1),
                fmt(s.send_cpu_per_gib, 2),
                fmt(s.recv_cpu_per_gib, 2),
                fmt(s.machine_cpu_per_gib, 2),
                fmt(s.send_rss_mib, 1),
                fmt(s.recv_rss_mib, 1),
                fmt(s.retransmissions, 0),
                fmt(s.junk_kpps, 0),
                s.ok,
                s.runs
            ));
        }
    }
    o.push_str("\n| ratio (same run) | measured | goal | met |\n|---|---:|---:|---|\n");
    for r in ratios(sums, rss) {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        o.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            r.name,
            fmt(r.value, 2),
            r.goal
        ));
    }
    if !rss.is_empty() {
        o.push_str(&format!(
            "\nReceiver peak RSS against file size (clean link, one round, MTU {}):\n\n\
             | tool | file | goodput MB/s | receiver peak RSS MiB |\n|---|---|---:|---:|\n",
            args.mtu
        ));
        for r in rss {
            let file = if r.mib >= 1024 {
                format!("{} GiB", r.mib / 1024)
            } else {
                format!("{} MiB", r.mib)
            };
            let tool = r.tool.name();
            match &r.error {
                None => o.push_str(&format!(
                    "| {tool} | {file} | {} | {} |\n",
                    fmt(r.goodput, 1),
                    fmt(r.recv_rss_mib, 1)
                )),
                Some(e) => o.push_str(&format!("| {tool} | {file} | failed: {e} | |\n")),
            }
        }
    }
    let errors: Vec<String> = sums
        .iter()
        .filter(|(_, s)| !s.na)
        .flat_map(|((c, t), s)| {
            s.errors
                .iter()
                .map(move |e| format!("- {}/{}: {e}", c.name(), t.name()))
        })
        .collect();
    if !errors.is_empty() {
        o.push_str("\nFailed runs:\n\n");
        o.push_str(&errors.join("\n"));
        o.push('\n');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{fixtures, stats::summarize};

    /// The keys of results.json, as they were before the benchmark moved to serde types: what
    /// reads the file must find them all.
    #[test]
    fn results_json_keeps_its_field_names() {
        let args = fixtures::args();
        let runs = fixtures::runs();
        let sums = summarize(&runs, args.size_mib << 20);
        let rss = [RssRow {
            tool: Tool::ChunkXdp,
            mib: 64,
            goodput: Some(1.0),
            recv_rss_mib: Some(2.0),
            error: None,
        }];
        let results = Results::new(&args, 1.0, ("0".into(), "0".into()), &sums, &rss, &runs);
        let v = serde_json::to_value(&results).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k.join(" ")
        };
        assert_eq!(
            keys(&v),
            "cases loadavg_after loadavg_before mtu ratios rounds rss_check runs seconds \
             size_mib summary tools"
        );
        assert_eq!(
            keys(&v["summary"][0]),
            "case errors goodput_max goodput_mb_s goodput_min junk_kpps machine_cpu_s_per_gib \
             na ok recv_cpu_s_per_gib recv_rss_mib retransmissions runs send_cpu_s_per_gib \
             send_rss_mib tool"
        );
        assert_eq!(
            keys(&v["runs"][0]),
            "case error goodput_mb_s junk_dropped junk_pps machine_cpu_s ok recv_cpu_s \
             recv_rss_kib retransmissions round seconds send_cpu_s send_rss_kib tool"
        );
        assert_eq!(keys(&v["ratios"][0]), "goal measured met ratio");
        assert_eq!(
            keys(&v["rss_check"][0]),
            "error file_mib goodput_mb_s recv_rss_mib tool"
        );
        assert_eq!(v["cases"][1], "loss1");
        assert_eq!(v["tools"][1], "chunk-socket");
        let socket = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["tool"] == "chunk-socket")
            .unwrap();
        assert_eq!(socket["ok"], false);
        assert_eq!(socket["error"], "n/a: test");
        assert!(socket["goodput_mb_s"].is_null());
    }
}
