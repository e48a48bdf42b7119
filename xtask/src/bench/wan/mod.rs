//! The WAN cases (`cargo xtask bench --cases wan,share`): long, lossy links for real.
//!
//! Each run gets a fresh link: sender — bridge — receiver ([`chunk_tests::Bridged`]), the
//! bridge a delay line in this process that holds every frame, whatever its protocol, for half
//! the round trip each way behind a bottleneck of `--wan-rate-mbit` with a drop-tail queue of
//! one bandwidth-delay product, and loses frames at random (or in Gilbert–Elliott bursts) each
//! way. A sampler reads the bytes the bridge delivered towards the receiver every 10 ms, which
//! gives every tool's time to reach 90 % of the link rate and its steady state alike; the
//! bridge's counters give the losses and the queue's peak. The simulator (`chunk sim`, the
//! protocol core on a simulated link) runs the same cases next to chunk, so its fidelity is a
//! number. The `share` case puts two flows on one bottleneck. Results: `target/bench/wan.md`,
//! `wan.json` and `wan.png` ([`report`], [`chart`]).

mod chart;
mod report;
mod tools;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::{
    Bridged, Impairments,
    impair::{ImpairStats, TO_RECEIVER, WIRE_OVERHEAD},
};
use serde::Serialize;
use serde_json::Value;

use super::run::Outcome;
use crate::demo::hash_file;
pub use tools::WanTool;

/// The WAN cases' options (part of `cargo xtask bench`'s).
#[derive(clap::Args, Clone, Debug)]
pub struct WanArgs {
    /// The bottleneck's rate each way, Mbit/s.
    #[arg(long, default_value_t = 200)]
    pub wan_rate_mbit: u64,
    /// Round-trip times of the WAN grid, ms.
    #[arg(long, value_delimiter = ',', default_value = "20,100,300,600")]
    pub wan_rtts: Vec<u64>,
    /// Loss each way of the WAN grid, percent.
    #[arg(long, value_delimiter = ',', default_value = "0,1,5")]
    pub wan_loss: Vec<u32>,
    /// Size of the file of the WAN cases, MiB.
    #[arg(long, default_value_t = 256)]
    pub wan_size_mib: u64,
    /// Tools of the WAN cases: chunk-xdp (a first transfer, from an empty path cache),
    /// chunk-xdp-warm (the next transfer on the same link, from the path cache the first left),
    /// tcp-cubic, tcp-bbr, uftp.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "chunk-xdp,chunk-xdp-warm,tcp-cubic,tcp-bbr,uftp",
        hide_possible_values = true
    )]
    pub wan_tools: Vec<WanTool>,
    /// A WAN transfer is cut off after this many seconds (TCP is then measured by the bytes
    /// that arrived; any other tool is reported as cut off).
    #[arg(long, default_value_t = 60)]
    pub wan_cut_off_s: u64,
    /// Round trip of the `share` case's link, ms.
    #[arg(long, default_value_t = 100)]
    pub share_rtt_ms: u64,
}

/// The burst case's Gilbert–Elliott chain, per slot of the link's time (a full frame's, see
/// `chunk_tests::impair::BURST_SLOT_BYTES`): good → bad 0.25 %, bad → good 25 %, so 1 % of
/// frames lost, in bursts of 4 slots on average.
pub const BURST: (f64, f64) = (0.0025, 0.25);
/// The burst case's round trip.
const BURST_RTT_MS: u64 = 100;

/// One condition of the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WanCase {
    pub rtt_ms: u64,
    /// Random loss each way, percent (0 for the burst case).
    pub loss_pct: u32,
    /// Gilbert–Elliott burst loss ([`BURST`]) instead of random loss.
    pub burst: bool,
}

impl WanCase {
    pub fn name(&self) -> String {
        if self.burst {
            format!("rtt{}-burst", self.rtt_ms)
        } else {
            format!("rtt{}-loss{}", self.rtt_ms, self.loss_pct)
        }
    }

    pub fn label(&self) -> String {
        if self.burst {
            format!("{} ms, bursts (1 %)", self.rtt_ms)
        } else {
            format!("{} ms, {} %", self.rtt_ms, self.loss_pct)
        }
    }

