//! IPv6 and UDP end to end (issue: reach): real transfers between namespaces over IPv6 (addresses
//! in 2001:2::/48 only), through XDP and the socket path; a dual-stack receiver taking both
//! families at once; the allowlist and the pre-shared key over IPv6; loss on a routed IPv6 path;
//! chunk in UDP over both families; and a masquerading NAT that passes only TCP, UDP and ICMP,
//! which chunk crosses with `--udp` and not without.

mod common;

use std::time::Duration;

use chunk_tests::{Routed, TwoHosts};
use common::*;

const SOCKET: &[&str] = &["--mode", "socket"];
const PORT: &str = "47000";

#[test]
fn files_of_edge_sizes_arrive_exact_over_ipv6() {
    edge_sizes("v6sizes", &[], &[]);
}

#[test]
fn socket_mode_files_of_edge_sizes_arrive_exact_over_ipv6() {
    edge_sizes("v6ssizes", SOCKET, &[]);
}

#[test]
fn files_of_edge_sizes_arrive_exact_over_udp_and_ipv6() {
    edge_sizes("v6usizes", &["--udp", PORT], &["--udp", PORT]);
}

#[test]
fn socket_mode_files_of_edge_sizes_arrive_exact_over_udp_and_ipv6() {
    edge_sizes(
        "v6ussizes",
        &["--mode", "socket", "--udp", PORT],
        &["--udp", PORT],
    );
}

/// Empty, one byte, one chunk, chunks and one byte, and the largest chunk the 1500-byte path
/// carries over IPv6 (1440 bytes: 1500 − 40 − 20; 1432 over UDP) by default.
fn edge_sizes(tag: &str, recv_extra: &[&str], send_extra: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let udp = send_extra.contains(&"--udp");
    let chunk = if udp { 1432 } else { 1440 };
    let sizes = [
        ("empty", 0),
        ("one-byte", 1),
        ("one-chunk", chunk),
        ("three-chunks-and-one", 3 * chunk + 1),
        ("two-mib-and-seven", (2 << 20) + 7),
    ];
    let (json, finished, summary) =
        edge_sizes_across(&hosts, hosts.receiver_addr6, &sizes, recv_extra, send_extra);
    // The default chunk size comes from the IPv6 path MTU, less the IPv6 (and UDP) header.
    assert_eq!(json["files"][3]["chunks"], 4, "{json}");
    // Over UDP, runs of full chunks leave as segmentation-offload messages (the socket-path
    // receiver then takes them coalesced and splits them back, `UDP_GRO`); straight over IP,
    // one message per packet.
    let (packets, messages) = (
        json["packets_sent"].as_u64().unwrap(),
        json["send_messages"].as_u64().unwrap(),
    );
    assert!(packets > (2 << 20) / chunk as u64, "{json}");
    if udp {
        assert!(messages * 4 < packets, "{json}");
    } else {
        assert_eq!(messages, packets, "{json}");
    }
    // The receiver names the sender by its IPv6 address (and UDP port over UDP).
    for fin in &finished {
        let from = fin["src"].as_str().unwrap();
        if udp {
            assert!(from.starts_with("[2001:2::1]:"), "{fin}");
        } else {
            assert_eq!(from, "2001:2::1", "{fin}");
        }
    }
    assert!(
        counter(&summary, "accepted") >= (2 << 20) / chunk as u64,
        "{summary}"
    );
}

