//! Raw IPv4 sockets for one IP protocol: the kernel writes the IPv4 header, we write the chunk
//! header and body.

use std::{
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// A raw socket that sends (and can receive) packets of one IP protocol.
pub struct RawSocket {
    socket: Socket,
}

impl RawSocket {
    /// Opens the socket; needs root (CAP_NET_RAW). Sets "don't fragment": chunk packets are
    /// sized to the path MTU and fragments would be dropped by the receiver anyway.
    pub fn new(protocol: u8) -> std::io::Result<Self> {
        let socket = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(protocol as i32)),
        )?;
        let val: libc::c_int = libc::IP_PMTUDISC_DO;
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&socket),
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawSocket { socket })
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Sends one chunk packet (header and body) to `dst`.
    pub fn send_to(&self, packet: &[u8], dst: Ipv4Addr) -> std::io::Result<usize> {
        self.socket
            .send_to(packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
    }

    /// Receives one IP packet (IPv4 header included, as raw sockets deliver it).
    pub fn recv(&self, buf: &mut [MaybeUninit<u8>]) -> std::io::Result<(usize, Ipv4Addr)> {
        let (n, addr) = self.socket.recv_from(buf)?;
        let src = addr
            .as_socket_ipv4()
            .map(|a| *a.ip())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok((n, src))
    }
}
