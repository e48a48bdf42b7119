//! The XDP receive path with real packets through a real kernel: a `chunk listen` in one
//! namespace, packets from another, and assertions on the kernel's counters and on what reached
//! userspace. Needs root (run through `cargo xtask test`).

use std::{net::Ipv4Addr, path::PathBuf, sync::mpsc::Receiver, time::Duration};

use chunk_common::wire::{self, Message, Repr};
use chunk_tests::{Daemon, FrameSender, TwoHosts, wait_for_line};
use pnet_packet::{
    MutablePacket,
    ethernet::{EtherTypes, MutableEthernetPacket},
    ip::IpNextHeaderProtocol,
    ipv4::{self, MutableIpv4Packet},
};
use serde_json::Value;

const PROTO: u8 = chunk_common::DEFAULT_IP_PROTOCOL;

fn chunk_bin() -> String {
    std::env::var("CHUNK_BIN").unwrap_or_else(|_| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/chunk");
        p.to_string_lossy().into_owned()
    })
}

/// A running `chunk listen` in the receiver namespace.
struct Listener {
    daemon: Daemon,
    lines: Receiver<String>,
}

impl Listener {
    fn start(hosts: &TwoHosts, extra: &[&str]) -> Listener {
        let mut cmd = hosts.receiver.command(&chunk_bin());
        cmd.args(["listen", "--iface", hosts.receiver_if, "--json", "--dump"])
            .args(extra);
        let mut daemon = Daemon::spawn(cmd, "chunk listen").expect("start chunk listen");
        let (_, lines) = wait_for_line(daemon.stdout().unwrap(), Duration::from_secs(30), |l| {
            l.starts_with("attached")
        })
        .expect("chunk listen attached");
        Listener { daemon, lines }
    }

    /// Stops the listener; returns the dumped packets and the final summary.
    fn stop(self) -> (Vec<Value>, Value) {
        // Let the last packets cross the veth and the ring buffer.
        std::thread::sleep(Duration::from_millis(300));
        self.daemon.signal(libc::SIGTERM);
        let status = self
            .daemon
            .wait(Duration::from_secs(10))
            .expect("listener exits");
        assert!(status.success(), "chunk listen failed: {status}");
        let lines: Vec<Value> = self
            .lines
            .try_iter()
            .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        let (summary, dumps) = lines.split_last().expect("a summary line");
        assert!(
            summary.get("counters").is_some(),
            "last line is the summary: {summary}"
        );
        (dumps.to_vec(), summary.clone())
    }
}

fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
}

/// Asserts every counter: those named with their values, all others zero, except `passed`,
/// which the stack's own chatter (IPv6 router solicitations, ...) may bump and is checked only
/// when named.
fn assert_counters(summary: &Value, expected: &[(&str, u64)]) {
    for c in chunk_common::counters::Counter::ALL {
        let got = counter(summary, c.name());
        match expected.iter().find(|(n, _)| *n == c.name()) {
            Some((_, want)) => assert_eq!(got, *want, "counter {}: {summary}", c.name()),
            None if c.name() == "passed" => {}
            None => assert_eq!(got, 0, "counter {}: {summary}", c.name()),
        }
    }
}