/// Two receivers on two interfaces of one host, both with the same `--udp` port, through XDP
/// and the socket path: each binds its UDP sockets to its own interface, so neither is refused
/// the port, and each takes its own sender's file.
#[test]
fn receivers_on_two_interfaces_share_a_udp_port() {
    for mode in [&[][..], SOCKET] {
        let hosts = TwoHosts::new(if mode.is_empty() { "2if" } else { "s2if" }, 1500).unwrap();
        // A second link between the same two hosts.
        chunk_tests::veth_pair(
            chunk_tests::VethEnd::new(&hosts.sender, "veth-s2")
                .addr("198.18.7.1/24")
                .addr6("2001:2:0:7::1/64"),
            chunk_tests::VethEnd::new(&hosts.receiver, "veth-r2")
                .addr("198.18.7.2/24")
                .addr6("2001:2:0:7::2/64"),
            None,
        )
        .unwrap();
        let src = tempfile::tempdir().unwrap();
        let (out1, out2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let file1 = make_file(src.path(), "first.bin", 300_000, 71);
        let file2 = make_file(src.path(), "second.bin", 300_001, 72);
        let extra = [mode, &["--udp", PORT]].concat();
        let recv1 = Recv::start(&hosts.receiver, hosts.receiver_if, out1.path(), &extra);
        let recv2 = Recv::start(&hosts.receiver, "veth-r2", out2.path(), &extra);
        let (o1, j1) = send(
            &hosts.sender,
            hosts.receiver_addr6,
            &[&file1],
            &["--udp", PORT],
        );
        let (o2, j2) = send(&hosts.sender, "198.18.7.2", &[&file2], &["--udp", PORT]);
        assert_sent(&o1, &j1, 1);
        assert_sent(&o2, &j2, 1);
        recv1.stop();
        recv2.stop();
        assert!(same_contents(&file1, &out1.path().join("first.bin")));
        assert!(same_contents(&file2, &out2.path().join("second.bin")));
        assert_eq!(names_in(out1.path()), ["first.bin"]);
        assert_eq!(names_in(out2.path()), ["second.bin"]);
    }
}

/// One receiver, both families at once, with and without UDP: four senders in parallel, each
/// file exact.
#[test]
fn a_dual_stack_receiver_takes_ipv4_and_ipv6_transfers_at_once() {
    for mode in [&[][..], SOCKET] {
        let hosts = TwoHosts::new(if mode.is_empty() { "dual" } else { "sdual" }, 1500).unwrap();
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let mut recv_args = vec!["--exit-after", "4", "--udp", PORT];
        recv_args.extend(mode);
        let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &recv_args);
        let v4 = hosts.receiver_addr.to_string();
        let v6 = hosts.receiver_addr6.to_string();
        let runs = [
            ("v4.bin", v4.clone(), false),
            ("v6.bin", v6.clone(), false),
            ("v4udp.bin", v4, true),
            ("v6udp.bin", v6, true),
        ];
        let files: Vec<_> = runs
            .iter()
            .enumerate()
            .map(|(i, (name, ..))| make_file(src.path(), name, 24 << 20, 70 + i as u64))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = runs
                .iter()
                .zip(&files)
                .map(|((_, to, udp), file)| {
                    let hosts = &hosts;
                    s.spawn(move || {
                        let extra: &[&str] = if *udp { &["--udp", PORT] } else { &[] };
                        send(&hosts.sender, to, &[file], extra)
                    })
                })
                .collect();
            for h in handles {
                let (o, json) = h.join().unwrap();
                assert_sent(&o, &json, 1);
            }
        });
        let summary = recv.wait_exit();
        for f in &files {
            let name = f.file_name().unwrap();
            assert!(same_contents(f, &out.path().join(name)), "{name:?} differs");
        }
        assert_eq!(summary["transfers_finished"], 4, "{summary}");
    }
}

/// `--allow` with IPv6 prefixes: a sender outside them is refused in the kernel (counted
/// `not_allowed`, nothing written), one inside gets its file through; an IPv4-only allowlist
/// refuses every IPv6 source.
#[test]
fn the_allowlist_takes_ipv6_prefixes() {
    for mode in [&[][..], SOCKET] {
        let hosts = TwoHosts::new(
            if mode.is_empty() {
                "v6allow"
            } else {
                "sv6allow"
            },
            1500,
        )
        .unwrap();
        let src = tempfile::tempdir().unwrap();
        let file = make_file(src.path(), "allowed.bin", 1 << 20, 80);
        for (allow, admitted) in [
            ("2001:2::1/128", true),
            ("2001:2:0:1::/64", false),
            ("198.18.0.0/15", false),
        ] {
            let out = tempfile::tempdir().unwrap();
            let mut args = vec!["--allow", allow];
            args.extend(mode);
            let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &args);
            let (o, json) = send(
                &hosts.sender,
                hosts.receiver_addr6,
                &[&file],
                &["--timeout", "2"],
            );
            let summary = recv.stop();
            if admitted {
                assert_sent(&o, &json, 1);
                assert!(same_contents(&file, &out.path().join("allowed.bin")));
                assert_eq!(counter(&summary, "not_allowed"), 0, "{summary}");
            } else {
                assert!(!o.status.success(), "{allow}: {json}");
                assert!(names_in(out.path()).is_empty());
                assert!(counter(&summary, "not_allowed") >= 1, "{allow}: {summary}");
            }
        }
    }
}

/// A pre-shared key over IPv6 and UDP: the wrong key is refused, the right one verified.
#[test]
fn a_pre_shared_key_works_over_ipv6_and_udp() {
    let hosts = TwoHosts::new("v6psk", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let good = keys.path().join("good.key");
    let bad = keys.path().join("bad.key");
    std::fs::write(&good, [5u8; 32]).unwrap();
    std::fs::write(&bad, [6u8; 32]).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "keyed.bin", 3 << 20, 81);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--psk-file", good.to_str().unwrap(), "--udp", PORT],
    );
    let to = hosts.receiver_addr6;
    for udp in [false, true] {
        let mut args = vec!["--timeout", "2", "--psk-file", bad.to_str().unwrap()];
        if udp {
            args.extend(["--udp", PORT]);
        }
        let (o, json) = send(&hosts.sender, to, &[&file], &args);
        assert!(!o.status.success(), "{json}");
        assert!(names_in(out.path()).is_empty());
    }
    let (o, json) = send(
        &hosts.sender,
        to,
        &[&file],
        &["--psk-file", good.to_str().unwrap(), "--udp", PORT],
    );
    assert_sent(&o, &json, 1);
    let summary = recv.stop();
    assert!(same_contents(&file, &out.path().join("keyed.bin")));
    // The wrong key's handshakes do not authenticate.
    assert!(
        summary["sessions"]["handshakes_failed"].as_u64().unwrap() >= 2,
        "{summary}"
    );
}

