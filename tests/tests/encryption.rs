//! Encrypted transfers (docs/PROTOCOL.md, "Encryption"; docs/SECURITY.md): the real binaries in
//! namespaces, keys from `chunk keygen`, the wire captured on the sender's side to check that
//! nothing of the file or its name crosses it readable, and what an attacker on the path can
//! do: an unknown key, a changed receiver key, tampered and replayed packets, clear offers to a
//! receiver that requires encryption. Needs root (run through `cargo xtask test`).

use std::{
    path::{Path, PathBuf},
    process::Output,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chunk_common::wire::{self, envelope};
use chunk_tests::{Netns, Routed, TwoHosts};
use common::*;
use serde_json::Value;

mod common;

/// A key pair made by `chunk keygen` in `dir`; returns the private key's path.
fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new(chunk_bin())
        .args(["keygen", "--out", path.to_str().unwrap(), "--comment", name])
        .output()
        .expect("run chunk keygen");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(line.starts_with("chunk-x25519 "), "{line}");
    path
}

fn pub_of(key: &Path) -> PathBuf {
    PathBuf::from(format!("{}.pub", key.display()))
}

/// `chunk send` whose failure may come before any JSON: its output, and the summary if any.
fn send_any(
    ns: &Netns,
    to: impl std::fmt::Display,
    files: &[&Path],
    extra: &[&str],
) -> (Output, Option<Value>) {
    let mut cmd = ns.command(&chunk_bin());
    cmd.args(["send", "--json", "--to", &to.to_string()])
        .args(extra)
        .args(files);
    let out = cmd.output().expect("run chunk send");
    let json = serde_json::from_slice(&out.stdout).ok();
    (out, json)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every frame leaving the sender's namespace while it runs (AF_PACKET sees outgoing frames).
struct Capture {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(ns: &Netns) -> Capture {
        let sock = ns
            .enter(|| {
                let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
                let s = socket2::Socket::new(
                    socket2::Domain::PACKET,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::from(proto)),
                )
                .unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                // Past net.core.rmem_max (we are root): a burst of parallel transfers outran the
                // capped buffer and the capture missed half the packets.
                let size: libc::c_int = 64 << 20;
                let rc = unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&s),
                        libc::SOL_SOCKET,
                        libc::SO_RCVBUFFORCE,
                        (&size as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    s.set_recv_buffer_size(64 << 20).unwrap();
                }
                s
            })
            .unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, st) = (frames.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let frame: Vec<u8> = buf[..n]
                        .iter()
                        .map(|b| unsafe { b.assume_init() })
                        .collect();
                    f.lock().unwrap().push(frame);
                }
            }
        });
        Capture {
            frames,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.frames.lock().unwrap())
    }
}

/// The chunk packets (IPv4, chunk's protocol) among captured Ethernet frames, as IP packets.
fn chunk_ip_packets(frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter(|f| f.len() > 14 + 20 && f[12..14] == [0x08, 0x00])
        .map(|f| f[14..].to_vec())
        .filter(|ip| ip[9] == chunk_common::DEFAULT_IP_PROTOCOL)
        .collect()
}

fn chunk_type(ip: &[u8]) -> u8 {
    let ihl = (ip[0] & 0x0f) as usize * 4;
    ip[ihl + wire::field::MSG_TYPE]
}

/// Sends whole IPv4 packets as they are (IP_HDRINCL) from `ns`.
fn replay(ns: &Netns, packets: &[Vec<u8>]) {
    ns.enter(|| {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW,
            Some(socket2::Protocol::from(libc::IPPROTO_RAW)),
        )
        .unwrap();
        for p in packets {
            let dst = std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            s.send_to(p, &std::net::SocketAddr::new(dst.into(), 0).into())
                .unwrap();
        }
    })
    .unwrap();
}