    fn rtt(&self) -> Duration {
        Duration::from_millis(self.rtt_ms)
    }

    fn impairments(&self, rate_bps: u64, seed: u64) -> Impairments {
        Impairments {
            seed,
            protocol: chunk_common::DEFAULT_IP_PROTOCOL,
            delay: self.rtt() / 2,
            rate_bps,
            loss: f64::from(self.loss_pct) / 100.0,
            burst: self.burst.then_some(BURST),
            ..Impairments::default()
        }
    }
}

impl Serialize for WanCase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

/// The grid: every RTT × every loss, and the burst case.
pub fn grid(a: &WanArgs) -> Vec<WanCase> {
    let mut cases: Vec<WanCase> = a
        .wan_rtts
        .iter()
        .flat_map(|&rtt_ms| {
            a.wan_loss.iter().map(move |&loss_pct| WanCase {
                rtt_ms,
                loss_pct,
                burst: false,
            })
        })
        .collect();
    cases.push(WanCase {
        rtt_ms: BURST_RTT_MS,
        loss_pct: 0,
        burst: true,
    });
    cases
}

/// What the simulator gave for a case.
#[derive(Clone, Debug, Serialize)]
pub struct SimFigures {
    pub goodput_share: f64,
    pub steady_share: f64,
    pub retransmitted: u64,
    pub lost: u64,
    /// The simulator's time to 90 % of the link, in RTTs (as the bridge's is measured).
    pub t90_rtts: Option<f64>,
    pub verified: bool,
}

/// One WAN transfer's figures.
#[derive(Clone, Debug, Serialize)]
pub struct WanRun {
    pub tool: WanTool,
    pub case: WanCase,
    #[serde(skip)]
    pub outcome: Outcome,
    pub error: Option<String>,
    pub seconds: f64,
    /// File bytes that arrived (the file's size unless cut off).
    pub bytes: u64,
    /// Cut off: the bytes that had arrived, all of them the file's first.
    pub partial_bytes: Option<u64>,
    /// File bits per second over the whole transfer, as a share of the link rate.
    pub goodput_share: Option<f64>,
    /// The same between 50 % and 90 % of the data delivered: the steady state.
    pub steady_share: Option<f64>,
    /// From the sender's start until the start of the first RTT (at least 50 ms) that
    /// delivered 90 % of the link rate or more, in RTTs; None: never.
    pub t90_rtts: Option<f64>,
    pub retransmissions: Option<u64>,
    /// chunk's RTO expiries.
    pub rtos: Option<u64>,
    /// Frames towards the receiver lost at random or by a full queue.
    pub lost: u64,
    /// Frames towards the sender lost (acks).
    pub lost_reverse: u64,
    pub queue_drops: u64,
    pub peak_queue_bytes: u64,
    /// chunk's smoothed RTT, as its sender measured it.
    pub srtt_ms: Option<f64>,
    pub chunks: Option<u64>,
    /// chunk with a path cache: what became of the estimate it found (`validated`,
    /// `retreated`, `rejected`, ...), or with none (or one rejected) of the jump from its first
    /// round's reading (`first round validated`, ...); `none`: neither; `None`: no cache.
    pub resume: Option<String>,
    pub sim: Option<SimFigures>,
}

impl WanRun {
    fn new(tool: WanTool, case: WanCase) -> WanRun {
        WanRun {
            tool,
            case,
            outcome: Outcome::Failed("not run".into()),
            error: None,
            seconds: 0.0,
            bytes: 0,
            partial_bytes: None,
            goodput_share: None,
            steady_share: None,
            t90_rtts: None,
            retransmissions: None,
            rtos: None,
            lost: 0,
            lost_reverse: 0,
            queue_drops: 0,
            peak_queue_bytes: 0,
            srtt_ms: None,
            chunks: None,
            resume: None,
            sim: None,
        }
    }

    /// Retransmissions per frame lost towards the receiver.
    pub fn retx_per_lost(&self) -> Option<f64> {
        let r = self.retransmissions?;
        (self.lost > 0).then(|| r as f64 / self.lost as f64)
    }
}

