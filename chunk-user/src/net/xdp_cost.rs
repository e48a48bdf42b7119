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
//!
//! The top-level figures are for chunk straight over IPv4, as they always were; [`Cost::paths`]
//! has the same figures for the other ways in (IPv6, with extension headers, UDP over either
//! family), so that what a path adds to the fixed cost, or to the per-byte one, shows. The
//! program is loaded with a UDP port set, as a receiver with `--udp` runs it.

use std::net::{Ipv4Addr, Ipv6Addr};

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

/// The figures for one way chunk packets come in (see [`Encap`]).
#[derive(Clone, Debug, Serialize)]
pub struct PathCost {
    /// [`Encap::name`].
    pub path: &'static str,
    /// Bytes of Ethernet, IP (and extension and UDP) headers before the chunk packet.
    pub header_bytes: usize,
    pub rows: Vec<CostRow>,
    pub valid_ns_per_byte: f64,
    pub corrupt_ns_per_byte: f64,
    pub valid_fixed_ns: f64,
}

/// The whole measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    /// Chunk straight over IPv4 (as `paths[0]`, kept at the top for the benchmark's reader).
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
    /// Every path's figures, IPv4 first.
    pub paths: Vec<PathCost>,
}

/// How a chunk packet reaches the program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encap {
    /// IPv4, chunk's IP protocol.
    Ipv4,
    /// IPv6, chunk's next header.
    Ipv6,
    /// IPv6 with a hop-by-hop and a destination-options header before chunk's (the walk).
    Ipv6Ext,
    /// UDP over IPv4, to [`UDP_PORT`].
    Udp4,
    /// UDP over IPv6, to [`UDP_PORT`].
    Udp6,
}

impl Encap {
    pub const ALL: [Encap; 5] = [
        Encap::Ipv4,
        Encap::Ipv6,
        Encap::Ipv6Ext,
        Encap::Udp4,
        Encap::Udp6,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Encap::Ipv4 => "ipv4",
            Encap::Ipv6 => "ipv6",
            Encap::Ipv6Ext => "ipv6_ext",
            Encap::Udp4 => "udp4",
            Encap::Udp6 => "udp6",
        }
    }

    /// Bytes before the chunk packet in [`frame`]'s frames.
    pub fn header_bytes(self) -> usize {
        ETH_HLEN
            + match self {
                Encap::Ipv4 => 20,
                Encap::Ipv6 => 40,
                Encap::Ipv6Ext => 40 + 16,
                Encap::Udp4 => 20 + 8,
                Encap::Udp6 => 40 + 8,
            }
    }
}

