//! End to end: the real `chunk send` and `chunk recv` binaries, real files, real namespaces, the
//! XDP receive path (and, for the clean and lossy transfers, the `--mode socket` path too).
//! Needs root (run through `cargo xtask test`).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chunk_common::wire::{self, AbortReason, Message, OfferRepr, Repr};
use chunk_tests::{Bridged, Daemon, Impairments, Routed, TwoHosts, run};
use common::*;

mod common;

/// `chunk recv` arguments for the socket receive path.
const SOCKET: &[&str] = &["--mode", "socket"];

#[test]
fn files_of_edge_sizes_arrive_exact_in_one_run() {
    edge_sizes("sizes", &[]);
}

#[test]
fn socket_mode_files_of_edge_sizes_arrive_exact_in_one_run() {
    edge_sizes("ssizes", SOCKET);
}

fn edge_sizes(tag: &str, mode: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let chunk = 1400;
    let sizes = [
        ("empty", 0),
        ("one-byte", 1),
        ("one-chunk", chunk),
        ("three-chunks", 3 * chunk),
        ("three-chunks-and-one", 3 * chunk + 1),
        ("two-mib-and-seven", (2 << 20) + 7),
    ];
    let (_, _, summary) = edge_sizes_across(
        &hosts,
        hosts.receiver_addr,
        &sizes,
        mode,
        &["--chunk-size", "1400"],
    );
    assert!(counter(&summary, "accepted") >= 1500 + 6);
}

#[test]
fn a_256_mib_file_crosses_a_clean_link() {
    big("big", &[]);
}

#[test]
fn socket_mode_a_256_mib_file_crosses_a_clean_link() {
    big("sbig", SOCKET);
}

fn big(tag: &str, mode: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "big.bin", 256 << 20, 7);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[&["--exit-after", "1"], mode].concat(),
    );
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&file], &[]);
    assert_sent(&o, &json, 1);
    let summary = recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("big.bin")));
    assert_eq!(summary["transfers_finished"], 1);
    eprintln!(
        "256 MiB {mode:?}: {:.1} MB/s, {} retransmitted, ring_full {}",
        json["files"][0]["goodput_mb_s"].as_f64().unwrap(),
        json["files"][0]["retransmitted"],
        counter(&summary, "ring_full")
    );
}

fn lossy(percent: u32, size: usize, mode: &[&str]) {
    let tag = if mode.is_empty() { "loss" } else { "sloss" };
    let net = Routed::new(&format!("{tag}{percent}")).unwrap();
    net.set_loss(chunk_common::DEFAULT_IP_PROTOCOL, percent)
        .unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "lossy.bin", size, percent as u64);
    let recv = Recv::start(&net.receiver, net.receiver_if, out.path(), mode);
    let (o, json) = send(
        &net.sender,
        net.receiver_addr,
        &[&file],
        &["--timeout", "60"],
    );
    assert_sent(&o, &json, 1);
    recv.stop();
    assert!(same_contents(&file, &out.path().join("lossy.bin")));
    let dropped = net.dropped().unwrap();
    let chunks = json["files"][0]["chunks"].as_u64().unwrap();
    // The loss was real, and the sender repaired it.
    assert!(
        dropped as f64 > chunks as f64 * percent as f64 / 100.0 * 0.5,
        "{dropped} dropped"
    );
    assert!(json["files"][0]["retransmitted"].as_u64().unwrap() > 0);
    eprintln!(
        "{percent}% loss each way {mode:?}: {:.1} MB/s, {} of {chunks} chunks retransmitted, {dropped} packets dropped",
        json["files"][0]["goodput_mb_s"].as_f64().unwrap(),
        json["files"][0]["retransmitted"],
    );
}

#[test]
fn one_percent_loss_both_ways() {
    lossy(1, 16 << 20, &[]);
}

#[test]
fn five_percent_loss_both_ways() {
    lossy(5, 8 << 20, &[]);
}