fn data_packet(tid: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    let repr = Repr {
        transfer_id: tid,
        seq,
        flags: wire::flags::MORE_CHUNKS,
        message: Message::Data { payload },
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    repr.emit(&mut buf).unwrap();
    buf
}

/// Sends chunk packets from the sender namespace through a raw IP socket.
fn send_raw(hosts: &TwoHosts, packets: &[Vec<u8>]) {
    let dst = hosts.receiver_addr;
    hosts
        .sender
        .enter(|| {
            let sock = chunk::net::raw::RawSocket::new(PROTO).expect("raw socket");
            for p in packets {
                sock.send_to(p, dst).expect("send");
            }
        })
        .unwrap();
}

/// How to shape the IPv4 header of a hand-built frame.
#[derive(Clone, Copy, Default)]
struct Ip {
    protocol: Option<u8>,
    /// 32-bit words of options (NOPs) after the 20-byte header.
    option_words: u8,
    more_fragments: bool,
    fragment_offset: u16,
    /// Add this to the IP total length (negative: claim fewer bytes than there are).
    total_len_delta: i32,
    /// Insert an 802.1Q tag with this VLAN id.
    vlan: Option<u16>,
    src: Option<Ipv4Addr>,
}

fn frame(hosts: &TwoHosts, ip: Ip, body: &[u8]) -> Vec<u8> {
    let vlan_len = if ip.vlan.is_some() { 4 } else { 0 };
    let ihl = 5 + ip.option_words as usize;
    let ip_len = ihl * 4 + body.len();
    let mut buf = vec![0u8; 14 + vlan_len + ip_len];
    {
        let mut eth = MutableEthernetPacket::new(&mut buf).unwrap();
        eth.set_destination(hosts.receiver_mac.into());
        eth.set_source(hosts.sender_mac.into());
        eth.set_ethertype(if ip.vlan.is_some() {
            EtherTypes::Vlan
        } else {
            EtherTypes::Ipv4
        });
    }
    let l3 = 14 + vlan_len;
    if let Some(id) = ip.vlan {
        buf[14..16].copy_from_slice(&id.to_be_bytes());
        buf[16..18].copy_from_slice(&0x0800u16.to_be_bytes());
    }
    {
        let mut p = MutableIpv4Packet::new(&mut buf[l3..]).unwrap();
        p.set_version(4);
        p.set_header_length(ihl as u8);
        p.set_total_length((ip_len as i32 + ip.total_len_delta) as u16);
        p.set_identification(0x1234);
        p.set_flags(if ip.more_fragments { 0b001 } else { 0b010 });
        p.set_fragment_offset(ip.fragment_offset);
        p.set_ttl(64);
        p.set_next_level_protocol(IpNextHeaderProtocol::new(ip.protocol.unwrap_or(PROTO)));
        p.set_source(ip.src.unwrap_or(hosts.sender_addr));
        p.set_destination(hosts.receiver_addr);
        // NOP options (type 1), so IHL > 5 is well formed.
        p.packet_mut()[20..ihl * 4].fill(1);
        p.packet_mut()[ihl * 4..].copy_from_slice(body);
        let sum = ipv4::checksum(&p.to_immutable());
        p.set_checksum(sum);
    }
    buf
}

fn send_frames(hosts: &TwoHosts, frames: &[Vec<u8>]) {
    let ifname = hosts.sender_if;
    hosts
        .sender
        .enter(|| {
            let tx = FrameSender::new(ifname).expect("AF_PACKET socket");
            for f in frames {
                tx.send(f).expect("send frame");
            }
        })
        .unwrap();
}

#[test]
fn valid_chunks_reach_userspace_byte_exact_and_corrupt_ones_die_in_the_kernel() {
    let hosts = TwoHosts::new("valid", 1500).unwrap();
    let listener = Listener::start(&hosts, &[]);
    let tid = 0xC0FFEE;
    let mut packets = Vec::new();
    for seq in 0..200u32 {
        let payload: Vec<u8> = (0..(seq as usize * 7) % 1400 + 1)
            .map(|i| (i as u32 ^ seq) as u8)
            .collect();
        packets.push(data_packet(tid, seq, &payload));
    }
    let mut corrupt = Vec::new();
    for (i, p) in packets.iter().take(50).enumerate() {
        let mut c = p.clone();
        let at = wire::HEADER_LEN + (i * 31) % (c.len() - wire::HEADER_LEN);
        c[at] ^= 1 << (i % 8);
        corrupt.push(c);
    }
    // Interleave: corrupt copies between the valid ones.
    let mut all = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        all.push(p.clone());
        if let Some(c) = corrupt.get(i) {
            all.push(c.clone());
        }
    }
    send_raw(&hosts, &all);
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 200), ("bad_crc", 50)]);
    assert_eq!(summary["received"], 200);
    assert_eq!(summary["unparsable"], 0);
    assert_eq!(dumps.len(), 200);
    for (d, sent) in dumps.iter().zip(&packets) {
        // The kernel zeroes the CRC field while checking it; everything else is as sent.
        let mut expect = sent.clone();
        expect[wire::field::CRC].fill(0);
        let hex: String = expect.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(d["hex"], hex.as_str());
        assert_eq!(d["src"], hosts.sender_addr.to_string());
        assert_eq!(d["dst"], hosts.receiver_addr.to_string());
        assert_eq!(d["type"], "data");
    }
}

