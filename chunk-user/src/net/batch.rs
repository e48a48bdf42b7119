//! Sending chunk packets in batches: one `sendmmsg` system call carries up to [`BATCH`] packets,
//! which is what lets a raw socket go past the ~200k packets/s of a `sendto` loop.
//!
//! Over UDP, runs of packets to one peer with one length go out as one segmentation-offload
//! message (`UDP_SEGMENT`, udp(7)): the kernel's UDP and IP output path runs once for the run
//! instead of once per packet, and the datagrams are cut at the device (or by the NIC). On the
//! wire nothing changes: the same datagrams, one chunk packet each.
//!
//! Straight over IP, packets go through a [`PacketTx`] when the route allows it (an Ethernet
//! next hop): the batch is written with its IP headers to an AF_PACKET socket, skipping the
//! kernel's IP output path; otherwise through the raw socket.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use socket2::SockAddr;

use super::{packet_tx::PacketTx, raw::ChunkSocket};

/// Packets per `sendmmsg`.
pub const BATCH: usize = 64;
/// Most datagrams in one segmentation-offload message (the kernel takes up to 64 since 4.18,
/// 128 since 6.2).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes of UDP payload in one segmentation-offload message: what fits one IPv4 packet's
/// length field (65 535 less the 20-byte IPv4 and 8-byte UDP headers).
const GSO_MAX_BYTES: usize = 65_507;

/// A chunk socket with a queue of packets that go out together on [`flush`](Self::flush).
pub struct BatchSender {
    sock: ChunkSocket,
    bufs: Vec<Vec<u8>>,
    lens: Vec<usize>,
    dsts: Vec<SockAddr>,
    /// What each of `dsts` was built from.
    dst_of: Vec<Option<SocketAddr>>,
    queued: usize,
    /// Send runs of equal packets as one `UDP_SEGMENT` message (UDP only; turned off for good
    /// when the kernel refuses one).
    gso: bool,
    /// Packets handed to the kernel.
    pub packets_sent: u64,
    /// `sendmmsg` messages those packets took (fewer than packets when runs were coalesced).
    pub messages_sent: u64,
    /// The packet socket for raw IP, when one is open.
    link: Option<PacketTx>,
    /// The IP header of each queued packet, for the packet socket.
    headers: Vec<[u8; 40]>,
    /// Packets of `packets_sent` that went through the packet socket.
    pub link_packets: u64,
}