/// 5 % loss each way on a routed IPv6 path (nftables in the router, `inet` family), straight
/// over IP and in UDP: the file arrives exact, the loss was real and was repaired.
#[test]
fn five_percent_loss_both_ways_over_ipv6() {
    for udp in [false, true] {
        let net = Routed::new(if udp { "v6uloss" } else { "v6loss" }).unwrap();
        if udp {
            net.set_udp_loss(PORT.parse().unwrap(), 5).unwrap();
        } else {
            net.set_loss(chunk_common::DEFAULT_IP_PROTOCOL, 5).unwrap();
        }
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = make_file(src.path(), "lossy6.bin", 16 << 20, 82);
        let recv_extra: &[&str] = if udp { &["--udp", PORT] } else { &[] };
        let recv = Recv::start(&net.receiver, net.receiver_if, out.path(), recv_extra);
        let mut args = vec!["--timeout", "60"];
        args.extend(recv_extra);
        let (o, json) = send(&net.sender, net.receiver_addr6, &[&file], &args);
        assert_sent(&o, &json, 1);
        recv.stop();
        assert!(same_contents(&file, &out.path().join("lossy6.bin")));
        let dropped = net.dropped().unwrap();
        let chunks = json["files"][0]["chunks"].as_u64().unwrap();
        assert!(
            dropped as f64 > chunks as f64 * 0.05 * 0.5,
            "{dropped} dropped of {chunks}"
        );
        assert!(json["files"][0]["retransmitted"].as_u64().unwrap() > 0);
    }
}

/// A masquerading NAT that forwards only TCP, UDP and ICMP (a home router, a cloud NAT
/// gateway): straight over IP the sender hears nothing and says to try `--udp`; with `--udp`
/// the file crosses exact, over IPv4 and IPv6 (NAT66), through XDP and the socket path, and the
/// receiver saw the NAT's address, not the sender's.
#[test]
fn a_nat_that_passes_only_tcp_and_udp_is_crossed_with_udp() {
    for mode in [&[][..], SOCKET] {
        let net = Routed::new(if mode.is_empty() { "nat" } else { "snat" }).unwrap();
        net.set_nat().unwrap();
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = make_file(src.path(), "natted.bin", 8 << 20, 83);
        let mut recv_args = vec!["--udp", PORT];
        recv_args.extend(mode);
        let mut recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &recv_args);
        // Without --udp: nothing gets through; the message says what to do.
        let (o, json) = send(
            &net.sender,
            net.receiver_addr,
            &[&file],
            &["--timeout", "2"],
        );
        assert!(!o.status.success(), "{json}");
        let error = json["files"][0]["error"].as_str().unwrap_or_default();
        assert!(error.contains("--udp"), "{json}");
        assert!(net.nat_dropped().unwrap() >= 1);
        assert!(names_in(out.path()).is_empty());
        // With it, over both families.
        for (to, name, nat) in [
            (net.receiver_addr.to_string(), "natted.bin", "198.18.2.254:"),
            (
                net.receiver_addr6.to_string(),
                "natted6.bin",
                "[2001:2:0:2::fe]:",
            ),
        ] {
            let file = if name == "natted.bin" {
                file.clone()
            } else {
                make_file(src.path(), name, 8 << 20, 84)
            };
            let (o, json) = send(&net.sender, &to, &[&file], &["--udp", PORT]);
            assert_sent(&o, &json, 1);
            let fin = recv.wait_event(Duration::from_secs(10), |v| event_is(v, "finished", name));
            assert!(same_contents(&file, &out.path().join(name)));
            // The NAT rewrote the source: the receiver answered the router's address.
            let from = fin["src"].as_str().unwrap();
            assert!(from.starts_with(nat), "{fin}");
        }
        recv.stop();
    }
}

/// A sender in UDP whose receiver is not listening yet hears ICMP "port unreachable" on its
/// connected socket: that is a lost packet, not the end; it times out with the hint to start the
/// receiver with `--udp`, and a receiver started meanwhile gets the file.
#[test]
fn a_sender_in_udp_outlasts_a_receiver_that_is_not_there_yet() {
    let hosts = TwoHosts::new("v6late", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "late.bin", 1 << 20, 85);
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr6,
        &[&file],
        &["--udp", PORT, "--timeout", "2"],
    );
    assert!(!o.status.success(), "{json}");
    let error = json["files"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("--udp 47000"), "{json}");
    // Started while a sender is already trying: the file arrives.
    let sender = {
        let mut cmd = hosts.sender.command(&chunk_bin());
        cmd.args(["send", "--json", "--udp", PORT, "--to"])
            .arg(hosts.receiver_addr6.to_string())
            .arg(&file);
        cmd.spawn().expect("chunk send")
    };
    std::thread::sleep(Duration::from_millis(700));
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--udp", PORT, "--exit-after", "1"],
    );
    let status = sender.wait_with_output().expect("chunk send ends");
    assert!(status.status.success(), "{status:?}");
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("late.bin")));
}