/// Reads the bridge's delivered bytes every 10 ms until stopped: (time since the start, wire
/// bytes delivered towards the receiver), and, when the bridge counts flows, each flow's.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Samples>>,
}

#[derive(Default)]
struct Samples {
    total: Vec<(f64, u64)>,
    flows: Vec<FlowSample>,
}

impl Sampler {
    fn start(stats: Arc<ImpairStats>, flows: bool) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut out = Samples::default();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let t = t0.elapsed().as_secs_f64();
                out.total.push((
                    t,
                    stats.dirs[TO_RECEIVER]
                        .delivered_wire_bytes
                        .load(Ordering::Relaxed),
                ));
                if flows && i.is_multiple_of(10) {
                    let f = stats
                        .flows
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let d = &stats.dirs[TO_RECEIVER];
                    out.flows.push(FlowSample {
                        t,
                        bytes: f,
                        queue_bytes: d.queue_bytes.load(Ordering::Relaxed),
                        queue_drops: d.queue_drops.load(Ordering::Relaxed),
                    });
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            out
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The time (seconds from the first sample) from which one `window` first carried `rate` bits
/// per second or more: the start of the first such window.
fn time_to_rate(samples: &[(f64, u64)], window: f64, rate: f64) -> Option<f64> {
    let mut j = 0;
    for i in 0..samples.len() {
        let (t, b) = samples[i];
        while j + 1 < i && samples[j + 1].0 <= t - window {
            j += 1;
        }
        let (t0, b0) = samples[j];
        if t - t0 >= window * 0.999 && (b - b0) as f64 * 8.0 / (t - t0) >= rate {
            return Some(t0);
        }
    }
    None
}

/// The delivery rate (bytes per second) between the moments 50 % and 90 % of the last
/// sample's bytes had been delivered.
fn steady_rate(samples: &[(f64, u64)]) -> Option<f64> {
    let total = samples.last()?.1;
    let at = |share: f64| {
        samples
            .iter()
            .find(|(_, b)| *b as f64 >= share * total as f64)
            .map(|s| s.0)
    };
    let (a, b) = (at(0.5)?, at(0.9)?);
    (b > a).then(|| 0.4 * total as f64 / (b - a))
}

/// Everything the WAN runs share.
struct Wan<'a> {
    args: &'a WanArgs,
    bin: &'a str,
    work: PathBuf,
    file: PathBuf,
    hash: [u8; 32],
    size: u64,
    rate_bps: u64,
}

impl Wan<'_> {
    /// The case's own path cache: chunk-xdp starts it empty and leaves what it measured in it;
    /// chunk-xdp-warm starts from it.
    fn path_cache(&self, case: WanCase) -> PathBuf {
        self.work
            .join("path-cache")
            .join(format!("{}.json", case.name()))
    }