#[test]
fn twenty_percent_loss_both_ways() {
    lossy(20, 2 << 20, &[]);
}

#[test]
fn socket_mode_one_percent_loss_both_ways() {
    lossy(1, 16 << 20, SOCKET);
}

#[test]
fn socket_mode_five_percent_loss_both_ways() {
    lossy(5, 8 << 20, SOCKET);
}

#[test]
fn socket_mode_twenty_percent_loss_both_ways() {
    lossy(20, 2 << 20, SOCKET);
}

#[test]
fn corrupt_packets_alongside_die_in_the_kernel_and_the_file_is_exact() {
    let hosts = TwoHosts::new("corrupt", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "f.bin", 32 << 20, 3);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--exit-after", "1"],
    );
    let to = hosts.receiver_addr.to_string();
    let mut probe = hosts.sender.command(&chunk_bin());
    probe.args(["probe", "--to", &to, "--count", "0", "--corrupt", "20000"]);
    let (o, json) = std::thread::scope(|s| {
        let flood = s.spawn(|| run(&mut probe).expect("probe"));
        let r = send(&hosts.sender, hosts.receiver_addr, &[&file], &[]);
        flood.join().unwrap();
        r
    });
    assert_sent(&o, &json, 1);
    let summary = recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("f.bin")));
    // Every corrupt packet died in the kernel: by its checksum, or, while userspace was behind and the
    // ring buffer full, before its checksum was even computed (the program reserves the record
    // first), or in the veth pair when the program's core fell behind the two sending ones.
    // Either way none reached userspace, where anything unparsable is counted.
    let bad_checksum = counter(&summary, "bad_checksum");
    let ring_full = counter(&summary, "ring_full");
    let dropped = hosts.link_drops().unwrap();
    assert!(
        bad_checksum <= 20_000 && bad_checksum + ring_full + dropped >= 20_000,
        "{dropped} dropped by the link: {summary}"
    );
    assert_eq!(summary["unparsable"], 0);
    // The corrupt packets carry another transfer id: had one reached the core, it would count
    // as data for an unknown transfer.
    assert_eq!(summary["unknown_transfer"], 0, "{summary}");
    assert_eq!(
        counter(&summary, "accepted"),
        summary["packets"],
        "{summary}"
    );
}

