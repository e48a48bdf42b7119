//! Helpers shared by the end-to-end tests: the real `chunk` binary driven in namespaces.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

pub mod listen;

use chunk_tests::{Daemon, Netns, ReadyRecv, spawn_recv};
use serde_json::Value;

pub fn chunk_bin() -> String {
    std::env::var("CHUNK_BIN").unwrap_or_else(|_| {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/chunk");
        p.to_string_lossy().into_owned()
    })
}

/// A file of `size` pseudo-random bytes (a different stream per `seed`).
pub fn make_file(dir: &Path, name: &str, size: usize, seed: u64) -> PathBuf {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(size);
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

pub fn same_contents(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

/// Names in `dir` (not recursive), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A running `chunk recv --json` (started by the harness's [`spawn_recv`]), with panicking
/// helpers for the tests: events are JSON values, failures are test failures.
pub struct Recv {
    pub daemon: Daemon,
    lines: Receiver<String>,
    pub seen: Vec<Value>,
}

impl Recv {
    pub fn start(ns: &Netns, iface: &str, out: &Path, extra: &[&str]) -> Recv {
        let ReadyRecv { daemon, lines, .. } =
            spawn_recv(ns.command(&chunk_bin()), iface, out, extra).expect("chunk recv is ready");
        Recv {
            daemon,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for an event matching `pred`; returns it.
    pub fn wait_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return v.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("no such event within {timeout:?}; saw {:?}", self.seen)
            });
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            self.seen.push(v.clone());
            if pred(&v) {
                return v;
            }
        }
    }

    /// Stops the receiver (SIGTERM) and returns its exit summary.
    pub fn stop(self) -> Value {
        self.daemon.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Stops the receiver; returns its exit summary and every event it printed.
    pub fn stop_with_events(mut self) -> (Value, Vec<Value>) {
        self.daemon.signal(libc::SIGTERM);
        let summary = self.wait_event(Duration::from_secs(20), |v| v["event"] == "exit");
        let events = std::mem::take(&mut self.seen);
        let status = self
            .daemon
            .wait(Duration::from_secs(10))
            .expect("chunk recv exits");
        assert!(status.success(), "chunk recv failed: {status}");
        (summary, events)
    }

    /// The receiver's peak resident memory (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon.id()))
            .expect("the receiver runs");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    pub fn wait_exit(mut self) -> Value {
        let summary = self.wait_event(Duration::from_secs(20), |v| v["event"] == "exit");
        let status = self
            .daemon
            .wait(Duration::from_secs(10))
            .expect("chunk recv exits");
        assert!(status.success(), "chunk recv failed: {status}");
        summary
    }
}

pub fn event_is(v: &Value, event: &str, name: &str) -> bool {
    v["event"] == event && v["name"] == name
}

/// Runs `chunk send --json` in `ns`; returns the process output and its JSON summary.
pub fn send(
    ns: &Netns,
    to: impl std::fmt::Display,
    files: &[&Path],
    extra: &[&str],
) -> (Output, Value) {
    let mut cmd = ns.command(&chunk_bin());
    cmd.args(["send", "--json", "--to", &to.to_string()])
        .args(extra)
        .args(files);
    let out = cmd.output().expect("run chunk send");
    let json = summary_of(&out);
    (out, json)
}

/// The JSON summary `chunk send --json` printed.
pub fn summary_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn assert_sent(out: &Output, json: &Value, count: usize) {
    assert!(
        out.status.success(),
        "chunk send failed: {json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), count, "{json}");
    assert!(files.iter().all(|f| f["ok"] == true), "{json}");
}

pub fn counter(summary: &Value, name: &str) -> u64 {
    summary["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {summary}"))
}

/// The usual end-to-end check: a file of `size` pseudo-random bytes from `sender` to a fresh
/// `chunk recv` on `receiver`'s `receiver_if`, which must arrive exact. Returns the sender's
/// JSON report of the file.
pub fn one_file_across(
    sender: &chunk_tests::Netns,
    receiver: &chunk_tests::Netns,
    receiver_if: &str,
    to: impl std::fmt::Display,
    size: usize,
    seed: u64,
    send_extra: &[&str],
) -> Value {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), "across.bin", size, seed);
    let recv = Recv::start(receiver, receiver_if, out.path(), &["--exit-after", "1"]);
    let (o, json) = send(sender, to, &[&file], send_extra);
    assert_sent(&o, &json, 1);
    recv.wait_exit();
    assert!(same_contents(&file, &out.path().join("across.bin")));
    json["files"][0].clone()
}

