//! The tools the benchmark compares, one driver each: start the receiver in the receiver's
//! namespace, start the clock, run the sender to completion, stop the clock, and fill in the
//! run's figures (CPU, RSS, retransmissions). The caller checks the received file.

pub(super) mod chunk;
pub(super) mod nc;
mod rsync;
pub(super) mod scp;
mod tar_nc;
mod tcp;
pub(super) mod uftp;

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::Netns;
use clap::ValueEnum;
use serde::Serialize;

use super::{run::Run, topology::Net};

/// A tool that moves the file from the sender to the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Tool {
    /// chunk, the receiver on XDP.
    ChunkXdp,
    /// chunk, the receiver on a raw socket (`chunk recv --mode socket`).
    ChunkSocket,
    /// TCP: netcat (OpenBSD) on both sides, the namespace's congestion control.
    Nc,
    /// TCP CUBIC, chosen per socket (the bench's own sender and receiver).
    TcpCubic,
    /// TCP BBR, chosen per socket (the bench's own sender and receiver).
    TcpBbr,
    /// UFTP, multicast-capable file transfer over UDP (unicast here, no encryption).
    Uftp,
    /// chunk-xdp with public-key encryption (`chunk keygen` keys, `--key`, `--authorized-keys`,
    /// `--receiver-key`).
    ChunkXdpEnc,
    /// scp (OpenSSH, its default cipher) to an sshd of the bench's own in the receiver's
    /// namespace.
    Scp,
    /// chunk-xdp over IPv6 (`--ipv6`).
    ChunkXdpIpv6,
    /// chunk-socket over IPv6.
    ChunkSocketIpv6,
    /// chunk-xdp in UDP over IPv4 (`--udp`).
    ChunkXdpUdp,
    /// chunk-socket in UDP over IPv4.
    ChunkSocketUdp,
    /// chunk-xdp in UDP over IPv6 (`--ipv6 --udp`).
    ChunkXdpIpv6Udp,
    /// chunk-socket in UDP over IPv6.
    ChunkSocketIpv6Udp,
    /// `tar c | nc` to `nc -l | tar x`: TCP (the namespace's), a tree as one stream.
    TarNc,
    /// rsync (`rsync -a`) to an rsync daemon of the bench's own in the receiver's namespace.
    Rsync,
    /// chunk-xdp with every packet through the sender's raw socket and the kernel's IP output
    /// path (`--no-packet-socket`): the reference for the packet socket.
    ChunkXdpRaw,
    /// chunk-xdp-enc in UDP over IPv4 (with `--udp`: encrypted chunk on its faster transport).
    ChunkXdpEncUdp,
}

impl Tool {
    /// The name on the command line and in the results.
    pub fn name(self) -> &'static str {
        match self {
            Tool::ChunkXdp => "chunk-xdp",
            Tool::ChunkSocket => "chunk-socket",
            Tool::Nc => "nc",
            Tool::TcpCubic => "tcp-cubic",
            Tool::TcpBbr => "tcp-bbr",
            Tool::Uftp => "uftp",
            Tool::ChunkXdpEnc => "chunk-xdp-enc",
            Tool::Scp => "scp",
            Tool::ChunkXdpIpv6 => "chunk-xdp-ipv6",
            Tool::ChunkSocketIpv6 => "chunk-socket-ipv6",
            Tool::ChunkXdpUdp => "chunk-xdp-udp",
            Tool::ChunkSocketUdp => "chunk-socket-udp",
            Tool::ChunkXdpIpv6Udp => "chunk-xdp-ipv6-udp",
            Tool::ChunkSocketIpv6Udp => "chunk-socket-ipv6-udp",
            Tool::TarNc => "tar-nc",
            Tool::Rsync => "rsync",
            Tool::ChunkXdpRaw => "chunk-xdp-raw",
            Tool::ChunkXdpEncUdp => "chunk-xdp-enc-udp",
        }
    }

    /// For chunk: the receive path and the transport (`None` for the other tools, and for
    /// chunk-xdp-enc, which is not a transport variant: it runs over plain IPv4 and is compared
    /// with chunk-xdp by its own goal).
    pub fn chunk(self) -> Option<(chunk::Mode, chunk::Transport)> {
        use chunk::{Mode::*, Transport as T};
        let plain = T::default();
        let v6 = T {
            ipv6: true,
            udp: false,
        };
        let udp = T {
            ipv6: false,
            udp: true,
        };
        let both = T {
            ipv6: true,
            udp: true,
        };
        Some(match self {
            Tool::ChunkXdp => (Xdp, plain),
            Tool::ChunkSocket => (Socket, plain),
            Tool::ChunkXdpIpv6 => (Xdp, v6),
            Tool::ChunkSocketIpv6 => (Socket, v6),
            Tool::ChunkXdpUdp => (Xdp, udp),
            Tool::ChunkSocketUdp => (Socket, udp),
            Tool::ChunkXdpIpv6Udp => (Xdp, both),
            Tool::ChunkSocketIpv6Udp => (Socket, both),
            Tool::Nc
            | Tool::TcpCubic
            | Tool::TcpBbr
            | Tool::Uftp
            | Tool::ChunkXdpEnc
            | Tool::Scp
            | Tool::TarNc
            | Tool::Rsync
            | Tool::ChunkXdpRaw
            | Tool::ChunkXdpEncUdp => return None,
        })
    }

    /// chunk's tool with this receive path and transport.
    pub fn chunk_variant(mode: chunk::Mode, transport: chunk::Transport) -> Tool {
        Tool::value_variants()
            .iter()
            .copied()
            .find(|t| t.chunk() == Some((mode, transport)))
            .expect("every receive path and transport has a tool")
    }

    /// How its packets travel (plain IPv4 for the tools that are not chunk).
    pub fn transport(self) -> chunk::Transport {
        match self {
            Tool::ChunkXdpEncUdp => chunk::Transport {
                ipv6: false,
                udp: true,
            },
            _ => self.chunk().map(|(_, t)| t).unwrap_or_default(),
        }
    }

    /// Encrypted chunk (its keys made for the benchmark).
    pub fn encrypted(self) -> bool {
        matches!(self, Tool::ChunkXdpEnc | Tool::ChunkXdpEncUdp)
    }

    /// The plain IPv4 tool this one is a transport variant of (itself for plain ones).
    pub fn plain(self) -> Tool {
        match self.chunk() {
            Some((mode, _)) => Tool::chunk_variant(mode, chunk::Transport::default()),
            None => self,
        }
    }
}

