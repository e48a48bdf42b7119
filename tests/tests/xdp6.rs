//! IPv6 and UDP through the real XDP program (and the socket path): hand-built frames from the
//! sender's namespace, a `chunk listen` in the receiver's, and the kernel's counters. Each rule
//! of docs/PROTOCOL.md's "IPv6" and "UDP" sections has a frame here: extension headers walked up
//! to the limit and counted beyond it, fragments, truncation, UDP ports and lengths, and the
//! addresses and port the ring-buffer record carries to userspace.

mod common;

use std::net::IpAddr;

use chunk_tests::TwoHosts;
use common::listen::{
    Listener, assert_counters, assert_dump_is, counter, data_packet, send_frames,
};

const PROTO: u8 = chunk_common::DEFAULT_IP_PROTOCOL;
const PORT: u16 = 47000;
const SPORT: u16 = 40001;
use chunk_common::classify::{
    IPPROTO_UDP as UDP, IPV6_DEST_OPTS as DEST_OPTS, IPV6_FRAGMENT as FRAGMENT,
    IPV6_HOP_BY_HOP as HOP_BY_HOP, IPV6_ROUTING as ROUTING,
};

/// An Ethernet frame from the sender to the receiver, with an optional 802.1Q tag.
fn eth(hosts: &TwoHosts, ethertype: u16, vlan: Option<u16>, l3: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + l3.len());
    f.extend_from_slice(&hosts.receiver_mac);
    f.extend_from_slice(&hosts.sender_mac);
    if let Some(id) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(l3);
    f
}

/// How to shape an IPv6 packet.
#[derive(Clone, Default)]
struct V6 {
    /// Extension headers before the upper layer, in order (each 8 bytes; a Fragment header
    /// says "first fragment, more follow").
    ext: Vec<u8>,
    /// The upper-layer protocol (chunk's by default).
    upper: Option<u8>,
    /// Added to the payload length field.
    payload_len_delta: i32,
    vlan: Option<u16>,
}

fn ipv6(hosts: &TwoHosts, v: &V6, body: &[u8]) -> Vec<u8> {
    let upper = v.upper.unwrap_or(PROTO);
    let mut ext = Vec::new();
    for (i, t) in v.ext.iter().enumerate() {
        let next = v.ext.get(i + 1).copied().unwrap_or(upper);
        let mut h = [0u8; 8];
        h[0] = next;
        if *t == FRAGMENT {
            // Offset 0, M set: a first fragment.
            h[3] = 1;
            h[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        } else {
            // Length 0 (8 bytes), then PadN filling the rest.
            h[2] = 1;
            h[3] = 4;
        }
        ext.extend_from_slice(&h);
    }
    let first = v.ext.first().copied().unwrap_or(upper);
    let payload_len = (ext.len() + body.len()) as i32 + v.payload_len_delta;
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload_len as u16).to_be_bytes());
    p.push(first);
    p.push(64);
    p.extend_from_slice(&hosts.sender_addr6.octets());
    p.extend_from_slice(&hosts.receiver_addr6.octets());
    p.extend_from_slice(&ext);
    p.extend_from_slice(body);
    eth(hosts, 0x86DD, v.vlan, &p)
}

/// An IPv4 packet without options around `body`; `mf` marks it a first fragment.
fn ipv4(hosts: &TwoHosts, protocol: u8, mf: bool, body: &[u8]) -> Vec<u8> {
    let total = (20 + body.len()) as u16;
    let mut p = vec![
        0x45,
        0,
        0,
        0,
        0x12,
        0x34,
        if mf { 0x20 } else { 0x40 },
        0,
        64,
        protocol,
        0,
        0,
    ];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&hosts.sender_addr.octets());
    p.extend_from_slice(&hosts.receiver_addr.octets());
    let sum = ones_complement(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(body);
    eth(hosts, 0x0800, None, &p)
}

