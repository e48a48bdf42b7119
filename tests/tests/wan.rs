//! Long links for real: the impairment bridge as a delay line (rate, drop-tail queue, one-way
//! delay, random loss) between two namespaces, real kernels at both ends, the real binaries.
//! Behaviour only — exact files, retransmission counts, the RTT the sender measured — never a
//! time. Needs root (run through `cargo xtask test`).

use std::time::Duration;

use chunk_tests::{Bridged, Daemon, Impairments};
use common::*;
use serde_json::Value;

mod common;

fn link(rtt_ms: u64, loss: f64, seed: u64) -> Impairments {
    Impairments {
        seed,
        protocol: chunk_common::DEFAULT_IP_PROTOCOL,
        delay: Duration::from_millis(rtt_ms / 2),
        rate_bps: 50_000_000,
        loss,
        ..Impairments::default()
    }
}

/// 300 ms of round trip and no loss, where the sender used to resend nearly every chunk before
/// its ack could arrive: the file arrives exact, retransmissions stay under 1 % of its chunks,
/// and the sender's smoothed RTT is the link's within 25 %. The bottleneck's queue is 256 KiB
/// (at most 42 ms of queueing): with a queue of a whole bandwidth-delay product the startup
/// fills it and the RTT the sender measures is rightly twice the link's.
#[test]
fn a_300_ms_link_without_loss_needs_almost_no_retransmission() {
    let net = Bridged::new(
        "wan300",
        Impairments {
            queue_bytes: 256 << 10,
            ..link(300, 0.0, 1)
        },
    )
    .unwrap();
    let f = &one_file_across(
        &net.sender,
        &net.receiver,
        net.receiver_if,
        net.receiver_addr,
        8 << 20,
        30,
        &["--timeout", "60"],
    );
    let chunks = f["chunks"].as_u64().unwrap();
    let retx = f["retransmitted"].as_u64().unwrap();
    let lost = net
        .stats
        .queue_drops
        .load(std::sync::atomic::Ordering::Relaxed);
    // Only what the bottleneck's queue dropped needs resending (the startup may overfill it).
    assert!(
        retx <= chunks / 100 + lost,
        "{retx} retransmitted for {chunks} chunks, {lost} dropped by the queue"
    );
    let srtt = f["srtt_ms"].as_f64().unwrap();
    assert!(
        (225.0..=375.0).contains(&srtt),
        "smoothed RTT {srtt} ms on a 300 ms link"
    );
    eprintln!(
        "300 ms, 50 Mbit/s: {:.2} MB/s, {retx} of {chunks} retransmitted, srtt {srtt:.1} ms, {lost} queue drops",
        f["goodput_mb_s"].as_f64().unwrap()
    );
}

/// 50 ms of round trip and 5 % loss each way: exact, and about one retransmission per loss.
#[test]
fn a_50_ms_link_with_5_percent_loss_gives_the_exact_file() {
    let net = Bridged::new("wan50", link(50, 0.05, 2)).unwrap();
    let f = &one_file_across(
        &net.sender,
        &net.receiver,
        net.receiver_if,
        net.receiver_addr,
        8 << 20,
        31,
        &["--timeout", "60"],
    );
    let retx = f["retransmitted"].as_u64().unwrap();
    let lost = net.stats.lost.load(std::sync::atomic::Ordering::Relaxed)
        + net
            .stats
            .queue_drops
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost > 0, "the loss was real");
    // Losses of acks count too (both directions): a retransmission per lost frame at most,
    // with room for the few a lost ack or a tail probe makes.
    assert!(
        retx as f64 <= lost as f64 * 1.2 + 10.0,
        "{retx} retransmitted for {lost} frames lost"
    );
}

/// The receiver vanishes in the middle of a transfer on a long link: the sender ends with the
/// timeout message, not a hang.
#[test]
fn a_receiver_that_vanishes_on_a_long_link_ends_the_send_with_a_timeout() {
    let net = Bridged::new("wangone", link(300, 0.0, 3)).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "gone.bin", 32 << 20, 32);
    let mut recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &[]);
    let mut cmd = net.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--timeout", "3", "--to"])
        .arg(net.receiver_addr.to_string())
        .arg(&file);
    let mut sender = Daemon::spawn(cmd, "chunk send").unwrap();
    let mut stdout = sender.stdout().expect("chunk send's stdout");
    recv.wait_event(Duration::from_secs(10), |v| {
        event_is(v, "started", "gone.bin")
    });
    std::thread::sleep(Duration::from_secs(2));
    recv.daemon.signal(libc::SIGKILL);
    let status = sender
        .wait(Duration::from_secs(30))
        .expect("chunk send ends by itself");
    assert!(!status.success());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let why = json["files"][0]["error"].as_str().unwrap_or_default();
    assert!(why.contains("stopped answering"), "{json}");
}

