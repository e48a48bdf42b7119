//! Directory trees (`chunk send DIR`): the real binaries in namespaces. Needs root (run through
//! `cargo xtask test`).

use std::{os::unix::fs::PermissionsExt, path::Path, time::Duration};

use chunk_tests::TwoHosts;
use common::*;

mod common;

fn write(path: &Path, data: &[u8], mode: u32, mtime: i64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    let t = std::time::UNIX_EPOCH + Duration::from_secs(mtime as u64);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

/// A tree with nested directories, unicode names, two files of one base name, modes and times,
/// 50 small files against a receiver that takes 2 transfers at once; a symbolic link pointing
/// inside, one pointing outside and a FIFO, which are skipped with the reason. Everything lands
/// under `--dest`, exact, and the sender's summary counts it; sent again, only what is missing
/// moves.
#[test]
fn a_tree_arrives_under_dest_with_its_paths_modes_and_times() {
    let hosts = TwoHosts::new("tree", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("proj");
    write(&root.join("a/x.txt"), b"first x", 0o640, 1_600_000_000);
    write(&root.join("b/x.txt"), b"second x", 0o600, 1_600_000_100);
    write(
        &root.join("deep/er/still/ünïcødé ☃.bin"),
        &vec![7u8; 300_000],
        0o755,
        1_500_000_000,
    );
    for i in 0..50 {
        write(
            &root.join(format!("many/{i:02}.dat")),
            format!("file {i}").as_bytes(),
            0o644,
            1_700_000_000,
        );
    }
    std::os::unix::fs::symlink("../a/x.txt", root.join("b/inside-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("b/outside-link")).unwrap();
    let fifo = root.join("b/fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    // An empty directory, and a directory's own mode and time (set last: writing in a
    // directory changes its time).
    std::fs::create_dir(root.join("empty")).unwrap();
    std::fs::set_permissions(root.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();
    std::fs::File::open(root.join("a"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_400_000_000))
        .unwrap();
    // 53 files and 8 directories (proj, a, b, deep, deep/er, deep/er/still, many, empty).
    let entries = 61;
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--max-transfers", "2"],
    );
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &[&root],
        &["--dest", "in/box"],
    );
    assert_sent(&o, &json, entries);
    // Sent again with one file gone on the receiver: only that one travels, the others are
    // checked by their hash where they are.
    std::fs::remove_file(out.path().join("in/box/proj/many/07.dat")).unwrap();
    let (o2, again) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &[&root],
        &["--dest", "in/box"],
    );
    assert_sent(&o2, &again, entries);
    let files = again["files"].as_array().unwrap();
    let moved: Vec<_> = files
        .iter()
        .filter(|f| f["resumed"] != f["chunks"])
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(moved, ["in/box/proj/many/07.dat"], "{again}");
    let summary = recv.stop();
    // Every file and directory twice, the small files in bundles.
    assert_eq!(summary["files_finished"], 2 * entries, "{summary}");
    assert!(
        summary["transfers_finished"].as_u64().unwrap() < 2 * entries as u64,
        "{summary}"
    );
    let got = out.path().join("in/box/proj");
    for (rel, mode, mtime) in [
        ("a/x.txt", 0o640, 1_600_000_000),
        ("b/x.txt", 0o600, 1_600_000_100),
        ("deep/er/still/ünïcødé ☃.bin", 0o755, 1_500_000_000),
        ("many/07.dat", 0o644, 1_700_000_000),
    ] {
        let (a, b) = (root.join(rel), got.join(rel));
        assert!(same_contents(&a, &b), "{rel}");
        let md = std::fs::metadata(&b).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, mode, "{rel}");
        assert_eq!(
            md.modified().unwrap(),
            std::time::UNIX_EPOCH + Duration::from_secs(mtime),
            "{rel}"
        );
    }
    assert_eq!(std::fs::read_dir(got.join("many")).unwrap().count(), 50);
    assert!(got.join("empty").is_dir());
    let a = std::fs::metadata(got.join("a")).unwrap();
    assert_eq!(a.permissions().mode() & 0o777, 0o750);
    assert_eq!(
        a.modified().unwrap(),
        std::time::UNIX_EPOCH + Duration::from_secs(1_400_000_000)
    );
    // The links and the FIFO were not sent, and the summary says why.
    let mut b = names_in(&got.join("b"));
    b.sort();
    assert_eq!(b, ["x.txt"]);
    let skipped = json["skipped_entries"].as_array().unwrap();
    assert_eq!(skipped.len(), 3, "{json}");
    assert!(
        skipped
            .iter()
            .any(|s| s["reason"].as_str().unwrap().contains("FIFO")),
        "{json}"
    );
    assert_eq!(
        json["bytes"],
        7 + 8 + 300_000 + (0..50).map(|i| format!("file {i}").len()).sum::<usize>()
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("outside-link: skipped"), "{stderr}");
}

/// `--dest` cannot leave the receiver's directory.
#[test]
fn a_dest_outside_is_refused_before_anything_is_sent() {
    let o = std::process::Command::new(chunk_bin())
        .args([
            "send",
            "--to",
            "198.18.0.2",
            "--dest",
            "../up",
            "/etc/hostname",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("inside the receiver's directory"));
}

/// The receiver's work files (part files, chunk records, a bundle's) anywhere under `dir`.
fn work_files(dir: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for name in names_in(dir) {
        let path = dir.join(&name);
        if name.starts_with('.') || name.starts_with("chunk-bundle") {
            left.push(path.display().to_string());
        } else if path.is_dir() && !path.is_symlink() {
            left.extend(work_files(&path));
        }
    }
    left
}

fn small_tree(root: &Path, files: usize, size: usize) {
    for i in 0..files {
        let data: Vec<u8> = (0..size).map(|b| (b * 31 + i * 7) as u8).collect();
        write(
            &root.join(format!("d{}/f{i:03}.bin", i % 7)),
            &data,
            0o644,
            1_700_000_000,
        );
    }
}

/// A tree send killed part way and run again: everything arrives exact, and what had arrived
/// is checked where it is, not sent again.
#[test]
fn a_tree_send_killed_and_rerun_completes() {
    let hosts = TwoHosts::new("treek", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("t");
    small_tree(&root, 60, 400_000);
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--rate", "100M", "--to"])
        .arg(hosts.receiver_addr.to_string())
        .arg(&root);
    let sender = chunk_tests::Daemon::spawn(cmd, "chunk send").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    sender.signal(libc::SIGKILL);
    drop(sender);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert_sent(&o, &json, 60 + 8);
    let files = json["files"].as_array().unwrap();
    let checked = files
        .iter()
        .filter(|f| f["chunks"].as_u64().unwrap() > 0 && f["resumed"] == f["chunks"])
        .count();
    assert!(checked > 0, "some files were already there: {json}");
    assert!(checked < 60, "the kill came before the end: {json}");
    recv.stop();
    for i in 0..60 {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("t").join(&rel)),
            "{rel}"
        );
    }
    // No work files left.
    let left = work_files(out.path());
    assert!(left.is_empty(), "{left:?}");
}

/// A receiver killed in the middle of a tree of small files leaves no work file: its bundles
/// wait in files with no name. Run again, the send completes exact and leaves none either.
#[test]
fn a_receiver_killed_in_a_tree_of_bundles_leaves_no_work_file() {
    let hosts = TwoHosts::new("treerk", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("t");
    // 16 MB in bundles of about 120 files: 3 s at 40 Mbit/s.
    small_tree(&root, 2000, 8_000);
    let mut recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let mut cmd = hosts.sender.command(&chunk_bin());
    cmd.args(["send", "--json", "--rate", "40M", "--to"])
        .arg(hosts.receiver_addr.to_string())
        .arg(&root);
    let sender = chunk_tests::Daemon::spawn(cmd, "chunk send").unwrap();
    // Some bundles in place, more on their way.
    let first = recv.wait_event(Duration::from_secs(20), |v| {
        v["event"] == "finished" && v["bundle"].is_string()
    });
    std::thread::sleep(Duration::from_millis(700));
    recv.daemon.signal(libc::SIGKILL);
    drop(recv);
    sender.signal(libc::SIGKILL);
    drop(sender);
    let left = work_files(out.path());
    assert!(
        left.is_empty(),
        "work files left by the killed receiver: {left:?} ({first})"
    );
    let placed = count_files(&out.path().join("t"));
    assert!(
        placed > 0 && placed < 2000,
        "{placed} files in place at the kill"
    );

    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert_sent(&o, &json, 2000 + 8);
    recv.stop();
    for i in (0..2000).step_by(37) {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("t").join(&rel)),
            "{rel}"
        );
    }
    assert_eq!(count_files(&out.path().join("t")), 2000);
    let left = work_files(out.path());
    assert!(left.is_empty(), "{left:?}");
}

/// Regular files under `dir`, recursively.
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    count_files(&e.path())
                } else {
                    usize::from(t.is_file())
                }
            })
            .sum()
    })
}