/// The Internet checksum (RFC 1071) of `data`.
fn ones_complement(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP datagram from `sport` to `dport` around `payload`, with a valid checksum (so that the
/// socket path's kernel, which checks it, delivers it); `len_delta` is added to the length field.
fn udp(
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
    len_delta: i32,
) -> Vec<u8> {
    let len = (8 + payload.len()) as i32 + len_delta;
    let mut d = Vec::with_capacity(8 + payload.len());
    d.extend_from_slice(&sport.to_be_bytes());
    d.extend_from_slice(&dport.to_be_bytes());
    d.extend_from_slice(&(len as u16).to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(t)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&t.octets());
            pseudo.extend_from_slice(&[0, UDP]);
            pseudo.extend_from_slice(&(d.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(t)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&t.octets());
            pseudo.extend_from_slice(&(d.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, UDP]);
        }
        _ => unreachable!("one family"),
    }
    pseudo.extend_from_slice(&d);
    let sum = match ones_complement(&pseudo) {
        0 => 0xffff,
        s => s,
    };
    d[6..8].copy_from_slice(&sum.to_be_bytes());
    d
}

fn v6_udp(hosts: &TwoHosts, sport: u16, dport: u16, payload: &[u8], len_delta: i32) -> Vec<u8> {
    let d = udp(
        hosts.sender_addr6.into(),
        hosts.receiver_addr6.into(),
        sport,
        dport,
        payload,
        len_delta,
    );
    ipv6(
        hosts,
        &V6 {
            upper: Some(UDP),
            ..V6::default()
        },
        &d,
    )
}

fn v4_udp(hosts: &TwoHosts, sport: u16, dport: u16, payload: &[u8], mf: bool) -> Vec<u8> {
    let d = udp(
        hosts.sender_addr.into(),
        hosts.receiver_addr.into(),
        sport,
        dport,
        payload,
        0,
    );
    ipv4(hosts, UDP, mf, &d)
}

fn corrupt(mut p: Vec<u8>) -> Vec<u8> {
    let last = p.len() - 1;
    p[last] ^= 0x10;
    p
}

fn foreign(mut p: Vec<u8>) -> Vec<u8> {
    p[0] = b'X';
    p
}

#[test]
fn ipv6_frames_meet_each_rule_in_the_kernel() {
    let hosts = TwoHosts::new("x6rules", 1500).unwrap();
    let listener = Listener::start(&hosts, &[]);
    let good = data_packet(0x600D, 1, b"over ipv6");
    let with_ext = data_packet(0x600D, 2, b"past three extension headers");
    let tagged = data_packet(0x600D, 3, b"tagged");
    let frames = vec![
        // Accepted: plain, behind hop-by-hop + routing + destination options, VLAN-tagged.
        ipv6(&hosts, &V6::default(), &good),
        ipv6(
            &hosts,
            &V6 {
                ext: vec![HOP_BY_HOP, ROUTING, DEST_OPTS],
                ..V6::default()
            },
            &with_ext,
        ),
        ipv6(
            &hosts,
            &V6 {
                vlan: Some(7),
                ..V6::default()
            },
            &tagged,
        ),
        // bad_checksum, bad_magic.
        ipv6(&hosts, &V6::default(), &corrupt(good.clone())),
        ipv6(&hosts, &V6::default(), &foreign(good.clone())),
        // fragment: a Fragment header in front of chunk's protocol.
        ipv6(
            &hosts,
            &V6 {
                ext: vec![DEST_OPTS, FRAGMENT],
                ..V6::default()
            },
            &good,
        ),
        // ext_headers: nine in a row, one more than the program walks.
        ipv6(
            &hosts,
            &V6 {
                ext: vec![DEST_OPTS; 9],
                ..V6::default()
            },
            &good,
        ),
        // truncated: the payload length claims more than the frame holds.
        ipv6(
            &hosts,
            &V6 {
                payload_len_delta: 16,
                ..V6::default()
            },
            &good,
        ),
        // bad_length: the chunk header's length disagrees with the IPv6 payload length (one
        // byte of padding counted in it).
        ipv6(&hosts, &V6::default(), &[good.as_slice(), &[0]].concat()),
        // passed: another upper layer, and UDP (no --udp on this receiver).
        ipv6(
            &hosts,
            &V6 {
                upper: Some(254),
                ..V6::default()
            },
            &good,
        ),
        v6_udp(&hosts, SPORT, PORT, &good, 0),
    ];
    send_frames(&hosts, &frames);
    let (dumps, summary) = listener.stop();
    assert_counters(
        &summary,
        &[
            ("accepted", 3),
            ("bad_checksum", 1),
            ("bad_magic", 1),
            ("fragment", 1),
            ("ext_headers", 1),
            ("truncated", 1),
            ("bad_length", 1),
        ],
    );
    assert!(counter(&summary, "passed") >= 2, "{summary}");
    assert_eq!(dumps.len(), 3, "{dumps:?}");
    for (dump, sent) in dumps.iter().zip([&good, &with_ext, &tagged]) {
        assert_dump_is(dump, sent);
        assert_eq!(dump["src"], "2001:2::1", "{dump}");
        assert_eq!(dump["dst"], "2001:2::2", "{dump}");
    }
}

#[test]
fn udp_frames_meet_each_rule_in_the_kernel() {
    let hosts = TwoHosts::new("xudp", 1500).unwrap();
    let listener = Listener::start(&hosts, &["--udp", &PORT.to_string()]);
    let a = data_packet(0x0D0, 1, b"udp over ipv4");
    let b = data_packet(0x0D0, 2, b"udp over ipv6");
    let raw = data_packet(0x0D0, 3, b"still straight over ip");
    let frames = vec![
        // Accepted: UDP over both families to the port, and chunk straight over IP as well.
        v4_udp(&hosts, SPORT, PORT, &a, false),
        v6_udp(&hosts, SPORT, PORT, &b, 0),
        ipv6(&hosts, &V6::default(), &raw),
        // passed: UDP to other ports.
        v4_udp(&hosts, SPORT, PORT + 1, &a, false),
        v6_udp(&hosts, SPORT, 53, &b, 0),
        // bad_checksum and bad_magic inside UDP.
        v4_udp(&hosts, SPORT, PORT, &corrupt(a.clone()), false),
        v6_udp(&hosts, SPORT, PORT, &foreign(b.clone()), 0),
        // The UDP length disagrees with the IP payload length.
        v6_udp(&hosts, SPORT, PORT, &b, -1),
        // A first fragment to the port.
        v4_udp(&hosts, SPORT, PORT, &a, true),
        // From port 0: cannot be answered.
        v4_udp(&hosts, 0, PORT, &a, false),
    ];
    send_frames(&hosts, &frames);
    let (dumps, summary) = listener.stop();
    assert_counters(
        &summary,
        &[
            ("accepted", 3),
            ("bad_checksum", 1),
            ("bad_magic", 1),
            ("bad_length", 1),
            ("fragment", 1),
            ("not_allowed", 1),
        ],
    );
    assert!(counter(&summary, "passed") >= 2, "{summary}");
    assert_eq!(dumps.len(), 3, "{dumps:?}");
    let want = [
        (&a, format!("198.18.0.1:{SPORT}"), "198.18.0.2"),
        (&b, format!("[2001:2::1]:{SPORT}"), "2001:2::2"),
        (&raw, "2001:2::1".to_string(), "2001:2::2"),
    ];
    for (dump, (sent, src, dst)) in dumps.iter().zip(want) {
        assert_dump_is(dump, sent);
        assert_eq!(dump["src"], src.as_str(), "{dump}");
        assert_eq!(dump["dst"], dst, "{dump}");
    }
}

/// The socket path takes the same valid packets, and drops the same corrupt and foreign ones
/// under the same counters (the kernel has walked extension headers and checked UDP itself).
#[test]
fn socket_mode_takes_ipv6_and_udp_and_drops_the_same_junk() {
    let hosts = TwoHosts::new("sx6", 1500).unwrap();
    let listener = Listener::start(&hosts, &["--mode", "socket", "--udp", &PORT.to_string()]);
    let a = data_packet(0x50C, 1, b"ipv6");
    let b = data_packet(0x50C, 2, b"udp over ipv4");
    let c = data_packet(0x50C, 3, b"udp over ipv6");
    let frames = vec![
        ipv6(&hosts, &V6::default(), &a),
        v4_udp(&hosts, SPORT, PORT, &b, false),
        v6_udp(&hosts, SPORT, PORT, &c, 0),
        ipv6(&hosts, &V6::default(), &corrupt(a.clone())),
        v4_udp(&hosts, SPORT, PORT, &foreign(b.clone()), false),
        v6_udp(&hosts, SPORT, PORT, &corrupt(c.clone()), 0),
        v4_udp(&hosts, 0, PORT, &b, false),
    ];
    send_frames(&hosts, &frames);
    let (dumps, summary) = listener.stop();
    assert_counters(
        &summary,
        &[
            ("accepted", 3),
            ("bad_checksum", 2),
            ("bad_magic", 1),
            ("not_allowed", 1),
            ("passed", 0),
        ],
    );
    let mut srcs: Vec<String> = dumps
        .iter()
        .map(|d| d["src"].as_str().unwrap().to_string())
        .collect();
    srcs.sort();
    let mut want = vec![
        "2001:2::1".to_string(),
        format!("198.18.0.1:{SPORT}"),
        format!("[2001:2::1]:{SPORT}"),
    ];
    want.sort();
    assert_eq!(srcs, want, "{dumps:?}");
}

/// `chunk probe` over IPv6 and in UDP: its valid chunks reach userspace, its corrupt and
/// foreign ones die in the kernel under their counters, and it names the receiver it sent to.
#[test]
fn probe_over_ipv6_and_udp_is_counted_in_the_kernel() {
    let hosts = TwoHosts::new("x6probe", 1500).unwrap();
    let port = PORT.to_string();
    let listener = Listener::start(&hosts, &["--udp", &port]);
    let to = hosts.receiver_addr6.to_string();
    for udp in [false, true] {
        let mut cmd = hosts.sender.command(&common::chunk_bin());
        cmd.args([
            "probe",
            "--to",
            &to,
            "--count",
            "40",
            "--corrupt",
            "7",
            "--foreign",
            "3",
        ]);
        if udp {
            cmd.args(["--udp", &port]);
        }
        let out = cmd.output().expect("run chunk probe");
        assert!(out.status.success(), "chunk probe: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        let want = if udp {
            "[2001:2::2]:47000"
        } else {
            "2001:2::2 "
        };
        assert!(said.contains(want), "{said}");
    }
    let (dumps, summary) = listener.stop();
    assert_counters(
        &summary,
        &[("accepted", 80), ("bad_checksum", 14), ("bad_magic", 6)],
    );
    assert_eq!(dumps.len(), 80);
}
