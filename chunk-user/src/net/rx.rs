//! Where a receiver gets its chunk packets from: the XDP program's ring buffer (the kernel has
//! already validated them), or a raw socket that applies the same checks in userspace
//! (`--mode socket`). One interface for `chunk listen` and `chunk recv`.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};

use super::{
    place,
    ring::{ChunkReader, Received},
    sock::{SocketConfig, SocketRx},
    xdp::{AttachMode, Counters, Ipv4Prefix, ProgInfo, XdpConfig, XdpReceiver},
};

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
    /// The IP protocol number chunk packets use.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL)]
    pub protocol: u8,
    /// Accept chunk packets only from these sources (CIDR; repeatable). None: accept all.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<Ipv4Prefix>,
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
            ring_bytes: self.ring_bytes,
            max_payload: self.max_payload,
            log_drops: self.xdp_log,
            ..XdpConfig::new(&self.iface)
        }
    }
}

enum Path {
    Xdp {
        xdp: Box<XdpReceiver>,
        reader: ChunkReader,
        /// The XDP program's drop log (`--xdp-log`), read when its fd is ready.
        logger: Option<Box<aya_log::EbpfLogger<&'static dyn log::Log>>>,
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
/// lengths, allowlist, CRC) and have their CRC field zeroed: parse them with
/// [`chunk_common::wire::Repr::parse_crc_already_checked`].
pub struct RxSource {
    path: Path,
    iface: String,
}

impl RxSource {
    /// Attaches to the interface (needs root).
    pub fn open(args: &RxArgs) -> Result<RxSource> {
        let path = if args.mode == RxMode::Socket {
            let cfg = SocketConfig {
                iface: args.iface.clone(),
                protocol: args.protocol,
                max_payload: args.max_payload,
                allow: args.allow.clone(),
            };
            Path::Socket(
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
            let reader = ChunkReader::new(xdp.take_ring()?);
            Path::Xdp {
                xdp: Box::new(xdp),
                reader,
                logger,
            }
        };
        Ok(RxSource {
            path,
            iface: args.iface.clone(),
        })
    }

    /// How packets arrive: "driver" or "skb" (XDP), or "socket".
    pub fn mode(&self) -> &'static str {
        match &self.path {
            Path::Xdp { xdp, .. } => xdp.mode(),
            Path::Socket(_) => "socket",
        }
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The XDP program's ids and verifier figures (None for the socket path).
    pub fn prog_info(&self) -> Option<ProgInfo> {
        match &self.path {
            Path::Xdp { xdp, .. } => Some(xdp.info()),
            Path::Socket(_) => None,
        }
    }

    /// Where the XDP maps are pinned, if they are.
    pub fn pinned(&self) -> Option<&std::path::Path> {
        match &self.path {
            Path::Xdp { xdp, .. } => xdp.pinned(),
            Path::Socket(_) => None,
        }
    }

    /// The fds to wait on for packets (and for the XDP drop log, with `--xdp-log`).
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        match &self.path {
            Path::Xdp { reader, logger, .. } => {
                let mut v = vec![reader.fd()];
                v.extend(logger.as_ref().map(|l| l.as_fd()));
                v
            }
            Path::Socket(s) => vec![s.fd()],
        }
    }

    /// Hands every valid packet already waiting (up to `max`) to `f`, without blocking.
    pub fn read_batch(
        &mut self,
        max: usize,
        f: impl FnMut(Received<'_>),
    ) -> std::io::Result<Batch> {
        match &mut self.path {
            Path::Xdp { reader, logger, .. } => {
                if let Some(l) = logger {
                    l.flush();
                }
                let n = reader.read_batch(max, f);
                Ok(Batch {
                    read: n,
                    accepted: n,
                })
            }
            Path::Socket(s) => {
                let (read, accepted) = s.read_batch(max, f)?;
                Ok(Batch { read, accepted })
            }
        }
    }

    /// The receive path's counters (the kernel's, for XDP).
    pub fn counters(&self) -> Result<Counters> {
        match &self.path {
            Path::Xdp { xdp, .. } => Ok(xdp.counters()?),
            Path::Socket(s) => Ok(s.counters()),
        }
    }

    /// Records the reader could not parse (a kernel/userspace disagreement; should stay 0).
    pub fn bad_records(&self) -> u64 {
        match &self.path {
            Path::Xdp { reader, .. } => reader.bad_records,
            Path::Socket(_) => 0,
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

    /// Whether records arrive through the XDP ring buffer, whose reader naps between batches
    /// (see the receive driver).
    pub fn is_ring(&self) -> bool {
        matches!(self.path, Path::Xdp { .. })
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
            path: place::state_file(iface),
        }
    }

    /// Replaces the file's content; failures are logged once and otherwise ignored (the file is
    /// a convenience for `chunk stats`).
    pub fn write(&self, state: &crate::report::StateFile) {
        if let Err(e) = place::write_json_atomic(&self.path, state) {
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
