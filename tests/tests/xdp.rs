//! The XDP receive path with real packets through a real kernel: a `chunk listen` in one
//! namespace, packets from another, and assertions on the kernel's counters and on what reached
//! userspace. Needs root (run through `cargo xtask test`).

use std::{net::Ipv4Addr, time::Duration};

use chunk_common::wire;
use chunk_tests::TwoHosts;
use pnet_packet::{
    MutablePacket,
    ethernet::{EtherTypes, MutableEthernetPacket},
    ip::IpNextHeaderProtocol,
    ipv4::{self, MutableIpv4Packet},
};
use serde_json::Value;

const PROTO: u8 = chunk_common::DEFAULT_IP_PROTOCOL;

mod common;
use common::{
    chunk_bin,
    listen::{
        Listener, assert_counters, assert_dump_is, counter, data_packet, envelope_packet,
        send_frames,
    },
};

/// Sends chunk packets from the sender namespace through a raw IP socket.
fn send_raw(hosts: &TwoHosts, packets: &[Vec<u8>]) {
    send_raw_with(hosts, packets, false)
}

/// Sends packets from the sender namespace through a raw IP socket that lets the kernel
/// fragment them (chunk's own sender never does: it sets "don't fragment").
fn send_fragmenting(hosts: &TwoHosts, packets: &[Vec<u8>]) {
    send_raw_with(hosts, packets, true)
}

