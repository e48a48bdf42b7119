//! What outside checks found, as namespace tests: the receiver answers from the address it was
//! sent to, answers every offer (empty files, unknown hash algorithms), never lets two receivers
//! sharing a directory write one part file, survives a disk that fills mid-transfer, counts
//! an ack's delay from the chunk's arrival on both receive paths, and the sender refuses what
//! it cannot send with a message that says why. Needs root (run through
//! `cargo xtask test`).

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use chunk::{intake::Intake, net::raw::RawSocket};
use chunk_common::wire::{
    self, AbortReason, CompleteStatus, HashAlg, Message, MessageType, OfferRepr, Repr,
};
use chunk_tests::{Daemon, Netns, Routed, TwoHosts, run};
use common::*;

mod common;

const PROTO: u8 = chunk_common::DEFAULT_IP_PROTOCOL;

/// What came back for one packet: (source address, message type, seq, detail), where detail is
/// the ack's cumulative index, the complete's status, or the abort's reason.
type Answer = (Ipv4Addr, MessageType, u32, u32);

/// Sends `packet` to `to` from `ns` and collects what comes back within `wait`.
fn exchange(ns: &Netns, to: Ipv4Addr, packet: &[u8], wait: Duration) -> Vec<Answer> {
    ns.enter(|| {
        let sock = RawSocket::new(PROTO).unwrap();
        sock.send_to(packet, (to, 0).into()).unwrap();
        received(&sock, wait, |src, repr| {
            let (ty, detail) = match repr.message {
                Message::Ack(a) => (MessageType::Ack, a.cumulative),
                Message::Complete(c) => (MessageType::Complete, c.status as u32),
                Message::Abort(a) => (MessageType::Abort, a.reason.code() as u32),
                _ => return None,
            };
            Some((src, ty, repr.seq, detail))
        })
    })
    .unwrap()
}

/// What comes back on `sock` within `wait`, through the intake `chunk send` uses (classify,
/// checksum included, then parse), each packet as `keep` makes it (`None`: not kept).
fn received<T>(
    sock: &RawSocket,
    wait: Duration,
    mut keep: impl FnMut(Ipv4Addr, &Repr) -> Option<T>,
) -> Vec<T> {
    let deadline = Instant::now() + wait;
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut intake = Intake::new(None);
    while Instant::now() < deadline {
        let Some((n, _)) = sock.recv_nonblocking(&mut buf).unwrap() else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if n < 20 {
            continue;
        }
        let src = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        if let Ok(repr) = intake.open_ip(&mut buf[..n], PROTO, |_| true, 0) {
            kept.extend(keep(src, &repr));
        }
    }
    kept
}

fn offer_packet(tid: u32, name: &str, content: &[u8], hash_alg: HashAlg) -> Vec<u8> {
    let chunk_size = 1400;
    let repr = Repr {
        transfer_id: tid,
        seq: 0,
        flags: 0,
        message: Message::Offer(OfferRepr {
            file_size: content.len() as u64,
            chunk_size,
            chunk_count: wire::chunk_count(content.len() as u64, chunk_size).unwrap(),
            mode: 0o644,
            mtime: 1_700_000_000,
            hash_alg,
            tag: [0x7a; wire::HASH_LEN],
            name: name.as_bytes(),
        }),
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// The hash message for `content`, as a sender written from the spec sends it.
fn hash_packet(tid: u32, content: &[u8]) -> Vec<u8> {
    let repr = Repr {
        transfer_id: tid,
        seq: wire::chunk_count(content.len() as u64, 1400).unwrap(),
        flags: 0,
        message: Message::Hash(wire::HashRepr {
            alg: HashAlg::Blake3,
            hash: *blake3::hash(content).as_bytes(),
        }),
    };
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn second_address(hosts: &TwoHosts) -> Ipv4Addr {
    let second = Ipv4Addr::new(198, 18, 0, 3);
    hosts
        .receiver
        .ip(&["addr", "add", "198.18.0.3/24", "dev", hosts.receiver_if])
        .unwrap();
    hosts
        .sender
        .ip(&[
            "neigh",
            "replace",
            "198.18.0.3",
            "lladdr",
            &chunk_tests::mac(&hosts.receiver_mac),
            "dev",
            hosts.sender_if,
            "nud",
            "permanent",
        ])
        .unwrap();
    second
}

/// A multi-homed receiver: `chunk send --to <second address>` accepts answers only from that
/// address, so the receiver must answer from it (not from the route's preferred source).
fn answers_from_the_address_sent_to(tag: &str, mode: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let second = second_address(&hosts);
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "second.bin", 3 << 20, 11);
    let empty = make_file(src.path(), "empty.bin", 0, 0);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[&["--exit-after", "2"], mode].concat(),
    );
    let (o, json) = send(
        &hosts.sender,
        second,
        &[&file, &empty],
        &["--timeout", "10"],
    );
    assert_sent(&o, &json, 2);
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("second.bin")));
    assert!(same_contents(&empty, &out.path().join("empty.bin")));
    // And every answer to a hand-made offer came from the second address.
    let answers = exchange(
        &hosts.sender,
        second,
        &offer_packet(77, "x", b"", HashAlg::Blake3),
        Duration::from_millis(300),
    );
    assert!(answers.is_empty(), "the receiver has exited: {answers:?}");
}

