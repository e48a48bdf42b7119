//! The sender's short way out on an Ethernet route: chunk packets, with an IP header written
//! here, handed to an AF_PACKET socket (packet(7), `SOCK_DGRAM`: the kernel adds the Ethernet
//! header for the next hop's address given with each packet).
//!
//! A raw IP socket sends each packet through the kernel's IP output path: a route lookup, the
//! corking and checksumming copy of `ip_append_data`, netfilter's output hooks, the neighbour
//! layer. For one chunk per 1.5 KB packet that path is most of the sender's CPU; a packet socket
//! skips it and goes straight to the interface's queueing discipline (which still applies:
//! `tc` shaping holds). Measured on a veth pair here, 1 480-byte packets in `sendmmsg` batches
//! of 64: 2.66 µs of CPU a packet through the raw socket, 1.70 through the packet socket.
//!
//! What it takes, and what happens when something is missing:
//! - the route to the receiver (`ip route get`) must be a unicast route out of an Ethernet
//!   interface, and the neighbour table must hold the next hop's address. Until it does (the
//!   first packets of a first contact resolve it), and on any other kind of route (loopback,
//!   tunnels, WireGuard), packets go through the raw socket. Both are looked up again every
//!   second, so a changed route or neighbour is followed;
//! - the packets skip the sending host's own netfilter hooks (output, postrouting). A sender
//!   whose host rewrites chunk's packets there (a source NAT on the sender itself) would send
//!   data the receiver cannot match to its offer: a trial catches that. Unless an answer comes
//!   back that only packets sent this way can have caused, within a second (or ten round
//!   trips) of the first, the sender goes back to the raw socket for good. `--no-packet-socket`
//!   (or `CHUNK_NO_PACKET_SOCKET=1`) never uses it.
//!
//! The packets are the same on the wire either way: the IPv4 header of a raw socket, byte for
//! byte (no options, "don't fragment", identification 0 as Linux gives unconnected DF packets,
//! the default TTL: compared on a veth pair), or the IPv6 header with traffic class 0, the
//! default hop limit and a flow label drawn once per sender (RFC 6437: one label for the flow;
//! Linux labels the raw socket's packets with a hash of its own, so offers and data may carry
//! two labels).

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use super::link;

/// How often the route and neighbour are looked up again once found.
const RECHECK: Duration = Duration::from_secs(1);
/// The first retry when the next hop is not resolved yet; doubled up to [`RECHECK`].
const FIRST_RETRY: Duration = Duration::from_millis(2);
/// The trial's limit: at least this, and at least [`TRIAL_RTTS`] round trips.
const TRIAL_MIN: Duration = Duration::from_secs(1);
const TRIAL_RTTS: u32 = 10;

/// Where the frames go: the interface, the next hop's Ethernet address, the interface's MTU.
#[derive(Clone, Copy)]
struct Target {
    addr: libc::sockaddr_ll,
    mtu: usize,
}

/// Whether packets sent this way are known to arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Trial {
    /// Not used yet.
    Untried,
    /// Used since then; no answer yet that proves it.
    Since(Instant),
    Confirmed,
    /// Given up: the raw socket from now on.
    Failed,
}

/// An AF_PACKET socket and what it needs to send chunk packets of one family to one host.
pub struct PacketTx {
    sock: OwnedFd,
    src: IpAddr,
    dst: IpAddr,
    /// The IP header every packet starts with; its length fields (and IPv4 checksum) are
    /// filled per packet.
    template: [u8; 40],
    target: Option<Target>,
    next_check: Instant,
    retry: Duration,
    trial: Trial,
    srtt: Duration,
    /// Whether an answer has come yet.
    answered: bool,
}