#[test]
fn two_senders_at_once() {
    let hosts = TwoHosts::new("two", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = make_file(src.path(), "a.bin", 24 << 20, 1);
    let b = make_file(src.path(), "b.bin", 16 << 20, 2);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--exit-after", "2"],
    );
    let to = hosts.receiver_addr;
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| send(&hosts.sender, to, &[&a], &[]));
        let tb = s.spawn(|| send(&hosts.sender, to, &[&b], &[]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_sent(&ra.0, &ra.1, 1);
    assert_sent(&rb.0, &rb.1, 1);
    let summary = recv.wait_exit();
    assert_eq!(summary["transfers_finished"], 2);
    assert!(same_contents(&a, &out.path().join("a.bin")));
    assert!(same_contents(&b, &out.path().join("b.bin")));
}

#[test]
fn a_receiver_killed_mid_transfer_resumes_after_restart() {
    receiver_killed("rkill", &[], &[]);
}

/// Encrypted, the restarted receiver has lost the session: the sender notices the silence,
/// opens a new one, and the transfer resumes in it.
#[test]
fn an_encrypted_transfer_resumes_after_its_receiver_is_killed() {
    let keys = tempfile::tempdir().unwrap();
    let mut paths = Vec::new();
    for name in ["receiver", "sender"] {
        let p = keys.path().join(name);
        let o = std::process::Command::new(chunk_bin())
            .args(["keygen", "--out", p.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        paths.push(p.display().to_string());
    }
    let (r, s) = (&paths[0], &paths[1]);
    let (rpub, spub) = (format!("{r}.pub"), format!("{s}.pub"));
    receiver_killed(
        "erkill",
        &["--key", r, "--authorized-keys", &spub],
        &["--key", s, "--receiver-key", &rpub],
    );
}

fn receiver_killed(tag: &str, recv_extra: &[&str], send_extra: &[&str]) {
    let hosts = TwoHosts::new(tag, 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "r.bin", 48 << 20, 11);
    let mut recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), recv_extra);
    // 48 MiB at 100 Mbit/s takes ~4 s: time to pull the plug in the middle.
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args([
        "send",
        "--json",
        "--rate",
        "100M",
        "--timeout",
        "30",
        "--to",
    ])
    .arg(hosts.receiver_addr.to_string())
    .args(send_extra)
    .arg(&file);
    let sender = Daemon::spawn(cmd, "chunk send").unwrap();
    let started = recv.wait_event(Duration::from_secs(10), |v| v["event"] == "started");
    let chunks = started["chunks"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    recv.daemon.signal(libc::SIGKILL);
    drop(recv);
    // The partial file and its record stay (and perhaps the record's temporary copy, if the
    // kill came while it was being saved).
    let parts = names_in(out.path());
    assert!(
        parts.starts_with(&[".r.bin.part".to_string(), ".r.bin.part.state".to_string()]),
        "{parts:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[&["--exit-after", "1"][..], recv_extra].concat(),
    );
    let restarted = recv.wait_event(Duration::from_secs(20), |v| v["event"] == "started");
    let resumed = restarted["resumed_chunks"].as_u64().unwrap();
    assert!(
        resumed > 0 && resumed < chunks,
        "resumed {resumed} of {chunks}"
    );
    let fin = recv.wait_event(Duration::from_secs(30), |v| v["event"] == "finished");
    assert_eq!(fin["verified"], true);
    // Only the missing chunks travelled to the new receiver (plus what was in flight).
    let received = fin["chunks_received"].as_u64().unwrap();
    assert_eq!(received + resumed, chunks, "{fin}");
    let status = sender.wait(Duration::from_secs(30)).unwrap();
    assert!(
        status.success(),
        "the sender saw the verified end: {status}"
    );
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("r.bin")));
    assert_eq!(names_in(out.path()), ["r.bin"]);
}

#[test]
fn a_sender_killed_mid_transfer_resumes_when_run_again() {
    let hosts = TwoHosts::new("skill", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "s.bin", 48 << 20, 12);
    let mut recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--rate", "100M", "--to"])
        .arg(hosts.receiver_addr.to_string())
        .arg(&file);
    let sender = Daemon::spawn(cmd, "chunk send").unwrap();
    let started = recv.wait_event(Duration::from_secs(10), |v| v["event"] == "started");
    let chunks = started["chunks"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2000));
    sender.signal(libc::SIGKILL);
    drop(sender);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&file], &[]);
    assert_sent(&o, &json, 1);
    let fin = recv.wait_event(Duration::from_secs(30), |v| {
        event_is(v, "finished", "s.bin")
    });
    assert_eq!(fin["verified"], true);
    let resumed = fin["resumed_chunks"].as_u64().unwrap();
    let received = fin["chunks_received"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < chunks, "{fin}");
    assert_eq!(resumed + received, chunks, "{fin}");
    assert!(json["files"][0]["resumed"].as_u64().unwrap() > 0, "{json}");
    recv.stop();
    assert!(same_contents(&file, &out.path().join("s.bin")));
}