#[test]
fn a_receiver_answers_from_the_address_the_sender_aimed_at() {
    answers_from_the_address_sent_to("addr2", &[]);
}

#[test]
fn socket_mode_a_receiver_answers_from_the_address_the_sender_aimed_at() {
    answers_from_the_address_sent_to("saddr2", &["--mode", "socket"]);
}

/// A sender written from the spec waits for an ack to its offer. For an empty file the receiver
/// acknowledges everything (cumulative = chunk count = 0), and answers the hash message with its
/// verdict; an offer for an unknown hash algorithm is refused as `unsupported`, not left
/// unanswered. All from the address the offer was sent to.
#[test]
fn every_offer_is_answered_empty_files_and_unknown_hashes_too() {
    let hosts = TwoHosts::new("answer", 1500).unwrap();
    let second = second_address(&hosts);
    let out = tempfile::tempdir().unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);

    let answers = exchange(
        &hosts.sender,
        second,
        &offer_packet(1, "empty", b"", HashAlg::Blake3),
        Duration::from_millis(500),
    );
    assert_eq!(answers, [(second, MessageType::Ack, 0, 0)]);
    assert!(
        !out.path().join("empty").exists(),
        "no verdict before the hash"
    );
    let answers = exchange(
        &hosts.sender,
        second,
        &hash_packet(1, b""),
        Duration::from_millis(500),
    );
    assert_eq!(
        answers,
        [(
            second,
            MessageType::Complete,
            0,
            CompleteStatus::Verified as u32
        )]
    );
    assert_eq!(std::fs::read(out.path().join("empty")).unwrap(), b"");

    let answers = exchange(
        &hosts.sender,
        hosts.receiver_addr,
        &offer_packet(2, "sha", b"some content", HashAlg::Other(2)),
        Duration::from_millis(500),
    );
    assert_eq!(
        answers,
        [(
            hosts.receiver_addr,
            MessageType::Abort,
            0,
            AbortReason::Unsupported.code() as u32
        )]
    );
    let (summary, events) = recv.stop_with_events();
    assert!(
        events
            .iter()
            .any(|e| event_is(e, "refused", "sha") && e["reason"] == "unsupported offer"),
        "{events:?}"
    );
    assert_eq!(summary["unparsable"], 0, "{summary}");
    assert_eq!(names_in(out.path()), ["empty"]);
}

/// Two receivers (one per interface, here one per namespace) writing into one directory, two
/// senders offering different files under one name at the same moment: at most one is told
/// "verified", and what sits under the name is exactly that sender's file.
#[test]
fn two_receivers_sharing_a_directory_never_verify_a_file_that_is_not_there() {
    let a = TwoHosts::new("share1", 1500).unwrap();
    let b = TwoHosts::new("share2", 1500).unwrap();
    let out = tempfile::tempdir().unwrap();
    let da = tempfile::tempdir().unwrap();
    let db = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let name = format!("same{round}.bin");
        let fa = make_file(da.path(), &name, 6 << 20, 100 + round);
        let fb = make_file(db.path(), &name, 6 << 20, 200 + round);
        let ra = Recv::start(&a.receiver, a.receiver_if, out.path(), &[]);
        let rb = Recv::start(&b.receiver, b.receiver_if, out.path(), &[]);
        let ((oa, ja), (ob, jb)) = std::thread::scope(|s| {
            let ta = s.spawn(|| send(&a.sender, a.receiver_addr, &[&fa], &["--rate", "150M"]));
            let tb = s.spawn(|| send(&b.sender, b.receiver_addr, &[&fb], &["--rate", "150M"]));
            (ta.join().unwrap(), tb.join().unwrap())
        });
        ra.stop();
        rb.stop();
        let final_path = out.path().join(&name);
        let ok_a = oa.status.success();
        let ok_b = ob.status.success();
        assert!(ok_a || ok_b, "one of them gets the name: {ja} {jb}");
        assert!(!(ok_a && ok_b), "both verified one name: {ja} {jb}");
        let winner = if ok_a { &fa } else { &fb };
        assert!(
            same_contents(winner, &final_path),
            "round {round}: the verified sender's content is not what sits under {name}"
        );
        let loser = if ok_a { &jb } else { &ja };
        let why = loser["files"][0]["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("exists") || why.contains("being received"),
            "{loser}"
        );
    }
    // No part files or records left behind by either receiver.
    let left: Vec<String> = names_in(out.path())
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A FIFO (or any non-file) given to `chunk send` is refused at once, without waiting for a
/// writer, and the other files still go.
#[test]
fn a_fifo_as_input_is_refused_at_once_and_the_rest_is_sent() {
    let hosts = TwoHosts::new("fifo", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let fifo = src.path().join("pipe");
    run(Command::new("mkfifo").arg(&fifo)).unwrap();
    let file = make_file(src.path(), "after.bin", 100_000, 4);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--exit-after", "1"],
    );
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--to", &hosts.receiver_addr.to_string()])
        .arg(&fifo)
        .arg(&file);
    let started = Instant::now();
    let daemon = Daemon::spawn(cmd, "chunk send").unwrap();
    let status = daemon
        .wait(Duration::from_secs(20))
        .expect("chunk send must not hang on a FIFO");
    assert!(!status.success(), "a FIFO is not a file to send");
    assert!(started.elapsed() < Duration::from_secs(15));
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("after.bin")));
    assert_eq!(names_in(out.path()), ["after.bin"]);
}

