//! The userspace receive path (`--mode socket`): raw IP sockets bound to chunk's protocol and to
//! the interface, one per family (and with `--udp PORT` a UDP socket per family bound to that
//! port), read in batches with `recvmmsg`, every packet put through the same checks as in the XDP
//! program ([`chunk_common::classify`]) and counted by the same counters. For hosts without XDP,
//! and as the baseline the benchmarks hold the XDP path against.
//!
//! An IPv4 raw socket delivers the IPv4 header, which gets the same header checks as in the
//! kernel; IPv6 raw sockets and UDP sockets deliver the chunk packet alone (the kernel has walked
//! the extension headers and checked the UDP header), with the addresses in the message's name
//! and its `PKTINFO`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use chunk_common::{
    classify::{self, Verdict},
    counters::Counter,
};

use super::{
    raw::{ChunkSocket, Transport, set_int_option},
    rx::{Counters, Prefix, Received},
    session_filter::SessionFilter,
};
use crate::proto::Peer;

/// The oldest a packet's timestamp is believed to be (a wall clock set back or far forward
/// meanwhile): one older is taken as arriving when it is handled.
const MAX_AGE: Duration = Duration::from_secs(60);

/// Packets one `recvmmsg` call can return.
const BATCH: usize = 64;
/// Bytes per receive buffer: the largest IPv4 packet, so that a packet over the payload limit is
/// seen whole and counted `bad_length`, as the XDP path counts it, not cut short (`truncated`).
/// Only the bytes a packet fills are ever touched.
const BUF_LEN: usize = 65535;
/// Socket receive buffer asked for: deep enough to ride out a few milliseconds of stall.
const RCVBUF: usize = 64 << 20;

/// The socket path's settings (those of the XDP path that apply).
#[derive(Clone, Debug)]
pub struct SocketConfig {
    pub iface: String,
    pub protocol: u8,
    pub max_payload: u16,
    pub allow: Vec<Prefix>,
    /// Also take chunk packets in UDP to this port (`--udp`).
    pub udp_port: Option<u16>,
}

/// One socket of the path and its own drop count.
struct Rx {
    sock: ChunkSocket,
    /// The socket's cumulative drop count (SO_RXQ_OVFL), last seen.
    overflow: u32,
}

/// Raw (and UDP) sockets receiving chunk packets, with the kernel path's counters kept here.
pub struct SocketRx {
    socks: Vec<Rx>,
    cfg: SocketConfig,
    counters: Counters,
    /// The open sessions: a sealed packet of any other is dropped, as the XDP program drops it.
    sessions: SessionFilter,
    /// [`BATCH`] receive buffers of [`BUF_LEN`] bytes, back to back. Allocated zeroed, so only
    /// the pages packets land in are ever touched (64 × 64 KiB written out would be 4 MiB of
    /// resident memory for buffers that mostly hold 1.5 KB).
    bufs: Vec<u8>,
    /// The socket read first in the next batch: the sockets take turns.
    next: usize,
}

