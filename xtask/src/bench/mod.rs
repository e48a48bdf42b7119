//! `cargo xtask bench`: chunk against TCP (`nc`) and UFTP on the same file, the same veth links
//! and the same loss, in one run; encrypted chunk against itself and against scp.
//!
//! Three namespaces in a line (sender — router — receiver, `chunk_tests::Routed`) and a fourth,
//! the junk sender, also behind the router ([`topology`]). The router drops a share of every
//! forwarded IPv4 packet, each direction, with nftables, so every tool sees the same loss, and
//! counts what it forwards (the junk flood's rate, UFTP's data packets). Rounds alternate tools
//! and cases (a slow minute of the machine then hits every tool alike; the tools' order rotates
//! each round) and each figure is the median of the rounds ([`stats`]). Every received file's
//! BLAKE3 is checked. Each process runs under `/usr/bin/time`, which gives its CPU seconds and
//! peak RSS; `/proc/stat` gives the whole machine's CPU, which also holds the kernel's receive
//! work that veth does in softirq context on whichever CPU is at hand ([`accounting`]). The
//! router's veth counters give the packets each way and `/proc` the machine's wakeups
//! ([`wakeups`]), so that figures per packet compare across tools and machines; the XDP
//! program's own cost is measured once in the kernel ([`xdp_cost`]), and the results start with
//! what they ran on ([`machine`]). Results go to `target/bench/` as markdown, JSON ([`report`])
//! and a PNG chart ([`chart`]), with the goals met or not ([`goals`]); docs/PERFORMANCE.md says
//! how to read them.
//!
//! The tree cases (`--cases tree,tree-loss1`, not by default) send 10 000 small files and one
//! 40 MiB file with chunk, `tar c | nc` and rsync through the same router, in the same rounds
//! ([`tree`]); results.md and results.json get their table and goals.
//!
//! This module holds the command line and the orchestration: the rounds, one run (flood, driver,
//! hash check), the optional RSS check ([`rss`]), the in-kernel check, and writing the results.

mod accounting;
mod chart;
mod goals;
mod machine;
mod report;
mod rss;
mod run;
mod stats;
mod tcp;
mod tools;
mod topology;
mod tree;
mod wakeups;
mod wan;
mod xdp_cost;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::demo::{generate, hash_file};
use machine::Machine;
use run::{Outcome, Run};
use tools::{Tool, Transfer, chunk::Keys, scp::Ssh};
use topology::Net;
use xdp_cost::XdpCost;

/// A condition on the link during a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Case {
    /// No loss, no flood.
    Clean,
    /// 1 % of every forwarded packet lost, each way.
    Loss1,
    /// 5 % of every forwarded packet lost, each way.
    Loss5,
    /// Junk packets at full rate from a second sender during the transfer.
    Flood,
    /// The WAN grid: a rate-limited delay line at every `--wan-rtts` × `--wan-loss`, and one
    /// burst-loss case (see the `--wan-*` options).
    Wan,
    /// Two flows on one WAN bottleneck: chunk + chunk, chunk + TCP CUBIC, chunk + TCP BBR.
    Share,
    /// Trees: 10 000 files of 4 KiB and one 40 MiB file with chunk, tar | nc and rsync, on the
    /// clean LAN link ([`tree`]).
    Tree,
    /// The same at 1 % loss each way.
    TreeLoss1,
}