/// With a key, the seal (encrypted, 44 bytes) or the authentication trailer (`--no-encryption`,
/// 24 bytes) rides in every packet: `--chunk-size` is checked against MTU − 84 or − 64, the
/// message says so, and a refused attempt leaves nothing on the receiver.
#[test]
fn with_a_key_the_chunk_size_limit_counts_the_seal_or_trailer_and_a_refused_send_leaves_nothing() {
    let hosts = TwoHosts::new("pskmtu", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let key = src.path().join("key");
    std::fs::write(&key, b"a shared secret of the test, 32+ bytes long").unwrap();
    let key_s = key.to_string_lossy().into_owned();
    let file = make_file(src.path(), "k.bin", 200_000, 9);
    for (extra, largest, words) in [
        (&[][..], 1416, "the seal"),
        (&["--no-encryption"][..], 1436, "authentication trailer"),
    ] {
        let out = tempfile::tempdir().unwrap();
        let recv = Recv::start(
            &hosts.receiver,
            hosts.receiver_if,
            out.path(),
            &["--psk-file", &key_s],
        );
        let too_big = (largest + 1).to_string();
        let o = hosts
            .sender
            .command(&chunk_bin())
            .args(["send", "--to", &hosts.receiver_addr.to_string()])
            .args(["--psk-file", &key_s, "--chunk-size", &too_big])
            .args(extra)
            .arg(&file)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains(&format!("at most {largest}")) && stderr.contains(words),
            "{stderr}"
        );
        assert!(
            names_in(out.path()).is_empty(),
            "{:?}",
            names_in(out.path())
        );
        // The largest size the message named works.
        let size = largest.to_string();
        let (o, json) = send(
            &hosts.sender,
            hosts.receiver_addr,
            &[&file],
            &[&["--psk-file", &key_s, "--chunk-size", &size][..], extra].concat(),
        );
        assert_sent(&o, &json, 1);
        recv.stop();
        assert!(same_contents(&file, &out.path().join("k.bin")));
        assert_eq!(names_in(out.path()), ["k.bin"]);
    }
}

/// The part file is preallocated when the offer is accepted; the disk filling up afterwards
/// (another program writing) must not fail the transfer over its progress record, nor leave
/// temporary files.
#[test]
fn a_disk_that_fills_mid_transfer_does_not_fail_the_file() {
    let hosts = TwoHosts::new("diskfull", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = Mounted::tmpfs("24m");
    let file = make_file(src.path(), "f.bin", 12 << 20, 21);
    let mut recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, json) = std::thread::scope(|s| {
        // 12 MiB at 25 Mbit/s: about 4 s, several progress-record saves after the disk is full.
        let t = s.spawn(|| {
            send(
                &hosts.sender,
                hosts.receiver_addr,
                &[&file],
                &["--rate", "25M"],
            )
        });
        recv.wait_event(Duration::from_secs(10), |v| event_is(v, "started", "f.bin"));
        // Fill what is left.
        let status = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", out.path().join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "dd stops at a full disk");
        t.join().unwrap()
    });
    assert_sent(&o, &json, 1);
    recv.stop();
    assert!(same_contents(&file, &out.path().join("f.bin")));
    assert_eq!(names_in(out.path()), ["f.bin", "filler"]);
}