    fn run(&self, tool: WanTool, case: WanCase, seed: u64) -> WanRun {
        let cache = self.path_cache(case);
        if tool == WanTool::ChunkXdp {
            let _ = std::fs::remove_file(&cache);
        }
        if tool == WanTool::ChunkXdpWarm && !cache.exists() {
            // No cold run of this case before: a first transfer of our own, on a link of its
            // own (the measured one's counters see only the measured transfer), not reported.
            eprintln!("bench: wan {:<14} warming up the path cache", case.name());
            let warm_up = self.run(WanTool::ChunkXdp, case, seed + 1000);
            if !warm_up.outcome.is_measured() {
                eprintln!(
                    "bench: wan {:<14} the warm-up failed: {:?}",
                    case.name(),
                    warm_up.error
                );
            }
        }
        let mut run = WanRun::new(tool, case);
        let out_dir = self.work.join("wan-recv");
        let _ = std::fs::remove_dir_all(&out_dir);
        let r = std::fs::create_dir_all(&out_dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                let _ = std::fs::create_dir_all(cache.parent().expect("in a directory"));
                self.transfer(tool, case, seed, &out_dir, &cache, &mut run)
            });
        let _ = std::fs::remove_dir_all(&out_dir);
        run.outcome = match r {
            Ok(()) => Outcome::Measured,
            Err(e) => Outcome::Failed(format!("{e:#}")),
        };
        run.error = run.outcome.error();
        if matches!(tool, WanTool::ChunkXdp | WanTool::ChunkXdpWarm) {
            run.sim = self
                .simulate(case, run.chunks, tool == WanTool::ChunkXdpWarm)
                .ok();
        }
        run
    }

    fn transfer(
        &self,
        tool: WanTool,
        case: WanCase,
        seed: u64,
        out_dir: &Path,
        cache: &Path,
        run: &mut WanRun,
    ) -> Result<()> {
        let net = Bridged::new("bwan", case.impairments(self.rate_bps, seed))?;
        let job = tools::Job {
            net: &net,
            bin: self.bin,
            file: &self.file,
            out_dir,
            rate_bps: self.rate_bps,
            cut_off: Duration::from_secs(self.args.wan_cut_off_s),
            path_cache: Some(cache),
        };
        let mut sampler = None;
        let result = tools::run(tool, &job, run, &mut || {
            sampler = Some(Sampler::start(net.stats.clone(), false));
        });
        let samples = sampler.map(Sampler::stop).unwrap_or_default();
        let d = &net.stats.dirs;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        run.lost = load(&d[TO_RECEIVER].lost) + load(&d[TO_RECEIVER].queue_drops);
        run.queue_drops = load(&d[TO_RECEIVER].queue_drops);
        run.lost_reverse = load(&d[1 - TO_RECEIVER].lost) + load(&d[1 - TO_RECEIVER].queue_drops);
        run.peak_queue_bytes = load(&d[TO_RECEIVER].peak_queue_bytes);
        result?;
        let dest = out_dir.join(self.file.file_name().expect("a file name"));
        run.bytes = match run.partial_bytes {
            Some(n) => {
                if !super::same_prefix(&self.file, &dest, n)? {
                    bail!("the {n} bytes received before the cut-off differ from the file's");
                }
                n
            }
            None => {
                if hash_file(&dest).context("the received file")? != self.hash {
                    bail!("the received file differs from the one sent");
                }
                self.size
            }
        };
        let rate = self.rate_bps as f64;
        run.goodput_share = Some(run.bytes as f64 * 8.0 / run.seconds.max(1e-9) / rate);
        let wire = samples.total.last().map_or(0, |s| s.1);
        if wire > 0 {
            // The steady delivery rate, counted in file bytes (the wire's share of them).
            run.steady_share = steady_rate(&samples.total)
                .map(|r| r * 8.0 / rate * run.bytes as f64 / wire as f64);
        }
        let rtt = case.rtt().as_secs_f64();
        run.t90_rtts = time_to_rate(&samples.total, rtt.max(0.05), 0.9 * rate).map(|t| t / rtt);
        Ok(())
    }

    /// The same case in the simulator: the chunk size the real sender used, the bridge's
    /// framing (IPv4 and Ethernet headers, preamble, gap and FCS) on the simulated link; `warm`:
    /// a second transfer from what a first one measured (`chunk sim --warm`).
    fn simulate(&self, case: WanCase, chunks: Option<u64>, warm: bool) -> Result<SimFigures> {
        let chunk_size = chunks
            .filter(|&c| c > 0)
            .map_or(1460, |c| self.size.div_ceil(c));
        let mut cmd = std::process::Command::new(self.bin);
        cmd.args([
            "sim",
            "--rate-bps",
            &self.rate_bps.to_string(),
            "--rtt-ms",
            &case.rtt_ms.to_string(),
            "--loss",
            &(f64::from(case.loss_pct) / 100.0).to_string(),
            "--size",
            &self.size.to_string(),
            "--chunk-size",
            &chunk_size.to_string(),
            "--overhead",
            &(20 + 14 + WIRE_OVERHEAD).to_string(),
        ]);
        if case.burst {
            cmd.args(["--burst", &format!("{},{}", BURST.0, BURST.1)]);
        }
        if warm {
            cmd.arg("--warm");
        }
        let out = super::tools::output_within(cmd, Duration::from_secs(600))?;
        if !out.status.success() {
            bail!("chunk sim: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("chunk sim's JSON")?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok(SimFigures {
            goodput_share: f("goodput_share"),
            steady_share: f("steady_share"),
            retransmitted: v["retransmitted"].as_u64().unwrap_or(0),
            lost: v["lost_up"].as_u64().unwrap_or(0),
            t90_rtts: v["t90_rtts"].as_f64(),
            verified: v["verified"].as_bool().unwrap_or(false) && v["finished"] == true,
        })
    }
}