fn send_raw_with(hosts: &TwoHosts, packets: &[Vec<u8>], fragment: bool) {
    let dst = hosts.receiver_addr;
    hosts
        .sender
        .enter(|| {
            let sock = chunk::net::raw::RawSocket::new(PROTO).expect("raw socket");
            if fragment {
                let val: libc::c_int = libc::IP_PMTUDISC_DONT;
                // SAFETY: one c_int that lives across the call.
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(sock.socket()),
                        libc::IPPROTO_IP,
                        libc::IP_MTU_DISCOVER,
                        (&val as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0, "IP_MTU_DISCOVER");
            }
            for p in packets {
                sock.send_to(p, (dst, 0).into()).expect("send");
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

#[test]
fn valid_chunks_reach_userspace_byte_exact_and_corrupt_ones_die_in_the_kernel() {
    valid_and_corrupt("valid", &[]);
}

#[test]
fn socket_mode_delivers_valid_chunks_byte_exact_and_drops_corrupt_ones() {
    valid_and_corrupt("svalid", &["--mode", "socket"]);
}

fn valid_and_corrupt(tag: &str, mode: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let listener = Listener::start(&hosts, mode);
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
    assert_counters(&summary, &[("accepted", 200), ("bad_checksum", 50)]);
    assert_eq!(summary["received"], 200);
    assert_eq!(summary["unparsable"], 0);
    assert_eq!(dumps.len(), 200);
    for (d, sent) in dumps.iter().zip(&packets) {
        assert_dump_is(d, sent);
        assert_eq!(d["src"], hosts.sender_addr.to_string());
        assert_eq!(d["dst"], hosts.receiver_addr.to_string());
        assert_eq!(d["type"], "data");
    }
}

#[test]
fn each_malformed_class_is_dropped_under_its_own_reason() {
    malformed("malformed", false);
}

/// The same frames through `--mode socket`: the kernel's IP stack filters some before a raw
/// socket sees them (VLAN-tagged frames for a VLAN the host does not have, IP lengths longer
/// than the frame, fragments, which it holds for reassembly, and other protocols); every
/// class that reaches the socket is counted under the same reason as in the XDP program.
#[test]
fn socket_mode_drops_each_malformed_class_under_the_same_reason() {
    malformed("smalformed", true);
}

fn malformed(tag: &str, socket: bool) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let mut args = vec!["--max-payload", "1000"];
    if socket {
        args.extend(["--mode", "socket"]);
    }
    let listener = Listener::start(&hosts, &args);
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

    // bad_checksum (1 frame).
    let mut c = good.clone();
    *c.last_mut().unwrap() ^= 0x80;
    frames.push(frame(&hosts, Ip::default(), &c));

    // unknown_session: a valid sealed packet, but no session is open (1 frame). A handshake
    // opens sessions and needs none: accepted (1 frame).
    let sealed = envelope_packet(wire::envelope::SEALED, 0x5e55_0001, &[0xA5; 48]);
    frames.push(frame(&hosts, Ip::default(), &sealed));
    let handshake = envelope_packet(wire::envelope::HANDSHAKE, 0x5e55_0001, &[0x3C; 32]);
    frames.push(frame(&hosts, Ip::default(), &handshake));

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
    if socket {
        assert_counters(
            &summary,
            &[
                ("accepted", 3),
                ("truncated", 2),
                ("bad_magic", 2),
                ("bad_type", 1),
                ("bad_length", 3),
                ("bad_checksum", 1),
                ("unknown_session", 1),
                ("passed", 0),
            ],
        );
        assert_eq!(dumps.len(), 3);
        return;
    }
    assert_counters(
        &summary,
        &[
            ("accepted", 4),
            ("truncated", 3),
            ("bad_magic", 2),
            ("bad_type", 1),
            ("bad_length", 3),
            ("fragment", 2),
            ("bad_checksum", 1),
            ("unknown_session", 1),
        ],
    );
    assert!(
        counter(&summary, "passed") >= 1,
        "the UDP frame passed: {summary}"
    );
    assert_eq!(dumps.len(), 4);
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
    // Records take as much ring space as their packet (header and 1400-byte payload, plus the
    // record header, rounded to 8, plus the kernel's 8-byte header), and the listener does not
    // read for 1.5 s: of 100 packets, exactly as many as fit are accepted.
    const RING: usize = 16384;
    let payload = 1400;
    let record =
        (chunk_common::ring::RECORD_HEADER_LEN + wire::HEADER_LEN + payload).div_ceil(8) * 8 + 8;
    let fits = (RING / record) as u64;
    let listener = Listener::start(
        &hosts,
        &["--ring-bytes", &RING.to_string(), "--stall-ms", "1500"],
    );
    let packets: Vec<Vec<u8>> = (0..100)
        .map(|i| data_packet(3, i, &[i as u8; 1400]))
        .collect();
    send_raw(&hosts, &packets);
    std::thread::sleep(Duration::from_millis(1500));
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", fits), ("ring_full", 100 - fits)]);
    assert_eq!(dumps.len() as u64, fits);
}

/// Runs `chunk probe` in the sender namespace (valid and corrupt chunks of 1400 bytes).
fn probe(hosts: &TwoHosts, valid: u32, corrupt: u32) -> std::thread::JoinHandle<()> {
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args([
        "probe",
        "--to",
        &hosts.receiver_addr.to_string(),
        "--count",
        &valid.to_string(),
        "--corrupt",
        &corrupt.to_string(),
    ]);
    std::thread::spawn(move || {
        let out = cmd.output().expect("run chunk probe");
        assert!(out.status.success(), "chunk probe: {out:?}");
    })
}

#[test]
fn a_flood_of_a_million_corrupt_packets_dies_in_the_kernel_while_valid_chunks_arrive() {
    const CORRUPT: u64 = 1_000_000;
    const VALID: u64 = 2000;
    let hosts = TwoHosts::new("flood", 1500).unwrap();
    let listener = Listener::start(&hosts, &[]);
    let flood = probe(&hosts, 0, CORRUPT as u32);
    // The valid chunks travel while the flood is under way (it takes seconds).
    std::thread::sleep(Duration::from_millis(300));
    let valid = probe(&hosts, VALID as u32, 0);
    valid.join().unwrap();
    flood.join().unwrap();
    let (dumps, summary) = listener.stop();
    // Two senders on two cores can outrun the one core that runs the program: the veth pair
    // then drops packets before any program sees them, and counts them. Every packet sent is
    // accounted for: dropped by the link, accepted, or dropped for its checksum; nothing else.
    let dropped = hosts.link_drops().unwrap();
    let accepted = counter(&summary, "accepted");
    let bad_checksum = counter(&summary, "bad_checksum");
    assert!(accepted <= VALID && bad_checksum <= CORRUPT, "{summary}");
    assert!(
        accepted + bad_checksum + dropped >= CORRUPT + VALID,
        "{dropped} dropped by the link: {summary}"
    );
    assert!(
        bad_checksum >= CORRUPT - dropped && accepted >= VALID.saturating_sub(dropped),
        "{dropped} dropped by the link: {summary}"
    );
    assert_counters(
        &summary,
        &[("accepted", accepted), ("bad_checksum", bad_checksum)],
    );
    // Userspace saw every accepted chunk, and not one of the corrupt ones: all it got carry the
    // valid probe's transfer id.
    assert_eq!(summary["received"], accepted);
    assert_eq!(dumps.len() as u64, accepted);
    assert!(accepted > 0, "{dropped} dropped by the link: {summary}");
    let valid_id = &dumps[0]["transfer_id"];
    assert!(
        dumps
            .iter()
            .all(|d| d["type"] == "data" && &d["transfer_id"] == valid_id),
        "{summary}"
    );
}

#[test]
fn a_second_receiver_on_the_same_interface_is_refused_with_the_reason() {
    let hosts = TwoHosts::new("busy", 1500).unwrap();
    let listener = Listener::start(&hosts, &[]);
    let out = hosts
        .receiver
        .command(&chunk_bin())
        .args(["listen", "--iface", hosts.receiver_if, "--duration", "1"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second attach must fail: {err}");
    assert!(
        err.contains("another XDP program") && err.contains("\"chunk\""),
        "the error names what holds the interface: {err}"
    );
    // The first one is untouched and still receives.
    send_raw(&hosts, &[data_packet(1, 0, b"still here")]);
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 1)]);
    assert_eq!(dumps.len(), 1);
}

fn stats(hosts: &TwoHosts) -> Result<Value, String> {
    let out = hosts
        .receiver
        .command(&chunk_bin())
        .args(["stats", "--iface", hosts.receiver_if, "--json"])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("stats prints JSON"))
}

/// `chunk stats` and `bpftool` see a running `chunk recv`: the kernel's counters live, the
/// receiver's limits and figures from its state file, the program and the pinned maps.
#[test]
fn stats_and_bpftool_show_a_running_receiver() {
    let hosts = TwoHosts::new("stats", 1500).unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let chunk_tests::ReadyRecv { daemon, .. } = chunk_tests::spawn_recv(
        hosts.receiver.command(&chunk_bin()),
        hosts.receiver_if,
        out_dir.path(),
        &["--max-per-source", "3", "--max-state-kib", "512"],
    )
    .expect("chunk recv is ready");
    // Data for a transfer the receiver does not know, and corrupt chunks.
    probe(&hosts, 30, 7).join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let s = stats(&hosts).expect("stats of a running receiver");
    assert_eq!(s["counters"]["accepted"], 30, "{s}");
    assert_eq!(s["counters"]["bad_checksum"], 7, "{s}");
    assert_eq!(s["pid"], daemon.id(), "{s}");
    assert_eq!(s["limits"]["max_per_source"], 3, "{s}");
    assert_eq!(s["limits"]["max_state_kib"], 512, "{s}");
    assert_eq!(s["receiver"]["unknown_transfer"], 30, "{s}");
    let prog_id = s["prog"]["prog_id"].as_u64().expect("a program id");
    assert!(s["prog"]["verified_insns"].as_u64().unwrap_or(0) > 0, "{s}");

    let shown = hosts
        .receiver
        .exec("bpftool", &["prog", "show", "id", &prog_id.to_string()])
        .unwrap();
    assert!(
        shown.contains("xdp") && shown.contains("name chunk"),
        "{shown}"
    );
    // The pins live in the receiver's mount namespace (`ip netns exec` gives each command its
    // own /sys): look from inside it.
    let pinned = s["pinned"].as_str().expect("maps are pinned").to_string();
    let dump = chunk_tests::run(std::process::Command::new("nsenter").args([
        "-t",
        &daemon.id().to_string(),
        "-m",
        "-n",
        "bpftool",
        "-j",
        "map",
        "dump",
        "pinned",
        &format!("{pinned}/counters"),
    ]))
    .expect("bpftool dumps the pinned counters");
    let dump: Value = serde_json::from_slice(&dump.stdout).unwrap();
    let accepted_key = chunk_common::counters::Counter::Accepted as u64;
    let accepted: u64 = dump
        .as_array()
        .unwrap()
        .iter()
        .find(|e| key_index(&e["key"]) == accepted_key)
        .expect("the accepted counter")["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| le_bytes(&v["value"]))
        .sum();
    assert_eq!(accepted, 30, "{dump}");

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(10)).unwrap().success());
    let gone = stats(&hosts).expect_err("no receiver any more");
    assert!(gone.contains("no chunk receiver"), "{gone}");
}