impl PacketTx {
    /// A packet socket for chunk packets of IP protocol `protocol` from `src` to `dst`, with
    /// this TTL (hop limit). Needs CAP_NET_RAW. Nothing is looked up yet.
    pub fn open(src: IpAddr, dst: IpAddr, protocol: u8, ttl: u8) -> io::Result<Self> {
        if src.is_ipv6() != dst.is_ipv6() {
            return Err(io::Error::other("source and destination of two families"));
        }
        // Protocol 0: the socket receives nothing, it only sends.
        let sock = rustix::net::socket_with(
            rustix::net::AddressFamily::PACKET,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        // Best effort, as for the raw socket: a small buffer only blocks sooner.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(&sock, 4 << 20);
        Ok(PacketTx {
            sock,
            src,
            dst,
            template: ip_template(src, dst, protocol, ttl, rand::random::<u32>() & 0xf_ffff),
            target: None,
            next_check: Instant::now(),
            retry: FIRST_RETRY,
            trial: Trial::Untried,
            srtt: Duration::ZERO,
            answered: false,
        })
    }

    /// The host the packets go to.
    pub fn dst(&self) -> IpAddr {
        self.dst
    }

    /// Bytes of IP header before each chunk packet.
    pub fn header_len(&self) -> usize {
        if self.dst.is_ipv6() { 40 } else { 20 }
    }

    /// Looks the route and the next hop up when it is time to (at once the first time, then
    /// soon while unresolved, every second once resolved), and ends a trial that went on too
    /// long without proof.
    pub fn refresh(&mut self, now: Instant) {
        if let Trial::Since(t) = self.trial
            && now.saturating_duration_since(t) > TRIAL_MIN.max(self.srtt * TRIAL_RTTS)
        {
            tracing::info!(
                "no answer to packets sent through the packet socket: sending through the raw \
                 IP socket (a source NAT on this host?)"
            );
            self.trial = Trial::Failed;
        }
        if self.trial == Trial::Failed || now < self.next_check {
            return;
        }
        let target = self.resolve().unwrap_or_else(|e| {
            tracing::debug!(error = %e, "route lookup for the packet socket");
            None
        });
        if target.is_none() && self.target.is_some() {
            tracing::debug!("the packet socket's next hop is gone: sending through the raw socket");
        }
        self.target = target;
        if self.target.is_some() {
            self.retry = FIRST_RETRY;
            self.next_check = now + RECHECK;
        } else {
            self.next_check = now + self.retry;
            self.retry = (self.retry * 2).min(RECHECK);
        }
    }

    /// The route, interface and next hop, if packets can go this way now.
    fn resolve(&self) -> io::Result<Option<Target>> {
        let Some(route) = link::route_to(self.dst, Some(self.src))? else {
            return Ok(None);
        };
        let Some(mtu) = link::ethernet_mtu(route.ifindex)? else {
            return Ok(None);
        };
        // A path MTU below the interface's (learnt from ICMP since the transfer began) holds
        // packets that no longer fit: they go to the raw socket, whose kernel refuses them
        // with EMSGSIZE, as without the packet socket.
        let mtu = route.mtu.map_or(mtu, |m| m.min(mtu));
        let Some(mac) = link::neighbour_mac(route.ifindex, route.next_hop(self.dst))? else {
            return Ok(None);
        };
        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        let ethertype = if self.dst.is_ipv6() {
            libc::ETH_P_IPV6
        } else {
            libc::ETH_P_IP
        };
        addr.sll_protocol = (ethertype as u16).to_be();
        addr.sll_ifindex = route.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&mac);
        Ok(Some(Target {
            addr,
            mtu: mtu as usize,
        }))
    }

    /// Whether a chunk packet of `len` bytes (without the IP header) can go this way now.
    pub fn can_send(&self, len: usize) -> bool {
        self.trial != Trial::Failed
            && self
                .target
                .is_some_and(|t| len + self.header_len() <= t.mtu)
    }

    /// The address to give `sendmmsg`, valid while `self` is not changed
    /// ([`can_send`](Self::can_send) must have said yes).
    pub fn sockaddr(&self) -> (*const libc::sockaddr_ll, u32) {
        let t = self.target.as_ref().expect("can_send said yes");
        (&t.addr, std::mem::size_of::<libc::sockaddr_ll>() as u32)
    }