#[test]
fn each_malformed_class_is_dropped_under_its_own_reason() {
    let hosts = TwoHosts::new("malformed", 1500).unwrap();
    let listener = Listener::start(&hosts, &["--max-payload", "1000"]);
    let good = data_packet(7, 1, b"a valid chunk");
    // Accepted: plain, with IP options, and with a VLAN tag (3 frames).
    let mut frames = vec![
        frame(&hosts, Ip::default(), &good),
        frame(
            &hosts,
            Ip {
                option_words: 2,
                ..Ip::default()
            },
            &good,
        ),
        frame(
            &hosts,
            Ip {
                vlan: Some(5),
                ..Ip::default()
            },
            &good,
        ),
    ];

    // truncated: an IP payload shorter than a chunk header (2 frames), and an IP total length
    // claiming more bytes than the frame has (1 frame).
    frames.push(frame(&hosts, Ip::default(), &good[..10]));
    frames.push(frame(&hosts, Ip::default(), &[]));
    frames.push(frame(
        &hosts,
        Ip {
            total_len_delta: 40,
            ..Ip::default()
        },
        &good,
    ));

    // bad_magic: wrong magic, wrong version (2 frames).
    let mut m = good.clone();
    m[0] = b'X';
    frames.push(frame(&hosts, Ip::default(), &m));
    let mut v = good.clone();
    v[wire::field::VERSION] = 9;
    frames.push(frame(&hosts, Ip::default(), &v));

    // bad_type (1 frame).
    let mut t = good.clone();
    t[wire::field::MSG_TYPE] = 42;
    frames.push(frame(&hosts, Ip::default(), &t));

    // bad_length: header says more than the IP packet holds, header says less (Ethernet-style
    // trailing bytes inside the IP packet), and a payload over --max-payload (3 frames).
    let mut l = good.clone();
    l[wire::field::PAYLOAD_LEN].copy_from_slice(&100u16.to_be_bytes());
    frames.push(frame(&hosts, Ip::default(), &l));
    let mut trailing = good.clone();
    trailing.extend_from_slice(&[0; 8]);
    frames.push(frame(&hosts, Ip::default(), &trailing));
    frames.push(frame(
        &hosts,
        Ip::default(),
        &data_packet(7, 2, &[0xAB; 1001]),
    ));

    // fragment: more-fragments set, and a non-zero offset (2 frames).
    frames.push(frame(
        &hosts,
        Ip {
            more_fragments: true,
            ..Ip::default()
        },
        &good,
    ));
    frames.push(frame(
        &hosts,
        Ip {
            fragment_offset: 100,
            ..Ip::default()
        },
        &good,
    ));

    // bad_crc (1 frame).
    let mut c = good.clone();
    *c.last_mut().unwrap() ^= 0x80;
    frames.push(frame(&hosts, Ip::default(), &c));

    // passed: another IP protocol (UDP), even with a chunk-looking body (1 frame).
    frames.push(frame(
        &hosts,
        Ip {
            protocol: Some(17),
            ..Ip::default()
        },
        &good,
    ));

    send_frames(&hosts, &frames);
    let (dumps, summary) = listener.stop();
    assert_counters(
        &summary,
        &[
            ("accepted", 3),
            ("truncated", 3),
            ("bad_magic", 2),
            ("bad_type", 1),
            ("bad_length", 3),
            ("fragment", 2),
            ("bad_crc", 1),
        ],
    );
    assert!(
        counter(&summary, "passed") >= 1,
        "the UDP frame passed: {summary}"
    );
    assert_eq!(dumps.len(), 3);
}

#[test]
fn ordinary_traffic_still_flows_with_the_program_attached() {
    let hosts = TwoHosts::new("ping", 1500).unwrap();
    let listener = Listener::start(&hosts, &[]);
    let out = hosts
        .sender
        .exec(
            "ping",
            &[
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &hosts.receiver_addr.to_string(),
            ],
        )
        .expect("ping crosses the XDP program");
    assert!(out.contains("3 received"), "{out}");
    let (_, summary) = listener.stop();
    // 3 echo requests (and whatever else the stack sent) passed; nothing was taken for chunk.
    assert!(counter(&summary, "passed") >= 3, "{summary}");
    assert_counters(&summary, &[]);
}

#[test]
fn the_allowlist_admits_and_refuses_by_source() {
    let hosts = TwoHosts::new("allow", 1500).unwrap();
    let listener = Listener::start(
        &hosts,
        &["--allow", "198.18.0.0/30", "--allow", "198.19.7.7"],
    );
    let good = data_packet(9, 0, b"from a friend");
    let frames = vec![
        frame(&hosts, Ip::default(), &good),
        frame(
            &hosts,
            Ip {
                src: Some(Ipv4Addr::new(198, 19, 7, 7)),
                ..Ip::default()
            },
            &good,
        ),
        frame(
            &hosts,
            Ip {
                src: Some(Ipv4Addr::new(198, 18, 0, 9)),
                ..Ip::default()
            },
            &good,
        ),
        frame(
            &hosts,
            Ip {
                src: Some(Ipv4Addr::new(198, 19, 7, 8)),
                ..Ip::default()
            },
            &good,
        ),
    ];
    send_frames(&hosts, &frames);
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 2), ("not_allowed", 2)]);
    let srcs: Vec<&str> = dumps.iter().map(|d| d["src"].as_str().unwrap()).collect();
    assert_eq!(srcs, ["198.18.0.1", "198.19.7.7"]);
}

#[test]
fn a_burst_larger_than_the_ring_buffer_is_counted_not_lost_silently() {
    let hosts = TwoHosts::new("ringfull", 1500).unwrap();
    // A 16 KiB ring holds 3 records of 4 KiB (each also carries an 8-byte kernel header), and
    // the listener does not read for 1.5 s: of 100 packets, exactly 3 fit.
    let listener = Listener::start(&hosts, &["--ring-bytes", "16384", "--stall-ms", "1500"]);
    let packets: Vec<Vec<u8>> = (0..100)
        .map(|i| data_packet(3, i, &[i as u8; 100]))
        .collect();
    send_raw(&hosts, &packets);
    std::thread::sleep(Duration::from_millis(1500));
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 3), ("ring_full", 97)]);
    assert_eq!(dumps.len(), 3);
}
