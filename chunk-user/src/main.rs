//! The `chunk` command line.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result};
use chunk::net::{
    raw::RawSocket,
    ring::ChunkReader,
    xdp::{AttachMode, Ipv4Prefix, XdpConfig, XdpReceiver},
};
use chunk_common::wire::{self, Message, Repr};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chunk",
    version,
    about = "Reliable file transfer over a custom IPv4 protocol, received through XDP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the XDP program to an interface, take valid chunk packets from the kernel, and
    /// print the kernel's counters on exit (Ctrl-C, SIGTERM, or --duration).
    Listen(ListenArgs),
    /// Send test chunk packets (valid and, on request, corrupt) to a host, to check the receive
    /// path.
    Probe(ProbeArgs),
}

#[derive(clap::Args)]
struct XdpArgs {
    /// The interface to attach to.
    #[arg(long)]
    iface: String,
    /// XDP attach mode: driver (native), skb (generic), or auto (driver, else skb).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    mode: AttachMode,
    /// The IP protocol number chunk packets use.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL)]
    protocol: u8,
    /// Accept chunk packets only from these sources (CIDR; repeatable). None: accept all.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<Ipv4Prefix>,
}

impl XdpArgs {
    fn config(&self) -> XdpConfig {
        XdpConfig {
            mode: self.mode,
            protocol: self.protocol,
            allow: self.allow.clone(),
            ..XdpConfig::new(&self.iface)
        }
    }
}

#[derive(clap::Args)]
struct ListenArgs {
    #[command(flatten)]
    xdp: XdpArgs,
    /// Stop after this many seconds.
    #[arg(long)]
    duration: Option<f64>,
    /// Print each received chunk packet as a JSON line (with its bytes in hex).
    #[arg(long)]
    dump: bool,
    /// Print the final counters as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Ring-buffer size in bytes (a power of two).
    #[arg(long, default_value_t = chunk_common::xdp::RING_DEFAULT_BYTES)]
    ring_bytes: u32,
    /// Drop payloads longer than this in the kernel.
    #[arg(long, default_value_t = chunk_common::ring::MAX_PAYLOAD_LEN as u16)]
    max_payload: u16,
    /// Wait this long after attaching before reading the ring buffer (for tests of a receiver
    /// that falls behind).
    #[arg(long, hide = true, default_value_t = 0)]
    stall_ms: u64,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// The receiving host.
    #[arg(long)]
    to: Ipv4Addr,
    /// How many valid data chunks to send.
    #[arg(long, default_value_t = 100)]
    count: u32,
    /// How many chunks with one flipped bit to send as well.
    #[arg(long, default_value_t = 0)]
    corrupt: u32,
    /// Payload bytes per chunk.
    #[arg(long, default_value_t = 1400)]
    size: usize,
    /// The IP protocol number.
    #[arg(long, default_value_t = chunk_common::DEFAULT_IP_PROTOCOL)]
    protocol: u8,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Listen(a) => listen(a),
        Command::Probe(a) => probe(a),
    }
}

fn listen(args: ListenArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = XdpConfig {
            ring_bytes: args.ring_bytes,
            max_payload: args.max_payload,
            ..args.xdp.config()
        };
        let mut xdp = XdpReceiver::attach(&cfg)?;
        println!("attached iface={} mode={}", xdp.iface(), xdp.mode());
        if args.stall_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.stall_ms)).await;
        }
        let mut reader = ChunkReader::new(xdp.take_ring()?)?;
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let deadline = async {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        let mut received = 0u64;
        let mut unparsable = 0u64;
        loop {
            tokio::select! {
                r = reader.read_batch(256, |rec| {
                    received += 1;
                    let parsed = Repr::parse_crc_checked(rec.packet);
                    if parsed.is_err() {
                        unparsable += 1;
                    }
                    if args.dump {
                        let (ty, seq, tid) = match &parsed {
                            Ok(r) => (format!("{:?}", r.msg_type()).to_lowercase(), r.seq, r.transfer_id),
                            Err(_) => ("invalid".into(), 0, 0),
                        };
                        let hex: String = rec.packet.iter().map(|b| format!("{b:02x}")).collect();
                        println!(
                            "{}",
                            serde_json::json!({"src": rec.src.to_string(), "dst": rec.dst.to_string(),
                                "type": ty, "transfer_id": tid, "seq": seq, "len": rec.packet.len(), "hex": hex})
                        );
                    }
                }) => { r?; }
                _ = tokio::signal::ctrl_c() => break,
                _ = sigterm.recv() => break,
                _ = &mut deadline => break,
            }
        }
        let counters = xdp.counters()?;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"counters": counters.to_json(), "received": received,
                    "unparsable": unparsable, "mode": xdp.mode()})
            );
        } else {
            println!("received {received} chunk packets ({unparsable} unparsable)\n{counters}");
        }
        Ok(())
    })
}

fn probe(args: ProbeArgs) -> Result<()> {
    let sock = RawSocket::new(args.protocol)
        .context("opening a raw IP socket (needs root or CAP_NET_RAW)")?;
    let transfer_id = std::process::id() ^ 0x5eed_0000;
    let payload: Vec<u8> = (0..args.size).map(|i| (i * 7 + 3) as u8).collect();
    let mut buf = vec![0u8; wire::HEADER_LEN + args.size];
    let total = args.count + args.corrupt;
    for seq in 0..total {
        let repr = Repr {
            transfer_id,
            seq,
            flags: if seq + 1 < total {
                wire::flags::MORE_CHUNKS
            } else {
                0
            },
            message: Message::Data { payload: &payload },
        };
        let n = repr.emit(&mut buf)?;
        if seq >= args.count {
            // Flip one bit of the payload (of the CRC field for an empty payload), so that
            // only the CRC check can catch it.
            let at = if args.size > 0 {
                wire::HEADER_LEN + (seq as usize * 131) % args.size
            } else {
                wire::field::CRC.start
            };
            buf[at] ^= 1 << (seq % 8);
        }
        sock.send_to(&buf[..n], args.to)
            .with_context(|| format!("sending to {}", args.to))?;
    }
    println!(
        "sent {} valid and {} corrupt chunk packets to {} (transfer id {transfer_id:#x})",
        args.count, args.corrupt, args.to
    );
    Ok(())
}