/// Two flows on one bottleneck, started together.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Pair {
    /// Two chunk transfers.
    TwoChunk,
    /// chunk next to TCP CUBIC.
    WithCubic,
    /// chunk next to TCP BBR.
    WithBbr,
}

impl Pair {
    pub fn label(self) -> &'static str {
        match self {
            Pair::TwoChunk => "chunk + chunk",
            Pair::WithCubic => "chunk + TCP CUBIC",
            Pair::WithBbr => "chunk + TCP BBR",
        }
    }

    fn tools(self) -> [WanTool; 2] {
        match self {
            Pair::TwoChunk => [WanTool::ChunkXdp, WanTool::ChunkXdp],
            Pair::WithCubic => [WanTool::ChunkXdp, WanTool::TcpCubic],
            Pair::WithBbr => [WanTool::ChunkXdp, WanTool::TcpBbr],
        }
    }
}

/// The sharing case's link: no loss, a round trip of `--share-rtt-ms`.
pub fn share_case(a: &WanArgs) -> WanCase {
    WanCase {
        rtt_ms: a.share_rtt_ms,
        loss_pct: 0,
        burst: false,
    }
}

/// What a pair of flows got.
#[derive(Clone, Debug, Serialize)]
pub struct ShareRun {
    pub pair: Pair,
    pub label: &'static str,
    pub case: WanCase,
    /// Each flow's share of the bytes the bottleneck delivered while both ran (first flow
    /// first: chunk).
    pub shares: Option<[f64; 2]>,
    /// Seconds both ran side by side (the measurement window).
    pub window_s: f64,
    /// Both flows together, as a share of the link rate, in that window.
    pub utilisation: Option<f64>,
    pub error: Option<String>,
}

