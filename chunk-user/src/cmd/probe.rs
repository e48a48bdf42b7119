//! `chunk probe`: send test chunk packets (valid and, on request, corrupt) to a receiver.

use anyhow::{Context, Result};
use chunk_common::wire::{self, Message, Repr};

use crate::net::raw::{ChunkSocket, Transport};

#[derive(clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub target: super::TargetArgs,
    /// How many valid data chunks to send.
    #[arg(long, default_value_t = 100)]
    pub count: u32,
    /// How many chunks with one flipped bit to send as well.
    #[arg(long, default_value_t = 0)]
    pub corrupt: u32,
    /// How many foreign packets (chunk's IP protocol, not chunk's magic) to send as well.
    #[arg(long, default_value_t = 0)]
    pub foreign: u32,
    /// Payload bytes per chunk.
    #[arg(long, default_value_t = 1400)]
    pub size: usize,
}

pub fn run(args: ProbeArgs) -> Result<()> {
    let (to, transport) = args.target.resolve()?;
    let sock = ChunkSocket::open(to.is_ipv6(), transport, None)
        .context("opening a socket (raw sockets need root or CAP_NET_RAW)")?;
    let dst = std::net::SocketAddr::new(to, transport.port());
    let transfer_id = std::process::id() ^ 0x5eed_0000;
    let payload: Vec<u8> = (0..args.size).map(|i| (i * 7 + 3) as u8).collect();
    let mut buf = vec![0u8; wire::HEADER_LEN + args.size];
    let total = args.count + args.corrupt + args.foreign;
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
        // Valid chunks first, then corrupt and foreign ones interleaved.
        let junk = seq.checked_sub(args.count);
        let foreign = junk.is_some_and(|j| {
            let (c, f) = (args.corrupt as u64, args.foreign as u64);
            // The j-th junk packet is foreign if it raises the foreign share's integer part.
            f > 0 && ((j as u64 + 1) * f / (c + f)) > (j as u64 * f / (c + f))
        });
        if foreign {
            buf[wire::field::MAGIC].copy_from_slice(b"XX");
        } else if junk.is_some() {
            // Flip one bit of the payload (of the checksum field for an empty payload), so that
            // only the checksum check can catch it.
            let at = if args.size > 0 {
                wire::HEADER_LEN + (seq as usize * 131) % args.size
            } else {
                wire::field::CHECKSUM.start
            };
            buf[at] ^= 1 << (seq % 8);
        }
        loop {
            match sock.send_to(&buf[..n], dst) {
                Ok(_) => break,
                // The device queue is full for a moment: wait, as a real sender would.
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    std::thread::sleep(std::time::Duration::from_micros(50))
                }
                Err(e) => return Err(e).with_context(|| format!("sending to {dst}")),
            }
        }
    }
    println!(
        "sent {} valid, {} corrupt and {} foreign packets to {} (transfer id {transfer_id:#x})",
        args.count,
        args.corrupt,
        args.foreign,
        match transport {
            Transport::Ip(_) => crate::proto::Peer::ip(to),
            Transport::Udp(_) => crate::proto::Peer::udp(dst),
        }
    );
    Ok(())
}
