//! The sockets chunk packets travel on: raw IP sockets of chunk's protocol (the kernel writes the
//! IPv4 or IPv6 header, we write the chunk header and body), or with `--udp` UDP sockets (the
//! chunk packet is the datagram). One type for all four, so that senders, the receiver's
//! answers and the tools need not care which.

use std::{
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use rustix::net::sockopt::{Ipv4PathMtuDiscovery, Ipv6PathMtuDiscovery};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How chunk packets are carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Straight over IP: the IP protocol (IPv6 next header) is this number.
    Ip(u8),
    /// In UDP datagrams to this port (`--udp PORT`): crosses NATs and firewalls that pass only
    /// TCP, UDP and ICMP.
    Udp(u16),
}

impl Transport {
    /// The bytes a packet carries before its chunk header, on the wire: the IP header without
    /// options or extension headers, and the UDP header.
    pub fn header_len(self, v6: bool) -> u32 {
        let ip = if v6 { 40 } else { 20 };
        match self {
            Transport::Ip(_) => ip,
            Transport::Udp(_) => ip + 8,
        }
    }

    /// The same, in words, for messages.
    pub fn header_words(self, v6: bool) -> &'static str {
        match (self, v6) {
            (Transport::Ip(_), false) => "20 for IPv4",
            (Transport::Ip(_), true) => "40 for IPv6",
            (Transport::Udp(_), false) => "20 for IPv4, 8 for UDP",
            (Transport::Udp(_), true) => "40 for IPv6, 8 for UDP",
        }
    }

    /// The port a peer's answers go to over this transport: the receiver's UDP port, or 0
    /// (no ports over IP).
    pub fn port(self) -> u16 {
        match self {
            Transport::Ip(_) => 0,
            Transport::Udp(p) => p,
        }
    }
}

/// A socket that sends (and can receive) chunk packets of one family over one transport.
pub struct ChunkSocket {
    socket: Socket,
    v6: bool,
    transport: Transport,
}

/// The IPv4 raw socket of chunk's protocol, the common case (and the tests' tool).
pub type RawSocket = ChunkSocket;

impl ChunkSocket {
    /// An IPv4 raw socket for IP protocol `protocol` (root: CAP_NET_RAW).
    pub fn new(protocol: u8) -> io::Result<Self> {
        Self::open(false, Transport::Ip(protocol), None)
    }

    /// Opens a socket of one family over `transport`; needs root (CAP_NET_RAW) for raw sockets.
    /// Sets "don't fragment": chunk packets are sized to the path MTU, and the receiver drops
    /// fragments anyway. A UDP socket is bound to `bind_port` (0 or `None`: any port); an IPv6
    /// one is IPv6-only, so that each family has its own socket.
    pub fn open(v6: bool, transport: Transport, bind_port: Option<u16>) -> io::Result<Self> {
        Self::open_on(v6, transport, bind_port, None)
    }