impl BatchSender {
    /// Queues packets of at most `max_packet` bytes for `sock`.
    pub fn new(sock: ChunkSocket, max_packet: usize) -> Self {
        let unspecified = SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)));
        let gso = matches!(sock.transport(), super::raw::Transport::Udp(_))
            && std::env::var_os("CHUNK_NO_GSO").is_none();
        BatchSender {
            gso,
            messages_sent: 0,
            sock,
            bufs: (0..BATCH).map(|_| vec![0; max_packet]).collect(),
            lens: vec![0; BATCH],
            dsts: vec![unspecified; BATCH],
            dst_of: vec![None; BATCH],
            queued: 0,
            packets_sent: 0,
            link: None,
            headers: vec![[0; 40]; BATCH],
            link_packets: 0,
        }
    }

    /// Sends through `link` from now on, whenever its route allows (see [`PacketTx`]).
    pub fn use_packet_socket(&mut self, link: PacketTx) {
        self.link = Some(link);
    }

    /// An answer came from the receiver (for the packet socket's trial).
    pub fn heard(&mut self, now: Instant, srtt: Duration) {
        if let Some(link) = &mut self.link {
            link.heard(now, srtt);
        }
    }

    /// Whether the queued packets go through the packet socket: it is open, its next hop is
    /// known, no batch is due through the raw socket, and every packet is for its host and fits
    /// the interface. A batch that goes through the raw socket instead is noted as such.
    fn via_link(&mut self) -> bool {
        let Some(link) = &mut self.link else {
            return false;
        };
        let now = Instant::now();
        link.refresh(now);
        let host = link.dst();
        let ok = !link.raw_due(now)
            && (0..self.queued).all(|k| {
                self.dst_of[k].is_some_and(|d| d.ip() == host) && link.can_send(self.lens[k])
            });
        if ok {
            link.sent(now);
        } else {
            link.sent_raw(now);
        }
        ok
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
        if self.queued == 0 {
            return Ok(());
        }
        let mut via_link = self.via_link();
        let mut done = 0;
        while done < self.queued {
            let n = if via_link {
                match self.send_link_from(done)? {
                    Some(n) => {
                        self.link_packets += n as u64;
                        n
                    }
                    None => {
                        via_link = false;
                        if let Some(link) = &mut self.link {
                            link.sent_raw(Instant::now());
                        }
                        continue;
                    }
                }
            } else {
                self.send_from(done)?
            };
            done += n;
            self.packets_sent += n as u64;
        }
        self.queued = 0;
        Ok(())
    }

    /// Whether runs of equal UDP packets are still sent as one segmentation-offload message.
    pub fn offloads(&self) -> bool {
        self.gso
    }

    /// Drops the queued packets (after a flush failed: they would fail again).
    pub fn discard(&mut self) {
        self.queued = 0;
    }

    /// How many packets from `first` on go out in one message: a run to one peer of equal
    /// lengths (the last may be shorter), within the kernel's limits; 1 without offload.
    fn run_len(&self, first: usize) -> usize {
        if !self.gso {
            return 1;
        }
        let size = self.lens[first];
        let mut total = size;
        let mut k = first + 1;
        while k < self.queued
            && k - first < GSO_MAX_SEGMENTS
            && self.dst_of[k] == self.dst_of[first]
            && self.lens[k] <= size
            && total + self.lens[k] <= GSO_MAX_BYTES
        {
            total += self.lens[k];
            k += 1;
            // Only the last datagram of a message may be shorter than the segment size.
            if self.lens[k - 1] < size {
                break;
            }
        }
        k - first
    }

    /// Sends queued packets from `first` on through the packet socket, in one `sendmmsg`;
    /// returns how many went, or `None` when the kernel refused the packet socket (the route
    /// changed under it, the interface went down): the packets are then for the raw socket.
    fn send_link_from(&mut self, first: usize) -> io::Result<Option<usize>> {
        let link = self.link.as_mut().expect("via_link said yes");
        let (addr, addr_len) = link.sockaddr();
        let mut iovs: [MaybeUninit<[libc::iovec; 2]>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut msgs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let count = self.queued - first;
        for j in 0..count {
            let k = first + j;
            let hlen = link.header(self.lens[k], &mut self.headers[k]);
            let iov = iovs[j].write([
                libc::iovec {
                    iov_base: self.headers[k].as_mut_ptr().cast(),
                    iov_len: hlen,
                },
                libc::iovec {
                    iov_base: self.bufs[k].as_mut_ptr().cast(),
                    iov_len: self.lens[k],
                },
            ]);
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = addr as *mut libc::c_void;
            m.msg_hdr.msg_namelen = addr_len;
            m.msg_hdr.msg_iov = iov.as_mut_ptr();
            m.msg_hdr.msg_iovlen = 2;
            msgs[j].write(m);
        }
        let mut refused_since: Option<Instant> = None;
        loop {
            // SAFETY: the first `count` entries of msgs, and the iovecs they point to, are
            // initialised and point into buffers (and the link's address) that outlive the
            // call.
            let rc = unsafe {
                libc::sendmmsg(
                    link.fd(),
                    msgs.as_mut_ptr().cast(),
                    count as libc::c_uint,
                    0,
                )
            };
            if rc >= 0 {
                self.messages_sent += rc as u64;
                return Ok(Some(rc as usize));
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                // The interface's queue is full (the packet socket says so where the raw
                // socket's packets were dropped unseen): give it a moment.
                // Refused for longer (a `tc` or `netdev egress` rule dropping packets, not a
                // queue draining), the batch goes to the raw socket, which drops such packets
                // unseen, as it always did: loss for the protocol to repair, not a sender stuck
                // in this loop.
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) => {
                    let now = Instant::now();
                    let since = *refused_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= super::packet_tx::REFUSED_MAX {
                        tracing::debug!("the packet socket's queue refuses packets: raw socket");
                        link.suspend(now);
                        return Ok(None);
                    }
                    std::thread::sleep(Duration::from_micros(50));
                    continue;
                }
                _ => {
                    tracing::debug!(error = %err, "packet socket refused a packet: raw socket");
                    link.suspend(Instant::now());
                    return Ok(None);
                }
            }
        }
    }

    /// Sends queued packets from `first` on, in one `sendmmsg`; returns how many packets went.
    fn send_from(&mut self, first: usize) -> io::Result<usize> {
        let mut iovs: [MaybeUninit<libc::iovec>; BATCH] = [MaybeUninit::uninit(); BATCH];
        let mut msgs: [MaybeUninit<libc::mmsghdr>; BATCH] = [MaybeUninit::uninit(); BATCH];
        // One `UDP_SEGMENT` control message per message: a cmsghdr and a u16, 8-byte aligned.
        let mut controls = [[0u64; 4]; BATCH];
        // Packets in each message.
        let mut segments = [0usize; BATCH];
        let mut k = first;
        let mut count = 0;
        while k < self.queued {
            let run = self.run_len(k);
            for j in 0..run {
                iovs[k + j].write(libc::iovec {
                    iov_base: self.bufs[k + j].as_mut_ptr().cast(),
                    iov_len: self.lens[k + j],
                });
            }
            // SAFETY: mmsghdr is plain data; all-zero is a valid empty header.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = self.dsts[k].as_ptr() as *mut libc::c_void;
            m.msg_hdr.msg_namelen = self.dsts[k].len();
            m.msg_hdr.msg_iov = iovs[k].as_mut_ptr();
            m.msg_hdr.msg_iovlen = run;
            if run > 1 {
                let control = &mut controls[count];
                m.msg_hdr.msg_control = control.as_mut_ptr().cast();
                // SAFETY: CMSG_SPACE only computes a size; the buffer is 32 bytes, aligned for
                // a cmsghdr, and CMSG_FIRSTHDR points at its start.
                unsafe {
                    m.msg_hdr.msg_controllen = libc::CMSG_SPACE(2) as usize;
                    let c = libc::CMSG_FIRSTHDR(&m.msg_hdr);
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = libc::UDP_SEGMENT;
                    (*c).cmsg_len = libc::CMSG_LEN(2) as usize;
                    std::ptr::write_unaligned(
                        libc::CMSG_DATA(c).cast::<u16>(),
                        self.lens[k] as u16,
                    );
                }
            }
            msgs[count].write(m);
            segments[count] = run;
            count += 1;
            k += run;
        }
        loop {
            // SAFETY: the first `count` entries of msgs, and the iovecs and control buffers
            // they point to, are initialised and point into buffers that outlive the call.
            let rc = unsafe {
                libc::sendmmsg(
                    self.sock.socket().as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    count as libc::c_uint,
                    0,
                )
            };
            if rc >= 0 {
                let sent = rc as usize;
                self.messages_sent += sent as u64;
                return Ok(segments[..sent].iter().sum());
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
                // A kernel or route that cannot segment (older kernels without checksum
                // offload, IPsec): send each datagram on its own from now on.
                Some(libc::EIO) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
                    if self.gso && segments[0] > 1 =>
                {
                    tracing::debug!(
                        "UDP segmentation offload refused ({err}): sending datagrams one by one"
                    );
                    self.gso = false;
                    return self.send_from(first);
                }
                _ => return Err(err),
            }
        }
    }
}
