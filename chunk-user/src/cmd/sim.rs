//! `chunk sim`: one transfer on the protocol core's deterministic simulated network
//! ([`proto::sim`](crate::proto::sim)), for the benchmark to print simulated figures next to the
//! ones it measures on a real (emulated) link with the same rate, RTT, loss and packet overhead.
//! Prints one JSON object ([`SimResult`]).

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde::Serialize;

use crate::proto::DEFAULT_CHUNK_SIZE;
use crate::proto::sender::SenderConfig;
use crate::proto::sim::{VirtualFile, figure_scenario, run_scenario};

#[derive(clap::Args, Clone, Debug)]
pub struct SimArgs {
    /// Link rate, bits per second, each way (counting each packet's --overhead).
    #[arg(long)]
    pub rate_bps: u64,
    /// Round-trip propagation delay in milliseconds; each direction's one-way delay is half.
    #[arg(long)]
    pub rtt_ms: f64,
    /// Probability that a packet is lost, each way, 0..=1 (in the good state with --burst).
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Burst loss each way, `TO_BAD,TO_GOOD`: a Gilbert–Elliott chain moving, per slot of the
    /// link's time (a 1538-byte frame at the rate, and at least once per packet), from the good
    /// state to the bad one (where every packet is lost) with probability TO_BAD and back with
    /// TO_GOOD.
    #[arg(long, value_name = "TO_BAD,TO_GOOD", value_parser = parse_burst)]
    pub burst: Option<(f64, f64)>,
    /// Bottleneck queue, bytes, each way (drop-tail); 0: one bandwidth-delay product of the
    /// round trip, at least 64 KiB.
    #[arg(long, default_value_t = 0)]
    pub queue_bytes: u64,
    /// File size, bytes.
    #[arg(long)]
    pub size: u64,
    /// Bytes per chunk.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Bytes each packet costs on the link beyond the chunk packet: 20 for the IPv4 header; 58
    /// for IPv4 over Ethernet (+ header 14, preamble, inter-frame gap and FCS 24).
    #[arg(long, default_value_t = 20)]
    pub overhead: u32,
    /// Seed of the simulation's random choices and of the file's bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Virtual seconds after which the run stops, finished or not.
    #[arg(long, default_value_t = 600)]
    pub time_limit_s: u64,
    /// A warm start: simulate the transfer once, then report a second one that starts from
    /// what the first measured of the path (as `chunk send` does from its path cache).
    #[arg(long)]
    pub warm: bool,
    /// Chunks the sender sends right behind its offer, before the answer (0: it waits for
    /// the answer, as chunk did before 2026-12-07's eighth session).
    #[arg(long, default_value_t = SenderConfig::default().early_chunks)]
    pub early_chunks: u32,
    /// Milliseconds the receiver is busy after taking the offer (opening and preallocating the
    /// file: about 20 for 256 MiB on tmpfs here), while what arrives waits for it.
    #[arg(long, default_value_t = 0.0)]
    pub offer_pause_ms: f64,
}

/// What one simulated transfer measured (the JSON `chunk sim` prints).
#[derive(Clone, Debug, Serialize)]
pub struct SimResult {
    /// The receiver saw exactly the file's bytes.
    pub verified: bool,
    /// The sender's outcome is success.
    pub finished: bool,
    /// The sender's failure, if it failed (`null` when it succeeded or ran out of time).
    pub error: Option<String>,
    /// Virtual seconds from the offer to the outcome (or the time limit).
    pub elapsed_s: f64,
    /// File bits per virtual second over the whole transfer.
    pub goodput_bps: f64,
    /// File bits per virtual second between 50 % and 90 % acknowledged.
    pub steady_goodput_bps: f64,
    /// `goodput_bps` / `rate_bps`.
    pub goodput_share: f64,
    /// `steady_goodput_bps` / `rate_bps`.
    pub steady_share: f64,
    /// Chunks in the file.
    pub chunks: u64,
    /// Chunks the sender retransmitted.
    pub retransmitted: u64,
    /// Packets lost on the data link, at random and to the full queue.
    pub lost_up: u64,
    /// Packets lost on the control link, at random and to the full queue.
    pub lost_down: u64,
    /// Of `lost_up`, the queue's drops.
    pub queue_drops_up: u64,
    /// Retransmission timeouts.
    pub rto_expiries: u64,
    /// Retransmissions an ack showed were not needed (the earlier copy arrived).
    pub spurious_retransmits: u64,
    /// The sender's smoothed RTT at the end, milliseconds.
    pub srtt_ms: Option<f64>,
    /// From the start to the first round trip (at least 50 ms) that delivered 90 % of the link
    /// rate, in round trips; `null`: never.
    pub t90_rtts: Option<f64>,
    /// With `--warm`: what became of the first run's estimate (`validated`, `retreated`,
    /// `rejected`, …); `null` without.
    pub resume: Option<String>,
    /// What became of the jump from the first round's reading of the bottleneck (a cold start
    /// where Startup would take a second or more); `null`: none was made.
    pub first_round: Option<String>,
    /// The sender's account of its start and of each ProbeRtt, in words.
    pub notes: Vec<String>,
    /// Real seconds the simulation took.
    pub wall_s: f64,
}