/// The UDP port the program is loaded with, and [`Encap::Udp4`]/[`Encap::Udp6`] frames go to.
pub const UDP_PORT: u16 = 47_000;

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
    cfg.udp_port = UDP_PORT;
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

    struct Case {
        frame: Vec<u8>,
        corrupt: Vec<u8>,
    }
    let mut cases = Vec::new();
    for encap in Encap::ALL {
        for &payload in payloads {
            let frame = frame(encap, &chunk(payload)?)?;
            let mut corrupt = frame.clone();
            // A bit of the payload, or of the checksum field when there is no payload.
            let at = encap.header_bytes()
                + if payload > 0 {
                    wire::HEADER_LEN + payload / 2
                } else {
                    wire::field::CHECKSUM.start
                };
            corrupt[at] ^= 0x10;
            cases.push(Case { frame, corrupt });
        }
    }
    let mut rows: Vec<CostRow> = Encap::ALL
        .iter()
        .flat_map(|_| payloads)
        .map(|&payload| CostRow {
            payload,
            packet_bytes: wire::HEADER_LEN + payload,
            valid_ns: f64::INFINITY,
            corrupt_ns: f64::INFINITY,
        })
        .collect();
    // Trials outermost, every (path, size, kind) once per trial: a slow spell of the machine
    // then spoils one trial of everything rather than every trial of one figure.
    for _ in 0..trials.max(1) {
        for (case, row) in cases.iter().zip(&mut rows) {
            let v = run(prog, &counters, &case.frame, repeat, Counter::Accepted)?;
            while ring.next().is_some() {}
            let c = run(prog, &counters, &case.corrupt, repeat, Counter::BadChecksum)?;
            row.valid_ns = row.valid_ns.min(v);
            row.corrupt_ns = row.corrupt_ns.min(c);
        }
    }
    let paths: Vec<PathCost> = Encap::ALL
        .iter()
        .zip(rows.chunks(payloads.len()))
        .map(|(&encap, rows)| {
            let (valid_ns_per_byte, valid_fixed_ns) = fit(rows, |r| r.valid_ns);
            let (corrupt_ns_per_byte, _) = fit(rows, |r| r.corrupt_ns);
            PathCost {
                path: encap.name(),
                header_bytes: encap.header_bytes(),
                rows: rows.to_vec(),
                valid_ns_per_byte,
                corrupt_ns_per_byte,
                valid_fixed_ns,
            }
        })
        .collect();
    let ipv4 = &paths[0];
    Ok(Cost {
        rows: ipv4.rows.clone(),
        valid_ns_per_byte: ipv4.valid_ns_per_byte,
        corrupt_ns_per_byte: ipv4.corrupt_ns_per_byte,
        valid_fixed_ns: ipv4.valid_fixed_ns,
        repeat,
        trials: trials.max(1),
        verified_insns,
        paths,
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

const ETH_HLEN: usize = 14;

/// A valid data chunk of `payload` bytes.
fn chunk(payload: usize) -> Result<Vec<u8>> {
    let data: Vec<u8> = (0..payload).map(|i| (i * 7 + 3) as u8).collect();
    let mut chunk = vec![0u8; wire::HEADER_LEN + payload];
    Repr {
        transfer_id: 0x5eed_0001,
        seq: 7,
        flags: wire::flags::MORE_CHUNKS,
        message: Message::Data { payload: &data },
    }
    .emit(&mut chunk)?;
    Ok(chunk)
}

/// The addresses of [`frame`]'s frames: 198.18.0.1 → 198.18.0.2, 2001:2::1 → 2001:2::2.
pub const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);
pub const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);