/// A map key or value as bpftool prints it without BTF: hex byte strings, little-endian (or a
/// plain number, with BTF).
fn le_bytes(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::Array(bytes) => bytes.iter().rev().fold(0, |acc, b| {
            let s = b.as_str().unwrap().trim_start_matches("0x");
            (acc << 8) | u64::from_str_radix(s, 16).unwrap()
        }),
        other => panic!("unexpected bpftool value {other}"),
    }
}

fn key_index(v: &Value) -> u64 {
    le_bytes(v)
}

#[test]
fn xdp_log_reports_each_drop_with_its_reason() {
    let hosts = TwoHosts::new("xdplog", 1500).unwrap();
    let mut cmd = hosts.receiver.command(&chunk_bin());
    cmd.args([
        "listen",
        "--iface",
        hosts.receiver_if,
        "--xdp-log",
        "--duration",
        "4",
    ])
    .env("RUST_LOG", "debug");
    let run = std::thread::spawn(move || cmd.output().unwrap());
    // Keep sending until the program is surely attached.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(250));
        let mut bad = data_packet(5, 0, b"bits flip");
        *bad.last_mut().unwrap() ^= 1;
        send_raw(&hosts, &[bad]);
    }
    let out = run.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("dropped a chunk packet: bad_checksum"),
        "the drop is logged with its reason: {err}"
    );
}

