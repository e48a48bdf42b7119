//! The sender's short way out on an Ethernet route: chunk packets, with an IP header written
//! here, handed to an AF_PACKET socket (packet(7), `SOCK_DGRAM`: the kernel adds the Ethernet
//! header for the next hop's address given with each packet).
//!
//! A raw IP socket sends each packet through the kernel's IP output path: a route lookup, the
//! corking and checksumming copy of `ip_append_data`, netfilter's output hooks, the neighbour
//! layer. For one chunk per 1.5 KB packet that path is most of the sender's own CPU; a packet
//! socket skips it and goes straight to the interface's queueing discipline (which still
//! applies: `tc` shaping holds). Measured on a veth pair here, 1 480-byte packets in `sendmmsg`
//! batches of 64: 2.66 µs of CPU a packet through the raw socket, 1.70 through the packet socket.
//!
//! What it takes, and what happens when something is missing:
//! - the route to the receiver (`ip route get`, for chunk's IP protocol) must be a unicast route
//!   out of an Ethernet interface with a plain gateway (or none), the neighbour table must hold
//!   the next hop's address, and the host must have no IPsec (xfrm) policy, which the packet
//!   socket would bypass. Otherwise packets go through the raw socket. All of it is looked up
//!   again every second, so a changed route, neighbour or policy is followed;
//! - the first batch of a run, and once the packet socket is proven one batch a second, still go
//!   through the raw socket: the sending host's connection tracking then knows the flow (a
//!   stateful firewall there passes the answers), and its neighbour entry for the next hop is
//!   kept confirmed (packets of a packet socket never refresh it);
//! - the packets skip the sending host's own netfilter hooks (output, postrouting). A sender
//!   whose host rewrites chunk's packets there (a source NAT on the sender itself) would send
//!   data the receiver cannot match to its offer: a trial catches that. Unless an answer comes
//!   back that only packets sent this way can have caused, within three seconds (or ten round
//!   trips) of sending this way, the sender goes back to the raw socket for the rest of the run.
//!   `--no-packet-socket` (or `CHUNK_NO_PACKET_SOCKET=1`) never uses it;
//! - a queue that refuses packets for more than 10 ms (`ENOBUFS`: a full qdisc, or a `tc` or
//!   `netdev egress` rule that drops them) sends the batch through the raw socket, which drops
//!   such packets unseen, and the packet socket rests until the next lookup.
//!
//! The packets are the same on the wire either way: the IPv4 header of a raw socket, byte for
//! byte (no options, "don't fragment", identification 0 as Linux gives unconnected DF packets,
//! the TTL of the route or the default: compared on a veth pair), or the IPv6 header with traffic
//! class 0, the route's or the interface's hop limit and a flow label drawn once per sender (RFC
//! 6437: one label for the flow; Linux labels the raw socket's packets with a hash of its own, so
//! offers and data may carry two labels).

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
/// The trial's limit: packets sent this way over at least this long (three initial RTOs), and
/// at least [`TRIAL_RTTS`] round trips, without an answer they caused.
const TRIAL_MIN: Duration = Duration::from_secs(3);
const TRIAL_RTTS: u32 = 10;
/// How long a queue may refuse packets (`ENOBUFS`) before the batch goes to the raw socket.
pub const REFUSED_MAX: Duration = Duration::from_millis(10);

/// Where the frames go: the interface, the next hop's Ethernet address, the MTU, the TTL.
#[derive(Clone, Copy)]
struct Target {
    addr: libc::sockaddr_ll,
    mtu: usize,
    ttl: u8,
}

/// Whether packets sent this way are known to arrive: the trial, apart from the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TrialState {
    /// Not used yet.
    Untried,
    /// Used since then; no answer yet that proves it.
    Since(Instant),
    Confirmed,
    /// Given up: the raw socket for the rest of the run.
    Failed,
}

#[derive(Clone, Debug)]
struct Trial {
    state: TrialState,
    /// The last packet sent this way.
    last_link: Option<Instant>,
    /// The last batch sent through the raw socket.
    last_raw: Option<Instant>,
    srtt: Duration,
}

impl Trial {
    fn new() -> Self {
        Trial {
            state: TrialState::Untried,
            last_link: None,
            last_raw: None,
            srtt: Duration::ZERO,
        }
    }

    fn sent_link(&mut self, now: Instant) {
        if self.state == TrialState::Untried {
            self.state = TrialState::Since(now);
        }
        self.last_link = Some(now);
    }

    fn sent_raw(&mut self, now: Instant) {
        self.last_raw = Some(now);
    }

    /// An answer came at `now`; the path's smoothed round trip is `srtt` (zero: no sample yet).
    /// It proves the packet socket when more than two round trips (and 25 ms, the receiver's
    /// ack delay and then some) have passed since the later of the trial's start and the last
    /// raw batch: every packet it can answer went this way. Without a round-trip sample nothing
    /// is proven.
    fn heard(&mut self, now: Instant, srtt: Duration) {
        if !srtt.is_zero() {
            self.srtt = srtt;
        }
        if let TrialState::Since(t) = self.state
            && !self.srtt.is_zero()
        {
            let since = self.last_raw.map_or(t, |r| r.max(t));
            if now.saturating_duration_since(since) > self.srtt * 2 + Duration::from_millis(25) {
                self.state = TrialState::Confirmed;
            }
        }
    }