/// A file whose bytes are a marker repeated: anything of it on the wire would show.
fn marked_file(dir: &Path, name: &str, size: usize) -> PathBuf {
    let marker = b"SECRET-CONTENTS-";
    let data: Vec<u8> = marker.iter().copied().cycle().take(size).collect();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn sessions(summary: &Value, name: &str) -> u64 {
    summary["sessions"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no sessions.{name} in {summary}"))
}

/// Keys on both sides: files of edge sizes arrive exact, and the wire carries neither their
/// bytes nor their names, only sealed packets and the handshake.
#[test]
fn with_key_pairs_files_arrive_exact_and_nothing_is_readable_on_the_wire() {
    let hosts = TwoHosts::new("enc", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let rkey = keygen(keys.path(), "receiver");
    let skey = keygen(keys.path(), "sender");
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let sizes = [
        ("empty-secret-name", 0),
        ("one-secret-byte", 1),
        ("secret-three-chunks", 3 * 1416 + 1),
        ("secret-big", 3 << 20),
    ];
    let files: Vec<PathBuf> = sizes
        .iter()
        .map(|(n, s)| marked_file(src.path(), n, *s))
        .collect();
    let mut recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[
            "--key",
            rkey.to_str().unwrap(),
            "--authorized-keys",
            pub_of(&skey).to_str().unwrap(),
            "--require-encryption",
        ],
    );
    let cap = Capture::start(&hosts.sender);
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let (o, json) = send(
        &hosts.sender,
        hosts.receiver_addr,
        &refs,
        &[
            "--key",
            skey.to_str().unwrap(),
            "--receiver-key",
            pub_of(&rkey).to_str().unwrap(),
        ],
    );
    assert_sent(&o, &json, sizes.len());
    for (name, size) in sizes {
        let fin = recv.wait_event(Duration::from_secs(10), |v| event_is(v, "finished", name));
        assert_eq!(fin["verified"], true, "{fin}");
        assert_eq!(fin["size"], size, "{fin}");
    }
    let frames = cap.stop();
    let summary = recv.stop();
    for f in &files {
        assert!(same_contents(f, &out.path().join(f.file_name().unwrap())));
    }
    // Both ways. AF_PACKET may miss some of a burst: most is enough to see what the wire
    // carries.
    let packets = chunk_ip_packets(&frames);
    assert!(
        packets.len() > (3 << 20) / 1500 / 2,
        "{} chunk packets captured",
        packets.len()
    );
    for p in &packets {
        assert!(
            !contains(p, b"SECRET"),
            "readable contents or name on the wire"
        );
        let t = chunk_type(p);
        assert!(
            t == envelope::SEALED || t == envelope::HANDSHAKE,
            "a clear packet of type {t}"
        );
    }
    assert_eq!(sessions(&summary, "handshakes"), 1, "{summary}");
    assert_eq!(summary["sessions_open"], 1, "{summary}");
    assert_eq!(sessions(&summary, "seal_failures"), 0, "{summary}");
    // The three small files in one bundle, each in place.
    assert_eq!(summary["files_finished"], sizes.len(), "{summary}");
    assert_eq!(summary["transfers_finished"], 2, "{summary}");
}

/// A sender whose key the receiver does not list is refused with the reason, and nothing is
/// written; a sender that pins another receiver key stops before sending anything.
#[test]
fn an_unknown_sender_key_and_a_wrong_receiver_key_are_refused_with_the_reason() {
    let hosts = TwoHosts::new("encref", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let rkey = keygen(keys.path(), "receiver");
    let skey = keygen(keys.path(), "sender");
    let stranger = keygen(keys.path(), "stranger");
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = marked_file(src.path(), "f.bin", 100_000);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &[
            "--key",
            rkey.to_str().unwrap(),
            "--authorized-keys",
            pub_of(&skey).to_str().unwrap(),
        ],
    );
    let to = hosts.receiver_addr;
    let (o, _) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &[
            "--key",
            stranger.to_str().unwrap(),
            "--receiver-key",
            pub_of(&rkey).to_str().unwrap(),
            "--timeout",
            "5",
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("does not know the sender's key"), "{e}");
    // Nor can it come in clear: a receiver with key pairs takes encrypted offers only.
    let (o, json) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &["--no-encryption", "--timeout", "5"],
    );
    assert!(!o.status.success());
    let err = json.expect("a summary")["files"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(err.contains("encrypted transfers only"), "{err}");
    // Pinned to another key (the stranger's public key stands for an impostor's).
    let (o, _) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &[
            "--key",
            skey.to_str().unwrap(),
            "--receiver-key",
            pub_of(&stranger).to_str().unwrap(),
            "--timeout",
            "5",
        ],
    );
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("not the one given with --receiver-key"), "{e}");
    // A private key others may read is refused before anything is sent.
    let loose = keys.path().join("loose");
    std::fs::copy(&skey, &loose).unwrap();
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (o, _) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &["--key", loose.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("chmod 600"), "{}", stderr(&o));
    let summary = recv.stop();
    assert!(
        names_in(out.path()).is_empty(),
        "{:?}",
        names_in(out.path())
    );
    assert_eq!(sessions(&summary, "handshakes_refused"), 1, "{summary}");
    assert_eq!(summary["transfers_finished"], 0, "{summary}");
}