fn parse_burst(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected TO_BAD,TO_GOOD, got {s:?}"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|e| format!("{v:?}: {e}"))
            .and_then(|x| {
                if (0.0..=1.0).contains(&x) {
                    Ok(x)
                } else {
                    Err(format!("{x} is not a probability (0..=1)"))
                }
            })
    };
    Ok((p(a)?, p(b)?))
}

/// Runs the transfer `args` describes: [`figure_scenario`]'s sender and receiver, with `args`'
/// chunk size, queue, overhead and burst loss.
pub fn simulate(args: &SimArgs) -> Result<SimResult> {
    if args.rate_bps == 0 {
        bail!("--rate-bps must be positive");
    }
    if !(args.rtt_ms.is_finite() && args.rtt_ms >= 0.0) {
        bail!("--rtt-ms must be a non-negative number");
    }
    if !(0.0..=1.0).contains(&args.loss) {
        bail!("--loss must be a probability (0..=1)");
    }
    let max_chunk = chunk_common::ring::MAX_PAYLOAD_LEN as u32;
    if args.chunk_size == 0 || args.chunk_size > max_chunk {
        bail!("--chunk-size must be 1..={max_chunk} (the receiver's default payload limit)");
    }
    if chunk_common::wire::chunk_count(args.size, args.chunk_size).is_none() {
        bail!(
            "--size {} in chunks of {} is too many chunks",
            args.size,
            args.chunk_size
        );
    }
    let rtt = Duration::from_secs_f64(args.rtt_ms / 1000.0);
    let mut s = figure_scenario(args.rate_bps, rtt, args.loss, args.size, args.seed);
    for link in [&mut s.up, &mut s.down] {
        if args.queue_bytes != 0 {
            link.queue_bytes = args.queue_bytes;
        }
        link.overhead = args.overhead;
        link.burst = args.burst;
    }
    s.sender.chunk_size = args.chunk_size;
    s.sender.early_chunks = args.early_chunks;
    s.offer_pause = Duration::from_secs_f64(args.offer_pause_ms.max(0.0) / 1000.0);
    s.time_limit = Duration::from_secs(args.time_limit_s);

    let wall = Instant::now();
    let hash = VirtualFile::new(s.seed, s.file_size, s.sender.chunk_size).hash();
    if args.warm {
        s.resume = run_scenario(&s, hash).estimate;
    }
    let r = run_scenario(&s, hash);
    let rate = args.rate_bps as f64;
    Ok(SimResult {
        verified: r.verified,
        finished: matches!(r.outcome, Some(Ok(()))),
        error: match &r.outcome {
            Some(Err(e)) => Some(e.to_string()),
            _ => None,
        },
        elapsed_s: r.elapsed.as_secs_f64(),
        goodput_bps: r.goodput_bps,
        steady_goodput_bps: r.steady_goodput_bps,
        goodput_share: r.goodput_bps / rate,
        steady_share: r.steady_goodput_bps / rate,
        chunks: r.sender.chunk_count as u64,
        retransmitted: r.sender.chunks_retransmitted,
        lost_up: r.up.lost + r.up.queue_drops,
        lost_down: r.down.lost + r.down.queue_drops,
        queue_drops_up: r.up.queue_drops,
        rto_expiries: r.sender.rto_expiries,
        spurious_retransmits: r.sender.spurious_retransmits,
        srtt_ms: r.sender.srtt.map(|d| d.as_secs_f64() * 1000.0),
        t90_rtts: r
            .t90
            .filter(|_| args.rtt_ms > 0.0)
            .map(|t| t.as_secs_f64() * 1000.0 / args.rtt_ms),
        resume: args
            .warm
            .then(|| r.resume_outcome.map_or("none", |o| o.name()).to_owned()),
        first_round: r.first_round_outcome.map(|o| o.name().to_owned()),
        notes: r.sender.start_notes.clone(),
        wall_s: wall.elapsed().as_secs_f64(),
    })
}