impl Case {
    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Case::Clean => "clean",
            Case::Loss1 => "loss1",
            Case::Loss5 => "loss5",
            Case::Flood => "flood",
            Case::Wan => "wan",
            Case::Share => "share",
            Case::Tree => "tree",
            Case::TreeLoss1 => "tree-loss1",
        }
    }

    /// Whether the case sends the trees (and the 40 MiB file) rather than the one large file.
    fn is_tree(self) -> bool {
        matches!(self, Case::Tree | Case::TreeLoss1)
    }

    /// Whether the case runs on the LAN topology (router, nftables loss), not the delay line.
    fn is_lan(self) -> bool {
        !matches!(self, Case::Wan | Case::Share)
    }

    /// The share of forwarded packets the router drops, each way, in percent.
    fn loss_percent(self) -> u32 {
        match self {
            Case::Loss1 | Case::TreeLoss1 => 1,
            Case::Loss5 => 5,
            Case::Clean | Case::Flood | Case::Wan | Case::Share | Case::Tree => 0,
        }
    }

    /// The chart's label.
    fn label(self) -> &'static str {
        match self {
            Case::Clean => "clean",
            Case::Loss1 => "1 % loss each way",
            Case::Loss5 => "5 % loss each way",
            Case::Flood => "junk flood",
            Case::Wan => "WAN grid",
            Case::Share => "WAN sharing",
            Case::Tree => "trees",
            Case::TreeLoss1 => "trees, 1 % loss each way",
        }
    }
}

impl Serialize for Case {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// Size of the file every tool sends, in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Rounds; each figure is the median over them (veth on 2 cores is noisy: 5 by default).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Cases: clean, loss1, loss5 (percent lost each way), flood (junk packets at full rate
    /// from a second sender during the transfer) on the LAN; wan (the delay-line grid of the
    /// --wan-* options) and share (two flows on one WAN bottleneck); tree and tree-loss1
    /// (10 000 files of 4 KiB and one 40 MiB file with chunk-xdp, tar-nc and rsync, whatever
    /// --tools says, on the LAN link clean and at 1 % loss; not by default).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "clean,loss1,loss5,flood",
        hide_possible_values = true
    )]
    cases: Vec<Case>,
    /// Tools: chunk-xdp, chunk-socket, chunk-xdp-enc (chunk-xdp encrypted, keys from `chunk
    /// keygen`; n/a in a chunk without it), nc (the namespace's TCP), tcp-cubic and tcp-bbr
    /// (TCP with the congestion control set per socket), uftp, scp (OpenSSH, its default
    /// cipher, to an sshd of the bench's own; not by default: like nc it takes its 45 s
    /// cut-off at 5 % loss every round, about 6 minutes more), tar-nc (`tar c | nc` to
    /// `nc -l | tar x`), rsync (to an rsync daemon of the bench's own) and chunk-xdp-raw
    /// (chunk-xdp whose sender uses only its raw socket, `--no-packet-socket`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chunk-xdp,chunk-socket,chunk-xdp-enc,nc,uftp",
        hide_possible_values = true
    )]
    tools: Vec<Tool>,
    /// Also run chunk's tools over IPv6 (chunk-xdp-ipv6, chunk-socket-ipv6: the same routed
    /// path, 2001:2::/48), and compare each with its IPv4 run in the same round.
    #[arg(long)]
    ipv6: bool,
    /// Also run chunk's tools in UDP (chunk-xdp-udp, ...; with --ipv6 also in UDP over IPv6;
    /// chunk-xdp-enc-udp for chunk-xdp-enc), and compare each with its plain run in the same
    /// round.
    #[arg(long)]
    udp: bool,
    /// MTU of every link, for every tool (9000 for jumbo frames: the XDP program takes them in
    /// fragments, natively on veth).
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Also receive a 64 MiB and a 4 GiB file with chunk and compare the receiver's peak RSS.
    #[arg(long)]
    rss_check: bool,
    /// Where the --rss-check files live (default: target/bench/work, on disk; /dev/shm for tmpfs).
    #[arg(long)]
    rss_dir: Option<PathBuf>,
    /// Give up on one transfer after this many seconds (it is then reported as failed).
    #[arg(long, default_value_t = 240)]
    timeout_s: u64,
    /// Stop starting new runs after this many minutes (what ran is reported).
    #[arg(long, default_value_t = 25)]
    max_minutes: u64,
    /// Benchmark this chunk binary instead of building the checkout's (to compare two builds
    /// on the same machine: run the bench once with each).
    #[arg(long, value_name = "PATH")]
    pub chunk_bin: Option<PathBuf>,
    #[command(flatten)]
    wan: wan::WanArgs,
}

