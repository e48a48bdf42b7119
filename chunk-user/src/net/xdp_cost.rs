//! What the XDP program costs per packet, measured in the kernel: `BPF_PROG_TEST_RUN` runs the
//! loaded (verified, JIT-compiled) program on a frame `repeat` times and reports the mean run
//! time. Each size is run twice, as a valid chunk (checked, copied into the ring) and with one
//! flipped payload bit (checked, dropped as `bad_checksum`), and the program's own counters must
//! show that every run took that path, or the figure is refused.
//!
//! A VM's neighbours make any single figure wander by tens of percent, so every (size, kind) is
//! measured in several trials, interleaved, and the least mean is kept: the cost of the code,
//! with as little of the machine's other business in it as can be had.
//!
//! The slope of run time over packet length is the per-byte cost of the in-kernel check (copy
//! and checksum); the intercept is the fixed cost per packet (parsing, helper calls, counters).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail, ensure};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{TestRun, TestRunOptions, Xdp},
};
use chunk_common::{
    counters::Counter,
    wire::{self, Message, Repr},
    xdp as names,
};
use serde::Serialize;

use super::xdp::{self, XdpConfig};

/// One packet size's figures.
#[derive(Clone, Debug, Serialize)]
pub struct CostRow {
    /// Chunk payload bytes.
    pub payload: usize,
    /// Bytes the program checks and copies: chunk header and payload.
    pub packet_bytes: usize,
    /// Mean run time on a valid chunk, nanoseconds.
    pub valid_ns: f64,
    /// Mean run time on the same chunk with one bit flipped.
    pub corrupt_ns: f64,
}

/// The whole measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub rows: Vec<CostRow>,
    /// Least-squares slope of `valid_ns` over `packet_bytes`.
    pub valid_ns_per_byte: f64,
    /// The same for corrupt packets (the check without the ring-buffer copy).
    pub corrupt_ns_per_byte: f64,
    /// Fixed cost of a valid packet (the fit's intercept), nanoseconds.
    pub valid_fixed_ns: f64,
    /// Runs per trial.
    pub repeat: u32,
    /// Trials per figure (the least is kept).
    pub trials: u32,
    /// The verifier's count of processed instructions at load.
    pub verified_insns: Option<u32>,
}

/// The ring is sized so that `repeat` valid records of the largest size fit without a drain.
const RING_BYTES: u32 = 64 << 20;

/// Measures the program on chunks of each payload size in `payloads`.
pub fn measure(payloads: &[usize], repeat: u32, trials: u32) -> Result<Cost> {
    ensure!(
        payloads.len() >= 2,
        "need at least two sizes to fit a slope"
    );
    let max = payloads.iter().copied().max().unwrap_or(0);
    let mut cfg = XdpConfig::new("lo");
    cfg.ring_bytes = RING_BYTES;
    cfg.max_payload = u16::try_from(max).context("payload size")?;
    let mut ebpf = xdp::load(&cfg).context("loading the XDP program")?;
    let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
        ebpf.take_map(names::MAP_COUNTERS)
            .context("the program has no counters map")?,
    )?;
    let mut ring = RingBuf::try_from(
        ebpf.take_map(names::MAP_CHUNKS)
            .context("the program has no ring buffer")?,
    )?;
    let prog: &mut Xdp = ebpf
        .program_mut(names::PROGRAM_NAME)
        .context("the object has no chunk program")?
        .try_into()?;
    let verified_insns = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count());

    // A record in the ring: its 8-byte header, the record header and the packet, 8-aligned.
    let record =
        8 + (chunk_common::ring::RECORD_HEADER_LEN + wire::HEADER_LEN + max).div_ceil(8) * 8;
    let repeat = repeat.clamp(1, (RING_BYTES as usize * 9 / 10 / record) as u32);

    let mut frames = Vec::new();
    for &payload in payloads {
        let frame = frame(payload)?;
        let mut corrupt = frame.clone();
        // A bit of the payload, or of the checksum field when there is no payload.
        let at = if payload > 0 {
            FRAME_HEADERS + wire::HEADER_LEN + payload / 2
        } else {
            FRAME_HEADERS + wire::field::CHECKSUM.start
        };
        corrupt[at] ^= 0x10;
        frames.push((payload, frame, corrupt));
    }
    let mut rows: Vec<CostRow> = payloads
        .iter()
        .map(|&payload| CostRow {
            payload,
            packet_bytes: wire::HEADER_LEN + payload,
            valid_ns: f64::INFINITY,
            corrupt_ns: f64::INFINITY,
        })
        .collect();
    for _ in 0..trials.max(1) {
        for ((_, frame, corrupt), row) in frames.iter().zip(&mut rows) {
            let v = run(prog, &counters, frame, repeat, Counter::Accepted)?;
            while ring.next().is_some() {}
            let c = run(prog, &counters, corrupt, repeat, Counter::BadChecksum)?;
            row.valid_ns = row.valid_ns.min(v);
            row.corrupt_ns = row.corrupt_ns.min(c);
        }
    }
    let (valid_ns_per_byte, valid_fixed_ns) = fit(&rows, |r| r.valid_ns);
    let (corrupt_ns_per_byte, _) = fit(&rows, |r| r.corrupt_ns);
    Ok(Cost {
        rows,
        valid_ns_per_byte,
        corrupt_ns_per_byte,
        valid_fixed_ns,
        repeat,
        trials: trials.max(1),
        verified_insns,
    })
}

