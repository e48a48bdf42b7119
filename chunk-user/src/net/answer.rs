//! The receiver's way back to its senders: a sending socket per family and transport, each
//! answer sent the way its transfer's packets came (straight over IP, or in UDP from the port
//! they were sent to, so that a NAT in between maps it back), from the local address they were
//! sent to.

use std::{io, net::IpAddr};

use super::raw::{ChunkSocket, Transport};
use crate::proto::Peer;

/// Sockets for answers; a family or transport the host lacks is `None` (answers to it fail).
pub struct Answerer {
    ip4: ChunkSocket,
    ip6: Option<ChunkSocket>,
    udp4: Option<ChunkSocket>,
    udp6: Option<ChunkSocket>,
}

impl Answerer {
    /// Opens raw sockets of `protocol` for both families, made deaf (they only send), and for
    /// `--udp PORT` UDP sockets on that port: `udp` (the socket receive path's own, which also
    /// answer), or new ones bound to the port (the XDP path takes the packets before any socket
    /// would), bound to the receiving interface `iface` so that receivers on other interfaces
    /// can use the same port. IPv6 is left out, with a warning, on a host without it.
    pub fn open(
        protocol: u8,
        udp_port: Option<u16>,
        udp: Vec<ChunkSocket>,
        iface: &str,
    ) -> io::Result<Self> {
        let ip4 = ChunkSocket::open(false, Transport::Ip(protocol), None)?;
        ip4.make_deaf()?;
        let ip6 = optional_v6(ChunkSocket::open(true, Transport::Ip(protocol), None))?;
        if let Some(s) = &ip6 {
            s.make_deaf()?;
        }
        let (mut udp4, mut udp6) = (None, None);
        for s in udp {
            if s.is_v6() {
                udp6 = Some(s);
            } else {
                udp4 = Some(s);
            }
        }
        if let Some(port) = udp_port {
            if udp4.is_none() {
                let s = ChunkSocket::open_on(false, Transport::Udp(port), Some(port), Some(iface))
                    .map_err(|e| bind_error(e, port))?;
                s.make_deaf()?;
                udp4 = Some(s);
            }
            if udp6.is_none() {
                udp6 = optional_v6(ChunkSocket::open_on(
                    true,
                    Transport::Udp(port),
                    Some(port),
                    Some(iface),
                ))
                .map_err(|e| bind_error(e, port))?;
                if let Some(s) = &udp6 {
                    s.make_deaf()?;
                }
            }
        }
        Ok(Answerer {
            ip4,
            ip6,
            udp4,
            udp6,
        })
    }

    /// Sends one answer to `dst` from the local address `src` (if known).
    pub fn send(&self, packet: &[u8], src: Option<IpAddr>, dst: Peer) -> io::Result<usize> {
        let sock = match (dst.addr().is_ipv6(), dst.udp_port().is_some()) {
            (false, false) => Some(&self.ip4),
            (true, false) => self.ip6.as_ref(),
            (false, true) => self.udp4.as_ref(),
            (true, true) => self.udp6.as_ref(),
        };
        let Some(sock) = sock else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no socket for this family or transport on this host",
            ));
        };
        // A source of the other family (a mapped address seen on a dual-stack path) would be
        // refused: let the route choose.
        let src = src.filter(|s| s.is_ipv6() == dst.addr().is_ipv6());
        // The socket path's UDP sockets are non-blocking (they are its receive sockets too): a
        // full send buffer is waited out briefly, as a blocking socket would.
        for _ in 0..100 {
            match sock.send_from_to(packet, src, dst.socket_addr()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_micros(50))
                }
                r => return r,
            }
        }
        sock.send_from_to(packet, src, dst.socket_addr())
    }
}

/// `Ok(None)` for "this host has no IPv6" (with a warning), the socket or the error otherwise.
fn optional_v6(r: io::Result<ChunkSocket>) -> io::Result<Option<ChunkSocket>> {
    match r {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            tracing::warn!("IPv6 is not available on this host: answering IPv4 senders only");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn bind_error(e: io::Error, port: u16) -> io::Error {
    let hint = if e.kind() == io::ErrorKind::AddrInUse {
        " (another program holds it on this interface or on all of them)"
    } else {
        ""
    };
    io::Error::new(e.kind(), format!("binding UDP port {port}: {e}{hint}"))
}