/// The path cache across real sends (100 ms, 50 Mbit/s): the first send to a receiver finds
/// nothing remembered and keeps what it measured (in the file given, under the receiver's
/// address and transport); the next one starts from it, confirmed by the offer's round trip and
/// validated by its acks; `--no-path-cache` neither reads nor writes it; a cache file that is
/// not one is ignored (the send succeeds, from scratch) and replaced by a good one. Every file
/// arrives exact.
#[test]
fn a_second_send_starts_from_the_path_the_first_measured() {
    let net = Bridged::new("wanpc", link(100, 0.0, 5)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("state/chunk/paths.json");
    let cache_arg = cache.to_str().unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "pc.bin", 16 << 20, 40);
    let run = |extra: &[&str]| -> Value {
        let out = tempfile::tempdir().unwrap();
        let recv = Recv::start(
            &net.receiver,
            net.receiver_if,
            out.path(),
            &["--exit-after", "1"],
        );
        let (o, json) = send(&net.sender, net.receiver_addr, &[&file], extra);
        assert_sent(&o, &json, 1);
        recv.wait_exit();
        assert!(same_contents(&file, &out.path().join("pc.bin")));
        json
    };
    let with_cache = ["--path-cache", cache_arg];

    let first = run(&with_cache);
    let p = &first["path"];
    assert_eq!(p["cache"], cache_arg, "{first}");
    assert_eq!(p["remembered"], false, "{first}");
    assert!(p.get("resume").is_none(), "{first}");
    let kept = p["kept_bandwidth_bps"]
        .as_u64()
        .expect("the path was measured");
    assert!(
        (25_000_000..=55_000_000).contains(&kept),
        "{kept} bit/s kept for a 50 Mbit/s link"
    );
    let stored: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    let key = format!(
        "{} ip/{}",
        net.receiver_addr,
        chunk_common::DEFAULT_IP_PROTOCOL
    );
    assert_eq!(stored["paths"][&key]["bandwidth_bps"], kept, "{stored}");

    let second = run(&with_cache);
    assert_eq!(second["path"]["remembered"], true, "{second}");
    assert_eq!(second["path"]["resume"], "validated", "{second}");

    let before = std::fs::read(&cache).unwrap();
    let off = run(&["--no-path-cache"]);
    assert!(off.get("path").is_none(), "{off}");
    assert_eq!(
        std::fs::read(&cache).unwrap(),
        before,
        "--no-path-cache wrote the cache"
    );

    std::fs::write(&cache, b"{ not a cache").unwrap();
    let after_junk = run(&with_cache);
    assert_eq!(after_junk["path"]["remembered"], false, "{after_junk}");
    let stored: Value = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
    assert!(
        stored["paths"][&key]["bandwidth_bps"].as_u64().is_some(),
        "{stored}"
    );
}

/// A first send over 300 ms (50 Mbit/s: Startup would double for 1.6 s) reads the
/// bottleneck's rate from its first round and jumps to half of it, which its acks validate
/// (`path.first_round` in its summary); with `--no-first-round` it starts up as TCP does and
/// makes no jump. Both files arrive exact, each loss resent about once.
#[test]
fn a_first_send_on_a_long_link_reads_its_first_round() {
    let net = Bridged::new("wanfr", link(300, 0.0, 7)).unwrap();
    let src = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "fr.bin", 8 << 20, 41);
    let run = |extra: &[&str]| -> Value {
        let out = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let cache = state.path().join("paths.json");
        let recv = Recv::start(
            &net.receiver,
            net.receiver_if,
            out.path(),
            &["--exit-after", "1"],
        );
        let mut args = vec!["--path-cache", cache.to_str().unwrap(), "--timeout", "60"];
        args.extend_from_slice(extra);
        let (o, json) = send(&net.sender, net.receiver_addr, &[&file], &args);
        assert_sent(&o, &json, 1);
        recv.wait_exit();
        assert!(same_contents(&file, &out.path().join("fr.bin")));
        let f = &json["files"][0];
        let lost = net
            .stats
            .queue_drops
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        let retx = f["retransmitted"].as_u64().unwrap();
        assert!(
            retx <= lost + lost / 10 + 8,
            "{retx} resent, {lost} dropped: {json}"
        );
        json
    };
    let read = run(&[]);
    assert_eq!(read["path"]["remembered"], false, "{read}");
    assert_eq!(read["path"]["first_round"], "validated", "{read}");
    let plain = run(&["--no-first-round"]);
    assert!(plain["path"].get("first_round").is_none(), "{plain}");
}