impl SocketRx {
    /// Opens the sockets (root: CAP_NET_RAW) and binds them to the interface. IPv6 is skipped,
    /// with a warning, on a host without it.
    pub fn open(cfg: &SocketConfig) -> io::Result<Self> {
        if super::link::ifindex(&cfg.iface).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {:?}", cfg.iface),
            ));
        }
        let mut transports = vec![Transport::Ip(cfg.protocol)];
        transports.extend(cfg.udp_port.map(Transport::Udp));
        let mut socks = Vec::new();
        for transport in transports {
            for v6 in [false, true] {
                match Self::open_one(cfg, v6, transport) {
                    Ok(sock) => socks.push(Rx { sock, overflow: 0 }),
                    Err(e) if v6 && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                        tracing::warn!("IPv6 is not available on this host: receiving IPv4 only");
                    }
                    Err(e) => {
                        let what = match transport {
                            Transport::Ip(p) => format!("a raw socket for IP protocol {p}"),
                            Transport::Udp(p) => format!("a UDP socket on port {p}"),
                        };
                        let family = if v6 { "IPv6" } else { "IPv4" };
                        return Err(io::Error::new(
                            e.kind(),
                            format!("opening {what} ({family}): {e} (raw sockets need root)"),
                        ));
                    }
                }
            }
        }
        Ok(SocketRx {
            socks,
            cfg: cfg.clone(),
            counters: Counters::default(),
            sessions: SessionFilter::userspace(),
            bufs: vec![0u8; BUF_LEN * BATCH],
            next: 0,
        })
    }

    fn open_one(cfg: &SocketConfig, v6: bool, transport: Transport) -> io::Result<ChunkSocket> {
        let sock = ChunkSocket::open_on(v6, transport, Some(transport.port()), Some(&cfg.iface))?;
        let s = sock.socket();
        s.set_nonblocking(true)?;
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(s, RCVBUF).is_err() {
            s.set_recv_buffer_size(RCVBUF)?;
        }
        set_int_option(s, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
        // Each packet's arrival, for the acks' delay field: the receiver may handle it late.
        set_int_option(s, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
        // The kernel reassembles fragments before a socket sees them; this makes it say so (a
        // control message on every reassembled packet), so that fragments are dropped and
        // counted here as the XDP program drops them.
        if matches!(transport, Transport::Udp(_)) {
            // Take runs of datagrams of one flow as one message (`UDP_GRO`, udp(7)) where the
            // kernel coalesced them (a sender's segmentation offload, a NIC's GRO): one pass
            // up the stack for the run, split back into packets here. A kernel without it
            // delivers them one by one.
            if let Err(e) = set_int_option(s, libc::SOL_UDP, libc::UDP_GRO, 1) {
                tracing::debug!("UDP_GRO not available ({e}): datagrams arrive one by one");
            }
        }
        if v6 && matches!(transport, Transport::Udp(_)) {
            // Take a zero UDP checksum over IPv6 too, as the XDP path does (docs/PROTOCOL.md,
            // UDP); the kernel otherwise drops such datagrams before the socket sees them.
            set_int_option(s, libc::SOL_UDP, libc::UDP_NO_CHECK6_RX, 1)?;
        }
        if v6 {
            set_int_option(s, libc::IPPROTO_IPV6, libc::IPV6_RECVFRAGSIZE, 1)?;
            set_int_option(s, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
        } else {
            set_int_option(s, libc::IPPROTO_IP, libc::IP_RECVFRAGSIZE, 1)?;
            set_int_option(s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
        }
        Ok(sock)
    }

    /// The counters, as the XDP program would have kept them (`passed` stays 0: the sockets
    /// only ever see chunk's protocol and port; `ring_full` counts packets the socket buffers
    /// had no room for; `fragment` counts each packet the kernel reassembled, where XDP counts
    /// each fragment; `ext_headers` stays 0, the kernel walks IPv6 extension headers itself).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The sessions sealed packets are let through for (a handle on the set this path checks).
    pub fn session_filter(&self) -> SessionFilter {
        self.sessions.clone()
    }

    /// The sockets' fds, for the driver to wait on.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        self.socks.iter().map(|r| r.sock.socket().as_fd()).collect()
    }

    /// Copies of the UDP sockets (the same sockets, new fds), IPv4 then IPv6: the receiver's
    /// answers over UDP leave from the port the senders send to, so that a NAT in between
    /// recognises them.
    pub fn udp_sockets(&self) -> Vec<ChunkSocket> {
        self.socks
            .iter()
            .filter(|r| matches!(r.sock.transport(), Transport::Udp(_)))
            .filter_map(|r| r.sock.try_clone().ok())
            .collect()
    }

    /// Checks every packet of one batch already queued (without waiting); hands the accepted
    /// ones (up to `max`) to `f`. Returns how many packets were read, and how many of them
    /// were accepted (0 read: nothing was queued).
    pub fn read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Received<'_>),
    ) -> io::Result<(usize, usize)> {
        let (mut read, mut accepted) = (0, 0);
        let count = self.socks.len();
        for k in 0..count {
            let i = (self.next + k) % count;
            let (r, a) = self.read_one(i, max.saturating_sub(read), &mut f)?;
            read += r;
            accepted += a;
            if read >= max {
                self.next = (i + 1) % count;
                break;
            }
        }
        Ok((read, accepted))
    }

    fn read_one(
        &mut self,
        i: usize,
        max: usize,
        f: &mut impl FnMut(Received<'_>),
    ) -> io::Result<(usize, usize)> {
        if max == 0 {
            return Ok((0, 0));
        }
        let n = max.clamp(1, BATCH);
        let rx = &self.socks[i];
        let got = match recv_batch(rx.sock.socket(), &mut self.bufs[..n * BUF_LEN]) {
            Ok(got) => got,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok((0, 0));
            }
            Err(e) => return Err(e),
        };
        let mut read = got.len();
        let mut accepted = 0;
        let with_ip_header = rx.sock.delivers_ip_header();
        let udp = matches!(rx.sock.transport(), Transport::Udp(_));
        for (j, g) in got.into_iter().enumerate() {
            if let Some(o) = g.ovfl {
                let rx = &mut self.socks[i];
                let lost = o.wrapping_sub(rx.overflow);
                rx.overflow = o;
                self.counters.0[Counter::RingFull as usize] += lost as u64;
            }
            if g.reassembled {
                self.counters.0[Counter::Fragment as usize] += 1;
                continue;
            }
            // A coalesced UDP message (`UDP_GRO`) holds datagrams of `seg` bytes back to back,
            // the last possibly shorter: each is a packet of its own, checked on its own.
            let seg = match g.segment {
                Some(seg) if udp && seg > 0 => seg,
                _ => g.len.max(1),
            };
            read += g.len.div_ceil(seg).max(1) - 1;
            let mut off = 0;
            loop {
                let len = seg.min(g.len - off);
                let start = j * BUF_LEN + off;
                let buf = &mut self.bufs[start..start + len];
                let c = check(buf, &self.cfg, &self.sessions, with_ip_header, udp, &g, f);
                accepted += usize::from(c == Counter::Accepted);
                self.counters.0[c as usize] += 1;
                off += len;
                if off >= g.len {
                    break;
                }
            }
        }
        Ok((read, accepted))
    }
}

/// Puts one received packet through the kernel path's checks, hands it to `f` if accepted, and
/// says which counter it counts under.
fn check(
    buf: &mut [u8],
    cfg: &SocketConfig,
    sessions: &SessionFilter,
    with_ip_header: bool,
    udp: bool,
    g: &Got,
    f: &mut impl FnMut(Received<'_>),
) -> Counter {
    let len = buf.len();
    let allow = &cfg.allow;
    let max_payload = cfg.max_payload as usize;
    let verdict = if with_ip_header {
        classify::packet(buf, cfg.protocol, max_payload, |src| {
            super::rx::allowed(allow, Ipv4Addr::from(src).into())
        })
        .map(|a| {
            let src = Peer::ip(Ipv4Addr::from(a.ip.src).into());
            (src, IpAddr::from(a.ip.dst), a.chunk)
        })
    } else {
        // A UDP sender at port 0 cannot be answered: not a source chunk admits.
        let answerable = !udp || g.from.port() != 0;
        let ok = answerable && super::rx::allowed(allow, g.from.ip());
        classify::chunk(buf, max_payload, ok)
            .map_err(Verdict::Drop)
            .map(|()| {
                let src = if udp {
                    Peer::udp(g.from)
                } else {
                    Peer::ip(g.from.ip())
                };
                // Without PKTINFO, the unspecified address: the route picks the answer's
                // source.
                let dst = g.to.map_or_else(
                    || match g.from {
                        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
                        SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
                    },
                    |a| a.to_canonical(),
                );
                (src, dst, 0..len)
            })
    };
    // The last step, after the checksum, as in the kernel.
    let verdict = verdict.and_then(|(src, dst, chunk)| {
        // Never short: classify accepted the whole header.
        let Some(hdr) = buf[chunk.clone()].first_chunk() else {
            return Err(Counter::Truncated.into());
        };
        classify::session(hdr, |sid| sessions.allows(sid))?;
        Ok((src, dst, chunk))
    });
    match verdict {
        Ok((src, dst, chunk)) => {
            f(Received {
                src,
                dst,
                rx_queue: 0,
                arrived: g.arrived,
                packet: &buf[chunk],
            });
            Counter::Accepted
        }
        Err(Verdict::Drop(c)) => c,
        Err(Verdict::Pass) => Counter::Passed,
    }
}

/// What `recvmmsg` says about one packet.
struct Got {
    /// Its length, capped at the buffer.
    len: usize,
    /// The socket's drop counter, if the kernel attached it.
    ovfl: Option<u32>,
    /// The kernel reassembled it from fragments.
    reassembled: bool,
    /// Where it came from (address and, for UDP, port).
    from: SocketAddr,
    /// The local address it was sent to (PKTINFO), when the kernel said.
    to: Option<IpAddr>,
    /// Datagrams the kernel coalesced (`UDP_GRO`): the size of each but the last.
    segment: Option<usize>,
    /// When it reached this host, from the kernel's receive timestamp (`SO_TIMESTAMPNS`).
    arrived: Option<Instant>,
}

/// One `recvmmsg` without blocking.
fn recv_batch(fd: &socket2::Socket, bufs: &mut [u8]) -> io::Result<Vec<Got>> {
    // Room for the drop count, the fragment size, an IPv6 PKTINFO, the coalesced datagrams'
    // size and the timestamp (`CMSG_SPACE` of each: 24 + 24 + 40 + 24 + 32 = 144, rounded up).
    const CMSG_SPACE: usize = 160;
    let n = bufs.len() / BUF_LEN;
    let mut iovs: Vec<libc::iovec> = bufs
        .chunks_exact_mut(BUF_LEN)
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut cmsgs = vec![[0u64; CMSG_SPACE / 8]; n];
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid (unspecified) address.
    let mut names: Vec<libc::sockaddr_storage> =
        (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    // SAFETY: mmsghdr is plain data; every pointer set below outlives the call.
    let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    for i in 0..n {
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = CMSG_SPACE;
        msgs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_storage).cast();
        msgs[i].msg_hdr.msg_namelen =
            std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: msgs describes n valid buffers.
    let rc = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as u32,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The kernel stamps packets on the wall clock: their age on it is their age on Instant's.
    let (now, wall) = (Instant::now(), SystemTime::now());
    let arrived_at = |sec: i64, nsec: i64| {
        let stamp = UNIX_EPOCH + Duration::new(u64::try_from(sec).ok()?, nsec as u32);
        let age = wall.duration_since(stamp).ok()?;
        (age <= MAX_AGE).then(|| now.checked_sub(age)).flatten()
    };
    let mut out = Vec::with_capacity(rc as usize);
    for (m, name) in msgs[..rc as usize].iter().zip(&names) {
        let mut ovfl = None;
        let mut reassembled = false;
        let mut to = None;
        let mut segment = None;
        let mut arrived = None;
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it within controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                    ovfl = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32));
                }
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_UDP, libc::UDP_GRO) => {
                        let size: libc::c_int = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        segment = usize::try_from(size).ok();
                    }
                    (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                        let t: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        arrived = arrived_at(t.tv_sec, t.tv_nsec);
                    }
                    (libc::IPPROTO_IP, libc::IP_RECVFRAGSIZE)
                    | (libc::IPPROTO_IPV6, libc::IPV6_RECVFRAGSIZE) => reassembled = true,
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        let info: libc::in_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        to = Some(IpAddr::from(Ipv4Addr::from(
                            info.ipi_addr.s_addr.to_ne_bytes(),
                        )));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info: libc::in6_pktinfo =
                            std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        to = Some(IpAddr::from(info.ipi6_addr.s6_addr));
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
            }
        }
        // SAFETY: the kernel wrote a socket address of msg_namelen bytes into `name`.
        let from = unsafe { socket2::SockAddr::new(*name, m.msg_hdr.msg_namelen) }
            .as_socket()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        out.push(Got {
            len: (m.msg_len as usize).min(BUF_LEN),
            ovfl,
            reassembled,
            from,
            to,
            segment,
            arrived,
        });
    }
    Ok(out)
}