impl Serialize for Tool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// What a driver needs for one transfer.
pub struct Transfer<'a> {
    pub net: &'a Net,
    /// The chunk binary.
    pub bin: &'a str,
    /// Where the drivers keep `/usr/bin/time`'s files.
    pub work: &'a Path,
    /// The file, or the directory, to send.
    pub file: &'a Path,
    /// Transfers chunk's receiver sees for it: 1 for a file; a tree's files and directories.
    pub transfers: u64,
    /// Where the receiver writes it.
    pub out_dir: &'a Path,
    pub mtu: u32,
    /// How long the sender may take.
    pub timeout: Duration,
    /// Cut chunk off after this long and measure what arrived, as the TCP tools always are
    /// (the tree cases); `None`: a chunk transfer that takes longer than `timeout` fails.
    pub chunk_cut_off: Option<Duration>,
    /// chunk-xdp-enc's keys, if they were made.
    pub keys: Option<&'a chunk::Keys>,
    /// scp's sshd configuration and keys, if they were made.
    pub ssh: Option<&'a scp::Ssh>,
}

/// Moves the file with `tool`, filling in `run`'s figures (also those it has when it fails).
pub fn run(tool: Tool, t: &Transfer, run: &mut Run) -> Result<()> {
    if let Some((mode, transport)) = tool.chunk() {
        return chunk::run(t, mode, transport, None, &[], run);
    }
    match tool {
        Tool::Nc => nc::run(t, run),
        Tool::TcpCubic => tcp::run(t, "cubic", run),
        Tool::TcpBbr => tcp::run(t, "bbr", run),
        Tool::Uftp => uftp::run(t, run),
        Tool::ChunkXdpEnc | Tool::ChunkXdpEncUdp => {
            let keys = t.keys.context("chunk-xdp-enc's keys were not made")?;
            chunk::run(t, chunk::Mode::Xdp, tool.transport(), Some(keys), &[], run)
        }
        Tool::ChunkXdpRaw => chunk::run(
            t,
            chunk::Mode::Xdp,
            chunk::Transport::default(),
            None,
            &["--no-packet-socket"],
            run,
        ),
        Tool::Scp => scp::run(t, t.ssh.context("scp's sshd was not prepared")?, run),
        Tool::TarNc => tar_nc::run(t, run),
        Tool::Rsync => rsync::run(t, run),
        _ => unreachable!("chunk's tools are run above"),
    }
}

/// Sends SIGTERM to every descendant of `pid`: the program `/usr/bin/time` runs, and what that
/// runs in turn (a shell's pipeline: `tar c | nc`), so that none of them outlives the run and
/// time itself lives to write its figures.
pub(super) fn term_children(pid: u32) {
    for p in descendants(pid, &processes()) {
        unsafe { libc::kill(p as i32, libc::SIGTERM) };
    }
}

/// Every process's id and its parent's, from `/proc/PID/stat`.
fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some((pid, parent_in_stat(&stat)?))
    })
    .collect()
}

/// The parent's id in a `/proc/PID/stat` line: the second field after the command's name,
/// which is in parentheses and may itself hold spaces and parentheses.
fn parent_in_stat(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The descendants of `root` among `(pid, parent)` pairs, parents before their children.
fn descendants(root: u32, procs: &[(u32, u32)]) -> Vec<u32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(
            procs
                .iter()
                .filter(|&&(_, pp)| pp == parent)
                .map(|&(p, _)| p),
        );
        i += 1;
    }
    out.remove(0);
    out
}

