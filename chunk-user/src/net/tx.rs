//! Sending chunk packets in batches: one `sendmmsg` system call carries up to [`BATCH`] packets,
//! which is what lets a raw socket go past the ~200k packets/s of a `sendto` loop.

use std::{
    io,
    mem::MaybeUninit,
    net::Ipv4Addr,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use super::raw::RawSocket;

/// Packets per `sendmmsg`.
pub const BATCH: usize = 64;

/// A raw socket with a queue of packets that go out together on [`flush`](Self::flush).
pub struct BatchSender {
    sock: RawSocket,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    dsts: Vec<Ipv4Addr>,
    queued: usize,
    /// Packets handed to the kernel.
    pub packets_sent: u64,
}

impl BatchSender {
    /// Queues packets of at most `max_packet` bytes for `sock`.
    pub fn new(sock: RawSocket, max_packet: usize) -> Self {
        BatchSender {
            sock,
            bufs: (0..BATCH).map(|_| vec![0; max_packet]).collect(),
            lens: vec![0; BATCH],
            dsts: vec![Ipv4Addr::UNSPECIFIED; BATCH],
            queued: 0,
            packets_sent: 0,
        }
    }

    pub fn socket(&self) -> &RawSocket {
        &self.sock
    }

    /// Grows the packet buffers to hold `max_packet` bytes (call with no packets queued).
    pub fn ensure_packet_len(&mut self, max_packet: usize) {
        for b in &mut self.bufs {
            if b.len() < max_packet {
                b.resize(max_packet, 0);
            }
        }
    }

    /// The buffer for the next packet, or `None` when the batch is full (flush first).
    pub fn next_buf(&mut self) -> Option<&mut [u8]> {
        self.bufs.get_mut(self.queued).map(|b| b.as_mut_slice())
    }

    /// Queues the first `len` bytes of the buffer [`next_buf`](Self::next_buf) gave, for `dst`.
    pub fn commit(&mut self, len: usize, dst: Ipv4Addr) {
        self.lens[self.queued] = len;
        self.dsts[self.queued] = dst;
        self.queued += 1;
    }

    pub fn is_full(&self) -> bool {
        self.queued == BATCH
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Sends every queued packet. Blocks while the socket's send buffer is full (that is the
    /// back-pressure of the local link). A packet the kernel refuses fails the whole flush with
    /// its error, after the ones before it went out.
    pub fn flush(&mut self) -> io::Result<()> {
        let mut done = 0;
        while done < self.queued {
            let n = self.send_from(done)?;
            done += n;
            self.packets_sent += n as u64;
        }
        self.queued = 0;
        Ok(())
    }

    /// Drops the queued packets (after a flush failed: they would fail again).
    pub fn discard(&mut self) {
        self.queued = 0;
    }

    fn send_from(&mut self, first: usize) -> io::Result<usize> {
        let count = self.queued - first;
        let mut addrs: [MaybeUninit<libc::sockaddr_in>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut msgs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
        for i in 0..count {
            let k = first + i;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(self.dsts[k].octets()),
                },
                sin_zero: [0; 8],
            };
            addrs[i].write(addr);
            iovs[i].write(libc::iovec {
                iov_base: self.bufs[k].as_mut_ptr().cast(),
                iov_len: self.lens[k],
            });
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = addrs[i].as_mut_ptr().cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            m.msg_hdr.msg_iovlen = 1;
            msgs[i].write(m);
        }
        loop {
            // SAFETY: the first `count` entries of msgs, iovs and addrs are initialised and
            // point into buffers that outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.sock.socket().as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    count as libc::c_uint,
                    0,
                )
            };
            if rc >= 0 {
                return Ok(rc as usize);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The device queue is momentarily full: give it a moment rather than fail.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                _ => return Err(err),
            }
        }
    }
}

/// Makes a raw socket deaf: it keeps sending, but the kernel no longer queues every incoming
/// packet of its protocol on it (a socket that never reads would otherwise fill up with copies).
pub fn drop_all_input(fd: RawFd) -> io::Result<()> {
    let mut code = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 0,
    }];
    let prog = libc::sock_fprog {
        len: 1,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: prog points at a valid one-instruction filter for the duration of the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one IPv4 packet without blocking; `None` when none is queued.
pub fn recv_nonblocking(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: buf is valid for writes of its length.
    let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        };
    }
    Ok(Some(rc as usize))
}

/// Splits a raw socket's IPv4 packet into its source address and IP payload; `None` if the IPv4
/// header is inconsistent.
pub fn ipv4_payload(packet: &[u8]) -> Option<(Ipv4Addr, &[u8])> {
    let first = *packet.first()?;
    let ihl = (first & 0x0f) as usize * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl {
        return None;
    }
    let total = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let end = total.min(packet.len());
    if end < ihl {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some((src, &packet[ihl..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_payload_respects_ihl_and_total_length() {
        let mut p = vec![0u8; 40];
        p[0] = 0x46; // IHL 6: 4 bytes of options
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        p[12..16].copy_from_slice(&[198, 18, 0, 2]);
        p[24..30].copy_from_slice(b"chunk!");
        let (src, body) = ipv4_payload(&p).unwrap();
        assert_eq!(src, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(body, b"chunk!");
        p[0] = 0x44;
        assert!(ipv4_payload(&p).is_none());
        assert!(ipv4_payload(&[0x45; 10]).is_none());
    }
}