impl Wan<'_> {
    /// Two transfers at once on one link, each flow's bytes counted by the bridge; shares are
    /// taken from one second after both started until the first one ends.
    fn share(&self, pair: Pair, seed: u64) -> ShareRun {
        let mut out = ShareRun {
            pair,
            label: pair.label(),
            case: share_case(self.args),
            shares: None,
            window_s: 0.0,
            utilisation: None,
            error: None,
        };
        if let Err(e) = self.share_into(pair, seed, &mut out) {
            out.error = Some(format!("{e:#}"));
        }
        out
    }

    fn share_into(&self, pair: Pair, seed: u64, out: &mut ShareRun) -> Result<()> {
        let case = share_case(self.args);
        let mut imp = case.impairments(self.rate_bps, seed);
        imp.count_flows = true;
        let net = Bridged::new("bshr", imp)?;
        let chunk_flows = pair
            .tools()
            .iter()
            .filter(|t| **t == WanTool::ChunkXdp)
            .count() as u32;
        let shared_dir = self.work.join("share");
        let _ = std::fs::remove_dir_all(&shared_dir);
        std::fs::create_dir_all(&shared_dir)?;
        // Two chunk transfers: the second file under another name.
        let second = self.work.join("share-b.bin");
        let _ = std::fs::remove_file(&second);
        std::fs::hard_link(&self.file, &second)?;
        let cut_off = Duration::from_secs(self.args.wan_cut_off_s);
        // One chunk receiver for every chunk flow, attached before any flow starts, so that
        // the flows start together and no XDP attach disturbs a running TCP flow.
        let receiver = tools::chunk_receiver(
            &tools::Job {
                net: &net,
                bin: self.bin,
                file: &self.file,
                out_dir: &shared_dir,
                rate_bps: self.rate_bps,
                cut_off,
                path_cache: None,
            },
            chunk_flows,
        )?;
        let sampler = Sampler::start(net.stats.clone(), true);
        let t0 = Instant::now();
        let ends: Vec<Result<f64>> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .tools()
                .iter()
                .enumerate()
                .map(|(i, &tool)| {
                    let (net, shared_dir, second) = (&net, &shared_dir, &second);
                    s.spawn(move || -> Result<f64> {
                        let own = self.work.join(format!("share-{i}"));
                        let _ = std::fs::remove_dir_all(&own);
                        std::fs::create_dir_all(&own)?;
                        let job = tools::Job {
                            net,
                            bin: self.bin,
                            file: if i == 1 { second } else { &self.file },
                            out_dir: if tool == WanTool::ChunkXdp {
                                shared_dir
                            } else {
                                &own
                            },
                            rate_bps: self.rate_bps,
                            cut_off,
                            path_cache: None,
                        };
                        let mut run = WanRun::new(tool, case);
                        let r = if tool == WanTool::ChunkXdp {
                            tools::chunk_sender(&job, &mut run, &mut || {})
                        } else {
                            tools::run(tool, &job, &mut run, &mut || {})
                        };
                        let _ = std::fs::remove_dir_all(&own);
                        r.map(|()| t0.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("a flow panicked")))
                .collect()
        });
        let _ = receiver.daemon.wait(Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&shared_dir);
        let _ = std::fs::remove_file(&second);
        let samples = sampler.stop();
        let first_end = ends
            .iter()
            .filter_map(|e| e.as_ref().ok().copied())
            .fold(f64::INFINITY, f64::min);
        for e in &ends {
            if let Err(e) = e {
                bail!("{e:#}");
            }
        }
        if let Some(path) = std::env::var_os("CHUNK_BENCH_SHARE_TRACE") {
            write_flow_trace(&samples.flows, pair, std::path::Path::new(&path))?;
        }
        let (a, b) = flow_window(&samples.flows, 1.0, first_end).context("no window")?;
        let mut deltas: Vec<(u64, u64)> = b
            .bytes
            .iter()
            .map(|(k, v)| (*k, v - a.bytes.get(k).copied().unwrap_or(0)))
            .filter(|(k, _)| *k != 0)
            .collect();
        deltas.sort_by_key(|d| std::cmp::Reverse(d.1));
        if deltas.len() < 2 {
            bail!("fewer than two flows in the window");
        }
        // chunk first: with two chunk flows either order; with TCP, the chunk one.
        let chunk_proto = u64::from(chunk_common::DEFAULT_IP_PROTOCOL) << 56;
        let (x, y) = (deltas[0], deltas[1]);
        let (first, second) = if x.0 & (0xff << 56) == chunk_proto {
            (x, y)
        } else {
            (y, x)
        };
        let sum = (first.1 + second.1) as f64;
        out.window_s = b.t - a.t;
        out.shares = Some([first.1 as f64 / sum, second.1 as f64 / sum]);
        out.utilisation = Some(sum * 8.0 / out.window_s / self.rate_bps as f64);
        Ok(())
    }
}

/// What the bridge had counted at one moment of a sharing run (every 100 ms).
struct FlowSample {
    /// Seconds since the start.
    t: f64,
    /// Wire bytes delivered towards the receiver, per flow.
    bytes: std::collections::HashMap<u64, u64>,
    /// The queue towards the receiver: its depth, and its drops so far.
    queue_bytes: u64,
    queue_drops: u64,
}

/// Appends each flow's rate per 100 ms to `path` (`CHUNK_BENCH_SHARE_TRACE`): a header with the
/// pair and its flow keys in ascending order (TCP, IP protocol 6, before chunk's), then a line
/// per interval with the time, each flow's Mbit/s, the queue's depth and its drops.
fn write_flow_trace(flows: &[FlowSample], pair: Pair, path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut keys: Vec<u64> = flows
        .iter()
        .flat_map(|s| s.bytes.keys().copied())
        .filter(|k| *k != 0)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    writeln!(f, "# {} flows {:x?}", pair.label(), keys)?;
    let mut prev: Option<&FlowSample> = None;
    for s in flows {
        let Some(p) = prev else {
            prev = Some(s);
            continue;
        };
        let dt = s.t - p.t;
        if dt < 0.1 {
            continue;
        }
        let rates: Vec<String> = keys
            .iter()
            .map(|k| {
                let now = s.bytes.get(k).copied().unwrap_or(0);
                let d = now - p.bytes.get(k).copied().unwrap_or(0);
                format!("{:.1}", d as f64 * 8.0 / dt / 1e6)
            })
            .collect();
        writeln!(
            f,
            "{:.2} {} queue {} kB, {} drops",
            s.t,
            rates.join(" "),
            s.queue_bytes / 1000,
            s.queue_drops - p.queue_drops
        )?;
        prev = Some(s);
    }
    Ok(())
}