/// A server under `/usr/bin/time` that forks a process per connection (sshd, the rsync
/// daemon): stopped when dropped, also when the transfer fails, so that none outlives its
/// namespace.
pub(super) struct Server {
    daemon: Option<chunk_tests::Daemon>,
}

impl Server {
    pub(super) fn new(daemon: chunk_tests::Daemon) -> Server {
        Server {
            daemon: Some(daemon),
        }
    }

    /// Waits (up to `limit`) for the server's connection processes to end, so that `time`
    /// counts their CPU (the server reaps them), ends any left, then stops the server and reaps
    /// `time`. The server's own exit status (it is stopped by a signal) says nothing.
    pub(super) fn stop(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let daemon = self
            .daemon
            .take()
            .context("the server was stopped already")?;
        let children = |pid: &str| {
            Command::new("pgrep")
                .args(["-P", pid])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        // The server itself is the child of `time`.
        let server = children(&daemon.id().to_string());
        if let Ok(pid) = server.parse::<u32>() {
            let deadline = Instant::now() + limit;
            while !children(&server).is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if !children(&server).is_empty() {
                term_children(pid);
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        stop_timed(daemon, Duration::ZERO)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            let _ = self.stop(Duration::ZERO);
        }
    }
}

/// Waits up to `limit` for the program that `/usr/bin/time` runs in `daemon` to exit, sends it
/// SIGTERM if it has not, and reaps `time`. Killing `time` itself (as dropping a [`Daemon`]
/// does) would leave its program running as an orphan: a `chunk recv` would then hold its XDP
/// program on the receiver's link, and every later chunk-xdp run would fail to attach.
pub(super) fn stop_timed(
    daemon: chunk_tests::Daemon,
    limit: Duration,
) -> Result<std::process::ExitStatus> {
    let pid = daemon.id();
    let has_child = || {
        Command::new("pgrep")
            .args(["-P", &pid.to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let deadline = Instant::now() + limit;
    while has_child() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if has_child() {
        term_children(pid);
    }
    daemon.wait(Duration::from_secs(10))
}

/// Waits until something listens on `port` (TCP or UDP) in `ns`.
pub(super) fn wait_listening(ns: &Netns, port: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ns.exec("ss", &["-lntuH"]).unwrap_or_default();
        if out
            .split_whitespace()
            .any(|w| w.ends_with(&format!(":{port}")))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing listens on port {port}")
}

/// Runs `cmd` to completion, killing it after `limit`.
pub(super) fn output_within(mut cmd: Command, limit: Duration) -> Result<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            term_children(pid);
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            bail!("timeout after {} s", limit.as_secs())
        }
    }
}

/// A tool cut off at its time limit (its process stopped, the mark taken): what arrived at
/// `dest` in the time allowed is the figure (the caller checks that it is the file's first
/// bytes, or for a tree counts the files that arrived whole); nothing at all is the cut-off's
/// error `e`.
pub fn cut_off(
    dest: &Path,
    times: &crate::bench::accounting::TimeFiles,
    run: &mut Run,
    e: anyhow::Error,
) -> Result<()> {
    let got = bytes_under(dest);
    if got == 0 {
        return Err(e);
    }
    run.partial_bytes = Some(got);
    times.read_into(run);
    Ok(())
}

/// The bytes of `path`, a file, or of every file below it, a directory (0 if there is none).
fn bytes_under(path: &Path) -> u64 {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| bytes_under(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) if m.is_file() => m.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelines_processes_are_all_found_and_proc_stat_is_parsed() {
        // time (10) runs sh (11), which runs tar (12) and nc (13); 20 is another process.
        let procs = [
            (1, 0),
            (10, 1),
            (11, 10),
            (12, 11),
            (13, 11),
            (20, 1),
            (21, 20),
        ];
        assert_eq!(descendants(10, &procs), [11, 12, 13]);
        assert_eq!(descendants(13, &procs), Vec::<u32>::new());
        assert_eq!(
            parent_in_stat("4242 (a (b) c) S 17 4242 4242 0 -1"),
            Some(17)
        );
        assert_eq!(parent_in_stat("garbage"), None);
        // This test's own process is among its parent's descendants.
        let me = std::process::id();
        let parent = processes()
            .iter()
            .find(|&&(p, _)| p == me)
            .map(|&(_, pp)| pp)
            .unwrap();
        assert!(descendants(parent, &processes()).contains(&me));
    }

    #[test]
    fn a_cut_off_trees_bytes_are_its_files() {
        let dir = crate::workspace_root()
            .join("target/bench-test")
            .join(format!("bytes-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(bytes_under(&dir), 15);
        assert_eq!(bytes_under(&dir.join("a/x")), 10);
        assert_eq!(bytes_under(&dir.join("none")), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