/// The offer's tag is only the sender's word that a partial copy is of this file: the verdict
/// rests on the hash, which covers resumed chunks too. A partial copy damaged on the receiver's
/// disk resumes, fails the hash (and is removed), and the sender then sends the file whole: the
/// file arrives exact and is reported verified once, by the second transfer.
#[test]
fn a_damaged_partial_copy_fails_the_hash_and_the_file_goes_again_whole() {
    let hosts = TwoHosts::new("damage", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "d.bin", 24 << 20, 31);
    let mut recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--rate", "40M", "--to"])
        .arg(hosts.receiver_addr.to_string())
        .arg(&file);
    let sender = Daemon::spawn(cmd, "chunk send").unwrap();
    recv.wait_event(Duration::from_secs(10), |v| v["event"] == "started");
    std::thread::sleep(Duration::from_millis(1500));
    sender.signal(libc::SIGKILL);
    drop(sender);
    // Let the receiver record what it holds, then damage the first chunk on its disk.
    std::thread::sleep(Duration::from_millis(1200));
    let part = out.path().join(".d.bin.part");
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"damaged", 10).unwrap();
    drop(f);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&file], &[]);
    assert_sent(&o, &json, 1);
    let first = recv.wait_event(Duration::from_secs(30), |v| {
        event_is(v, "finished", "d.bin") && v["verified"] == false
    });
    assert!(first["resumed_chunks"].as_u64().unwrap() > 0, "{first}");
    let second = recv.wait_event(Duration::from_secs(30), |v| {
        event_is(v, "finished", "d.bin") && v["verified"] == true
    });
    assert_eq!(second["resumed_chunks"], 0, "{second}");
    recv.stop();
    assert!(same_contents(&file, &out.path().join("d.bin")));
    assert_eq!(names_in(out.path()), ["d.bin"]);
}

/// Sends a hand-made offer and returns the receiver's answer.
fn offer_answer(hosts: &TwoHosts, name: &[u8], size: u64) -> Repr<'static> {
    static NEXT_ID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0xBAD0_0000);
    let chunk_size = 1400u32;
    let offer = Repr {
        transfer_id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        seq: 0,
        flags: 0,
        message: Message::Offer(OfferRepr {
            file_size: size,
            chunk_size,
            chunk_count: wire::chunk_count(size, chunk_size).unwrap_or(u32::MAX),
            mode: 0o644,
            mtime: 0,
            hash_alg: wire::HashAlg::Blake3,
            tag: [7; wire::HASH_LEN],
            name,
        }),
    };
    let mut buf = vec![0u8; offer.buffer_len()];
    offer.emit(&mut buf).unwrap();
    let to = hosts.receiver_addr;
    let answer = hosts
        .sender
        .enter(|| {
            let sock = chunk::net::raw::RawSocket::new(chunk_common::DEFAULT_IP_PROTOCOL).unwrap();
            sock.send_to(&buf, (to, 0).into()).unwrap();
            let mut rbuf = vec![0u8; 2048];
            // The same intake `chunk send` uses: classify, then (no key) parse.
            let intake = Box::leak(Box::new(chunk::intake::Intake::new(None)));
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let fds = [std::os::fd::AsFd::as_fd(sock.socket())];
                chunk::driver::wait::for_at_most(&fds, Some(Duration::from_millis(100))).unwrap();
                if let Some((n, _)) = sock.recv_nonblocking(&mut rbuf).unwrap() {
                    let proto = chunk_common::DEFAULT_IP_PROTOCOL;
                    // The answer outlives this closure: it borrows a buffer of its own.
                    let answer = Box::leak(rbuf[..n].to_vec().into_boxed_slice());
                    let opened = intake.open_ip(answer, proto, |src| src == to.octets(), 0);
                    return Some(opened.expect("a well-formed answer"));
                }
            }
            None
        })
        .unwrap();
    answer.expect("an answer to the offer")
}

fn abort_reason(r: &Repr<'_>) -> AbortReason {
    match r.message {
        Message::Abort(a) => a.reason,
        other => panic!("expected an abort, got {other:?}"),
    }
}