/// Whether the first `n` bytes of `a` and `b` are the same.
fn same_prefix(a: &Path, b: &Path, n: u64) -> Result<bool> {
    use std::io::Read;
    let mut fa = std::fs::File::open(a)?.take(n);
    let mut fb = std::fs::File::open(b)?.take(n);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = read_fill(&mut fa, &mut ba)?;
        let nb = read_fill(&mut fb, &mut bb)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the reader ends.
fn read_fill(r: &mut impl std::io::Read, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Everything one run needs that stays the same across runs: the hosts, the binary, the file.
struct Bench<'a> {
    args: &'a BenchArgs,
    bin: String,
    /// Whether this `chunk recv` has `--mode socket` (else that tool is reported as n/a).
    socket_mode: bool,
    /// chunk-xdp-enc's keys, or how its runs end without them (this chunk has no encryption).
    keys: Result<Keys, Outcome>,
    /// scp's sshd configuration and keys, or how its runs end without them (no sshd here).
    ssh: Result<Ssh, Outcome>,
    net: Net,
    work: PathBuf,
    file: PathBuf,
    hash: [u8; 32],
    /// The tree cases' files, if a tree case was asked for.
    tree: Option<tree::Data>,
}

impl Bench<'_> {
    /// One transfer of `tool` in `case`: its figures and how it ended.
    fn run(&self, tool: Tool, case: Case, round: u32) -> Run {
        let mut run = Run::new(tool, case, round);
        run.outcome = match self.unavailable(tool) {
            Some(outcome) => outcome,
            None => match self.transfer(tool, case, &mut run) {
                Ok(()) => Outcome::Measured,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            },
        };
        run
    }

    /// How a run of `tool` ends when the tool cannot run here (what it needs is missing, or
    /// could not be made); `None` when it can.
    fn unavailable(&self, tool: Tool) -> Option<Outcome> {
        let socket = matches!(tool.chunk(), Some((tools::chunk::Mode::Socket, _)));
        match tool {
            _ if socket && !self.socket_mode => Some(Outcome::NotAvailable(
                "this chunk recv has no --mode socket".into(),
            )),
            _ if tool.encrypted() => self.keys.as_ref().err().cloned(),
            Tool::Scp => self.ssh.as_ref().err().cloned(),
            _ => None,
        }
    }

    /// Runs the transfer in a fresh receive directory, removed afterwards.
    fn transfer(&self, tool: Tool, case: Case, run: &mut Run) -> Result<()> {
        let out_dir = self.work.join("recv");
        let _ = std::fs::remove_dir_all(&out_dir);
        std::fs::create_dir_all(&out_dir)?;
        let result = self.transfer_into(&out_dir, tool, case, run);
        let _ = std::fs::remove_dir_all(&out_dir);
        result
    }

    /// Runs the transfer into `out_dir` (with the flood, if the case has one) and checks the
    /// received file's hash.
    fn transfer_into(&self, out_dir: &Path, tool: Tool, case: Case, run: &mut Run) -> Result<()> {
        let flood = if case == Case::Flood {
            let transport = tool.transport();
            Some(
                self.net
                    .flood(&self.bin, self.args.mtu, transport)
                    .context("flood")?,
            )
        } else {
            None
        };
        let t = Transfer {
            net: &self.net,
            bin: &self.bin,
            work: &self.work,
            file: &self.file,
            transfers: 1,
            out_dir,
            mtu: self.args.mtu,
            timeout: Duration::from_secs(self.args.timeout_s),
            chunk_cut_off: None,
            keys: self.keys.as_ref().ok(),
            ssh: self.ssh.as_ref().ok(),
        };
        let result = tools::run(tool, &t, run);
        drop(flood);
        result?;
        let name = self.file.file_name().expect("a file name");
        if let Some(n) = run.partial_bytes {
            // Cut off at the timeout: what arrived must be the file's first bytes.
            if !same_prefix(&self.file, &out_dir.join(name), n)? {
                bail!("the {n} bytes received before the cut-off differ from the file's");
            }
            return Ok(());
        }
        let got = hash_file(&out_dir.join(name)).context("the received file")?;
        if got != self.hash {
            bail!("the received file differs from the one sent");
        }
        Ok(())
    }
}