    /// As [`Self::open`], bound to the interface `device` before anything else
    /// (`SO_BINDTODEVICE`): the socket then sees and sends only on that interface, and two
    /// receivers on two interfaces can hold the same UDP port.
    pub fn open_on(
        v6: bool,
        transport: Transport,
        bind_port: Option<u16>,
        device: Option<&str>,
    ) -> io::Result<Self> {
        let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
        let socket = match transport {
            Transport::Ip(protocol) => Socket::new(
                domain,
                Type::RAW.cloexec(),
                Some(Protocol::from(protocol as i32)),
            )?,
            Transport::Udp(_) => Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?,
        };
        if let Some(device) = device {
            socket.bind_device(Some(device.as_bytes()))?;
        }
        if v6 {
            rustix::net::sockopt::set_ipv6_mtu_discover(&socket, Ipv6PathMtuDiscovery::DO)?;
            set_int_option(&socket, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)?;
        } else {
            rustix::net::sockopt::set_ip_mtu_discover(&socket, Ipv4PathMtuDiscovery::DO)?;
        }
        if let Transport::Udp(_) = transport {
            if v6 {
                socket.set_only_v6(true)?;
            }
            let any: IpAddr = if v6 {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            socket.bind(&SocketAddr::new(any, bind_port.unwrap_or(0)).into())?;
        }
        Ok(ChunkSocket {
            socket,
            v6,
            transport,
        })
    }

    pub fn is_v6(&self) -> bool {
        self.v6
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether a packet received on this socket starts with its IP header: only IPv4 raw
    /// sockets deliver it (IPv6 raw and UDP sockets deliver the chunk packet alone).
    pub fn delivers_ip_header(&self) -> bool {
        !self.v6 && matches!(self.transport, Transport::Ip(_))
    }

    /// Makes the socket deaf: it keeps sending, but the kernel no longer queues every incoming
    /// packet of its protocol on it (a socket that never reads would otherwise fill up with
    /// copies). A one-instruction socket filter that accepts nothing.
    pub fn make_deaf(&self) -> io::Result<()> {
        let reject_all = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        self.socket.attach_filter(&reject_all)
    }

    /// Receives one packet without blocking, and where it came from; `None` when none is
    /// queued. An IPv4 raw socket delivers the IPv4 header too ([`Self::delivers_ip_header`]).
    pub fn recv_nonblocking(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        // SAFETY: u8 and MaybeUninit<u8> have the same layout; recv_from only writes.
        let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        match self.socket.recv_from_with_flags(uninit, libc::MSG_DONTWAIT) {
            Ok((n, addr)) => {
                let from = addr
                    .as_socket()
                    .unwrap_or_else(|| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
                Ok(Some((n, from)))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            // An ICMP error the connected UDP socket was told of (port unreachable: the
            // receiver is not listening yet, or is restarting; host or net unreachable for a
            // moment): reported once, then cleared. Like a lost packet, it is for the sender's
            // timers to outlast, not the end of the transfer.
            Err(e) if transient_icmp(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// The same socket under a second fd.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(ChunkSocket {
            socket: self.socket.try_clone()?,
            v6: self.v6,
            transport: self.transport,
        })
    }

    /// The address to give the kernel for `dst`: over IP the port is 0 (for IPv6 raw sockets a
    /// port would name the protocol); over UDP it is the peer's port.
    pub(crate) fn sockaddr(&self, dst: SocketAddr) -> SockAddr {
        let port = match self.transport {
            Transport::Ip(_) => 0,
            Transport::Udp(_) => dst.port(),
        };
        SockAddr::from(SocketAddr::new(dst.ip(), port))
    }

    /// Sends one chunk packet (header and body) to `dst`.
    pub fn send_to(&self, packet: &[u8], dst: SocketAddr) -> io::Result<usize> {
        self.socket.send_to(packet, &self.sockaddr(dst))
    }

    /// Sends one chunk packet to `dst` from the local address `src`: an answer goes out from
    /// the address its packet was sent to (docs/PROTOCOL.md, Transport), not from whichever
    /// address the route would pick, so a sender that aimed at a receiver's second address
    /// recognises the answer. `IP_PKTINFO`'s `ipi_spec_dst` (ip(7)) or `IPV6_PKTINFO`'s
    /// `ipi6_addr` (ipv6(7)) sets the source; the route is still looked up for `dst`.
    pub fn send_from_to(
        &self,
        packet: &[u8],
        src: Option<IpAddr>,
        dst: SocketAddr,
    ) -> io::Result<usize> {
        let Some(src) = src.filter(|a| !a.is_unspecified()) else {
            return self.send_to(packet, dst);
        };
        // Room for one cmsghdr and its pktinfo, aligned as a cmsghdr must be.
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut control = Control([0; 64]);
        let (level, kind, info_len) = match src {
            IpAddr::V4(_) => (
                libc::IPPROTO_IP,
                libc::IP_PKTINFO,
                std::mem::size_of::<libc::in_pktinfo>(),
            ),
            IpAddr::V6(_) => (
                libc::IPPROTO_IPV6,
                libc::IPV6_PKTINFO,
                std::mem::size_of::<libc::in6_pktinfo>(),
            ),
        };
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(info_len as u32) } as usize;
        assert!(space <= control.0.len());
        let dst_addr = self.sockaddr(dst);
        let iov = [io::IoSlice::new(packet)];
        // SAFETY: msghdr is plain data; the pointers set below point into live locals, and the
        // control buffer is large and aligned enough for the one header written into it.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_name = dst_addr.as_ptr() as *mut libc::c_void;
            msg.msg_namelen = dst_addr.len();
            msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = 1;
            msg.msg_control = control.0.as_mut_ptr().cast();
            msg.msg_controllen = space;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(info_len as u32) as usize;
            match src {
                IpAddr::V4(a) => std::ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(),
                    libc::in_pktinfo {
                        ipi_ifindex: 0,
                        ipi_spec_dst: libc::in_addr {
                            s_addr: u32::from_ne_bytes(a.octets()),
                        },
                        ipi_addr: libc::in_addr { s_addr: 0 },
                    },
                ),
                IpAddr::V6(a) => std::ptr::write_unaligned(
                    libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(),
                    libc::in6_pktinfo {
                        ipi6_addr: libc::in6_addr {
                            s6_addr: a.octets(),
                        },
                        ipi6_ifindex: 0,
                    },
                ),
            }
            let rc = libc::sendmsg(self.socket.as_raw_fd(), &msg, 0);
            if rc < 0 {
                let err = io::Error::last_os_error();
                // Not one of our addresses (XDP also sees frames for other hosts on a shared
                // segment): let the route choose rather than not answer at all.
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EADDRNOTAVAIL)
                ) {
                    return self.send_to(packet, dst);
                }
                return Err(err);
            }
            Ok(rc as usize)
        }
    }
}

/// Whether `e` is an ICMP error a connected UDP socket reports once and forgets
/// (`ECONNREFUSED`, `EHOSTUNREACH`, `ENETUNREACH`): a packet lost, for the protocol.
pub(crate) fn transient_icmp(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    )
}

/// Sets an int socket option that neither socket2 nor rustix wraps (`SO_RXQ_OVFL`,
/// `IP_RECVFRAGSIZE`, `IPV6_DONTFRAG`).
pub(crate) fn set_int_option(
    fd: impl std::os::fd::AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe one c_int that lives across the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