#[test]
fn hostile_offers_are_refused_with_the_reason() {
    let hosts = TwoHosts::new("hostile", 1500).unwrap();
    let out_parent = tempfile::tempdir().unwrap();
    let out = out_parent.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        &out,
        &["--max-size", "1000000"],
    );
    for name in [
        &b""[..],
        b"../escape",
        b"/etc/passwd",
        b"a/../../b",
        b"nul\0x",
    ] {
        let r = offer_answer(&hosts, name, 10);
        assert_eq!(abort_reason(&r), AbortReason::BadName, "{name:?}");
    }
    // 2 TiB in 1.5 G chunks: a consistent offer, far over --max-size.
    let r = offer_answer(&hosts, b"huge", 1 << 41);
    assert_eq!(abort_reason(&r), AbortReason::TooLarge);
    recv.wait_event(Duration::from_secs(5), |v| {
        v["event"] == "refused" && v["reason"] == "file too large"
    });
    // The sender reports the receiver's reason and fails.
    let src = tempfile::tempdir().unwrap();
    let big = make_file(src.path(), "big.bin", 2_000_000, 5);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&big], &[]);
    assert!(!o.status.success());
    let err = json["files"][0]["error"].as_str().unwrap();
    assert!(err.contains("file too large"), "{err}");
    recv.stop();
    // Nothing was written anywhere: not in the output directory, not beside it.
    assert!(names_in(&out).is_empty(), "{:?}", names_in(&out));
    assert_eq!(names_in(out_parent.path()), ["out"]);
}

#[test]
fn a_full_disk_refuses_the_offer_and_the_sender_says_so() {
    let hosts = TwoHosts::new("full", 1500).unwrap();
    let disk = Mounted::tmpfs("1m");
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, disk.dir.path(), &[]);
    let src = tempfile::tempdir().unwrap();
    let small = make_file(src.path(), "fits.bin", 100_000, 1);
    let big = make_file(src.path(), "too-big.bin", 4 << 20, 2);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&small, &big], &[]);
    assert!(!o.status.success());
    assert_eq!(json["files"][0]["ok"], true, "{json}");
    let err = json["files"][1]["error"].as_str().unwrap();
    assert!(err.contains("not enough space"), "{err}");
    recv.stop();
    assert_eq!(names_in(disk.dir.path()), ["fits.bin"]);
}

/// File systems that cannot allocate ahead (`fallocate` says "not supported": ramfs, FAT, ext2,
/// NFS before 4.2, many FUSE ones) still take files of every size; ramfs, which reports no
/// size, has no free space to refuse them for.
#[test]
fn a_file_system_without_preallocation_still_takes_files() {
    let hosts = TwoHosts::new("noalloc", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let files = [
        make_file(src.path(), "small.bin", 100_000, 1),
        make_file(src.path(), "large.bin", 3 << 20, 2),
    ];
    for (what, disk) in [("ext2", Mounted::ext2("64M")), ("ramfs", Mounted::ramfs())] {
        let out = disk.dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let probe = std::process::Command::new("fallocate")
            .args(["-l", "1M"])
            .arg(out.join("probe"))
            .output()
            .unwrap();
        assert!(!probe.status.success(), "{what} allocates ahead after all");
        let _ = std::fs::remove_file(out.join("probe"));
        let recv = Recv::start(&hosts.receiver, hosts.receiver_if, &out, &[]);
        let paths = [files[0].as_path(), files[1].as_path()];
        let (o, json) = send(&hosts.sender, hosts.receiver_addr, &paths, &[]);
        assert_sent(&o, &json, 2);
        recv.stop();
        for f in &files {
            let name = f.file_name().unwrap();
            assert!(same_contents(f, &out.join(name)), "{what}: {name:?}");
        }
        assert_eq!(names_in(&out), ["large.bin", "small.bin"], "{what}");
    }
}

#[test]
fn stop_and_wait_still_works() {
    let hosts = TwoHosts::new("saw", 1500).unwrap();
    one_file_across(
        &hosts.sender,
        &hosts.receiver,
        hosts.receiver_if,
        hosts.receiver_addr,
        200_000,
        9,
        &["--window", "1"],
    );
}

#[test]
fn duplicated_reordered_and_corrupted_packets_still_give_the_exact_file() {
    let net = Bridged::new(
        "impair",
        Impairments {
            duplicate: 0.05,
            reorder: 0.05,
            corrupt: 0.01,
            seed: 42,
            protocol: chunk_common::DEFAULT_IP_PROTOCOL,
            ..Impairments::default()
        },
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "m.bin", 16 << 20, 21);
    let mut recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &[]);
    let (o, json) = send(
        &net.sender,
        net.receiver_addr,
        &[&file],
        &["--timeout", "60"],
    );
    assert_sent(&o, &json, 1);
    let fin = recv.wait_event(Duration::from_secs(5), |v| event_is(v, "finished", "m.bin"));
    let summary = recv.stop();
    assert!(same_contents(&file, &out.path().join("m.bin")));
    let s = &net.stats;
    let (dup, reo, cor) = (
        s.duplicated.load(std::sync::atomic::Ordering::Relaxed),
        s.reordered.load(std::sync::atomic::Ordering::Relaxed),
        s.corrupted.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(dup > 100 && reo > 100 && cor > 10, "{dup} {reo} {cor}");
    // The receiver saw the duplicates and the disorder, and its kernel dropped corrupt chunks.
    assert!(fin["duplicates"].as_u64().unwrap() > 0, "{fin}");
    assert!(fin["out_of_order"].as_u64().unwrap() > 0, "{fin}");
    assert!(counter(&summary, "bad_checksum") > 0, "{summary}");
    assert_eq!(summary["unparsable"], 0);
}

fn write_key(dir: &Path, name: &str, fill: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, [fill; 32]).unwrap();
    p
}

