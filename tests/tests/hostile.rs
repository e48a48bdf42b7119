//! The hostile-input battery: forged and flooding traffic against a running receiver while a
//! legitimate transfer goes on. Each attack must be refused with a counted reason, the
//! receiver's memory must stay bounded, and the legitimate transfer must complete exact.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use chunk::{auth::Psk, net::raw::RawSocket};
use chunk_common::wire::{self, AckRepr, HashAlg, Message, OfferRepr, Repr, flags};
use chunk_tests::{Daemon, Netns, TwoHosts};
use common::*;
use serde_json::Value;

mod common;

const PROTO: u8 = chunk_common::DEFAULT_IP_PROTOCOL;

fn emit(repr: &Repr<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; repr.buffer_len() + chunk::auth::TRAILER_LEN];
    let n = repr.emit(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn data(tid: u32, seq: u32, payload: &[u8]) -> Vec<u8> {
    emit(&Repr {
        transfer_id: tid,
        seq,
        flags: flags::MORE_CHUNKS,
        message: Message::Data { payload },
    })
}

fn offer(tid: u32, name: &str, size: u64, chunk_size: u32) -> Vec<u8> {
    emit(&Repr {
        transfer_id: tid,
        seq: 0,
        flags: 0,
        message: Message::Offer(OfferRepr {
            file_size: size,
            chunk_size,
            chunk_count: wire::chunk_count(size, chunk_size).unwrap_or(0),
            mode: 0o644,
            mtime: 0,
            hash_alg: HashAlg::Blake3,
            tag: [9; wire::HASH_LEN],
            name: name.as_bytes(),
        }),
    })
}

/// Sends `packets` to `to` from namespace `ns`, from source address `from` if given.
fn blast(ns: &Netns, from: Option<Ipv4Addr>, to: Ipv4Addr, packets: &[Vec<u8>]) {
    ns.enter(|| {
        let sock = RawSocket::new(PROTO).unwrap();
        if let Some(a) = from {
            sock.socket().bind(&SocketAddrV4::new(a, 0).into()).unwrap();
        }
        for p in packets {
            while let Err(e) = sock.send_to(p, (to, 0).into()) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOBUFS), "{e}");
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    })
    .unwrap();
}

/// Starts a rate-limited `chunk send` in the background (so attacks overlap it).
fn legit_sender(hosts: &TwoHosts, file: &Path, extra: &[&str]) -> Daemon {
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--rate", "60M", "--to"])
        .arg(hosts.receiver_addr.to_string())
        .args(extra)
        .arg(file);
    Daemon::spawn(cmd, "chunk send").unwrap()
}

fn count(events: &[Value], event: &str, reason: &str) -> usize {
    events
        .iter()
        .filter(|e| e["event"] == event && e["reason"] == reason)
        .count()
}

#[test]
fn forgeries_and_offer_floods_are_refused_while_a_real_transfer_completes() {
    let hosts = TwoHosts::new("hostile", 1500).unwrap();
    let spoofed = Ipv4Addr::new(198, 18, 0, 3);
    hosts
        .sender
        .ip(&["addr", "add", "198.18.0.3/24", "dev", hosts.sender_if])
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("exists.bin"), b"keep me").unwrap();
    let file = make_file(src.path(), "real.bin", 24 << 20, 5);
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[
            "--max-transfers",
            "8",
            "--max-per-source",
            "4",
            "--max-size",
            "100000000",
        ],
    );
    let sender = legit_sender(&hosts, &file, &[]);
    let started = recv.wait_event(Duration::from_secs(10), |v| v["event"] == "started");
    let tid = started["transfer_id"].as_u64().unwrap() as u32;
    let to = hosts.receiver_addr;

    // Chunks for transfers that do not exist, and for the real one from the wrong source.
    let unknown: Vec<Vec<u8>> = (0..3000u32)
        .map(|i| data(i.wrapping_mul(2_654_435_761) ^ 0x5555, i, &[0xEE; 200]))
        .filter(|p| p[8..12] != tid.to_be_bytes())
        .collect();
    blast(&hosts.sender, None, to, &unknown);
    let wrong_src: Vec<Vec<u8>> = (0..1000).map(|i| data(tid, i, &[0xEE; 1000])).collect();
    blast(&hosts.sender, Some(spoofed), to, &wrong_src);
    // Offers no receiver should take.
    let bad = vec![
        offer(0xBAD1, "exists.bin", 10, 500),
        offer(0xBAD2, "huge.bin", 1 << 40, 1400),
        offer(0xBAD3, "zero-chunk.bin", 10, 0),
        offer(0xBAD4, "big-chunks.bin", 100_000, 60_000),
    ];
    blast(&hosts.sender, Some(spoofed), to, &bad);
    // A flood of offers from both sources, each for a new name.
    let flood = |tag: &str| -> Vec<Vec<u8>> {
        (0..150)
            .map(|i| offer(0xF100_0000 + i, &format!(".flood-{tag}-{i}"), 1000, 500))
            .collect()
    };
    blast(&hosts.sender, None, to, &flood("a"));
    blast(&hosts.sender, Some(spoofed), to, &flood("b"));

    let status = sender.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "the real transfer completed: {status}");
    let peak_kib = recv.peak_rss_kib();
    let (summary, events) = recv.stop_with_events();

    assert!(same_contents(&file, &out.path().join("real.bin")));
    assert_eq!(
        std::fs::read(out.path().join("exists.bin")).unwrap(),
        b"keep me"
    );
    // 4 slots per source: the real transfer and 3 flood offers from .1, 4 from .3. The rest
    // were refused; the seven accepted ones never got a chunk, so they left nothing behind.
    let refused_busy = count(&events, "refused", "too many transfers");
    assert_eq!(refused_busy, 300 - 7, "{summary}");
    assert_eq!(count(&events, "refused", "file exists"), 1);
    assert_eq!(count(&events, "refused", "file too large"), 1);
    assert_eq!(
        count(&events, "refused", "unsupported offer"),
        1,
        "chunks over the limit"
    );
    let parts = names_in(out.path())
        .into_iter()
        .filter(|n| n.starts_with("..flood-") && n.ends_with(".part"))
        .count();
    assert_eq!(
        parts, 0,
        "accepted flood offers that never got a chunk leave no part file"
    );
    assert!(
        summary["unknown_transfer"].as_u64().unwrap() >= 4000,
        "{summary}"
    );
    // The zero chunk size is not even a valid offer: its body is dropped as malformed.
    assert_eq!(summary["unparsable"], 1, "{summary}");
    assert!(
        peak_kib < 200 * 1024,
        "receiver peak RSS {peak_kib} KiB: memory must stay bounded"
    );
}

