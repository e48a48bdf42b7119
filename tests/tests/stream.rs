//! Streams from standard input (`chunk send - --name NAME`) through the real XDP receive path:
//! exact at any length, through loss, across a producer that pauses, refused by a receiver's
//! size limit, and never in place under a name that exists.

mod common;

use std::{
    io::Write,
    path::Path,
    process::{Command, Output, Stdio},
};

use chunk_tests::TwoHosts;
use common::*;
use serde_json::Value;

/// Runs `chunk send --json - --name NAME` in `ns` with `producer`'s output as its standard
/// input (a shell command, run on this side of the namespace: its bytes are what is sent).
fn send_stream(
    ns: &chunk_tests::Netns,
    to: impl std::fmt::Display,
    producer: &str,
    name: &str,
    extra: &[&str],
) -> (Output, Value) {
    let mut p = Command::new("sh")
        .args(["-c", producer])
        .stdout(Stdio::piped())
        .spawn()
        .expect("producer");
    let mut cmd = ns.command(&chunk_bin());
    cmd.args(["send", "--json", "--to", &to.to_string(), "--name", name])
        .args(extra)
        .arg("-")
        .stdin(p.stdout.take().unwrap());
    let out = cmd.output().expect("run chunk send");
    // The command holds the pipe's read end: without it a producer the sender stopped reading
    // gets EPIPE rather than blocking.
    drop(cmd);
    let _ = p.wait();
    let json = summary_of(&out);
    (out, json)
}

fn write_random(path: &Path, size: usize, seed: u64) {
    let mut x = seed | 1;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::File::create(path)
        .unwrap()
        .write_all(&data)
        .unwrap();
}

/// Streams of the edge lengths (empty, one byte, one chunk, a byte more, exactly one reader
/// block, several blocks and a tail) arrive exact, each under its name, with the size the
/// summary reports; no work file is left.
#[test]
fn a_stream_arrives_exact_at_any_length() {
    let hosts = TwoHosts::new("stream", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    // The chunk size at MTU 1500 over IPv4: 1460; the reader's block: 718 chunks.
    let block = 1460 * (1_048_576 / 1460);
    for (i, size) in [0usize, 1, 1460, 1461, block, 3 * block + 777]
        .into_iter()
        .enumerate()
    {
        let input = src.path().join(format!("in{i}"));
        write_random(&input, size, i as u64 + 1);
        let name = format!("s/{i}.bin");
        let (o, json) = send_stream(
            &hosts.sender,
            hosts.receiver_addr,
            &format!("cat {}", input.display()),
            &name,
            &[],
        );
        assert_sent(&o, &json, 1);
        assert_eq!(json["files"][0]["size"], size as u64, "{json}");
        assert_eq!(json["files"][0]["name"], name.as_str(), "{json}");
        assert!(
            same_contents(&input, &out.path().join(&name)),
            "{size} bytes"
        );
    }
    recv.stop();
    let left: Vec<_> = names_in(&out.path().join("s"))
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A producer that stops for longer than the sender's timeout (5 s against `--timeout 3`), then
/// goes on: the keep-alives hold the stream open and it arrives exact; beside it, in the same
/// send, a file.
#[test]
fn a_stream_whose_producer_pauses_arrives_beside_a_file() {
    let hosts = TwoHosts::new("streamp", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = src.path().join("a");
    let b = src.path().join("b");
    write_random(&a, 2_000_000, 7);
    write_random(&b, 500_000, 8);
    let whole = src.path().join("whole");
    let mut both = std::fs::read(&a).unwrap();
    both.extend(std::fs::read(&b).unwrap());
    std::fs::write(&whole, &both).unwrap();
    let file = src.path().join("plain.dat");
    write_random(&file, 300_000, 9);
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let producer = format!("cat {}; sleep 5; cat {}", a.display(), b.display());
    let mut p = Command::new("sh")
        .args(["-c", &producer])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let o = hosts
        .sender
        .command(&chunk_bin())
        .args([
            "send",
            "--json",
            "--timeout",
            "3",
            "--name",
            "dump.bin",
            "--to",
        ])
        .arg(hosts.receiver_addr.to_string())
        .arg("-")
        .arg(&file)
        .stdin(p.stdout.take().unwrap())
        .output()
        .unwrap();
    p.wait().unwrap();
    let json = summary_of(&o);
    assert_sent(&o, &json, 2);
    recv.stop();
    assert!(same_contents(&whole, &out.path().join("dump.bin")));
    assert!(same_contents(&file, &out.path().join("plain.dat")));
}

/// Through 5 % loss each way, a stream of several reader blocks arrives exact.
#[test]
fn a_stream_survives_loss() {
    let net = chunk_tests::Routed::new("streaml").unwrap();
    net.set_loss(chunk_common::DEFAULT_IP_PROTOCOL, 5).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let input = src.path().join("in");
    write_random(&input, 6_000_000, 3);
    let recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &[]);
    let (o, json) = send_stream(
        &net.sender,
        net.receiver_addr,
        &format!("cat {}", input.display()),
        "lossy.bin",
        &["--timeout", "60"],
    );
    assert_sent(&o, &json, 1);
    assert!(
        json["files"][0]["retransmitted"].as_u64().unwrap() > 0,
        "{json}"
    );
    recv.stop();
    assert!(same_contents(&input, &out.path().join("lossy.bin")));
    assert!(net.dropped().unwrap() > 0);
}

/// A receiver's size limit ends a stream that passes it (`too large`), and a name that exists
/// is refused (`exists`); neither leaves anything under the name or a work file.
#[test]
fn a_stream_is_refused_past_the_size_limit_and_onto_an_existing_name() {
    let hosts = TwoHosts::new("streamr", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let input = src.path().join("in");
    write_random(&input, 3_000_000, 4);
    std::fs::write(out.path().join("taken.bin"), b"already here").unwrap();
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--max-size", "1000000"],
    );
    let cat = format!("cat {}", input.display());
    let (o, json) = send_stream(&hosts.sender, hosts.receiver_addr, &cat, "big.bin", &[]);
    assert!(!o.status.success());
    let err = json["files"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("too large"), "{json}");
    let (o, json) = send_stream(&hosts.sender, hosts.receiver_addr, &cat, "taken.bin", &[]);
    assert!(!o.status.success());
    let err = json["files"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("exists"), "{json}");
    recv.stop();
    assert_eq!(
        std::fs::read(out.path().join("taken.bin")).unwrap(),
        b"already here"
    );
    let mut names = names_in(out.path());
    names.sort();
    assert_eq!(names, ["taken.bin"], "nothing else left");
}

/// Without `--name`, `-` is refused before anything is sent; so is `-` twice.
#[test]
fn stdin_needs_a_name_and_goes_once() {
    let o = Command::new(chunk_bin())
        .args(["send", "--to", "198.18.0.2", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--name"),
        "{o:?}"
    );
    let o = Command::new(chunk_bin())
        .args(["send", "--to", "198.18.0.2", "--name", "x", "-", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("once"), "{o:?}");
}