/// Files of the given names and sizes from `hosts`' sender to a fresh `chunk recv` on its
/// receiver (with `recv_extra`), sent to `to` in one `chunk send` (with `send_extra`): each must
/// be reported finished and verified at its size, and arrive exact, with nothing else left in
/// the receive directory. Returns the sender's JSON summary, the finished events in the order of
/// `sizes`, and the receiver's exit summary.
pub fn edge_sizes_across(
    hosts: &chunk_tests::TwoHosts,
    to: impl std::fmt::Display,
    sizes: &[(&str, usize)],
    recv_extra: &[&str],
    send_extra: &[&str],
) -> (Value, Vec<Value>, Value) {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, (name, size))| make_file(src.path(), name, *size, i as u64))
        .collect();
    let count = sizes.len().to_string();
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[&["--exit-after", count.as_str()], recv_extra].concat(),
    );
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (o, json) = send(&hosts.sender, to, &refs, send_extra);
    assert_sent(&o, &json, sizes.len());
    let mut finished = Vec::new();
    for (name, size) in sizes {
        let fin = recv.wait_event(Duration::from_secs(10), |v| event_is(v, "finished", name));
        assert_eq!(fin["verified"], true, "{fin}");
        assert_eq!(fin["size"], *size, "{fin}");
        finished.push(fin);
    }
    let summary = recv.wait_exit();
    for f in &files {
        let name = f.file_name().unwrap();
        assert!(same_contents(f, &out.path().join(name)), "{name:?} differs");
    }
    // No work files left, nothing else written.
    let mut expect: Vec<String> = sizes.iter().map(|(n, _)| n.to_string()).collect();
    expect.sort();
    assert_eq!(names_in(out.path()), expect);
    assert_eq!(counter(&summary, "bad_checksum"), 0, "{summary}");
    (json, finished, summary)
}

/// A file system mounted for one test on a fresh directory, unmounted on drop: a tmpfs of a
/// size, a ramfs, or ext2 on a loop-mounted image.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    _image: Option<tempfile::TempDir>,
}

impl Mounted {
    pub fn tmpfs(size: &str) -> Mounted {
        Mounted::of("tmpfs", &["-o", &format!("size={size}")])
    }

    pub fn ramfs() -> Mounted {
        Mounted::of("ramfs", &[])
    }

    fn of(kind: &str, options: &[&str]) -> Mounted {
        let dir = tempfile::tempdir().unwrap();
        chunk_tests::run(
            std::process::Command::new("mount")
                .args(["-t", kind, "chunk-test"])
                .args(options)
                .arg(dir.path()),
        )
        .unwrap_or_else(|e| panic!("mount a {kind}: {e}"));
        Mounted { dir, _image: None }
    }

    pub fn ext2(size: &str) -> Mounted {
        let image = tempfile::tempdir().unwrap();
        let file = image.path().join("ext2.img");
        chunk_tests::run(
            std::process::Command::new("truncate")
                .args(["-s", size])
                .arg(&file),
        )
        .unwrap();
        chunk_tests::run(
            std::process::Command::new("mkfs.ext2")
                .args(["-q", "-F"])
                .arg(&file),
        )
        .expect("mkfs.ext2");
        let dir = tempfile::tempdir().unwrap();
        chunk_tests::run(
            std::process::Command::new("mount")
                .args(["-o", "loop"])
                .arg(&file)
                .arg(dir.path()),
        )
        .expect("mount an ext2 image");
        Mounted {
            dir,
            _image: Some(image),
        }
    }
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}