/// A tree through 5 % loss each way.
#[test]
fn a_tree_survives_loss() {
    let net = chunk_tests::Routed::new("treeloss").unwrap();
    net.set_loss(chunk_common::DEFAULT_IP_PROTOCOL, 5).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("lossy");
    small_tree(&root, 40, 100_000);
    let recv = Recv::start(&net.receiver, net.receiver_if, out.path(), &[]);
    let (o, json) = send(
        &net.sender,
        net.receiver_addr,
        &[&root],
        &["--timeout", "60"],
    );
    assert_sent(&o, &json, 40 + 8);
    recv.stop();
    for i in 0..40 {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("lossy").join(&rel)),
            "{rel}"
        );
    }
    assert!(net.dropped().unwrap() > 0);
}

/// With `--links` a link inside the tree is made, pointing where it pointed; one that leads
/// out of the tree is never sent.
#[test]
fn with_links_a_link_inside_the_tree_is_recreated() {
    let hosts = TwoHosts::new("treel", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("l");
    write(&root.join("a/x.txt"), b"target", 0o644, 1_700_000_000);
    std::os::unix::fs::symlink("../a/x.txt", root.join("b/in")).unwrap_or_else(|_| {
        std::fs::create_dir_all(root.join("b")).unwrap();
        std::os::unix::fs::symlink("../a/x.txt", root.join("b/in")).unwrap();
    });
    std::os::unix::fs::symlink("../../etc/passwd", root.join("b/out")).unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &["--links"]);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    // a/x.txt, the link b/in, directories a, b, l.
    assert_sent(&o, &json, 5);
    // Sent again: the link is there with the same target, verified as it is.
    let (o, again) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert_sent(&o, &again, 5);
    recv.stop();
    let link = out.path().join("l/b/in");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("../a/x.txt"));
    assert_eq!(std::fs::read(&link).unwrap(), b"target");
    assert!(!out.path().join("l/b/out").exists());
    assert!(std::fs::symlink_metadata(out.path().join("l/b/out")).is_err());
    let skipped = json["skipped_entries"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{json}");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("outside"),
        "{json}"
    );
}

