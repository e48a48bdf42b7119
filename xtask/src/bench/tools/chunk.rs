//! chunk: `chunk recv --exit-after N` (XDP, or `--mode socket`; N = 1 for a file, a tree's files
//! and directories) started with the harness's launcher, then `chunk send`, which exits only once
//! the receiver confirmed every file's hash.
//! Retransmissions are the sender's own count; the junk dropped is the receiver's counters.
//! chunk-xdp-enc is the same with public-key encryption: keys made once per benchmark with
//! `chunk keygen` ([`Keys`]), the receiver admitting only the bench's sender.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use chunk_tests::{ReadyRecv, spawn_recv};
use serde_json::Value;

use super::{Transfer, output_within, stop_timed};
use crate::bench::{
    accounting::{Mark, TimeFiles, timed},
    run::Run,
};

/// Which receive path `chunk recv` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Xdp,
    Socket,
}

/// How the packets travel: IPv4 or IPv6, straight over IP or in UDP (`--ipv6`, `--udp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transport {
    pub ipv6: bool,
    pub udp: bool,
}

/// The UDP port the bench's chunk receivers take UDP on.
pub const UDP_PORT: &str = "47000";

/// Appends `send --json --quiet --to TO --timeout SECS FILE` to `chunk` (a command that runs
/// the chunk binary in the sender's namespace, possibly under `/usr/bin/time`).
pub fn send_command(
    mut chunk: std::process::Command,
    to: std::net::IpAddr,
    file: &std::path::Path,
    timeout_s: u32,
) -> std::process::Command {
    chunk
        .args(["send", "--json", "--quiet", "--to"])
        .arg(to.to_string())
        .args(["--timeout", &timeout_s.to_string()])
        .arg(file);
    chunk
}

/// The throwaway key pairs of one benchmark for chunk-xdp-enc, made with `chunk keygen`: the
/// receiver's (its public half given to the sender) and the sender's (its public half the
/// receiver's only authorized key).
pub struct Keys {
    receiver: PathBuf,
    sender: PathBuf,
}

