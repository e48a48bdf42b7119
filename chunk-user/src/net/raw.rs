//! Raw IPv4 sockets for one IP protocol: the kernel writes the IPv4 header, we write the chunk
//! header and body.

use std::{
    mem::MaybeUninit,
    net::{Ipv4Addr, SocketAddrV4},
};

use rustix::net::sockopt::Ipv4PathMtuDiscovery;
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
        rustix::net::sockopt::set_ip_mtu_discover(&socket, Ipv4PathMtuDiscovery::DO)?;
        Ok(RawSocket { socket })
    }

    /// Makes the socket deaf: it keeps sending, but the kernel no longer queues every incoming
    /// packet of its protocol on it (a socket that never reads would otherwise fill up with
    /// copies). A one-instruction socket filter that accepts nothing.
    pub fn make_deaf(&self) -> std::io::Result<()> {
        let reject_all = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        }];
        self.socket.attach_filter(&reject_all)
    }

    /// Receives one IPv4 packet (header included) without blocking; `None` when none is queued.
    pub fn recv_nonblocking(&self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match rustix::net::recv(&self.socket, buf, rustix::net::RecvFlags::DONTWAIT) {
            Ok((n, _)) => Ok(Some(n)),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Sends one chunk packet (header and body) to `dst`.
    pub fn send_to(&self, packet: &[u8], dst: Ipv4Addr) -> std::io::Result<usize> {
        self.socket
            .send_to(packet, &SockAddr::from(SocketAddrV4::new(dst, 0)))
    }

    /// Sends one chunk packet to `dst` from the local address `src`: an answer goes out from
    /// the address its packet was sent to (docs/PROTOCOL.md, Transport), not from whichever
    /// address the route would pick, so a sender that aimed at a receiver's second address
    /// recognises the answer. `IP_PKTINFO`'s `ipi_spec_dst` sets the source of a raw socket's
    /// packet (ip(7)); the route is still looked up for `dst`.
    pub fn send_from_to(
        &self,
        packet: &[u8],
        src: Option<Ipv4Addr>,
        dst: Ipv4Addr,
    ) -> std::io::Result<usize> {
        let Some(src) = src.filter(|a| !a.is_unspecified()) else {
            return self.send_to(packet, dst);
        };
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(src.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        const INFO_LEN: usize = std::mem::size_of::<libc::in_pktinfo>();
        // Room for one cmsghdr and its in_pktinfo, aligned as a cmsghdr must be.
        #[repr(C, align(8))]
        struct Control([u8; 64]);
        let mut control = Control([0; 64]);
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(INFO_LEN as u32) } as usize;
        assert!(space <= control.0.len());
        let dst_addr = SockAddr::from(SocketAddrV4::new(dst, 0));
        let iov = [std::io::IoSlice::new(packet)];
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
            (*cmsg).cmsg_level = libc::IPPROTO_IP;
            (*cmsg).cmsg_type = libc::IP_PKTINFO;
            (*cmsg).cmsg_len = libc::CMSG_LEN(INFO_LEN as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in_pktinfo>(), info);
            let rc = libc::sendmsg(std::os::fd::AsRawFd::as_raw_fd(&self.socket), &msg, 0);
            if rc < 0 {
                let err = std::io::Error::last_os_error();
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

/// Sets an int socket option that neither socket2 nor rustix wraps (`SO_RXQ_OVFL`,
/// `IP_RECVFRAGSIZE`).
pub(crate) fn set_int_option(
    fd: impl std::os::fd::AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
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
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