    /// Fails the trial once packets have gone this way for its limit with no proof. An idle
    /// sender (a stream waiting for input) sends nothing this way and is not failed for it.
    fn check(&mut self) -> bool {
        if let TrialState::Since(t) = self.state
            && self.last_link.is_some_and(|l| {
                l.saturating_duration_since(t) > TRIAL_MIN.max(self.srtt * TRIAL_RTTS)
            })
        {
            self.state = TrialState::Failed;
            return true;
        }
        false
    }
}

/// An AF_PACKET socket and what it needs to send chunk packets of one family to one host.
pub struct PacketTx {
    sock: OwnedFd,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    /// The TTL (hop limit) of the socket's default, when the route and interface give none.
    default_ttl: u8,
    /// The IP header every packet starts with; its length fields (and IPv4 checksum) are
    /// filled per packet.
    template: [u8; 40],
    target: Option<Target>,
    next_check: Instant,
    retry: Duration,
    trial: Trial,
    /// When a batch is next due through the raw socket (see the module comment).
    next_raw: Option<Instant>,
    /// Whether an answer has come yet.
    answered: bool,
}

impl PacketTx {
    /// A packet socket for chunk packets of IP protocol `protocol` from `src` to `dst`, with
    /// this TTL (hop limit) unless the route or interface has its own. Needs CAP_NET_RAW.
    /// Nothing is looked up yet.
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
            protocol,
            default_ttl: ttl,
            template: ip_template(src, dst, protocol, ttl, rand::random::<u32>() & 0xf_ffff),
            target: None,
            next_check: Instant::now(),
            retry: FIRST_RETRY,
            trial: Trial::new(),
            next_raw: None,
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
        if self.trial.check() {
            tracing::info!(
                "no answer to packets sent through the packet socket: sending through the raw \
                 IP socket from now on (does this host rewrite chunk's packets, a source NAT?)"
            );
        }
        if self.trial.state == TrialState::Failed || now < self.next_check {
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
        if let Some(t) = &self.target {
            if self.dst.is_ipv6() {
                self.template[7] = t.ttl;
            } else {
                self.template[8] = t.ttl;
            }
            self.retry = FIRST_RETRY;
            self.next_check = now + RECHECK;
        } else {
            self.next_check = now + self.retry;
            self.retry = (self.retry * 2).min(RECHECK);
        }
    }

    /// The route, interface and next hop, if packets can go this way now.
    fn resolve(&self) -> io::Result<Option<Target>> {
        // IPsec: the xfrm layer sits in the IP output path the packet socket skips.
        if link::has_xfrm_policy()? {
            return Ok(None);
        }
        let Some(route) = link::route_to(self.dst, Some(self.src), self.protocol)? else {
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
        // As the kernel picks it: the route's hop limit, else (IPv6) the interface's (router
        // advertisements set it), else the default.
        let ttl = route
            .hop_limit
            .or_else(|| {
                self.dst
                    .is_ipv6()
                    .then(|| link::ipv6_interface_hop_limit(route.ifindex))
                    .flatten()
            })
            .unwrap_or(self.default_ttl);
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
            ttl,
        }))
    }

    /// Whether a chunk packet of `len` bytes (without the IP header) can go this way now.
    pub fn can_send(&self, len: usize) -> bool {
        self.trial.state != TrialState::Failed
            && self
                .target
                .is_some_and(|t| len + self.header_len() <= t.mtu)
    }

    /// Whether the next batch is due through the raw socket: the run's first, and once the
    /// packet socket is proven, one a second (see the module comment).
    pub fn raw_due(&self, now: Instant) -> bool {
        self.next_raw.is_none_or(|t| now >= t)
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
        self.trial.sent_link(now);
    }

    /// A batch went through the raw socket at `now`. While the trial runs, the next is due only
    /// if the packet socket cannot take one (a raw batch would delay the proof); once it is
    /// proven, a second later.
    pub fn sent_raw(&mut self, now: Instant) {
        self.trial.sent_raw(now);
        self.next_raw = Some(match self.trial.state {
            TrialState::Confirmed => now + RECHECK,
            _ => now + Duration::from_secs(3600),
        });
    }

    /// An answer came from the receiver at `now`, the path's smoothed round trip being `srtt`
    /// (zero before the first sample): it may prove the packet socket ([`Trial::heard`]).
    pub fn heard(&mut self, now: Instant, srtt: Duration) {
        // The first answer: the kernel has just resolved the receiver (or the gateway) to send
        // what it answers, so look again now rather than at the next retry.
        if !self.answered {
            self.answered = true;
            if self.target.is_none() {
                self.next_check = now;
            }
        }
        let before = self.trial.state;
        self.trial.heard(now, srtt);
        if before != TrialState::Confirmed && self.trial.state == TrialState::Confirmed {
            self.next_raw = Some(now + RECHECK);
        }
    }

    /// Stops sending this way until the next lookup (the kernel refused a packet, or the queue
    /// refused packets for too long).
    pub fn suspend(&mut self, now: Instant) {
        self.target = None;
        self.next_check = now + RECHECK;
    }

    /// Writes the IP header for a chunk packet of `len` bytes into `out`; returns its length.
    pub fn header(&self, len: usize, out: &mut [u8; 40]) -> usize {
        fill_header(&self.template, self.dst.is_ipv6(), len, out)
    }
}