/// The 1, 5 and 15 minute load averages.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// chunk-xdp-enc's keys, made in `work` if `tools` has that tool and this chunk has `chunk
/// keygen`; otherwise how its runs end (not available, with why; failed, if keygen failed).
fn prepare_keys(bin: &str, work: &Path, tools: &[Tool]) -> Result<Keys, Outcome> {
    if !tools.iter().any(|t| t.encrypted()) {
        return Err(Outcome::NotAvailable("not asked for".into()));
    }
    if !tools::chunk::has_keygen(bin) {
        let why = "this chunk has no `chunk keygen` (no encryption yet)";
        eprintln!("bench: {why}: chunk-xdp-enc is reported n/a");
        return Err(Outcome::NotAvailable(why.into()));
    }
    Keys::generate(bin, &work.join("keys")).map_err(|e| {
        eprintln!("bench: chunk-xdp-enc's keys: {e:#}");
        Outcome::Failed(format!("chunk keygen: {e:#}"))
    })
}

/// scp's sshd configuration and keys, made in `work` if `tools` has scp and OpenSSH's server is
/// installed; otherwise how its runs end (not available, with how to install it; failed, if
/// the configuration could not be made).
fn prepare_ssh(work: &Path, tools: &[Tool], net: &Net) -> Result<Ssh, Outcome> {
    if !tools.contains(&Tool::Scp) {
        return Err(Outcome::NotAvailable("not asked for".into()));
    }
    if let Some(why) = Ssh::missing() {
        eprintln!("bench: {why}: scp is reported n/a");
        return Err(Outcome::NotAvailable(why));
    }
    Ssh::prepare(&work.join("ssh"), net.routed.receiver_addr).map_err(|e| {
        eprintln!("bench: scp's sshd: {e:#}");
        Outcome::Failed(format!("sshd: {e:#}"))
    })
}

/// Whether this chunk binary's `recv` accepts `--mode socket`.
fn has_socket_mode(bin: &str) -> bool {
    Command::new(bin)
        .args(["recv", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("socket"))
}

/// Prints one run's figures (or why there are none) as it ends.
fn log_run(r: &Run, size: u64) {
    let (round, case, tool) = (r.round, r.case.name(), r.tool.name());
    match &r.outcome {
        Outcome::Measured => {
            eprintln!(
                "bench: round {round} {case:<5} {tool:<12} {:>7.1} MB/s  cpu send {:.2} s recv {:.2} s machine {:.2} s  rss recv {} KiB  retx {:?}  junk {:?} pps, {:?} dropped by chunk",
                r.goodput(size),
                r.send_cpu,
                r.recv_cpu,
                r.machine_cpu,
                r.recv_rss_kib,
                r.retransmissions,
                r.junk_pps.map(|p| p.round()),
                r.junk_dropped
            );
            let rate = |n: Option<u64>| n.map_or("?".into(), |n| format!("{:.0}", r.per_second(n)));
            eprintln!(
                "bench:   packets/s {} data, {} reverse; context switches/s {}, interrupts/s {}",
                rate(r.data_packets),
                rate(r.reverse_packets),
                rate(r.wakeups.map(|w| w.context_switches)),
                rate(r.wakeups.map(|w| w.interrupts()))
            );
        }
        Outcome::NotAvailable(why) => {
            eprintln!("bench: round {round} {case:<5} {tool:<12} n/a: {why}")
        }
        Outcome::Failed(e) => eprintln!("bench: round {round} {case:<5} {tool:<12} FAILED: {e}"),
    }
}

pub fn run(bin: &Path, args: &BenchArgs) -> Result<()> {
    if !chunk_tests::is_root() {
        bail!("the benchmark creates network namespaces and attaches XDP: run it as root");
    }
    crate::setup::apt_install(&["uftp", "netcat-openbsd", "time", "rsync"])?;
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("bench: removed stale namespaces: {}", removed.join(", "));
    }
    if !(576..=9000).contains(&args.mtu) {
        bail!("--mtu {} is outside 576..=9000", args.mtu);
    }
    let bin = bin.to_str().context("binary path")?.to_string();
    let lan_cases: Vec<Case> = args.cases.iter().copied().filter(|c| c.is_lan()).collect();
    if !lan_cases.is_empty() {
        let lan = BenchArgs {
            cases: lan_cases,
            tools: with_transports(&args.tools, args.ipv6, args.udp),
            ..args.clone()
        };
        run_lan(&bin, &lan)?;
    }
    let (grid, share) = (
        args.cases.contains(&Case::Wan),
        args.cases.contains(&Case::Share),
    );
    if grid || share {
        let out = crate::workspace_root().join("target/bench");
        std::fs::create_dir_all(&out)?;
        let work = PathBuf::from(format!("/dev/shm/chunk-bench-wan-{}", std::process::id()));
        std::fs::create_dir_all(&work)?;
        let _cleanup = Cleanup(work.clone());
        let ns = chunk_tests::Netns::new("bench-m")?;
        let machine = Machine::read(&ns);
        drop(ns);
        eprint!("bench: {}", machine.markdown());
        wan::run(&bin, &args.wan, grid, share, &work, &out, &machine)?;
    }
    Ok(())
}