/// Errors for users are messages: `--out` naming a file says "not a directory", with no stack
/// trace even when `RUST_BACKTRACE` is set.
#[test]
fn an_out_that_is_a_file_is_named_so_without_a_backtrace() {
    let ns = Netns::new("outfile").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("plain");
    std::fs::write(&f, b"x").unwrap();
    let out = ns
        .command(&chunk_bin())
        .env("RUST_BACKTRACE", "1")
        .args(["recv", "--iface", "lo", "--out"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a directory"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The receiver accepted the offer but no data packet reaches it (a firewall that passes small
/// packets only, say): the sender must not claim that nobody answered.
#[test]
fn an_accepted_offer_then_silence_is_not_reported_as_no_answer() {
    let net = Routed::new("dataloss").unwrap();
    // Drop data packets only (chunk type 1 at byte 3 of the IP payload, no IP options).
    let script = format!(
        "table inet chunk_data {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    meta l4proto {PROTO} @nh,184,8 1 counter drop\n  }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("chunk-data-{}.nft", std::process::id()));
    std::fs::write(&path, script).unwrap();
    run(net
        .router
        .command("nft")
        .args(["-f", &path.to_string_lossy()]))
    .unwrap();
    let _ = std::fs::remove_file(&path);
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "lost.bin", 200_000, 2);
    let recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &[]);
    let (o, json) = send(
        &net.sender,
        net.receiver_addr,
        &[&file],
        &["--timeout", "3"],
    );
    assert!(!o.status.success());
    let why = json["files"][0]["error"].as_str().unwrap();
    assert!(!why.contains("is `chunk recv` running"), "{why}");
    assert!(why.contains("accepted"), "{why}");
    assert_eq!(json["files"][0]["resumed"], 0, "{json}");
    recv.stop();
}

/// `--json` with no receiver at all: nothing resumed, nothing acknowledged.
#[test]
fn no_receiver_reports_nothing_resumed() {
    let hosts = TwoHosts::new("norecv", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "nobody.bin", 100_000, 3);
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &[&file],
        &["--timeout", "1"],
    );
    assert!(!o.status.success());
    assert_eq!(json["files"][0]["resumed"], 0, "{json}");
    // Only the first round, which goes right behind the offer (docs/PROTOCOL.md, Sender 1).
    assert_eq!(json["files"][0]["chunks_sent"], 32, "{json}");
    let why = json["files"][0]["error"].as_str().unwrap();
    assert!(why.contains("is `chunk recv` running"), "{why}");
}

/// A chunk that waited in the receiving host while the receiver could not take it (stopped
/// here; in real life busy opening and preallocating a large file as the first round arrives)
/// is acknowledged with a delay counted from its arrival: the XDP program's stamp, or
/// `SO_TIMESTAMPNS` on the socket path (docs/PROTOCOL.md, "Echo and delay"). Counted from its
/// handling, the sender would take the wait for path, in its RTT samples and in the first
/// round's reading of the bottleneck.
fn acks_count_their_delay_from_the_arrival(tag: &str, mode: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let out = tempfile::tempdir().unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), mode);
    let content = vec![0x5au8; 3 * 1400];
    let to = hosts.receiver_addr;
    let delay = hosts
        .sender
        .enter(|| {
            let sock = RawSocket::new(PROTO).unwrap();
            // The acks from the receiver within `wait`: their echo and delay.
            let acks = |wait: Duration| {
                received(&sock, wait, |_, repr| match repr.message {
                    Message::Ack(a) => Some((a.echo, a.delay_us)),
                    _ => None,
                })
            };
            let offer = offer_packet(5, "late.bin", &content, HashAlg::Blake3);
            sock.send_to(&offer, (to, 0).into()).unwrap();
            let answer = acks(Duration::from_secs(1));
            assert_eq!(
                answer.first(),
                Some(&(wire::NO_ECHO, 0)),
                "the offer is answered"
            );

            recv.daemon.signal(libc::SIGSTOP);
            std::thread::sleep(Duration::from_millis(50));
            let chunk = Repr {
                transfer_id: 5,
                seq: 0,
                flags: wire::flags::MORE_CHUNKS | wire::flags::ACK_NOW,
                message: Message::Data {
                    payload: &content[..1400],
                },
            };
            let mut pkt = vec![0u8; chunk.buffer_len()];
            let n = chunk.emit(&mut pkt).unwrap();
            sock.send_to(&pkt[..n], (to, 0).into()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            recv.daemon.signal(libc::SIGCONT);
            let acked = acks(Duration::from_secs(1));
            *acked.first().expect("the chunk is acknowledged")
        })
        .unwrap();
    assert_eq!(delay.0, 0, "the ack echoes chunk 0");
    assert!(
        (280_000..5_000_000).contains(&delay.1),
        "the chunk waited 300 ms in the host: the ack's delay is {} µs",
        delay.1
    );
    recv.stop();
}

#[test]
fn acks_count_their_delay_from_the_arrival_xdp() {
    acks_count_their_delay_from_the_arrival("arrxdp", &[]);
}

#[test]
fn acks_count_their_delay_from_the_arrival_socket() {
    acks_count_their_delay_from_the_arrival("arrsock", &["--mode", "socket"]);
}