/// The first sample `skip` seconds after both flows were delivering and the last one before
/// `end`.
fn flow_window(flows: &[FlowSample], skip: f64, end: f64) -> Option<(&FlowSample, &FlowSample)> {
    let both = flows
        .iter()
        .find(|s| {
            let delivering = s.bytes.iter().filter(|(k, v)| **k != 0 && **v > 100_000);
            delivering.count() >= 2
        })?
        .t;
    let a = flows.iter().find(|s| s.t >= both + skip)?;
    let b = flows.iter().rev().find(|s| s.t <= end)?;
    (b.t > a.t).then_some((a, b))
}

/// Runs the WAN grid (`grid`) and, with `share`, the sharing pairs; writes wan.md, wan.json and
/// wan.png to `out`.
pub fn run(
    bin: &str,
    args: &WanArgs,
    grid_on: bool,
    share_on: bool,
    work: &Path,
    out: &Path,
    machine: &super::machine::Machine,
) -> Result<()> {
    let size = args.wan_size_mib << 20;
    let file = work.join("wan.bin");
    eprintln!(
        "bench: generating {} MiB for the WAN cases",
        args.wan_size_mib
    );
    let hash = crate::demo::generate(&file, size)?;
    let wan = Wan {
        args,
        bin,
        work: work.to_path_buf(),
        file,
        hash,
        size,
        rate_bps: args.wan_rate_mbit * 1_000_000,
    };
    let started = Instant::now();
    let ceiling = wan.ceiling();
    match &ceiling {
        Ok(c) => eprintln!("bench: the bridge forwarded {c:.0} Mbit/s without a rate limit"),
        Err(e) => eprintln!("bench: the bridge's ceiling not measured: {e:#}"),
    }
    let mut runs = Vec::new();
    if grid_on {
        for (ci, case) in grid(args).into_iter().enumerate() {
            for &tool in &args.wan_tools {
                let r = wan.run(tool, case, 1 + ci as u64);
                log(&r);
                runs.push(r);
            }
        }
    }
    let mut shares = Vec::new();
    if share_on {
        for (i, pair) in [Pair::TwoChunk, Pair::WithCubic, Pair::WithBbr]
            .into_iter()
            .enumerate()
        {
            let s = wan.share(pair, 100 + i as u64);
            match (&s.shares, &s.error) {
                (Some([a, b]), _) => eprintln!(
                    "bench: share {:<18} {:.0} % / {:.0} % over {:.1} s, link {:.0} % used",
                    s.label,
                    a * 100.0,
                    b * 100.0,
                    s.window_s,
                    s.utilisation.unwrap_or(0.0) * 100.0
                ),
                (_, e) => eprintln!("bench: share {:<18} FAILED: {e:?}", s.label),
            }
            shares.push(s);
        }
    }
    let findings = report::Findings {
        args,
        machine,
        runs: &runs,
        shares: &shares,
        ceiling_mbit: ceiling.ok(),
        minutes: started.elapsed().as_secs_f64() / 60.0,
    };
    let md = report::markdown(&findings);
    println!("{md}");
    std::fs::write(out.join("wan.md"), &md)?;
    std::fs::write(
        out.join("wan.json"),
        serde_json::to_string_pretty(&report::json(&findings))?,
    )?;
    if grid_on && let Err(e) = chart::draw(&out.join("wan.png"), &findings) {
        eprintln!("bench: no WAN chart: {e:#}");
    }
    eprintln!("bench: wrote {}/wan.md, wan.json, wan.png", out.display());
    Ok(())
}