#[test]
fn with_a_pre_shared_key_only_authenticated_senders_write_files() {
    let hosts = TwoHosts::new("psk", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let good = write_key(keys.path(), "good.key", 1);
    let bad = write_key(keys.path(), "bad.key", 2);
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "secret.bin", 3 << 20, 31);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--psk-file", good.to_str().unwrap()],
    );
    let to = hosts.receiver_addr;
    // Without a key, and with the wrong one: refused, nothing written, the sender times out.
    for extra in [vec![], vec!["--psk-file", bad.to_str().unwrap()]] {
        let mut args = vec!["--timeout", "2"];
        args.extend(extra);
        let (o, json) = send(&hosts.sender, to, &[&file], &args);
        assert!(!o.status.success(), "{json}");
        assert!(names_in(out.path()).is_empty());
    }
    // A captured offer played again after the window: a sealed offer with an old timestamp.
    let key = chunk::auth::Psk::from_file(&good).unwrap();
    let offer = Repr {
        transfer_id: 0x5EA1_0001,
        seq: 0,
        flags: 0,
        message: Message::Offer(OfferRepr {
            file_size: 10,
            chunk_size: 1000,
            chunk_count: 1,
            mode: 0o644,
            mtime: 0,
            hash_alg: wire::HashAlg::Blake3,
            tag: [1; wire::HASH_LEN],
            name: b"replayed",
        }),
    };
    let mut buf = vec![0u8; offer.buffer_len() + chunk::auth::TRAILER_LEN];
    let n = offer.emit(&mut buf).unwrap();
    let old = chunk::auth::now_ms() - 120_000;
    let n = key.seal(&mut buf, n, old).unwrap();
    hosts
        .sender
        .enter(|| {
            let sock = chunk::net::raw::RawSocket::new(chunk_common::DEFAULT_IP_PROTOCOL).unwrap();
            sock.send_to(&buf[..n], (to, 0).into()).unwrap();
        })
        .unwrap();
    // With the key: verified.
    let (o, json) = send(
        &hosts.sender,
        to,
        &[&file],
        &["--psk-file", good.to_str().unwrap()],
    );
    assert_sent(&o, &json, 1);
    let summary = recv.stop();
    assert!(same_contents(&file, &out.path().join("secret.bin")));
    assert_eq!(names_in(out.path()), ["secret.bin"]);
    assert!(summary["auth_rejected"].as_u64().unwrap() >= 2, "{summary}");
    assert_eq!(summary["stale_offers"], 1, "{summary}");
    assert_eq!(summary["transfers_finished"], 1, "{summary}");
}