    pub fn fd(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Packets went out this way at `now`: the trial starts with the first.
    pub fn sent(&mut self, now: Instant) {
        if self.trial == Trial::Untried {
            self.trial = Trial::Since(now);
        }
    }

    /// An answer came from the receiver at `now`, the path's smoothed round trip being `srtt`.
    /// An answer more than two round trips after the first packet sent this way can only be to
    /// packets sent this way (everything since went so): the trial is over.
    pub fn heard(&mut self, now: Instant, srtt: Duration) {
        self.srtt = srtt;
        // The first answer: the kernel has just resolved the receiver (or the gateway) to send
        // what it answers, so look again now rather than at the next retry.
        if !self.answered {
            self.answered = true;
            if self.target.is_none() {
                self.next_check = now;
            }
        }
        if let Trial::Since(t) = self.trial
            && now.saturating_duration_since(t) > srtt * 2 + Duration::from_millis(25)
        {
            self.trial = Trial::Confirmed;
        }
    }

    /// Stops sending this way until the next lookup (the kernel refused a packet).
    pub fn suspend(&mut self, now: Instant) {
        self.target = None;
        self.next_check = now + RECHECK;
    }

    /// Writes the IP header for a chunk packet of `len` bytes into `out`; returns its length.
    pub fn header(&self, len: usize, out: &mut [u8; 40]) -> usize {
        *out = self.template;
        if self.dst.is_ipv6() {
            out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
            40
        } else {
            out[2..4].copy_from_slice(&((len + 20) as u16).to_be_bytes());
            let sum = ipv4_checksum(&out[..20]);
            out[10..12].copy_from_slice(&sum.to_be_bytes());
            20
        }
    }
}

/// The IP header of every packet, length fields and checksum zero; `flow_label` (20 bits) for
/// IPv6.
fn ip_template(src: IpAddr, dst: IpAddr, protocol: u8, ttl: u8, flow_label: u32) -> [u8; 40] {
    let mut h = [0u8; 40];
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h[0] = 0x45; // version 4, 5 words
            h[6] = 0x40; // don't fragment; identification 0
            h[8] = ttl;
            h[9] = protocol;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // Version 6, traffic class 0, the flow label.
            h[..4].copy_from_slice(&(0x6000_0000 | (flow_label & 0xf_ffff)).to_be_bytes());
            h[6] = protocol;
            h[7] = ttl;
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
        }
        _ => {}
    }
    h
}

/// The IPv4 header checksum (RFC 791, RFC 1071) of `header` with its checksum field zero.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_header_is_the_kernels() {
        // An IPv4 header as a raw socket of protocol 253 sends it (compared with a capture on
        // a veth pair: 198.18.0.1 → 198.18.0.2, 1 480 bytes of chunk packet, DF, TTL 64, id 0).
        let expected: [u8; 20] = [
            0x45, 0x00, 0x05, 0xdc, 0x00, 0x00, 0x40, 0x00, 0x40, 0xfd, 0x00, 0x00, 198, 18, 0, 1,
            198, 18, 0, 2,
        ];
        let mut expected = expected;
        let sum = ipv4_checksum(&expected);
        expected[10..12].copy_from_slice(&sum.to_be_bytes());
        let tx_template = ip_template(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            253,
            64,
            0xabcde,
        );
        let mut out = [0u8; 40];
        out.copy_from_slice(&tx_template);
        // Same as `header` without a socket.
        out[2..4].copy_from_slice(&1500u16.to_be_bytes());
        let s = ipv4_checksum(&out[..20]);
        out[10..12].copy_from_slice(&s.to_be_bytes());
        assert_eq!(out[..20], expected);
        // A header with its checksum in place sums to zero.
        assert_eq!(ipv4_checksum(&out[..20]), 0);
        // RFC 1071's example header sum, independently: 0x4500 0073 0000 4000 4011 0000 c0a8
        // 0001 c0a8 00c7 has checksum 0xb861.
        let rfc = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&rfc), 0xb861);
    }

    #[test]
    fn the_ipv6_header_carries_length_protocol_and_hop_limit() {
        let h = ip_template(
            "2001:2::1".parse().unwrap(),
            "2001:2::2".parse().unwrap(),
            253,
            64,
            0xabcde,
        );
        assert_eq!(&h[..8], &[0x60, 0x0a, 0xbc, 0xde, 0, 0, 253, 64]);
        assert_eq!(
            h[8..24],
            "2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            h[24..40],
            "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn the_trial_ends_with_proof_or_after_its_limit() {
        let Ok(mut tx) = PacketTx::open(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            253,
            64,
        ) else {
            return; // no CAP_NET_RAW: nothing to test here
        };
        let t0 = Instant::now();
        tx.sent(t0);
        // An answer within two round trips may be to packets of the raw socket: no proof.
        tx.heard(t0 + Duration::from_millis(20), Duration::from_millis(10));
        assert_eq!(tx.trial, Trial::Since(t0));
        tx.heard(t0 + Duration::from_millis(50), Duration::from_millis(10));
        assert_eq!(tx.trial, Trial::Confirmed);
        // Confirmed holds; a later silence does not undo it.
        tx.refresh(t0 + Duration::from_secs(5));
        assert_eq!(tx.trial, Trial::Confirmed);

        let mut tx = PacketTx::open(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            253,
            64,
        )
        .unwrap();
        tx.sent(t0);
        tx.refresh(t0 + Duration::from_millis(900));
        assert_eq!(tx.trial, Trial::Since(t0));
        tx.refresh(t0 + Duration::from_millis(1100));
        assert_eq!(tx.trial, Trial::Failed);
        assert!(!tx.can_send(100));
    }
}