/// Whether this chunk binary has `chunk keygen` (encryption), by asking its help.
pub fn has_keygen(bin: &str) -> bool {
    Command::new(bin)
        .args(["keygen", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `FILE.pub`, where `chunk keygen --out FILE` writes the public key.
fn public(key: &Path) -> PathBuf {
    let mut p = key.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

impl Keys {
    /// Makes both key pairs in `dir` (created; pairs left from an earlier call are replaced).
    pub fn generate(bin: &str, dir: &Path) -> Result<Keys> {
        std::fs::create_dir_all(dir)?;
        let keys = Keys {
            receiver: dir.join("receiver.key"),
            sender: dir.join("sender.key"),
        };
        for (key, comment) in [
            (&keys.receiver, "bench-receiver"),
            (&keys.sender, "bench-sender"),
        ] {
            // keygen refuses to overwrite a key.
            let _ = std::fs::remove_file(key);
            let _ = std::fs::remove_file(public(key));
            crate::cmd_output(
                Command::new(bin)
                    .args(["keygen", "--comment", comment, "--out"])
                    .arg(key),
            )
            .context("chunk keygen")?;
            if !public(key).is_file() {
                bail!("chunk keygen wrote no {}", public(key).display());
            }
        }
        Ok(keys)
    }

    /// `chunk recv`'s arguments: its own key, and the sender's public key as the only one
    /// admitted.
    fn recv_args(&self) -> Vec<String> {
        let path = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            "--key".into(),
            path(&self.receiver),
            "--authorized-keys".into(),
            path(&public(&self.sender)),
        ]
    }

    /// `chunk send`'s arguments: its own key, and the receiver's public key.
    fn send_args(&self) -> [PathBuf; 4] {
        [
            "--key".into(),
            self.sender.clone(),
            "--receiver-key".into(),
            public(&self.receiver),
        ]
    }
}

/// One transfer with `chunk`, encrypted with `keys` if given, the sender given `send_extra`.
pub fn run(
    t: &Transfer,
    mode: Mode,
    transport: Transport,
    keys: Option<&Keys>,
    send_extra: &[&str],
    run: &mut Run,
) -> Result<()> {
    let net = &t.net.routed;
    let times = TimeFiles::in_dir(t.work);
    let transfers = t.transfers.to_string();
    let mut extra = vec!["--exit-after", &transfers];
    if mode == Mode::Socket {
        extra.extend(["--mode", "socket"]);
    }
    if transport.udp {
        extra.extend(["--udp", UDP_PORT]);
    }
    let enc_args = keys.map(Keys::recv_args).unwrap_or_default();
    extra.extend(enc_args.iter().map(String::as_str));
    let mut rc = timed(&net.receiver, &times.recv, t.bin);
    if t.transfers > 1 {
        // A tree: no log line per file (tar and rsync print none either).
        rc.env("RUST_LOG", "warn");
    }
    let ReadyRecv {
        daemon: receiver,
        lines,
        ..
    } = spawn_recv(rc, net.receiver_if, t.out_dir, &extra)?;
    let to = if transport.ipv6 {
        net.receiver_addr6.into()
    } else {
        net.receiver_addr.into()
    };
    let mut sc = send_command(timed(&net.sender, &times.send, t.bin), to, t.file, 60);
    if transport.udp {
        sc.args(["--udp", UDP_PORT]);
    }
    if let Some(keys) = keys {
        sc.args(keys.send_args());
    }
    sc.args(send_extra);
    let mark = Mark::start(t.net);
    let out = match output_within(sc, t.chunk_cut_off.unwrap_or(t.timeout).min(t.timeout)) {
        Ok(out) => out,
        Err(e) => {
            // The receiver waits for a transfer that will not come: stop it (not only the
            // `time` it runs under, which would leave it holding the link's XDP program).
            mark.stop(t.net, run);
            let _ = stop_timed(receiver, Duration::ZERO);
            if t.chunk_cut_off.is_none() {
                return Err(e);
            }
            // Cut off: what arrived whole is the figure (the caller checks it).
            let dest = t.out_dir.join(t.file.file_name().expect("a file name"));
            return super::cut_off(&dest, &times, run, e);
        }
    };
    // chunk send exits only once the receiver confirmed the file's hash.
    mark.stop(t.net, run);
    let status = stop_timed(receiver, Duration::from_secs(20))?;
    times.read_into(run);
    if !out.status.success() {
        bail!(
            "chunk send failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if !status.success() {
        bail!("chunk recv exited with {status}");
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("chunk send's JSON")?;
    // A tree's files each have their own count.
    run.retransmissions = v["files"]
        .as_array()
        .and_then(|f| f.iter().map(|f| f["retransmitted"].as_u64()).sum());
    if let Some(exit) = lines
        .try_iter()
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .find(|v| v["event"] == "exit")
    {
        let c = &exit["counters"];
        run.junk_dropped = Some(
            ["bad_checksum", "bad_magic", "ring_full"]
                .iter()
                .map(|k| c[k].as_u64().unwrap_or(0))
                .sum(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a chunk with encryption: `keygen --comment C --out FILE` writes FILE and
    /// FILE.pub as the real one does; any other command fails.
    const FAKE_CHUNK: &str = r#"#!/bin/sh
[ "$1" = keygen ] || exit 2
[ "$2" = --help ] && exit 0
[ "$2 $4" = "--comment --out" ] || exit 3
[ -e "$5" ] && exit 4
echo private > "$5" && echo "chunk-x25519 AAAA $3" > "$5.pub"
"#;

    #[test]
    fn keys_come_from_chunk_keygen_and_go_to_recv_and_send() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::workspace_root()
            .join("target/bench-test")
            .join(format!("keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("chunk");
        std::fs::write(&bin, FAKE_CHUNK).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = bin.to_str().unwrap();
        assert!(has_keygen(bin));
        assert!(!has_keygen("/bin/false"));
        let keys_dir = dir.join("keys");
        let keys = Keys::generate(bin, &keys_dir).unwrap();
        // Twice: the second replaces the first pairs, which keygen would refuse to overwrite.
        let keys = Keys::generate(bin, &keys_dir).map(|_| keys).unwrap();
        let sender_pub = std::fs::read_to_string(keys_dir.join("sender.key.pub")).unwrap();
        assert_eq!(sender_pub, "chunk-x25519 AAAA bench-sender\n");
        let p = |name: &str| keys_dir.join(name).to_string_lossy().into_owned();
        assert_eq!(
            keys.recv_args(),
            [
                "--key".into(),
                p("receiver.key"),
                "--authorized-keys".into(),
                p("sender.key.pub")
            ]
        );
        assert_eq!(
            keys.send_args().map(|a| a.to_string_lossy().into_owned()),
            [
                "--key".into(),
                p("sender.key"),
                "--receiver-key".into(),
                p("receiver.key.pub")
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
