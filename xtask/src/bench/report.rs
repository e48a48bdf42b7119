//! The results as people and programs read them: `results.md` (the machine, the table, the
//! per-packet and wakeup table, the tree cases' table, the goals, the in-kernel check's cost, the
//! RSS check, the failed runs) and `results.json` (`tree` only when the tree cases ran), written from the serde types here, whose field names are the ones
//! results.json has always had (new figures only add fields).

use serde::Serialize;

use super::{
    BenchArgs, Case,
    goals::{Ratio, ratios},
    machine::Machine,
    rss::RssRow,
    run::Run,
    stats::{Summary, Sums},
    tools::Tool,
    tree::{self, Trees},
    wakeups::Wakeups,
    xdp_cost::{self, XdpCost},
};

/// What the benchmark found, for both reports: what it was asked, where it ran, the summaries,
/// the RSS check and the in-kernel check's cost.
pub struct Findings<'a> {
    pub args: &'a BenchArgs,
    pub machine: &'a Machine,
    pub sums: &'a Sums,
    pub rss: &'a [RssRow],
    pub xdp_cost: &'a XdpCost,
    /// The tree cases' figures, if any ran.
    pub tree: Option<Trees<'a>>,
}

impl Findings<'_> {
    fn ratios(&self) -> Vec<Ratio> {
        let none = tree::Sums::new();
        let tree = self.tree.map_or(&none, |t| t.sums);
        ratios(self.args, self.sums, tree, self.rss, self.xdp_cost)
    }

    /// Whether any case sends the one large file (not only the trees).
    fn has_file_cases(&self) -> bool {
        self.args.cases.iter().any(|c| !c.is_tree())
    }

    /// The summaries in the order of the command line's cases and tools.
    fn summaries(&self) -> impl Iterator<Item = (Case, Tool, &Summary)> {
        self.args.cases.iter().flat_map(move |&case| {
            self.args
                .tools
                .iter()
                .filter_map(move |&tool| Some((case, tool, self.sums.get(&(case, tool))?)))
        })
    }
}

/// `results.json`.
#[derive(Serialize)]
pub struct Results<'a> {
    machine: &'a Machine,
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
    xdp_cost: &'a XdpCost,
    rss_check: &'a [RssRow],
    runs: Vec<RunJson>,
    /// The tree cases, if they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    tree: Option<tree::Json>,
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
    data_packets: Option<u64>,
    reverse_packets: Option<u64>,
    wakeups: Option<Wakeups>,
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
            data_packets: r.data_packets,
            reverse_packets: r.reverse_packets,
            wakeups: r.wakeups,
        }
    }
}

impl<'a> Results<'a> {
    pub fn new(
        f: &Findings<'a>,
        seconds: f64,
        (loadavg_before, loadavg_after): (String, String),
        runs: &'a [Run],
    ) -> Self {
        let Findings {
            args,
            machine,
            sums,
            rss,
            xdp_cost,
            tree,
        } = *f;
        let size = args.size_mib << 20;
        Results {
            machine,
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
            ratios: f.ratios(),
            xdp_cost,
            rss_check: rss,
            runs: runs.iter().map(|r| RunJson::new(r, size)).collect(),
            tree: tree.map(tree::Json::new),
        }
    }
}

fn fmt(v: Option<f64>, prec: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.prec$}"))
}

pub fn markdown(f: &Findings) -> String {
    let (args, rss) = (f.args, f.rss);
    let mut o = f.machine.markdown();
    if f.has_file_cases() {
        o.push_str(&file_tables(f));
    }
    if let Some(t) = f.tree {
        o.push_str(&tree::markdown(&args.cases, args.rounds, t.sums, t.runs));
    }
    o.push_str("\n| goal (same run) | measured | goal | met |\n|---|---:|---:|---|\n");
    for r in f.ratios() {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        // A cost per byte needs more digits than a ratio.
        let prec = if r.value.is_some_and(|v| v.abs() < 1.0) {
            3
        } else {
            2
        };
        o.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            r.name,
            fmt(r.value, prec),
            r.goal
        ));
    }
    o.push_str(&xdp_cost::markdown(f.xdp_cost));
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
    let errors: Vec<String> = f
        .sums
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

