//! Sending chunk packets in batches: one `sendmmsg` system call carries up to [`BATCH`] packets,
//! which is what lets a raw socket go past the ~200k packets/s of a `sendto` loop.

use std::{io, mem::MaybeUninit, net::SocketAddr, os::fd::AsRawFd, time::Duration};

use socket2::SockAddr;

use super::raw::ChunkSocket;

/// Packets per `sendmmsg`.
pub const BATCH: usize = 64;

/// A chunk socket with a queue of packets that go out together on [`flush`](Self::flush).
pub struct BatchSender {
    sock: ChunkSocket,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    dsts: Vec<SockAddr>,
    /// What each of `dsts` was built from.
    dst_of: Vec<Option<SocketAddr>>,
    queued: usize,
    /// Packets handed to the kernel.
    pub packets_sent: u64,
}

impl BatchSender {
    /// Queues packets of at most `max_packet` bytes for `sock`.
    pub fn new(sock: ChunkSocket, max_packet: usize) -> Self {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        BatchSender {
            sock,
            bufs: (0..BATCH).map(|_| vec![0; max_packet]).collect(),
            lens: vec![0; BATCH],
            dsts: vec![unspecified; BATCH],
            dst_of: vec![None; BATCH],
            queued: 0,
            packets_sent: 0,
        }
    }

    pub fn socket(&self) -> &ChunkSocket {
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
    pub fn commit(&mut self, len: usize, dst: SocketAddr) {
        self.lens[self.queued] = len;
        // Every packet of a transfer goes to one peer: its kernel address is built once per
        // slot, not once per packet.
        if self.dst_of[self.queued] != Some(dst) {
            self.dsts[self.queued] = self.sock.sockaddr(dst);
            self.dst_of[self.queued] = Some(dst);
        }
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
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut msgs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
        for i in 0..count {
            let k = first + i;
            iovs[i].write(libc::iovec {
                iov_base: self.bufs[k].as_mut_ptr().cast(),
                iov_len: self.lens[k],
            });
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = self.dsts[k].as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = self.dsts[k].len();
            m.msg_hdr.msg_iov = iovs[i].as_mut_ptr();
            m.msg_hdr.msg_iovlen = 1;
            msgs[i].write(m);
        }
        loop {
            // SAFETY: the first `count` entries of msgs and iovs are initialised and
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
                // A connected UDP socket's pending ICMP error (the receiver's port was closed
                // for a moment): reported by this call instead of sending, then cleared.
                _ if super::raw::transient_icmp(&err) => continue,
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
