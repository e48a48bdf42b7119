//! Where a receiver gets its chunk packets from: the XDP program's ring buffer (the kernel has
//! already validated them), or a raw socket that applies the same checks in userspace
//! (`--mode socket`). One interface for `chunk listen` and `chunk recv`.

use anyhow::{Context, Result};

use std::{
    io::Write,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
    time::Instant,
};

use chunk_common::counters::Counter;

use crate::proto::Peer;

use super::{
    paths,
    ring::ChunkReader,
    session_filter::SessionFilter,
    socket_rx::{SocketConfig, SocketRx},
    xdp::{AttachMode, ProgInfo, XdpConfig, XdpReceiver},
};

/// A chunk packet as a receive path hands it over. Its checksum has been checked (and zeroed) by the
/// receive path: parse it with [`chunk_common::wire::Repr::parse_checksum_already_checked`].
#[derive(Debug)]
pub struct Received<'a> {
    /// The sender: its address, and its UDP port when the packet came in UDP.
    pub src: Peer,
    /// The local address the sender sent it to: answers leave from it.
    pub dst: IpAddr,
    pub rx_queue: u32,
    /// When the packet reached this host, as the kernel stamped it (the XDP path); `None`:
    /// not known, take the time it is handled.
    pub arrived: Option<Instant>,
    pub packet: &'a [u8],
}

/// The per-reason counters of a receive path ([`Counter`]): the kernel's, summed over CPUs, or
/// the socket path's own, kept the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Packets the receive path saw in all.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl std::fmt::Display for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in Counter::ALL {
            writeln!(f, "{:<15} {:>14}", c.name(), self.get(c))?;
        }
        Ok(())
    }
}

/// A source prefix of the allowlist, IPv4 or IPv6.
pub type Prefix = ipnet::IpNet;

/// `--protocol N`: any IP protocol number but those the receive path must tell apart from
/// chunk's: UDP (17, for `--udp`) and the IPv6 extension headers it walks or stops at
/// (hop-by-hop 0, routing 43, fragment 44, destination options 60).
pub fn parse_protocol(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .parse()
        .map_err(|_| format!("bad protocol {s:?}: a number 1 to 255"))?;
    use chunk_common::classify::{
        IPPROTO_UDP, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING,
    };
    match n {
        IPV6_HOP_BY_HOP | IPPROTO_UDP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_DEST_OPTS => {
            Err(format!(
                "protocol {n} is UDP or an IPv6 extension header, which chunk's receive path must \
             tell apart from chunk's own packets: pick another (253, the default, is reserved \
             for experiments)"
            ))
        }
        n => Ok(n),
    }
}

/// `198.18.0.0/15` or `2001:2::/48`, or a bare address for a /32 or /128.
pub fn parse_prefix(s: &str) -> Result<Prefix, String> {
    s.parse::<Prefix>()
        .or_else(|_| s.parse::<IpAddr>().map(Prefix::from))
        .map_err(|_| format!("bad prefix {s:?}: expected an IPv4 or IPv6 address, or ADDR/LEN"))
}

/// Whether `src` may send, by the allowlist of its family (empty: everyone), as the kernel
/// decides: an IPv4-mapped IPv6 source (which has no business on the wire) is an IPv6 address,
/// matched by IPv6 prefixes only.
pub fn allowed(allow: &[Prefix], src: IpAddr) -> bool {
    allow.is_empty() || allow.iter().any(|p| p.contains(&src))
}

/// How a receiver takes packets in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum RxMode {
    /// XDP in driver (native) mode, else in SKB (generic) mode.
    #[default]
    Auto,
    /// XDP in driver (native) mode only.
    Driver,
    /// XDP in SKB (generic) mode only.
    Skb,
    /// No XDP: a raw socket, with the same checks done in userspace.
    Socket,
}

/// The receive-path options shared by every command that receives.
#[derive(clap::Args, Clone, Debug)]
pub struct RxArgs {
    /// The interface to receive on.
    #[arg(long)]
    pub iface: String,
    /// How packets come in: XDP in driver (native) or skb (generic) mode, auto (driver, else
    /// skb), or socket (no XDP: a raw socket with the same checks in userspace).
    #[arg(long, value_enum, default_value_t = RxMode::Auto)]
    pub mode: RxMode,
    /// The IP protocol number (IPv6 next header) chunk packets use.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL, value_parser = parse_protocol)]
    pub protocol: u8,
    /// Also take chunk packets in UDP datagrams to this port, over IPv4 and IPv6, and answer
    /// them from it (for senders behind a NAT or a firewall that passes only TCP and UDP; the
    /// senders need `--udp PORT` too). Packets straight over IP are still taken.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub udp: Option<u16>,
    /// Accept chunk packets only from these sources (IPv4 or IPv6 CIDR, or an address;
    /// repeatable). None: accept all.
    #[arg(long = "allow", value_name = "CIDR", value_parser = parse_prefix)]
    pub allow: Vec<Prefix>,
    /// Ring-buffer size in bytes (a power of two).
    #[arg(long, default_value_t = chunk_common::xdp::RING_DEFAULT_BYTES)]
    pub ring_bytes: u32,
    /// Drop payloads longer than this in the kernel.
    #[arg(long, default_value_t = chunk_common::ring::MAX_PAYLOAD_LEN as u16)]
    pub max_payload: u16,
    /// Log every chunk packet the XDP program drops, with the reason (debugging: slow; shown
    /// with RUST_LOG=debug). Off, it costs nothing: the verifier removes the code.
    #[arg(long)]
    pub xdp_log: bool,
}