impl Wan<'_> {
    /// The bridge's own ceiling: chunk through it with no rate limit and no delay, Mbit/s of
    /// frames delivered towards the receiver.
    fn ceiling(&self) -> Result<f64> {
        let net = Bridged::new(
            "bceil",
            Impairments {
                seed: 7,
                protocol: chunk_common::DEFAULT_IP_PROTOCOL,
                ..Impairments::default()
            },
        )?;
        let dir = self.work.join("ceiling");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let job = tools::Job {
            net: &net,
            bin: self.bin,
            file: &self.file,
            out_dir: &dir,
            rate_bps: 0,
            cut_off: Duration::from_secs(120),
            path_cache: None,
        };
        let mut run = WanRun::new(WanTool::ChunkXdp, share_case(self.args));
        let r = tools::run(WanTool::ChunkXdp, &job, &mut run, &mut || {});
        let _ = std::fs::remove_dir_all(&dir);
        r?;
        let wire = net.stats.dirs[TO_RECEIVER]
            .delivered_wire_bytes
            .load(Ordering::Relaxed);
        Ok(wire as f64 * 8.0 / run.seconds / 1e6)
    }
}

fn log(r: &WanRun) {
    let pct = |x: Option<f64>| x.map_or("-".into(), |x| format!("{:.1} %", x * 100.0));
    match &r.outcome {
        Outcome::Measured => eprintln!(
            "bench: wan {:<14} {:<14} {:>8} of link (steady {:>8}) in {:.1} s{}, t90 {} RTTs, retx {:?} for {} lost, peak queue {} KiB, srtt {:?}, start {}, sim {}",
            r.case.name(),
            r.tool.name(),
            pct(r.goodput_share),
            pct(r.steady_share),
            r.seconds,
            if r.partial_bytes.is_some() {
                " (cut off)"
            } else {
                ""
            },
            r.t90_rtts.map_or("never".into(), |t| format!("{t:.1}")),
            r.retransmissions,
            r.lost,
            r.peak_queue_bytes >> 10,
            r.srtt_ms.map(|s| s.round()),
            r.resume.as_deref().unwrap_or("-"),
            r.sim.as_ref().map_or("-".into(), |s| format!(
                "{} (t90 {})",
                pct(Some(s.goodput_share)),
                s.t90_rtts.map_or("never".into(), |t| format!("{t:.1}"))
            )),
        ),
        Outcome::NotAvailable(why) | Outcome::Failed(why) => eprintln!(
            "bench: wan {:<14} {:<10} FAILED: {why}",
            r.case.name(),
            r.tool.name()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_to_rate_finds_the_first_full_window() {
        // 1 MB/s for a second, then 10 MB/s.
        let mut s = Vec::new();
        let mut b = 0u64;
        for i in 0..300 {
            let t = i as f64 * 0.01;
            s.push((t, b));
            b += if t < 1.0 { 10_000 } else { 100_000 };
        }
        let t = time_to_rate(&s, 0.1, 0.9 * 80e6).unwrap();
        assert!((0.95..=1.02).contains(&t), "{t}");
        assert_eq!(time_to_rate(&s, 0.1, 100e6), None);
    }

    #[test]
    fn the_steady_rate_is_between_half_and_ninety_percent() {
        // A slow start (1 s for the first 10 %), then 100 kB per 10 ms.
        let mut s = vec![(0.0, 0)];
        s.push((1.0, 1_000_000));
        for i in 1..=90 {
            s.push((1.0 + i as f64 * 0.01, 1_000_000 + i * 100_000));
        }
        let r = steady_rate(&s).unwrap();
        assert!((r / 10e6 - 1.0).abs() < 0.05, "{r}");
    }

    #[test]
    fn the_grid_has_every_rtt_and_loss_and_the_burst_case() {
        let a = WanArgs {
            wan_rate_mbit: 200,
            wan_rtts: vec![20, 600],
            wan_loss: vec![0, 5],
            wan_size_mib: 1,
            wan_tools: vec![WanTool::ChunkXdp],
            wan_cut_off_s: 1,
            share_rtt_ms: 100,
        };
        let names: Vec<String> = grid(&a).iter().map(WanCase::name).collect();
        assert_eq!(
            names,
            [
                "rtt20-loss0",
                "rtt20-loss5",
                "rtt600-loss0",
                "rtt600-loss5",
                "rtt100-burst"
            ]
        );
    }
}