/// Runs `frame` `repeat` times; checks that `expect` counted every run.
fn run(
    prog: &Xdp,
    counters: &PerCpuArray<MapData, u64>,
    frame: &[u8],
    repeat: u32,
    expect: Counter,
) -> Result<f64> {
    let before = xdp::read_counters(counters)?;
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    let after = xdp::read_counters(counters)?;
    let counted = after.get(expect) - before.get(expect);
    if counted != u64::from(repeat) || after.total() - before.total() != u64::from(repeat) {
        bail!(
            "{} of {repeat} runs of a {}-byte frame were counted {} (program returned {})",
            counted,
            frame.len(),
            expect.name(),
            result.return_value
        );
    }
    Ok(result.duration.as_nanos() as f64)
}

/// Least squares: (slope, intercept) of `y` over packet bytes.
fn fit(rows: &[CostRow], y: impl Fn(&CostRow) -> f64) -> (f64, f64) {
    let n = rows.len() as f64;
    let mx = rows.iter().map(|r| r.packet_bytes as f64).sum::<f64>() / n;
    let my = rows.iter().map(&y).sum::<f64>() / n;
    let sxy: f64 = rows
        .iter()
        .map(|r| (r.packet_bytes as f64 - mx) * (y(r) - my))
        .sum();
    let sxx: f64 = rows
        .iter()
        .map(|r| (r.packet_bytes as f64 - mx).powi(2))
        .sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (slope, my - slope * mx)
}

/// Ethernet and IPv4 headers before the chunk packet.
const FRAME_HEADERS: usize = 14 + 20;

/// An Ethernet frame holding one valid data chunk of `payload` bytes, 198.18.0.1 → 198.18.0.2.
fn frame(payload: usize) -> Result<Vec<u8>> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
    let mut chunk = vec![0u8; wire::HEADER_LEN + payload];
    Repr {
        transfer_id: 0x5eed_0001,
        seq: 7,
        flags: wire::flags::MORE_CHUNKS,
        message: Message::Data { payload: &data },
    }
    .emit(&mut chunk)?;
    let total = u16::try_from(20 + chunk.len()).context("packet too long")?;
    let mut f = Vec::with_capacity(FRAME_HEADERS + chunk.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = chunk_common::DEFAULT_IP_PROTOCOL;
    ip[12..16].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 1).octets());
    ip[16..20].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 2).octets());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&chunk);
    Ok(f)
}

/// RFC 1071 over a header of even length.
fn internet_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