/// Large files (over 8 MiB) go two at a time while the small ones around them go on: a tree
/// of three large files first and small ones after arrives whole, every file exact.
#[test]
fn large_files_take_turns_while_small_ones_pass() {
    let hosts = TwoHosts::new("treebig", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("m");
    for i in 0..3 {
        let data: Vec<u8> = (0..9_000_000usize).map(|b| (b * 13 + i) as u8).collect();
        write(&root.join(format!("a{i}.big")), &data, 0o644, 1_700_000_000);
    }
    small_tree(&root, 20, 5_000);
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    // 23 files, and the directories m, d0..d6.
    assert_sent(&o, &json, 23 + 8);
    recv.stop();
    for i in 0..3 {
        let rel = format!("a{i}.big");
        assert!(
            same_contents(&root.join(&rel), &out.path().join("m").join(&rel)),
            "{rel}"
        );
    }
    for i in 0..20 {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("m").join(&rel)),
            "{rel}"
        );
    }
}

/// Transfers go oldest first, but none behind a large file falls silent: with a `--timeout`
/// shorter than the large file's time on the link, the small files beside it still arrive.
#[test]
fn files_behind_a_large_one_do_not_time_out() {
    let hosts = TwoHosts::new("treeka", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("k");
    // 12 MB at 30 Mbit/s: over 3 s on the link, against a 1.5 s timeout.
    let data: Vec<u8> = (0..12_000_000usize).map(|b| (b * 7) as u8).collect();
    write(&root.join("a.big"), &data, 0o644, 1_700_000_000);
    small_tree(&root, 20, 5_000);
    for i in 0..3 {
        let lone: Vec<u8> = (0..200_000usize).map(|b| (b * 3 + i) as u8).collect();
        write(&root.join(format!("b{i}.bin")), &lone, 0o644, 1_700_000_000);
    }
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &[&root],
        &["--rate", "30M", "--timeout", "1.5"],
    );
    // 24 files, and the directories k, d0..d6.
    assert_sent(&o, &json, 24 + 8);
    recv.stop();
    assert!(same_contents(
        &root.join("a.big"),
        &out.path().join("k/a.big")
    ));
    for i in 0..3 {
        let rel = format!("b{i}.bin");
        assert!(
            same_contents(&root.join(&rel), &out.path().join("k").join(&rel)),
            "{rel}"
        );
    }
}

