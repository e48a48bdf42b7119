//! Where a receiver gets its chunk packets from: the XDP program's ring buffer (the kernel has
//! already validated them), whatever the attach mode. One interface for `chunk listen` and
//! `chunk recv`.

use anyhow::{Context, Result};

use super::{
    ring::{ChunkReader, Received},
    xdp::{AttachMode, Counters, Ipv4Prefix, XdpConfig, XdpReceiver},
};

/// The receive-path options shared by every command that receives.
#[derive(clap::Args, Clone, Debug)]
pub struct RxArgs {
    /// The interface to receive on.
    #[arg(long)]
    pub iface: String,
    /// XDP attach mode: driver (native), skb (generic), or auto (driver, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub mode: AttachMode,
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
}

impl RxArgs {
    pub fn xdp_config(&self) -> XdpConfig {
        XdpConfig {
            mode: self.mode,
            protocol: self.protocol,
            allow: self.allow.clone(),
            ring_bytes: self.ring_bytes,
            max_payload: self.max_payload,
            ..XdpConfig::new(&self.iface)
        }
    }
}

/// An open receive path. Packets it yields have passed every check of the kernel path (header,
/// lengths, allowlist, CRC) and have their CRC field zeroed: parse them with
/// [`chunk_common::wire::Repr::parse_crc_checked`].
pub struct RxSource {
    xdp: XdpReceiver,
    reader: ChunkReader,
}

impl RxSource {
    /// Attaches to the interface (needs root).
    pub fn open(args: &RxArgs) -> Result<RxSource> {
        let mut xdp = XdpReceiver::attach(&args.xdp_config())
            .with_context(|| format!("receiving on {}", args.iface))?;
        let reader = ChunkReader::new(xdp.take_ring()?)?;
        Ok(RxSource { xdp, reader })
    }

    /// How packets arrive: "driver" or "skb" (XDP).
    pub fn mode(&self) -> &'static str {
        self.xdp.mode()
    }

    pub fn iface(&self) -> &str {
        self.xdp.iface()
    }

    /// Waits for at least one packet, then hands every available one (up to `max`) to `f`.
    pub async fn read_batch(
        &mut self,
        max: usize,
        f: impl FnMut(Received<'_>),
    ) -> std::io::Result<usize> {
        self.reader.read_batch(max, f).await
    }

    /// The receive path's counters (the kernel's, for XDP).
    pub fn counters(&self) -> Result<Counters> {
        Ok(self.xdp.counters()?)
    }

    /// Records the reader could not parse (a kernel/userspace disagreement; should stay 0).
    pub fn bad_records(&self) -> u64 {
        self.reader.bad_records
    }
}