impl RxArgs {
    pub fn xdp_config(&self) -> XdpConfig {
        XdpConfig {
            mode: match self.mode {
                RxMode::Driver => AttachMode::Driver,
                RxMode::Skb => AttachMode::Skb,
                RxMode::Auto | RxMode::Socket => AttachMode::Auto,
            },
            protocol: self.protocol,
            allow: self.allow.clone(),
            udp_port: self.udp.unwrap_or(0),
            ring_bytes: self.ring_bytes,
            max_payload: self.max_payload,
            log_drops: self.xdp_log,
            ..XdpConfig::new(&self.iface)
        }
    }
}

enum Kind {
    Xdp {
        xdp: Box<XdpReceiver>,
        reader: ChunkReader,
        /// The XDP program's drop log (`--xdp-log`), read when its fd is ready.
        logger: Option<Box<aya_log::EbpfLogger<&'static dyn log::Log>>>,
        /// The program's map of open sessions.
        sessions: SessionFilter,
    },
    Socket(SocketRx),
}

/// What one [`RxSource::read_batch`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Packets (or records) taken from the kernel; 0: nothing was waiting.
    pub read: usize,
    /// Of those, the valid chunk packets handed on (the socket path also reads junk).
    pub accepted: usize,
}

/// An open receive path. Packets it yields have passed every check of the kernel path (header,
/// lengths, allowlist, checksum, a sealed packet's session) and have their checksum field zeroed: parse them with
/// [`chunk_common::wire::Repr::parse_checksum_already_checked`].
pub struct RxSource {
    kind: Kind,
    iface: String,
}

impl RxSource {
    /// Attaches to the interface (needs root).
    pub fn open(args: &RxArgs) -> Result<RxSource> {
        let kind = if args.mode == RxMode::Socket {
            let cfg = SocketConfig {
                iface: args.iface.clone(),
                protocol: args.protocol,
                max_payload: args.max_payload,
                allow: args.allow.clone(),
                udp_port: args.udp,
            };
            Kind::Socket(
                SocketRx::open(&cfg).with_context(|| format!("receiving on {}", args.iface))?,
            )
        } else {
            let mut xdp = XdpReceiver::attach(&args.xdp_config())
                .with_context(|| format!("receiving on {}", args.iface))?;
            let logger = xdp.take_logger().map(Box::new);
            let info = xdp.info();
            tracing::info!(
                iface = %args.iface,
                prog_id = info.prog_id,
                verified_insns = info.verified_insns,
                pinned = ?xdp.pinned(),
                "XDP program attached"
            );
            let reader = ChunkReader::with_busy_flag(xdp.take_ring()?, xdp.take_reader_busy()?);
            let sessions = xdp.take_sessions()?;
            Kind::Xdp {
                xdp: Box::new(xdp),
                reader,
                logger,
                sessions,
            }
        };
        Ok(RxSource {
            kind,
            iface: args.iface.clone(),
        })
    }

    /// How packets arrive: "driver" or "skb" (XDP), or "socket".
    pub fn mode(&self) -> &'static str {
        match &self.kind {
            Kind::Xdp { xdp, .. } => xdp.mode(),
            Kind::Socket(_) => "socket",
        }
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The XDP program's ids and verifier figures (None for the socket path).
    pub fn prog_info(&self) -> Option<ProgInfo> {
        match &self.kind {
            Kind::Xdp { xdp, .. } => Some(xdp.info()),
            Kind::Socket(_) => None,
        }
    }

    /// Where the XDP maps are pinned, if they are.
    pub fn pinned(&self) -> Option<&Path> {
        match &self.kind {
            Kind::Xdp { xdp, .. } => xdp.pinned(),
            Kind::Socket(_) => None,
        }
    }

    /// The sessions whose sealed packets get through (a handle to keep, and to use while
    /// `self` is borrowed, in [`read_batch`](Self::read_batch)'s callback say): any other
    /// session's are dropped and counted `unknown_session`, by the kernel or by the socket path.
    pub fn session_filter(&self) -> SessionFilter {
        match &self.kind {
            Kind::Xdp { sessions, .. } => sessions.clone(),
            Kind::Socket(s) => s.session_filter(),
        }
    }