/// Small files go in bundles (fewer transfers than files, each file still told and verified
/// on both sides); one whose name holds other content on the receiver makes its bundle fail,
/// and the sender sends that bundle's files one by one: that file alone fails, `exists`, and
/// the others arrive. `--no-bundle` sends every file as a transfer of its own.
#[test]
fn small_files_go_in_bundles_and_a_failed_bundle_goes_file_by_file() {
    let hosts = TwoHosts::new("treeb", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("b");
    // 1.5 MB of files up to 64 KiB: two bundles at least.
    small_tree(&root, 30, 50_000);
    std::fs::create_dir_all(out.path().join("b/d0")).unwrap();
    std::fs::write(out.path().join("b/d0/f000.bin"), b"the receiver's own").unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert!(!o.status.success());
    let files = json["files"].as_array().unwrap();
    assert_eq!(files.len(), 30 + 8, "{json}");
    let failed: Vec<_> = files.iter().filter(|f| f["ok"] != true).collect();
    assert_eq!(failed.len(), 1, "{json}");
    assert_eq!(failed[0]["name"], "b/d0/f000.bin", "{json}");
    assert!(
        failed[0]["error"].as_str().unwrap().contains("exists"),
        "{json}"
    );
    // The bundles that did not fail were not sent again.
    assert!(files.iter().any(|f| f["bundled"] == true), "{json}");
    assert_eq!(
        std::fs::read(out.path().join("b/d0/f000.bin")).unwrap(),
        b"the receiver's own"
    );
    for i in 1..30 {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("b").join(&rel)),
            "{rel}"
        );
    }
    let (summary, events) = recv.stop_with_events();
    // Every file's arrival told, those of bundles with their bundle.
    let finished: Vec<_> = events.iter().filter(|e| e["event"] == "finished").collect();
    assert!(
        finished.iter().filter(|e| e["bundle"].is_string()).count() > 0,
        "{events:?}"
    );
    assert_eq!(summary["files_finished"], 29 + 8, "{summary}");
    let left = work_files(out.path());
    assert!(left.is_empty(), "work files left: {left:?}");

    // Alone: as many transfers as files and directories.
    let out2 = tempfile::tempdir().unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out2.path(), &[]);
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &[&root],
        &["--no-bundle"],
    );
    assert_sent(&o, &json, 30 + 8);
    assert!(
        json["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["bundled"].is_null()),
        "{json}"
    );
    let summary = recv.stop();
    assert_eq!(summary["transfers_finished"], 30 + 8, "{summary}");
}

/// A tree of many bundles sent again: the receiver holds every file and acknowledges each one's
/// chunks from the bundle's manifest, which the sender waits for: none of them goes again.
#[test]
fn a_tree_of_many_bundles_sent_again_moves_none_of_its_files() {
    let hosts = TwoHosts::new("treer", 1500).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let root = src.path().join("r");
    // 2 000 files of 4 KiB: nine bundles or more.
    small_tree(&root, 2_000, 4_096);
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &[]);
    let (o, first) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert_sent(&o, &first, 2_000 + 8);
    let (o, again) = send(&hosts.sender, hosts.receiver_addr, &[&root], &[]);
    assert_sent(&o, &again, 2_000 + 8);
    recv.stop();
    let files = again["files"].as_array().unwrap();
    let bundled = files.iter().filter(|f| f["bundled"] == true).count();
    assert_eq!(bundled, 2_000, "{again}");
    let moved: Vec<_> = files
        .iter()
        .filter(|f| f["resumed"] != f["chunks"])
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(moved.is_empty(), "sent again: {moved:?}");
    // The first send moved every file's chunks: 3 each.
    let sent_first: u64 = first["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["chunks_sent"].as_u64().unwrap())
        .sum();
    assert!(sent_first >= 6_000, "{sent_first}");
    for i in (0..2_000).step_by(97) {
        let rel = format!("d{}/f{i:03}.bin", i % 7);
        assert!(
            same_contents(&root.join(&rel), &out.path().join("r").join(&rel)),
            "{rel}"
        );
    }
}
