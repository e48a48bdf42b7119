//! The userspace receive path (`--mode socket`): a raw IP socket bound to chunk's protocol and
//! to the interface, read in batches with `recvmmsg`, every packet put through the same checks
//! as in the XDP program ([`chunk_common::classify`]) and counted by the same counters. For hosts
//! without XDP, and as the baseline the benchmarks hold the XDP path against.

use std::{
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
};

use chunk_common::{
    classify::{self, Verdict},
    counters::Counter,
};

use super::{
    raw::set_int_option,
    rx::{Counters, Prefix, Received},
};

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
}

/// A raw socket receiving chunk packets, with the kernel path's counters kept here.
pub struct SocketRx {
    fd: OwnedFd,
    cfg: SocketConfig,
    counters: Counters,
    /// [`BATCH`] receive buffers of [`BUF_LEN`] bytes, back to back. Allocated zeroed, so only
    /// the pages packets land in are ever touched (64 × 64 KiB written out would be 4 MiB of
    /// resident memory for buffers that mostly hold 1.5 KB).
    bufs: Vec<u8>,
    /// The socket's cumulative drop count (SO_RXQ_OVFL), last seen.
    overflow: u32,
}

impl SocketRx {
    /// Opens the socket (root: CAP_NET_RAW) and binds it to the interface.
    pub fn open(cfg: &SocketConfig) -> io::Result<Self> {
        if super::link::ifindex(&cfg.iface).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface named {:?}", cfg.iface),
            ));
        }
        let socket = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::RAW.nonblocking().cloexec(),
            Some(socket2::Protocol::from(cfg.protocol as i32)),
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "opening a raw socket for IP protocol {}: {e} (needs root)",
                    cfg.protocol
                ),
            )
        })?;
        socket.bind_device(Some(cfg.iface.as_bytes()))?;
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, RCVBUF).is_err() {
            socket.set_recv_buffer_size(RCVBUF)?;
        }
        set_int_option(&socket, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1)?;
        // The kernel reassembles fragments before a raw socket sees them; this makes it say so
        // (a control message on every reassembled packet), so that fragments are dropped and
        // counted here as the XDP program drops them.
        set_int_option(&socket, libc::IPPROTO_IP, libc::IP_RECVFRAGSIZE, 1)?;
        let fd = OwnedFd::from(socket);
        Ok(SocketRx {
            fd,
            cfg: cfg.clone(),
            counters: Counters::default(),
            bufs: vec![0u8; BUF_LEN * BATCH],
            overflow: 0,
        })
    }

    /// The counters, as the XDP program would have kept them (`passed` stays 0: the socket only
    /// ever sees chunk's protocol; `ring_full` counts packets the socket buffer had no room for;
    /// `fragment` counts each packet the kernel reassembled, where XDP counts each fragment).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The socket's fd, for the driver to wait on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Checks every packet of one batch already queued (without waiting); hands the accepted
    /// ones (up to `max`) to `f`. Returns how many packets were read, and how many of them
    /// were accepted (0 read: nothing was queued).
    pub fn read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Received<'_>),
    ) -> io::Result<(usize, usize)> {
        let n = max.clamp(1, BATCH);
        let got = match recv_batch(&self.fd, &mut self.bufs[..n * BUF_LEN]) {
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
        let read = got.len();
        let mut accepted = 0;
        for (
            i,
            Got {
                len,
                ovfl,
                reassembled,
            },
        ) in got.into_iter().enumerate()
        {
            if reassembled {
                self.counters.0[Counter::Fragment as usize] += 1;
                continue;
            }
            if let Some(o) = ovfl {
                let lost = o.wrapping_sub(self.overflow);
                self.overflow = o;
                self.counters.0[Counter::RingFull as usize] += lost as u64;
            }
            let buf = &mut self.bufs[i * BUF_LEN..i * BUF_LEN + len];
            let allow = &self.cfg.allow;
            let verdict = classify::packet(
                buf,
                self.cfg.protocol,
                self.cfg.max_payload as usize,
                |src| super::rx::allowed(allow, Ipv4Addr::from(src).into()),
            );
            let c = match verdict {
                Ok(a) => {
                    f(Received {
                        src: Ipv4Addr::from(a.ip.src),
                        dst: Ipv4Addr::from(a.ip.dst),
                        rx_queue: 0,
                        packet: &self.bufs[i * BUF_LEN..][a.chunk],
                    });
                    accepted += 1;
                    Counter::Accepted
                }
                Err(Verdict::Drop(c)) => c,
                Err(Verdict::Pass) => Counter::Passed,
            };
            self.counters.0[c as usize] += 1;
        }
        Ok((read, accepted))
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
}

/// One `recvmmsg` without blocking.
fn recv_batch(fd: &OwnedFd, bufs: &mut [u8]) -> io::Result<Vec<Got>> {
    const CMSG_SPACE: usize = 64;
    let n = bufs.len() / BUF_LEN;
    let mut iovs: Vec<libc::iovec> = bufs
        .chunks_exact_mut(BUF_LEN)
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut cmsgs = vec![[0u64; CMSG_SPACE / 8]; n];
    // SAFETY: mmsghdr is plain data; every pointer set below outlives the call.
    let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
    for i in 0..n {
        msgs[i].msg_hdr.msg_iov = &mut iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = cmsgs[i].as_mut_ptr().cast();
        msgs[i].msg_hdr.msg_controllen = CMSG_SPACE;
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
    let mut out = Vec::with_capacity(rc as usize);
    for m in &msgs[..rc as usize] {
        let mut ovfl = None;
        let mut reassembled = false;
        // SAFETY: the kernel filled msg_control; the CMSG macros walk it within controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                    ovfl = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32));
                }
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_RECVFRAGSIZE {
                    reassembled = true;
                }
                c = libc::CMSG_NXTHDR(&m.msg_hdr, c);
            }
        }
        out.push(Got {
            len: (m.msg_len as usize).min(BUF_LEN),
            ovfl,
            reassembled,
        });
    }
    Ok(out)
}