    /// The fds to wait on for packets (and for the XDP drop log, with `--xdp-log`).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.kind {
            Kind::Xdp { reader, logger, .. } => {
                let mut v = vec![reader.fd()];
                v.extend(logger.as_ref().map(|l| l.as_fd()));
                v
            }
            Kind::Socket(s) => s.fds(),
        }
    }

    /// Hands every valid packet already waiting (up to `max`) to `f`, without blocking.
    pub fn read_batch(
        &mut self,
        max: usize,
        f: impl FnMut(Received<'_>),
    ) -> std::io::Result<Batch> {
        match &mut self.kind {
            Kind::Xdp { reader, logger, .. } => {
                if let Some(l) = logger {
                    l.flush();
                }
                let n = reader.read_batch(max, f);
                Ok(Batch {
                    read: n,
                    accepted: n,
                })
            }
            Kind::Socket(s) => {
                let (read, accepted) = s.read_batch(max, f)?;
                Ok(Batch { read, accepted })
            }
        }
    }

    /// The socket path's UDP sockets (new fds for the same sockets), to answer from; none for
    /// XDP, whose answers need sockets of their own.
    pub fn udp_sockets(&self) -> Vec<super::raw::ChunkSocket> {
        match &self.kind {
            Kind::Socket(s) => s.udp_sockets(),
            Kind::Xdp { .. } => Vec::new(),
        }
    }

    /// The receive path's counters (the kernel's, for XDP).
    pub fn counters(&self) -> Result<Counters> {
        match &self.kind {
            Kind::Xdp { xdp, .. } => Ok(xdp.counters()?),
            Kind::Socket(s) => Ok(s.counters()),
        }
    }

    /// Records the reader could not parse (a kernel/userspace disagreement; should stay 0).
    pub fn bad_records(&self) -> u64 {
        match &self.kind {
            Kind::Xdp { reader, .. } => reader.bad_records,
            Kind::Socket(_) => 0,
        }
    }

    /// What `chunk stats` shows about this receive path: mode, program, pins, counters.
    pub fn describe(&self) -> crate::report::ReceivePath {
        crate::report::ReceivePath {
            iface: self.iface.clone(),
            mode: self.mode().into(),
            prog: self.prog_info(),
            pinned: self.pinned().map(|p| p.display().to_string()),
            counters: self.counters().unwrap_or_default(),
        }
    }

    /// Tells the XDP program whether the reader drains the ring batch after batch (no wakeups
    /// needed) or may sleep on its fd. Nothing for the socket path.
    pub fn set_reader_busy(&mut self, busy: bool) {
        if let Kind::Xdp { reader, .. } = &mut self.kind {
            reader.set_busy(busy);
        }
    }

    /// Whether records arrive through the XDP ring buffer, whose reader naps between batches
    /// (see the receive driver).
    pub fn is_ring(&self) -> bool {
        matches!(self.kind, Kind::Xdp { .. })
    }
}

/// Keeps `/run/chunk/<key>.json` ([`crate::report::StateFile`]) up to date for `chunk stats`,
/// and removes it on drop.
pub struct StatePublisher {
    path: std::path::PathBuf,
}

impl StatePublisher {
    pub fn new(iface: &str) -> Self {
        StatePublisher {
            path: paths::state_file(iface),
        }
    }

    /// Replaces the file's content; failures are logged once and otherwise ignored (the file is
    /// a convenience for `chunk stats`).
    pub fn write(&self, state: &crate::report::StateFile) {
        if let Err(e) = write_json_atomic(&self.path, state) {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the state file")
            });
        }
    }
}

impl Drop for StatePublisher {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `value` to `path` atomically (a temporary file renamed over it), so that a reader
/// never sees half a file.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(
    path: &Path,
    value: &T,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut f, value)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("x.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn prefixes_parse_with_or_without_a_length() {
        assert_eq!(parse_prefix("198.18.0.0/15").unwrap().prefix_len(), 15);
        assert_eq!(parse_prefix("198.18.0.7").unwrap().prefix_len(), 32);
        assert!(parse_prefix("198.18.0.0/33").is_err());
        assert!(parse_prefix("nonsense").is_err());
        assert_eq!(parse_prefix("2001:2::/48").unwrap().prefix_len(), 48);
        assert_eq!(parse_prefix("2001:2::1").unwrap().prefix_len(), 128);
        assert!(parse_prefix("2001:2::/129").is_err());
        assert_eq!(parse_protocol("253"), Ok(253));
        for bad in ["0", "17", "43", "44", "60", "256", "x"] {
            assert!(parse_protocol(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowlist_matches_prefixes_of_both_families() {
        let allow: Vec<Prefix> = ["198.18.0.0/15", "10.1.2.3", "2001:2::/48"]
            .iter()
            .map(|s| parse_prefix(s).unwrap())
            .collect();
        let ok = |a: &str| allowed(&allow, a.parse().unwrap());
        assert!(ok("198.19.255.1"));
        assert!(!ok("198.20.0.1"));
        assert!(ok("10.1.2.3"));
        assert!(!ok("10.1.2.4"));
        assert!(ok("2001:2:0:ffff::9"));
        assert!(!ok("2001:3::1"));
        assert!(!ok("::ffff:198.18.0.1"));
        assert!(allowed(&[], "1.2.3.4".parse().unwrap()));
        let v4_all = vec![parse_prefix("0.0.0.0/0").unwrap()];
        assert!(allowed(&v4_all, "1.2.3.4".parse().unwrap()));
        assert!(!allowed(&v4_all, "2001:2::1".parse().unwrap()));
    }
}