/// `tools`, and after each of chunk's plain tools its variants over IPv6 and in UDP as asked
/// (each once, in the order given).
fn with_transports(tools: &[Tool], ipv6: bool, udp: bool) -> Vec<Tool> {
    use tools::chunk::Transport;
    let mut variants = Vec::new();
    if ipv6 {
        variants.push(Transport {
            ipv6: true,
            udp: false,
        });
    }
    if udp {
        variants.push(Transport {
            ipv6: false,
            udp: true,
        });
    }
    if ipv6 && udp {
        variants.push(Transport {
            ipv6: true,
            udp: true,
        });
    }
    let mut out: Vec<Tool> = Vec::new();
    for &tool in tools {
        let more = match tool.chunk() {
            Some((mode, t)) if t == Transport::default() => variants
                .iter()
                .map(|&v| Tool::chunk_variant(mode, v))
                .collect(),
            // Encrypted chunk in UDP too (not a transport variant: its goals are its own).
            None if tool == Tool::ChunkXdpEnc && udp => vec![Tool::ChunkXdpEncUdp],
            _ => Vec::new(),
        };
        for t in std::iter::once(tool).chain(more) {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// Removes the benchmark's work directory.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The LAN cases: every tool in every case of `args.cases` through the router.
fn run_lan(bin: &str, args: &BenchArgs) -> Result<()> {
    let bin = bin.to_string();
    let socket_mode = has_socket_mode(&bin);
    if !socket_mode {
        eprintln!("bench: this chunk recv has no --mode socket: chunk-socket is reported n/a");
    }
    let out = crate::workspace_root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    // Files live in memory, so that no tool waits for the disk.
    let work = PathBuf::from(format!("/dev/shm/chunk-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let _cleanup = Cleanup(work.clone());
    let file = work.join("bench.bin");
    let size = args.size_mib << 20;
    let file_cases = args.cases.iter().any(|c| !c.is_tree());
    let hash = if file_cases {
        eprintln!("bench: generating {} MiB", args.size_mib);
        generate(&file, size)?
    } else {
        [0; 32]
    };
    let tree = if args.cases.iter().any(|c| c.is_tree()) {
        Some(tree::Data::make(&work)?)
    } else {
        None
    };
    let net = Net::new(args.mtu)?;
    let mut bench = Bench {
        args,
        bin: bin.clone(),
        socket_mode,
        keys: prepare_keys(&bin, &work, &args.tools),
        ssh: prepare_ssh(&work, &args.tools, &net),
        net,
        work: work.clone(),
        file,
        hash,
        tree,
    };
    let mut machine = Machine::read(&bench.net.routed.sender);
    eprint!("bench: {}", machine.markdown());
    // Another busy process would slow some runs: the load before and after tells.
    let load_before = loadavg();
    let started = Instant::now();
    let deadline = Duration::from_secs(args.max_minutes * 60);
    let mut runs = Vec::new();
    let mut tree_runs = Vec::new();
    let time_up = || {
        let up = started.elapsed() > deadline;
        if up {
            eprintln!(
                "bench: time is up ({} min); reporting what ran",
                args.max_minutes
            );
        }
        up
    };
    'rounds: for round in 0..args.rounds {
        for &case in &args.cases {
            bench.net.set_loss(case.loss_percent())?;
            // Rotate the tools' order each round: no tool always runs first after a change.
            if let (true, Some(data)) = (case.is_tree(), &bench.tree) {
                let n = tree::TOOLS.len();
                for i in 0..n {
                    let tool = tree::TOOLS[(i + round as usize) % n];
                    for payload in tree::Payload::ALL {
                        if time_up() {
                            break 'rounds;
                        }
                        let r = tree::run(&bench, data, tool, case, round, payload);
                        tree::log(&r, data);
                        tree_runs.push(r);
                    }
                }
                continue;
            }
            let n = args.tools.len();
            for i in 0..n {
                let tool = args.tools[(i + round as usize) % n];
                if time_up() {
                    break 'rounds;
                }
                let r = bench.run(tool, case, round);
                log_run(&r, size);
                runs.push(r);
            }
        }
    }
    bench.net.set_loss(0)?;
    let tree_data = bench.tree.take();
    drop(bench);
    machine.ssh_cipher = runs.iter().find_map(|r| r.cipher.clone());
    if let Some(c) = &machine.ssh_cipher {
        eprintln!("bench: scp negotiated {c}");
    }
    // Once, after the transfers (so that it slows none of them), outside the namespaces.
    let xdp_cost = xdp_cost::measure(&bin);
    match &xdp_cost {
        XdpCost::Measured(c) => eprintln!(
            "bench: in-kernel check: {:.3} ns/byte + {:.0} ns per valid chunk",
            c.valid_ns_per_byte, c.valid_fixed_ns
        ),
        XdpCost::Failed { error } => eprintln!("bench: in-kernel check not measured: {error}"),
    }
    let rss = if args.rss_check {
        let dir = args
            .rss_dir
            .clone()
            .unwrap_or_else(|| out.join("work"))
            .join(format!("rss-{}", std::process::id()));
        rss::check(&bin, socket_mode, &dir, args)
    } else {
        Vec::new()
    };
    let sums = stats::summarize(&runs, size);
    let tree_sums = tree_data
        .as_ref()
        .map(|d| tree::summarize(&tree_runs, d))
        .unwrap_or_default();
    let load_after = loadavg();
    let findings = report::Findings {
        args,
        machine: &machine,
        sums: &sums,
        rss: &rss,
        xdp_cost: &xdp_cost,
        tree: tree_data.as_ref().map(|data| tree::Trees {
            data,
            sums: &tree_sums,
            runs: &tree_runs,
        }),
    };
    let mut md = report::markdown(&findings);
    let cut: Vec<String> = runs
        .iter()
        .filter_map(|r| {
            r.partial_bytes.map(|n| {
                format!(
                    "{} {} round {} ({:.1} MiB in {:.0} s)",
                    r.case.name(),
                    r.tool.name(),
                    r.round,
                    n as f64 / (1 << 20) as f64,
                    r.seconds
                )
            })
        })
        .collect();
    if !cut.is_empty() {
        md.push_str(&format!(
            "\nCut off before the end, measured by the bytes that arrived (all of them the \
             file's first bytes): {}.\n",
            cut.join("; ")
        ));
    }
    md.push_str(&format!(
        "\nRan in {:.1} min; load average before {load_before}, after {load_after} \
         (other work on the machine skews every figure).\n",
        started.elapsed().as_secs_f64() / 60.0
    ));
    println!("{md}");
    std::fs::write(out.join("results.md"), &md)?;
    let results = report::Results::new(
        &findings,
        started.elapsed().as_secs_f64(),
        (load_before, load_after),
        &runs,
    );
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    // The chart is of the cases with one large file.
    let chart_args = BenchArgs {
        cases: args
            .cases
            .iter()
            .copied()
            .filter(|c| !c.is_tree())
            .collect(),
        ..args.clone()
    };
    if chart_args.cases.is_empty() {
        let _ = std::fs::remove_file(out.join("goodput.png"));
    } else if let Err(e) = chart::draw(&out.join("goodput.png"), &chart_args, &machine, &sums) {
        eprintln!("bench: no chart: {e:#}");
    }
    eprintln!(
        "bench: wrote {}/results.md, results.json{}",
        out.display(),
        if chart_args.cases.is_empty() {
            ""
        } else {
            ", goodput.png"
        }
    );
    Ok(())
}

/// Made-up inputs for the tests of the statistics, the report and the chart.
#[cfg(test)]
mod fixtures {
    use super::*;
    use clap::ValueEnum;
    use machine::Machine;
    use wakeups::Wakeups;
    use xdp_cost::XdpCost;

    pub fn args() -> BenchArgs {
        BenchArgs {
            size_mib: 64,
            rounds: 3,
            cases: lan_cases(),
            tools: Tool::value_variants().to_vec(),
            ipv6: false,
            udp: false,
            mtu: 1500,
            rss_check: false,
            rss_dir: None,
            timeout_s: 1,
            max_minutes: 1,
            chunk_bin: None,
            wan: wan::WanArgs {
                wan_rate_mbit: 200,
                wan_rtts: vec![20, 100],
                wan_loss: vec![0, 1],
                wan_size_mib: 1,
                wan_tools: vec![wan::WanTool::ChunkXdp, wan::WanTool::TcpCubic],
                wan_cut_off_s: 1,
                share_rtt_ms: 100,
            },
        }
    }

    /// The LAN cases of the one large file (the default cases), in their order.
    pub fn lan_cases() -> Vec<Case> {
        Case::value_variants()
            .iter()
            .copied()
            .filter(|c| c.is_lan() && !c.is_tree())
            .collect()
    }

    pub fn machine() -> Machine {
        Machine {
            cpu_model: "Test CPU".into(),
            cpus: 2,
            kernel: "6.18.0".into(),
            commit: "abc1234".into(),
            dirty: false,
            date: "2026-01-01T00:00:00Z".into(),
            tcp_congestion_control: Some("bbr".into()),
            ssh_cipher: Some("chacha20-poly1305@openssh.com".into()),
        }
    }

    pub fn xdp_cost() -> XdpCost {
        XdpCost::Measured(serde_json::from_str(xdp_cost::SAMPLE_OUTPUT).unwrap())
    }

    /// Made-up runs: three rounds of every tool in every case, chunk-socket missing.
    pub fn runs() -> Vec<Run> {
        let mut v = Vec::new();
        for (ci, &case) in lan_cases().iter().enumerate() {
            for (ti, &tool) in Tool::value_variants().iter().enumerate() {
                for round in 0..3 {
                    v.push(Run {
                        tool,
                        case,
                        round,
                        outcome: if tool == Tool::ChunkSocket {
                            Outcome::NotAvailable("test".into())
                        } else {
                            Outcome::Measured
                        },
                        seconds: 0.2 + 0.1 * (ci + ti) as f64 + 0.01 * round as f64,
                        send_cpu: 0.1,
                        recv_cpu: 0.2,
                        machine_cpu: 0.3,
                        send_rss_kib: 1024,
                        recv_rss_kib: 2048,
                        retransmissions: Some(round as u64),
                        junk_pps: (case == Case::Flood).then_some(4e5),
                        junk_dropped: None,
                        data_packets: Some(40_000),
                        reverse_packets: Some(4_000),
                        partial_bytes: None,
                        cipher: None,
                        wakeups: Some(Wakeups {
                            context_switches: 10_000,
                            loc: 12_000,
                            res: 4_000,
                            cal: 3_000,
                            iwi: 1_000,
                        }),
                    });
                }
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Parser, ValueEnum};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|c| c.bench)
    }

    #[test]
    fn the_command_line_takes_the_same_names_as_before() {
        let all = parse(&[]).unwrap();
        assert_eq!(all.cases, fixtures::lan_cases());
        assert_eq!(
            all.tools,
            [
                Tool::ChunkXdp,
                Tool::ChunkSocket,
                Tool::ChunkXdpEnc,
                Tool::Nc,
                Tool::Uftp
            ]
        );
        let tcp = parse(&["--tools", "tcp-cubic,tcp-bbr"]).unwrap();
        assert_eq!(tcp.tools, [Tool::TcpCubic, Tool::TcpBbr]);
        let enc = parse(&["--tools", "scp,chunk-xdp-enc"]).unwrap();
        assert_eq!(enc.tools, [Tool::Scp, Tool::ChunkXdpEnc]);
        // chunk-xdp-enc is no transport variant: --ipv6 adds nothing after it.
        assert_eq!(
            with_transports(&enc.tools, true, false),
            [Tool::Scp, Tool::ChunkXdpEnc]
        );
        let some = parse(&[
            "--cases",
            "clean,loss5,flood",
            "--tools",
            "uftp,chunk-xdp,nc,chunk-socket",
        ])
        .unwrap();
        assert_eq!(some.cases, [Case::Clean, Case::Loss5, Case::Flood]);
        assert_eq!(
            some.tools,
            [Tool::Uftp, Tool::ChunkXdp, Tool::Nc, Tool::ChunkSocket]
        );
        assert!(parse(&["--cases", "loss2"]).is_err());
        // The tree cases are asked for by name, and run on the LAN link with its loss.
        let tree = parse(&["--cases", "tree,tree-loss1"]).unwrap();
        assert_eq!(tree.cases, [Case::Tree, Case::TreeLoss1]);
        assert!(tree.cases.iter().all(|c| c.is_lan() && c.is_tree()));
        assert_eq!(Case::TreeLoss1.loss_percent(), Case::Loss1.loss_percent());
        assert_eq!(
            parse(&["--tools", "tar-nc,rsync"]).unwrap().tools,
            [Tool::TarNc, Tool::Rsync]
        );
        let wan = parse(&["--cases", "wan,share", "--wan-rtts", "50,200"]).unwrap();
        assert_eq!(wan.cases, [Case::Wan, Case::Share]);
        assert_eq!(wan.wan.wan_rtts, [50, 200]);
        assert_eq!(wan.wan.wan_loss, [0, 1, 5]);
        assert!(parse(&["--tools", "tcp-reno"]).is_err());
        // --ipv6 and --udp add chunk's variants after each plain chunk tool, nothing else.
        let v = parse(&["--ipv6", "--udp", "--tools", "chunk-xdp,nc"]).unwrap();
        assert_eq!(
            with_transports(&v.tools, v.ipv6, v.udp),
            [
                Tool::ChunkXdp,
                Tool::ChunkXdpIpv6,
                Tool::ChunkXdpUdp,
                Tool::ChunkXdpIpv6Udp,
                Tool::Nc
            ]
        );
        assert_eq!(
            with_transports(&[Tool::ChunkSocket, Tool::ChunkSocketIpv6], true, false),
            [Tool::ChunkSocket, Tool::ChunkSocketIpv6]
        );
        // Encrypted chunk gets its UDP run with --udp only.
        let enc = [Tool::ChunkXdpEnc, Tool::Scp];
        assert_eq!(with_transports(&enc, true, false), enc);
        assert_eq!(
            with_transports(&enc, false, true),
            [Tool::ChunkXdpEnc, Tool::ChunkXdpEncUdp, Tool::Scp]
        );
        assert!(Tool::ChunkXdpEncUdp.transport().udp && Tool::ChunkXdpEncUdp.encrypted());
        for t in Tool::value_variants() {
            assert_eq!(
                t.plain().chunk().map(|(_, tr)| tr),
                t.chunk().map(|_| Default::default())
            );
        }
        // The spelling on the command line is the one in the results.
        for c in Case::value_variants() {
            assert_eq!(c.to_possible_value().unwrap().get_name(), c.name());
        }
        for t in Tool::value_variants() {
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.name());
        }
    }
}