/// Trust on first use: the first send remembers the receiver's key in the known-hosts file; a
/// receiver that comes back with another key is refused loudly, nothing sent.
#[test]
fn a_remembered_receiver_key_that_changes_stops_the_sender() {
    let hosts = TwoHosts::new("enckh", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let rkey = keygen(keys.path(), "receiver");
    let rkey2 = keygen(keys.path(), "impostor");
    let skey = keygen(keys.path(), "sender");
    let known = keys.path().join("known_hosts");
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = marked_file(src.path(), "first.bin", 50_000);
    let sender_args = [
        "--key",
        skey.to_str().unwrap(),
        "--known-hosts",
        known.to_str().unwrap(),
    ];
    let recv_args = |k: &Path| {
        vec![
            "--key".to_string(),
            k.display().to_string(),
            "--authorized-keys".to_string(),
            pub_of(&skey).display().to_string(),
        ]
    };
    let a = recv_args(&rkey);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &a);
    let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&file], &sender_args);
    assert_sent(&o, &json, 1);
    assert!(stderr(&o).contains("first contact"), "{}", stderr(&o));
    recv.stop();
    let remembered = std::fs::read_to_string(&known).unwrap();
    let rpub = std::fs::read_to_string(pub_of(&rkey)).unwrap();
    let rpub_key: Vec<&str> = rpub.split_whitespace().take(2).collect();
    assert_eq!(
        remembered.trim(),
        format!("{} {}", hosts.receiver_addr, rpub_key.join(" "))
    );
    // The same address, another key.
    let a = recv_args(&rkey2);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out.path(), &a);
    let second = marked_file(src.path(), "second.bin", 50_000);
    let (o, _) = send_any(&hosts.sender, hosts.receiver_addr, &[&second], &sender_args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("KEY HAS CHANGED"), "{}", stderr(&o));
    recv.stop();
    assert_eq!(names_in(out.path()), ["first.bin"]);
}

/// A receiver that requires encryption refuses a clear offer with a reason the sender prints
/// (a downgrade by an attacker who strips the handshake gets no further), and one without keys
/// tells an encrypting sender it has none.
#[test]
fn clear_offers_to_a_receiver_that_requires_encryption_are_refused() {
    let hosts = TwoHosts::new("encreq", 1500).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let psk = keys.path().join("psk");
    std::fs::write(&psk, [7u8; 32]).unwrap();
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = marked_file(src.path(), "f.bin", 10_000);
    let recv = Recv::start(
        &hosts.receiver,
        hosts.receiver_if,
        out.path(),
        &["--psk-file", psk.to_str().unwrap(), "--require-encryption"],
    );
    let to = hosts.receiver_addr;
    // Authenticated with the PSK but not encrypted.
    let (o, json) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &[
            "--psk-file",
            psk.to_str().unwrap(),
            "--no-encryption",
            "--timeout",
            "5",
        ],
    );
    assert!(!o.status.success());
    let json = json.expect("a summary");
    let err = json["files"][0]["error"].as_str().unwrap();
    assert!(err.contains("encrypted transfers only"), "{err}");
    // Encrypted with the PSK alone: taken.
    let (o, json) = send(
        &hosts.sender,
        to,
        &[&file],
        &["--psk-file", psk.to_str().unwrap()],
    );
    assert_sent(&o, &json, 1);
    let summary = recv.stop();
    assert_eq!(names_in(out.path()), ["f.bin"]);
    assert!(sessions(&summary, "clear_refused") >= 1, "{summary}");
    // A receiver without keys says so to an encrypting sender.
    let out2 = tempfile::tempdir().unwrap();
    let recv = Recv::start(&hosts.receiver, hosts.receiver_if, out2.path(), &[]);
    let (o, _) = send_any(
        &hosts.sender,
        to,
        &[&file],
        &["--psk-file", psk.to_str().unwrap(), "--timeout", "5"],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("has no keys"), "{}", stderr(&o));
    recv.stop();
    assert!(names_in(out2.path()).is_empty());
}