pub fn run(args: SimArgs) -> Result<()> {
    let result = simulate(&args)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(loss: f64) -> SimArgs {
        SimArgs {
            rate_bps: 10_000_000,
            rtt_ms: 20.0,
            loss,
            burst: None,
            queue_bytes: 0,
            size: 1 << 20,
            chunk_size: 1400,
            overhead: 20,
            seed: 1,
            time_limit_s: 600,
            warm: false,
            early_chunks: SenderConfig::default().early_chunks,
            offer_pause_ms: 0.0,
        }
    }

    fn check(r: &SimResult) {
        assert!(r.verified && r.finished && r.error.is_none(), "{r:?}");
        assert!(r.goodput_share > 0.0 && r.goodput_share < 1.0, "{r:?}");
        assert_eq!(r.chunks, (1u64 << 20).div_ceil(1400));
        assert!(r.srtt_ms.is_some_and(|ms| ms >= 20.0), "{r:?}");
    }

    #[test]
    fn lossy_link_retransmits() {
        let r = simulate(&small(0.01)).unwrap();
        check(&r);
        assert!(r.lost_up > 0 && r.retransmitted > 0, "{r:?}");
    }

    #[test]
    fn clean_link_with_a_big_queue_does_not() {
        let mut args = small(0.0);
        args.queue_bytes = 64 << 20;
        let r = simulate(&args).unwrap();
        check(&r);
        assert_eq!(
            (r.lost_up, r.lost_down, r.retransmitted),
            (0, 0, 0),
            "{r:?}"
        );
    }

    #[test]
    fn burst_loss_and_overhead_are_applied() {
        let mut args = small(0.0);
        args.burst = Some((0.005, 0.3));
        args.overhead = 58;
        let r = simulate(&args).unwrap();
        check(&r);
        assert!(r.lost_up > 0 && r.retransmitted > 0, "{r:?}");
        // The ceiling is 1400 / (1420 + 58) of the rate.
        assert!(r.steady_share < 1400.0 / 1478.0, "{r:?}");
    }

    #[test]
    fn warm_starts_from_the_first_runs_estimate() {
        let mut args = small(0.0);
        args.size = 16 << 20;
        args.rtt_ms = 100.0;
        // A path of 900 chunks in flight: Startup doubles five times from the first round. (At
        // 10 Mbit/s, 90 chunks, the first round going with the offer reaches it as soon.)
        args.rate_bps = 100_000_000;
        let cold = simulate(&args).unwrap();
        args.warm = true;
        let warm = simulate(&args).unwrap();
        check_size(&cold, args.size);
        check_size(&warm, args.size);
        assert_eq!(cold.resume, None);
        assert_eq!(warm.resume.as_deref(), Some("validated"), "{warm:?}");
        assert!(
            warm.t90_rtts.unwrap() < cold.t90_rtts.unwrap(),
            "{cold:?} {warm:?}"
        );
    }

    fn check_size(r: &SimResult, size: u64) {
        assert!(r.verified && r.finished && r.error.is_none(), "{r:?}");
        assert_eq!(r.chunks, size.div_ceil(1400));
    }

    #[test]
    fn burst_parses_and_json_has_the_keys() {
        assert_eq!(parse_burst("0.01,0.25"), Ok((0.01, 0.25)));
        assert!(parse_burst("0.01").is_err() && parse_burst("0.1,2").is_err());
        let r = simulate(&small(0.0)).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut want = [
            "verified",
            "finished",
            "error",
            "elapsed_s",
            "goodput_bps",
            "steady_goodput_bps",
            "goodput_share",
            "steady_share",
            "chunks",
            "retransmitted",
            "lost_up",
            "lost_down",
            "queue_drops_up",
            "rto_expiries",
            "spurious_retransmits",
            "srtt_ms",
            "t90_rtts",
            "resume",
            "first_round",
            "notes",
            "wall_s",
        ];
        want.sort();
        assert_eq!(keys, want);
    }
}