/// results.md's tables of the cases with one large file: the figures, then per packet.
fn file_tables(f: &Findings) -> String {
    let args = f.args;
    let mut o = String::new();
    o.push_str(&format!(
        "\n{} MiB file, MTU {}, median of {} rounds. Goodput = file size / time until the file \
         is complete at the receiver (chunk and UFTP: until the sender has the receiver's \
         confirmation; chunk's includes hashing the file on both sides), range = slowest and \
         fastest round. CPU s/GiB: user + system of each process (`/usr/bin/time`); machine = \
         both cores' busy time during the transfer (kernel receive work, router, flood \
         included). Retransmissions: chunk's own count of chunks sent again; TCP's \
         TcpRetransSegs; UFTP: UDP packets beyond the file's blocks, counted at the router. \
         Junk: packets per second the router forwarded from the junk sender. nc's label names \
         the TCP congestion control of the sender's namespace.\n\n",
        args.size_mib, args.mtu, args.rounds
    ));
    o.push_str(
        "| case | tool | goodput MB/s | range | sender CPU s/GiB | receiver CPU s/GiB \
         | machine CPU s/GiB | sender RSS MiB | receiver RSS MiB | retransmissions \
         | junk kpps | ok |\n",
    );
    o.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (case, tool, s) in f.summaries() {
        let (case, tool) = (case.name(), f.machine.label(tool));
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
    o.push_str(&per_packet_table(f));
    o
}

/// results.md's second table: packets through the router each way, the machine's wakeups, and
/// the CPU each side spent, per data packet.
fn per_packet_table(f: &Findings) -> String {
    let mut o = String::from(
        "\nPer packet and wakeups (medians of each run's own rates). Data packets: what the \
         router's veth towards the receiver sent during the transfer (`tx_packets`, a flood's \
         junk taken out); reverse: towards the sender (acks, status). TCP crosses veth and the \
         router as GSO packets of many segments, hence its few large packets. Wakeups are the \
         whole machine's, both cores: context switches (`/proc/stat` ctxt) and interrupts = \
         LOC + RES + CAL + IWI (`/proc/interrupts`; each apart in results.json). µs/packet: \
         the CPU seconds above over the data packets.\n\n\
         | case | tool | data kpps | reverse kpps | file bytes / data packet \
         | context switches/s | interrupts/s | context switches / packet | interrupts / packet \
         | sender CPU µs/packet | receiver CPU µs/packet | machine CPU µs/packet |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (case, tool, s) in f.summaries() {
        if s.na {
            continue;
        }
        let p = &s.per_packet;
        o.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            case.name(),
            f.machine.label(tool),
            fmt(p.data_kpps, 1),
            fmt(p.reverse_kpps, 1),
            fmt(p.file_bytes_per_data_packet, 0),
            fmt(p.context_switches_per_s, 0),
            fmt(p.interrupts_per_s, 0),
            fmt(p.context_switches_per_packet, 3),
            fmt(p.interrupts_per_packet, 3),
            fmt(p.send_cpu_us_per_packet, 2),
            fmt(p.recv_cpu_us_per_packet, 2),
            fmt(p.machine_cpu_us_per_packet, 2),
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{fixtures, stats::summarize};

    /// The keys of results.json, as they were before the benchmark moved to serde types, and
    /// those added since (the machine, per-packet and wakeup figures, the in-kernel check's
    /// cost): what reads the file must find them all.
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
        let machine = fixtures::machine();
        let cost = fixtures::xdp_cost();
        let f = Findings {
            args: &args,
            machine: &machine,
            sums: &sums,
            rss: &rss,
            xdp_cost: &cost,
            tree: None,
        };
        let results = Results::new(&f, 1.0, ("0".into(), "0".into()), &runs);
        let v = serde_json::to_value(&results).unwrap();
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k.join(" ")
        };
        assert_eq!(
            keys(&v),
            "cases loadavg_after loadavg_before machine mtu ratios rounds rss_check runs \
             seconds size_mib summary tools xdp_cost"
        );
        assert_eq!(
            keys(&v["machine"]),
            "commit cpu_model cpus date dirty kernel ssh_cipher tcp_congestion_control"
        );
        assert_eq!(
            keys(&v["summary"][0]),
            "cal_per_s case context_switches_per_packet context_switches_per_s data_kpps errors \
             file_bytes_per_data_packet goodput_max goodput_mb_s goodput_min interrupts_per_packet \
             interrupts_per_s iwi_per_s junk_kpps loc_per_s machine_cpu_s_per_gib \
             machine_cpu_us_per_packet na ok recv_cpu_s_per_gib recv_cpu_us_per_packet \
             recv_rss_mib res_per_s retransmissions reverse_kpps runs send_cpu_s_per_gib \
             send_cpu_us_per_packet send_rss_mib tool"
        );
        assert_eq!(
            keys(&v["runs"][0]),
            "case data_packets error goodput_mb_s junk_dropped junk_pps machine_cpu_s ok \
             recv_cpu_s recv_rss_kib retransmissions reverse_packets round seconds send_cpu_s \
             send_rss_kib tool wakeups"
        );
        assert_eq!(
            keys(&v["runs"][0]["wakeups"]),
            "cal context_switches iwi loc res"
        );
        assert_eq!(
            keys(&v["xdp_cost"]),
            "corrupt_ns_per_byte repeat rows valid_fixed_ns valid_ns_per_byte verified_insns"
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

    #[test]
    fn markdown_has_the_machine_the_per_packet_table_and_the_check_cost() {
        let args = fixtures::args();
        let sums = summarize(&fixtures::runs(), args.size_mib << 20);
        let machine = fixtures::machine();
        let cost = fixtures::xdp_cost();
        let md = markdown(&Findings {
            args: &args,
            machine: &machine,
            sums: &sums,
            rss: &[],
            xdp_cost: &cost,
            tree: None,
        });
        assert!(
            md.starts_with("Machine: Test CPU, 2 CPUs, kernel 6.18.0; commit abc1234;"),
            "{md}"
        );
        assert!(md.contains("| clean | nc (TCP bbr) | "), "{md}");
        assert!(
            md.contains("| loss5 | scp (chacha20-poly1305@openssh.com) | "),
            "{md}"
        );
        // Clean, nc, the median round: 64 MiB in 0.41 s over 40 000 data packets and 4 000
        // acks, with 10 000 context switches and 20 000 interrupts, and 0.1 s of sender CPU.
        assert!(
            md.contains(
                "| clean | nc (TCP bbr) | 97.6 | 9.8 | 1678 | 24390 | 48780 | 0.250 | 0.500 \
                 | 2.50 | 5.00 | 7.50 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| in-kernel check: valid chunk ns/byte (xdp-cost) | 0.250 | ≤ 0.25 | yes |"
            ),
            "{md}"
        );
        assert!(md.contains("| 1436 | 1456 | 420 | 380 |"), "{md}");
    }
}