/// `template` with the lengths of a chunk packet of `len` bytes (and the IPv4 checksum), into
/// `out`; returns the header's length.
fn fill_header(template: &[u8; 40], v6: bool, len: usize, out: &mut [u8; 40]) -> usize {
    *out = *template;
    if v6 {
        out[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        40
    } else {
        out[2..4].copy_from_slice(&((len + 20) as u16).to_be_bytes());
        let sum = ipv4_checksum(&out[..20]);
        out[10..12].copy_from_slice(&sum.to_be_bytes());
        20
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
        // a veth pair: 198.18.0.1 → 198.18.0.2, 1 480 bytes of chunk packet, DF, TTL 64, id 0),
        // its checksum computed independently below.
        let mut expected: [u8; 20] = [
            0x45, 0x00, 0x05, 0xdc, 0x00, 0x00, 0x40, 0x00, 0x40, 0xfd, 0x00, 0x00, 198, 18, 0, 1,
            198, 18, 0, 2,
        ];
        let sum = ipv4_checksum(&expected);
        expected[10..12].copy_from_slice(&sum.to_be_bytes());
        let template = ip_template(
            "198.18.0.1".parse().unwrap(),
            "198.18.0.2".parse().unwrap(),
            253,
            64,
            0xabcde,
        );
        let mut out = [0u8; 40];
        assert_eq!(fill_header(&template, false, 1480, &mut out), 20);
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
    fn the_ipv6_header_carries_length_label_protocol_and_hop_limit() {
        let template = ip_template(
            "2001:2::1".parse().unwrap(),
            "2001:2::2".parse().unwrap(),
            253,
            64,
            0xabcde,
        );
        let mut h = [0u8; 40];
        assert_eq!(fill_header(&template, true, 1440, &mut h), 40);
        assert_eq!(&h[..8], &[0x60, 0x0a, 0xbc, 0xde, 0x05, 0xa0, 253, 64]);
        assert_eq!(
            h[8..24],
            "2001:2::1".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(
            h[24..40],
            "2001:2::2".parse::<std::net::Ipv6Addr>().unwrap().octets()
        );
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_trial_is_proven_only_by_answers_no_raw_packet_can_have_caused() {
        let t0 = Instant::now();
        let mut trial = Trial::new();
        trial.sent_raw(t0); // the run's first batch
        trial.sent_link(t0 + ms(1));
        // No round-trip sample yet: nothing is proven, however late.
        trial.heard(t0 + ms(500), Duration::ZERO);
        assert_eq!(trial.state, TrialState::Since(t0 + ms(1)));
        // Within two round trips of the switch the answer may be to the raw batch.
        trial.heard(t0 + ms(30), ms(10));
        assert_eq!(trial.state, TrialState::Since(t0 + ms(1)));
        // A raw batch later (a packet too large, a lookup that failed) starts the wait again.
        trial.sent_raw(t0 + ms(40));
        trial.heard(t0 + ms(60), ms(10));
        assert_eq!(trial.state, TrialState::Since(t0 + ms(1)));
        trial.heard(t0 + ms(90), ms(10));
        assert_eq!(trial.state, TrialState::Confirmed);
        // Proven holds.
        trial.sent_link(t0 + ms(10_000));
        assert!(!trial.check());
        assert_eq!(trial.state, TrialState::Confirmed);
    }

    #[test]
    fn the_trial_fails_after_its_limit_of_sending_but_not_while_idle() {
        let t0 = Instant::now();
        let mut trial = Trial::new();
        trial.sent_link(t0);
        // An idle sender (one offer, then nothing) is not failed for silence.
        assert!(!trial.check());
        trial.sent_link(t0 + ms(2_900));
        assert!(!trial.check());
        trial.sent_link(t0 + ms(3_100));
        assert!(trial.check());
        assert_eq!(trial.state, TrialState::Failed);
        // On a long path the limit is ten round trips.
        let mut trial = Trial::new();
        trial.heard(t0, ms(600)); // a sample, before any packet went this way
        trial.sent_link(t0);
        trial.sent_link(t0 + ms(5_000));
        assert!(!trial.check());
        trial.sent_link(t0 + ms(6_100));
        assert!(trial.check());
    }
}