#[test]
fn packets_at_every_size_boundary_meet_the_right_rule() {
    size_boundaries("sizes", &[]);
}

#[test]
fn socket_mode_packets_at_every_size_boundary_meet_the_same_rule() {
    size_boundaries("ssizes", &["--mode", "socket"]);
}

/// Chunk packets at every size that is a boundary for someone: the checksum's 8-byte steps, the
/// link's MTU (exactly, and one byte over: the sender's kernel refuses, or fragments when
/// allowed to), the receiver's `--max-payload`, and on a 9300-byte link a jumbo frame's chunk and
/// the largest payload the receive path carries at all. Each one is accepted byte-exact or dropped under its reason.
fn size_boundaries(tag: &str, mode: &[&str]) {
    use chunk_common::ring::MAX_PAYLOAD_LEN;
    let body = |n: usize| -> Vec<u8> { (0..n).map(|i| (i * 13 + n) as u8).collect() };
    let mtu_payload = 1500 - 20 - wire::HEADER_LEN;

    // A 1500-byte link, the receiver's default payload limit.
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let listener = Listener::start(&hosts, mode);
    let sizes = [0, 1, 7, 8, 9, 15, 16, 17, mtu_payload - 1, mtu_payload];
    let packets: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| data_packet(0x512E, i as u32, &body(n)))
        .collect();
    send_raw(&hosts, &packets);
    // One byte over the MTU: with "don't fragment" (what chunk send sets), the sending kernel
    // refuses it; allowed to fragment, it sends two fragments, which the receiver drops.
    let over = data_packet(0x512E, 99, &body(mtu_payload + 1));
    let refused = hosts
        .sender
        .enter(|| {
            chunk::net::raw::RawSocket::new(PROTO)
                .unwrap()
                .send_to(&over, (hosts.receiver_addr, 0).into())
        })
        .unwrap();
    assert_eq!(
        refused.unwrap_err().raw_os_error(),
        Some(libc::EMSGSIZE),
        "a chunk over the MTU is refused at the sender"
    );
    send_fragmenting(&hosts, &[over]);
    let (dumps, summary) = listener.stop();
    // XDP sees and counts each of the two fragments; a raw socket only gets the packet the
    // kernel reassembled from them, and counts that one.
    let fragments = if mode.is_empty() { 2 } else { 1 };
    assert_counters(
        &summary,
        &[("accepted", sizes.len() as u64), ("fragment", fragments)],
    );
    assert_eq!(dumps.len(), sizes.len());
    for (d, sent) in dumps.iter().zip(&packets) {
        assert_dump_is(d, sent);
    }
    drop(hosts);

    // A receiver that takes at most 1000 bytes of payload: 1000 passes, 1001 does not.
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let mut args = mode.to_vec();
    args.extend(["--max-payload", "1000"]);
    let listener = Listener::start(&hosts, &args);
    send_raw(
        &hosts,
        &[
            data_packet(1, 0, &body(999)),
            data_packet(1, 1, &body(1000)),
            data_packet(1, 2, &body(1001)),
            data_packet(1, 3, &body(mtu_payload)),
        ],
    );
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 2), ("bad_length", 2)]);
    let lens: Vec<u64> = dumps.iter().map(|d| d["len"].as_u64().unwrap()).collect();
    assert_eq!(
        lens,
        [
            wire::HEADER_LEN as u64 + 999,
            wire::HEADER_LEN as u64 + 1000
        ]
    );
    drop(hosts);

    // A link above the largest jumbo frame (9300 bytes; the program declares multi-buffer
    // support, so native XDP on veth takes frames this large, in fragments): a 9000-byte link's
    // chunk and the largest payload the receive path carries arrive whole, across fragments;
    // one byte more, or a payload as large as this link allows, is dropped as too long, never
    // truncated into something that looks valid.
    let hosts = TwoHosts::new(tag, 9300).unwrap();
    let listener = Listener::start(&hosts, mode);
    let big = [
        data_packet(2, 0, &body(9000 - 20 - wire::HEADER_LEN)),
        data_packet(2, 1, &body(MAX_PAYLOAD_LEN)),
        data_packet(2, 2, &body(MAX_PAYLOAD_LEN + 1)),
        data_packet(2, 3, &body(9300 - 20 - wire::HEADER_LEN)),
    ];
    send_raw(&hosts, &big);
    let (dumps, summary) = listener.stop();
    assert_counters(&summary, &[("accepted", 2), ("bad_length", 2)]);
    assert_eq!(dumps.len(), 2);
    for (d, sent) in dumps.iter().zip(&big) {
        assert_dump_is(d, sent);
    }
    if mode.is_empty() {
        assert_eq!(
            summary["mode"], "driver",
            "with frags, native XDP on veth takes jumbo frames"
        );
    }
}