/// An Ethernet frame holding `l4` (a chunk packet, or anything else) the way `encap` carries a
/// chunk packet; UDP from port 40000 to [`UDP_PORT`], with a zero checksum (not checked).
pub fn frame(encap: Encap, l4: &[u8]) -> Result<Vec<u8>> {
    let mut upper = match encap {
        Encap::Udp4 | Encap::Udp6 => {
            let len = u16::try_from(8 + l4.len()).context("datagram too long")?;
            let mut u = Vec::with_capacity(8 + l4.len());
            u.extend_from_slice(&40_000u16.to_be_bytes());
            u.extend_from_slice(&UDP_PORT.to_be_bytes());
            u.extend_from_slice(&len.to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u
        }
        _ => Vec::with_capacity(l4.len()),
    };
    upper.extend_from_slice(l4);
    let protocol = match encap {
        Encap::Udp4 | Encap::Udp6 => chunk_common::classify::IPPROTO_UDP,
        _ => chunk_common::DEFAULT_IP_PROTOCOL,
    };
    Ok(match encap {
        Encap::Ipv4 | Encap::Udp4 => ipv4_frame(protocol, &upper)?,
        Encap::Ipv6 | Encap::Udp6 => ipv6_frame(protocol, &upper)?,
        Encap::Ipv6Ext => {
            // Hop-by-hop (a PadN option filling its 8 bytes), then destination options
            // (the same), then chunk.
            let mut p = vec![60, 0, 1, 4, 0, 0, 0, 0];
            p.extend_from_slice(&[protocol, 0, 1, 4, 0, 0, 0, 0]);
            p.extend_from_slice(&upper);
            ipv6_frame(0, &p)?
        }
    })
}

/// An Ethernet frame around an IPv4 packet (DF, no options) of `protocol` carrying `l4`.
pub fn ipv4_frame(protocol: u8, l4: &[u8]) -> Result<Vec<u8>> {
    let total = u16::try_from(20 + l4.len()).context("packet too long")?;
    let mut f = Vec::with_capacity(ETH_HLEN + 20 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&SRC4.octets());
    ip[16..20].copy_from_slice(&DST4.octets());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    Ok(f)
}

/// An Ethernet frame around an IPv6 packet with next header `nh` and payload `payload`.
pub fn ipv6_frame(nh: u8, payload: &[u8]) -> Result<Vec<u8>> {
    let len = u16::try_from(payload.len()).context("packet too long")?;
    let mut f = Vec::with_capacity(ETH_HLEN + 40 + payload.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xDD]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[nh, 64]);
    f.extend_from_slice(&SRC6.octets());
    f.extend_from_slice(&DST6.octets());
    f.extend_from_slice(payload);
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

/// The real program, verified by this kernel, against `chunk_common::classify::ip_packet` (the
/// steps it is meant to mirror) on every way in and every defect: each frame must land in the
/// counter the userspace steps name, and what is accepted must reach the ring as they say.
/// Needs root (it loads the program; nothing is attached, no traffic is sent); skipped
/// otherwise, and in builds without the XDP object.
#[cfg(test)]
mod kernel_tests {
    use std::{collections::BTreeSet, net::IpAddr};

    use chunk_common::{
        classify::{self, AcceptedIp, IPPROTO_UDP, Transport, Verdict},
        ring::RecordHeader,
    };

    use super::*;
    use crate::net::{
        rx::{Prefix, parse_prefix},
        session_filter::SessionFilter,
    };

    fn can_load() -> bool {
        if unsafe { libc::geteuid() } != 0 || crate::XDP_OBJECT.is_empty() {
            eprintln!("skipped: needs root and the XDP object");
            return false;
        }
        true
    }

    struct Loaded {
        ebpf: aya::Ebpf,
        counters: PerCpuArray<MapData, u64>,
        ring: RingBuf<MapData>,
        cfg: XdpConfig,
        /// The program's open sessions (none unless a test allows some).
        sessions: SessionFilter,
    }

    fn load(udp_port: u16, allow: &[&str]) -> Loaded {
        let mut cfg = XdpConfig::new("lo");
        cfg.udp_port = udp_port;
        cfg.max_payload = 4000;
        cfg.allow = allow.iter().map(|s| parse_prefix(s).unwrap()).collect();
        let mut ebpf = xdp::load(&cfg).unwrap();
        let counters = PerCpuArray::try_from(ebpf.take_map(names::MAP_COUNTERS).unwrap()).unwrap();
        let ring = RingBuf::try_from(ebpf.take_map(names::MAP_CHUNKS).unwrap()).unwrap();
        let sessions = xdp::take_sessions(&mut ebpf).unwrap();
        let insns = prog(&mut ebpf)
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        eprintln!("udp port {udp_port}, allow {allow:?}: verified_insns {insns:?}");
        // A ceiling, not a figure: far above today's, far below the kernel's million, so that a
        // change that multiplies the verifier's work shows here first.
        assert!(insns.is_none_or(|n| n < 100_000), "{insns:?}");
        Loaded {
            ebpf,
            counters,
            ring,
            cfg,
            sessions,
        }
    }

    fn prog(ebpf: &mut aya::Ebpf) -> &mut Xdp {
        ebpf.program_mut(names::PROGRAM_NAME)
            .unwrap()
            .try_into()
            .unwrap()
    }

    /// What the userspace steps say of an Ethernet frame, as the program should: the ethertype
    /// (after at most one VLAN tag) must name the IP version the packet has; a sealed packet
    /// must be of a session the program was told of.
    fn expected(l: &Loaded, frame: &[u8]) -> (Result<AcceptedIp, Verdict>, Vec<u8>) {
        let cfg = &l.cfg;
        let mut buf = frame.to_vec();
        let mut l3 = 14;
        let ethertype = |at: usize| {
            frame
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        let mut et = ethertype(12);
        if matches!(et, Some(0x8100 | 0x88A8)) {
            et = ethertype(16);
            l3 = 18;
        }
        let version = match et {
            Some(0x0800) => 4,
            Some(0x86DD) => 6,
            _ => return (Err(Verdict::Pass), buf),
        };
        if frame.get(l3).is_none_or(|b| b >> 4 != version) {
            return (Err(Verdict::Pass), buf);
        }
        let allow = &cfg.allow;
        let v = classify::ip_packet(
            &mut buf[l3..],
            cfg.protocol,
            cfg.udp_port,
            cfg.max_payload.into(),
            // As the kernel's tries match: no IPv4-mapped IPv6 to IPv4.
            |src: IpAddr| allow.is_empty() || allow.iter().any(|p: &Prefix| p.contains(&src)),
        )
        .map(|mut a| {
            a.chunk = a.chunk.start + l3..a.chunk.end + l3;
            a
        })
        .and_then(|a| {
            let hdr = buf[a.chunk.clone()].first_chunk().unwrap();
            classify::session(hdr, |sid| l.sessions.allows(sid))?;
            Ok(a)
        });
        (v, buf)
    }

    fn counter_of(v: &Result<AcceptedIp, Verdict>) -> Counter {
        match v {
            Ok(_) => Counter::Accepted,
            Err(Verdict::Pass) => Counter::Passed,
            Err(Verdict::Drop(c)) => *c,
        }
    }

    /// Runs every frame once through the program; returns the counters they landed in.
    fn check_all(l: &mut Loaded, frames: &[(String, Vec<u8>)]) -> BTreeSet<Counter> {
        let mut seen = BTreeSet::new();
        for (name, frame) in frames {
            let (want, buf) = expected(l, frame);
            let before = xdp::read_counters(&l.counters).unwrap();
            let run_from = crate::net::ring::monotonic_us();
            let result = prog(&mut l.ebpf)
                .test_run(TestRunOptions {
                    data_in: Some(frame),
                    repeat: 1,
                    ..TestRunOptions::new()
                })
                .unwrap();
            let run_to = crate::net::ring::monotonic_us();
            let after = xdp::read_counters(&l.counters).unwrap();
            let got: Vec<Counter> = Counter::ALL
                .into_iter()
                .filter(|&c| after.get(c) != before.get(c))
                .collect();
            assert_eq!(
                got,
                [counter_of(&want)],
                "{name}: the program (returned {}) and classify disagree on {frame:02x?}",
                result.return_value
            );
            seen.insert(counter_of(&want));
            let record = l.ring.next().map(|r| r.to_vec());
            match (&want, record) {
                (Ok(a), Some(rec)) => {
                    let h = RecordHeader::read(&rec).unwrap();
                    assert_eq!(h.src_ip(), Some(a.src), "{name}");
                    assert_eq!(h.dst_ip(), Some(a.dst), "{name}");
                    assert_eq!(h.transport, a.transport.ring_value(), "{name}");
                    assert_eq!(h.src_port, a.src_port, "{name}");
                    // Stamped while it ran, on the clock userspace reads as CLOCK_MONOTONIC.
                    assert!(
                        h.age_us(run_to) <= run_to.wrapping_sub(run_from),
                        "{name}: arrived at {} µs, ran from {run_from} to {run_to} µs",
                        h.arrived_us
                    );
                    let packet = &rec[chunk_common::ring::RECORD_HEADER_LEN..];
                    assert_eq!(h.packet_len as usize, a.chunk.len(), "{name}");
                    assert_eq!(&packet[..a.chunk.len()], &buf[a.chunk.clone()], "{name}");
                }
                (Ok(_), None) => panic!("{name}: accepted, but nothing in the ring"),
                (Err(_), Some(_)) => panic!("{name}: not accepted, but a record in the ring"),
                (Err(_), None) => {}
            }
        }
        seen
    }

    /// A valid packet of envelope type `msg_type` (sealed or handshake) with session id `sid`
    /// and `body` (not looked into by the receive path).
    fn envelope(msg_type: u8, sid: u32, body: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; wire::HEADER_LEN + body.len()];
        buf[wire::field::MSG_TYPE] = msg_type;
        let mut p = wire::Packet::new_unchecked(&mut buf[..]);
        p.set_magic(wire::MAGIC);
        p.set_version(wire::VERSION);
        p.set_payload_len(body.len() as u16);
        p.set_transfer_id(sid);
        p.set_seq(1);
        p.payload_mut().copy_from_slice(body);
        p.fill_checksum();
        buf
    }

    fn with_vlan(mut f: Vec<u8>) -> Vec<u8> {
        f.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
        f
    }

    /// Frames of every way in: valid ones (short, and long enough to arrive in fragments),
    /// each with every header byte flipped, and cut and padded.
    fn mutated_frames() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for encap in Encap::ALL {
            for payload in [0, 100, 4000] {
                let good = frame(encap, &chunk(payload).unwrap()).unwrap();
                let name = format!("{}/{payload}", encap.name());
                out.push((format!("{name} vlan"), with_vlan(good.clone())));
                out.push((format!("{name} padded"), [&good[..], &[0; 7]].concat()));
                let ends = encap.header_bytes() + wire::HEADER_LEN;
                // BPF_PROG_TEST_RUN takes no XDP frame shorter than an Ethernet header.
                let cuts = [14, 20, 33, 40, 53, 60, ends - 1, good.len() - 1];
                for cut in cuts.into_iter().filter(|&c| c < good.len()) {
                    out.push((format!("{name} cut at {cut}"), good[..cut].to_vec()));
                }
                out.push((name.clone(), good.clone()));
                if payload != 100 {
                    continue;
                }
                for at in 12..ends {
                    for x in [0x01, 0x10, 0x80, 0xff] {
                        let mut f = good.clone();
                        f[at] ^= x;
                        out.push((format!("{name} byte {at} ^ {x:#x}"), f));
                    }
                }
            }
        }
        out
    }

    /// Frames built to hit what byte flips do not: extension header chains, fragments, the
    /// UDP length.
    fn crafted_frames() -> Vec<(String, Vec<u8>)> {
        let chunk = chunk(64).unwrap();
        let proto = chunk_common::DEFAULT_IP_PROTOCOL;
        let udp = |dst: u16, len_delta: i32| {
            let mut u = frame(Encap::Udp4, &chunk).unwrap()[14 + 20..].to_vec();
            u[2..4].copy_from_slice(&dst.to_be_bytes());
            let len = (u.len() as i32 + len_delta) as u16;
            u[4..6].copy_from_slice(&len.to_be_bytes());
            u
        };
        let ext = |nh: u8, units: u8| {
            let mut e = vec![0u8; (units as usize + 1) * 8];
            e[0] = nh;
            e[1] = units;
            e
        };
        let chain = |n: usize, last: u8, upper: &[u8]| {
            let mut p = Vec::new();
            for i in 0..n {
                p.extend(ext(if i + 1 == n { last } else { 60 }, (i % 3) as u8));
            }
            p.extend_from_slice(upper);
            ipv6_frame(if n == 0 { last } else { 60 }, &p).unwrap()
        };
        let frag = |nh: u8, offset: u16, more: bool, upper: &[u8]| {
            let o = (offset << 3) | u16::from(more);
            let mut p = vec![nh, 0, 0, 0, 0, 0, 0, 1];
            p[2..4].copy_from_slice(&o.to_be_bytes());
            p.extend_from_slice(upper);
            ipv6_frame(44, &p).unwrap()
        };
        let v4_frag = |flags: u8, offset: u8, l4: &[u8]| {
            let mut f = ipv4_frame(IPPROTO_UDP, l4).unwrap();
            f[14 + 6] = flags;
            f[14 + 7] = offset;
            f
        };
        let mut out = vec![];
        for n in 0..=classify::MAX_EXT_HEADERS + 2 {
            out.push((format!("{n} ext headers"), chain(n, proto, &chunk)));
            out.push((
                format!("{n} ext headers, udp"),
                chain(n, IPPROTO_UDP, &udp(UDP_PORT, 0)),
            ));
            out.push((format!("{n} ext headers, tcp"), chain(n, 6, &chunk)));
        }
        let mut long = chain(2, proto, &chunk);
        long[14 + 41] = 200;
        out.push(("ext header past the payload".into(), long));
        out.push((
            "ext header cut".into(),
            chain(2, proto, &chunk)[..14 + 41].to_vec(),
        ));
        for (nh, upper) in [(proto, chunk.clone()), (IPPROTO_UDP, udp(UDP_PORT, 0))] {
            for (offset, more) in [(0, true), (0, false), (9, true)] {
                out.push((
                    format!("v6 fragment of {nh} at {offset}, more {more}"),
                    frag(nh, offset, more, &upper),
                ));
            }
        }
        out.push((
            "v6 fragment to another port".into(),
            frag(IPPROTO_UDP, 0, true, &udp(53, 0)),
        ));
        out.push(("v6 fragment of tcp".into(), frag(6, 0, true, &chunk)));
        out.push((
            "v6 fragment, no udp header".into(),
            frag(IPPROTO_UDP, 0, true, &[0, 1]),
        ));
        out.push((
            "v4 first fragment".into(),
            v4_frag(0x20, 0, &udp(UDP_PORT, 0)),
        ));
        out.push((
            "v4 first fragment, other port".into(),
            v4_frag(0x20, 0, &udp(53, 0)),
        ));
        out.push((
            "v4 later fragment".into(),
            v4_frag(0x00, 9, &udp(UDP_PORT, 0)),
        ));
        for (name, u) in [
            ("udp to another port", udp(UDP_PORT + 1, 0)),
            ("udp length +1", udp(UDP_PORT, 1)),
            ("udp length -1", udp(UDP_PORT, -1)),
            ("udp length 27", udp(UDP_PORT, 27 - 92)),
        ] {
            out.push((format!("v4 {name}"), ipv4_frame(IPPROTO_UDP, &u).unwrap()));
            out.push((format!("v6 {name}"), ipv6_frame(IPPROTO_UDP, &u).unwrap()));
        }
        // From UDP port 0: not answerable, refused as the allowlist refuses.
        let mut port0 = udp(UDP_PORT, 0);
        port0[0..2].fill(0);
        out.push((
            "v4 udp from port 0".into(),
            ipv4_frame(IPPROTO_UDP, &port0).unwrap(),
        ));
        out.push((
            "v6 udp from port 0".into(),
            ipv6_frame(IPPROTO_UDP, &port0).unwrap(),
        ));
        // Envelopes, on every way in: sealed of a session not open (none is), and handshakes,
        // which name no open session and need none.
        for encap in Encap::ALL {
            let sealed = envelope(wire::envelope::SEALED, 0x5e55_0001, &[0xA5; 48]);
            let handshake = envelope(wire::envelope::HANDSHAKE, 0x5e55_0001, &[0x3C; 32]);
            let name = encap.name();
            out.push((format!("{name} sealed"), frame(encap, &sealed).unwrap()));
            out.push((
                format!("{name} handshake"),
                frame(encap, &handshake).unwrap(),
            ));
        }
        let mut jumbo = ipv6_frame(proto, &chunk).unwrap();
        jumbo[14 + 4..14 + 6].fill(0);
        out.push(("jumbogram".into(), jumbo));
        // Sources outside the test's allowlist (still in the benchmarking ranges).
        let mut v4 = frame(Encap::Udp4, &chunk).unwrap();
        v4[14 + 13] = 19;
        out.push(("v4 source 198.19.0.1".into(), v4));
        let mut v6 = frame(Encap::Ipv6, &chunk).unwrap();
        v6[14 + 8 + 7] = 1;
        out.push(("v6 source 2001:2:0:1::1".into(), v6));
        out
    }

    #[test]
    fn the_program_counts_every_frame_as_classify_does() {
        if !can_load() {
            return;
        }
        let mut frames = mutated_frames();
        frames.extend(crafted_frames());
        let mut l = load(UDP_PORT, &["198.18.0.0/16", "2001:2::/64"]);
        let seen = check_all(&mut l, &frames);
        let all: BTreeSet<Counter> = Counter::ALL
            .into_iter()
            .filter(|&c| c != Counter::RingFull)
            .collect();
        assert_eq!(seen, all, "some counters were never reached");

        // UDP off, allowlist off: UDP passes, every source is welcome.
        let mut l = load(0, &[]);
        let seen = check_all(&mut l, &frames);
        assert!(!seen.contains(&Counter::NotAllowed));
        let udp = frame(Encap::Udp6, &chunk(10).unwrap()).unwrap();
        assert_eq!(counter_of(&expected(&l, &udp).0), Counter::Passed);
    }

    #[test]
    fn a_sealed_packet_gets_through_only_while_its_session_is_open() {
        if !can_load() {
            return;
        }
        let mut l = load(UDP_PORT, &[]);
        let sid = 0x0102_0304;
        let sealed = frame(
            Encap::Ipv4,
            &envelope(wire::envelope::SEALED, sid, &[0xA5; 64]),
        )
        .unwrap();
        // The same session id byte-swapped: another session.
        let swapped = frame(
            Encap::Udp6,
            &envelope(wire::envelope::SEALED, sid.swap_bytes(), &[0xA5; 64]),
        )
        .unwrap();
        let handshake = frame(
            Encap::Udp4,
            &envelope(wire::envelope::HANDSHAKE, 0xdead_beef, &[0x3C; 32]),
        )
        .unwrap();
        // One run: the action, the one counter that moved, whether a record reached the ring.
        let run = |l: &mut Loaded, f: &[u8]| {
            let before = xdp::read_counters(&l.counters).unwrap();
            let action = prog(&mut l.ebpf)
                .test_run(TestRunOptions {
                    data_in: Some(f),
                    repeat: 1,
                    ..TestRunOptions::new()
                })
                .unwrap()
                .return_value;
            let after = xdp::read_counters(&l.counters).unwrap();
            assert_eq!(after.total() - before.total(), 1, "one frame, one count");
            let moved = Counter::ALL
                .into_iter()
                .find(|&c| after.get(c) != before.get(c))
                .unwrap();
            let record = l.ring.next().is_some();
            (action, moved, record)
        };
        // XDP_DROP (linux/bpf.h): accepted packets are consumed too, once in the ring.
        const DROP: u32 = 1;
        let dropped = (DROP, Counter::UnknownSession, false);
        let accepted = (DROP, Counter::Accepted, true);
        assert_eq!(run(&mut l, &sealed), dropped, "no session is open");
        assert_eq!(
            run(&mut l, &handshake),
            accepted,
            "a handshake needs no session"
        );

        l.sessions.allow(sid).unwrap();
        assert_eq!(run(&mut l, &sealed), accepted, "open");
        assert_eq!(run(&mut l, &swapped), dropped, "another session");
        // Twice allowed, once forgotten: still open.
        l.sessions.allow(sid).unwrap();
        l.sessions.forget(sid).unwrap();
        assert_eq!(run(&mut l, &sealed), accepted, "still open");
        l.sessions.forget(sid).unwrap();
        assert_eq!(run(&mut l, &sealed), dropped, "closed");
        assert_eq!(run(&mut l, &handshake), accepted);

        // And the userspace steps agree on each.
        l.sessions.allow(sid).unwrap();
        let frames = [
            ("sealed".to_string(), sealed),
            ("swapped".to_string(), swapped),
            ("handshake".to_string(), handshake),
        ];
        let seen = check_all(&mut l, &frames);
        assert_eq!(seen, [Counter::Accepted, Counter::UnknownSession].into());
    }

    #[test]
    fn with_prefixes_of_one_family_the_other_is_refused() {
        if !can_load() {
            return;
        }
        let c = chunk(10).unwrap();
        let frames: Vec<(String, Vec<u8>)> = Encap::ALL
            .into_iter()
            .map(|e| (e.name().to_string(), frame(e, &c).unwrap()))
            .collect();
        let counted = |l: &mut Loaded| -> Vec<Counter> {
            check_all(l, &frames);
            frames
                .iter()
                .map(|(_, f)| counter_of(&expected(l, f).0))
                .collect()
        };
        use Counter::{Accepted as A, NotAllowed as N};
        let mut l = load(UDP_PORT, &["198.18.0.1"]);
        assert_eq!(counted(&mut l), [A, N, N, A, N]);
        let mut l = load(UDP_PORT, &["2001:2::1/128"]);
        assert_eq!(counted(&mut l), [N, A, A, N, A]);
        let _ = Transport::Udp;
    }
}