/// Encrypted (the default with a key), forged clear chunks for the transfer are refused as
/// clear packets of an encrypted transfer; authenticated but clear (`--no-encryption`), for
/// their missing or wrong tag.
#[test]
fn with_a_key_forged_chunks_and_ack_storms_change_nothing() {
    forged_chunks_and_ack_storms(&[], "clear_refused");
    forged_chunks_and_ack_storms(&["--no-encryption"], "auth_rejected");
}

fn forged_chunks_and_ack_storms(mode: &[&str], refused_as: &str) {
    let hosts = TwoHosts::new("forge", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key_path = keys.path().join("k");
    std::fs::write(&key_path, [4u8; 32]).unwrap();
    let wrong = Psk::from_secret(&[5u8; 32]).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "real.bin", 24 << 20, 6);
    let key_arg = key_path.to_str().unwrap();
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--psk-file", key_arg],
    );
    let sender = legit_sender(
        &hosts,
        &file,
        &[&["--psk-file", key_arg, "--timeout", "20"][..], mode].concat(),
    );
    let started = recv.wait_event(Duration::from_secs(10), |v| v["event"] == "started");
    let tid = started["transfer_id"].as_u64().unwrap() as u32;
    let chunks = started["chunks"].as_u64().unwrap() as u32;

    // Right transfer id, right source, in-range chunks with valid checksums: without the key, or
    // sealed with the wrong one. Without authentication these would corrupt the file.
    let mut forged: Vec<Vec<u8>> = (0..2000)
        .map(|i| data(tid, i % chunks, &[0x66; 1000]))
        .collect();
    for p in forged.iter_mut().skip(1500) {
        let n = p.len();
        p.resize(n + chunk::auth::TRAILER_LEN, 0);
        wrong.seal(p, n, chunk::auth::now_ms()).unwrap();
    }
    blast(&hosts.sender, None, hosts.receiver_addr, &forged);
    // An ack storm at the sender, from the receiver's own address: "everything arrived".
    let ack = emit(&Repr {
        transfer_id: tid,
        seq: chunks,
        flags: 0,
        message: Message::Ack(AckRepr {
            cumulative: chunks,
            echo: 0,
            delay_us: 0,
            base: chunks,
            bitmap: &[],
        }),
    });
    let storm = vec![ack; 5000];
    blast(&hosts.receiver, None, hosts.sender_addr, &storm);

    let status = sender.wait(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "the real transfer completed: {status}");
    let summary = recv.stop();
    assert!(same_contents(&file, &out.path().join("real.bin")));
    let refused = summary[refused_as]
        .as_u64()
        .or_else(|| summary["sessions"][refused_as].as_u64())
        .unwrap();
    assert!(refused >= 2000, "{summary}");
    assert_eq!(summary["transfers_finished"], 1);
}