/// What an attacker on the path can do with what it captured: sealed packets with a byte
/// changed (and the checksum recomputed) are refused; the whole transfer played again, after
/// the file was moved away, writes nothing (data and handshake replays are refused or answered
/// without effect); sealed packets for a session id the receiver never opened die in XDP.
#[test]
fn tampered_and_replayed_packets_do_nothing() {
    for mode in [&[][..], &["--mode", "socket"][..]] {
        let hosts = TwoHosts::new(if mode.is_empty() { "encrp" } else { "encrps" }, 1500).unwrap();
        // The XDP path with the PSK suite (NNpsk0), the socket path with key pairs (XX: its
        // message 3 and the confirmation are replayed too).
        let keys = tempfile::tempdir().unwrap();
        let psk = keys.path().join("psk");
        std::fs::write(&psk, [9u8; 32]).unwrap();
        let (rkey, skey) = (keygen(keys.path(), "r"), keygen(keys.path(), "s"));
        let (rpub, spub) = (pub_of(&rkey), pub_of(&skey));
        let (recv_keys, send_keys): (Vec<&str>, Vec<&str>) = if mode.is_empty() {
            (
                vec!["--psk-file", psk.to_str().unwrap()],
                vec!["--psk-file", psk.to_str().unwrap()],
            )
        } else {
            (
                vec![
                    "--key",
                    rkey.to_str().unwrap(),
                    "--authorized-keys",
                    spub.to_str().unwrap(),
                ],
                vec![
                    "--key",
                    skey.to_str().unwrap(),
                    "--receiver-key",
                    rpub.to_str().unwrap(),
                ],
            )
        };
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = marked_file(src.path(), "victim.bin", 200_000);
        let recv = Recv::start(
            &hosts.receiver,
            hosts.receiver_if,
            out.path(),
            &[&recv_keys[..], mode].concat(),
        );
        let cap = Capture::start(&hosts.sender);
        let (o, json) = send(&hosts.sender, hosts.receiver_addr, &[&file], &send_keys);
        assert_sent(&o, &json, 1);
        let packets = chunk_ip_packets(&cap.stop());
        let got = out.path().join("victim.bin");
        assert!(same_contents(&file, &got));
        std::fs::remove_file(&got).unwrap();
        // What the sender sent (the capture has the receiver's answers too).
        let to = hosts.receiver_addr.octets();
        let packets: Vec<_> = packets.into_iter().filter(|p| p[16..20] == to).collect();
        let sealed: Vec<_> = packets
            .iter()
            .filter(|p| chunk_type(p) == envelope::SEALED)
            .cloned()
            .collect();
        assert!(sealed.len() > 100);
        // Tampered: one ciphertext bit flipped, under a counter not used yet (one already used
        // would be refused as a replay before its tag is looked at), the chunk checksum
        // recomputed.
        let tampered: Vec<_> = sealed
            .iter()
            .take(20)
            .enumerate()
            .map(|(i, p)| {
                let mut p = p.clone();
                let c = 20; // the chunk packet after the IPv4 header
                p[c + 20..c + 28].copy_from_slice(&(5_000 + i as u64).to_be_bytes());
                let last = p.len() - 20;
                p[last] ^= 0x40;
                wire::Packet::new_unchecked(&mut p[c..]).fill_checksum();
                p
            })
            .collect();
        replay(&hosts.sender, &tampered);
        // The whole capture again, in order: handshake, offers, data, hash.
        replay(&hosts.sender, &packets);
        // A forged session id.
        let mut forged = sealed[0].clone();
        forged[20 + 8] ^= 0xff;
        wire::Packet::new_unchecked(&mut forged[20..]).fill_checksum();
        replay(&hosts.sender, &[forged]);
        std::thread::sleep(Duration::from_millis(500));
        let summary = recv.stop();
        assert!(
            names_in(out.path()).is_empty(),
            "{mode:?}: {:?}",
            names_in(out.path())
        );
        assert_eq!(sessions(&summary, "handshakes"), 1, "{mode:?}: {summary}");
        assert_eq!(summary["transfers_finished"], 1, "{mode:?}: {summary}");
        assert!(
            sessions(&summary, "seal_failures") >= 20,
            "{mode:?}: {summary}"
        );
        assert!(
            sessions(&summary, "replayed") as usize >= sealed.len() / 2,
            "{mode:?}: {summary}"
        );
        assert!(
            counter(&summary, "unknown_session") >= 1,
            "{mode:?}: {summary}"
        );
    }
}

/// Encrypted, through 5 % loss each way, over both receive paths, IPv4 and IPv6.
#[test]
fn an_encrypted_transfer_survives_loss_on_both_paths() {
    let net = Routed::new("encloss").unwrap();
    net.set_loss(chunk_common::DEFAULT_IP_PROTOCOL, 5).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let rkey = keygen(keys.path(), "receiver");
    let skey = keygen(keys.path(), "sender");
    for (mode, to) in [
        (&[][..], net.receiver_addr.to_string()),
        (&["--mode", "socket"][..], net.receiver_addr6.to_string()),
    ] {
        let src = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = make_file(src.path(), "lossy.bin", 8 << 20, 5);
        let recv = Recv::start(
            &net.receiver,
            net.receiver_if,
            out.path(),
            &[
                &[
                    "--key",
                    rkey.to_str().unwrap(),
                    "--authorized-keys",
                    pub_of(&skey).to_str().unwrap(),
                ],
                mode,
            ]
            .concat(),
        );
        let (o, json) = send(
            &net.sender,
            &to,
            &[&file],
            &[
                "--key",
                skey.to_str().unwrap(),
                "--receiver-key",
                pub_of(&rkey).to_str().unwrap(),
                "--timeout",
                "60",
            ],
        );
        assert_sent(&o, &json, 1);
        let summary = recv.stop();
        assert!(same_contents(&file, &out.path().join("lossy.bin")));
        assert!(
            json["files"][0]["retransmitted"].as_u64().unwrap() > 0,
            "{json}"
        );
        assert_eq!(sessions(&summary, "handshakes"), 1, "{summary}");
    }
}
