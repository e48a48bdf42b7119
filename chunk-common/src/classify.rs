//! The receive path's checks, in one place for both receive paths: the XDP program calls the
//! step functions on the bytes it read from the frame, and userspace calls [`packet`] (IPv4,
//! chunk's IP protocol: the raw socket path) or [`ip_packet`] (either family, straight over IP
//! or in UDP), which run the same steps in the same order. So a packet is accepted, or dropped
//! for a given [`Counter`], the same way in the kernel and out of it.
//!
//! The order is:
//! 1. the IP layer: IPv4 ([`ipv4`]), or IPv6 ([`ipv6`]) and its extension headers, walked by
//!    [`next_header`], [`ext_header`] and [`fragment`] until [`ipv6_upper`] meets the
//!    upper-layer header;
//! 2. for UDP, the UDP header ([`udp`]);
//! 3. the chunk header ([`header`]);
//! 4. the source allowlist (the caller's: LPM tries in the kernel);
//! 5. the checksum;
//! 6. for a sealed packet, its session ([`session`]: the caller's set of open sessions, a hash
//!    map in the kernel). [`packet`], [`ip_packet`] and [`chunk`] stop before this step: the
//!    set is the receive path's, and a sender's intake has none.
//!
//! A frame that ends before a header whose owner is not known yet (the IP header itself, the
//! UDP header that names the port) passes; one that ends inside what is known to be chunk's
//! (an extension header of an IPv6 packet being walked, the chunk header, the IP packet's
//! length) is `truncated`.

use core::net::IpAddr;

use crate::{
    checksum,
    counters::Counter,
    ring::{TRANSPORT_IP, TRANSPORT_UDP},
    wire::{HEADER_LEN, MAGIC, MessageType, VERSION, envelope, field},
};

/// The bytes of an IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = 20;

/// The bytes of the fixed IPv6 header (extension headers follow it).
pub const IPV6_HLEN: usize = 40;

/// The bytes of a UDP header.
pub const UDP_HLEN: usize = 8;

/// The IP protocol number (and IPv6 next header) of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// The bytes of an IPv6 Fragment header (RFC 8200 4.5).
pub const IPV6_FRAG_HLEN: usize = 8;

/// The most IPv6 extension headers (hop-by-hop, routing, destination options) the XDP program
/// walks before the upper-layer header; a packet with more is dropped as
/// [`Counter::ExtHeaders`]. A bound, so that the verifier's walk of the loop is bounded too.
pub const MAX_EXT_HEADERS: usize = 8;

/// IPv6 extension headers that share the generic layout (RFC 8200 4.3, 4.4, 4.6: next header,
/// then the length in 8-byte units beyond the first 8), which the walk steps over.
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_DEST_OPTS: u8 = 60;
/// The Fragment header, whose next header names the fragmented packet's protocol.
pub const IPV6_FRAGMENT: u8 = 44;

/// The IPv4 flags/fragment-offset bits that mark a fragment: "more fragments" and the offset.
const IP_MF_OR_OFFSET: u16 = 0x3FFF;
/// The IPv4 fragment offset alone: nonzero in every fragment but the first.
const IP_OFFSET: u16 = 0x1FFF;

/// What to do with a packet that is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a chunk packet (another protocol, not IP, UDP to another port): leave it to the
    /// stack.
    Pass,
    /// A chunk packet that is dropped, and why.
    Drop(Counter),
}

impl From<Counter> for Verdict {
    fn from(c: Counter) -> Self {
        Verdict::Drop(c)
    }
}

/// What carries the chunk packet over IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Nothing: chunk's own IP protocol number (IPv4 protocol, IPv6 next header).
    Ip,
    /// UDP, to the receiver's UDP port.
    Udp,
}

impl Transport {
    /// The value of [`RecordHeader::transport`](crate::ring::RecordHeader::transport).
    #[inline(always)]
    pub const fn ring_value(self) -> u8 {
        match self {
            Transport::Ip => TRANSPORT_IP,
            Transport::Udp => TRANSPORT_UDP,
        }
    }
}

/// What the IPv4 header says about a chunk packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// The IP header's length, options included.
    pub header_len: usize,
    /// The IP total length: header and what it carries.
    pub total_len: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Chunk's protocol, or UDP (whose port [`udp`] has yet to check).
    pub transport: Transport,
    /// A first fragment (more-fragments set, offset 0) of a UDP datagram: whether it is chunk's
    /// is known only from the UDP header it carries, so [`udp`] decides.
    pub first_fragment: bool,
}

/// Step 1 (IPv4): whether the first 20 bytes of an IPv4 packet belong to a chunk packet (IP
/// protocol `protocol`, or UDP when `udp_port` is not 0), and whether its IP header can carry
/// one. Fragments of chunk's protocol are dropped: chunk packets are sized to fit the path and
/// never fragmented, so a fragment is junk (or an attack). A UDP fragment after the first
/// carries no port, so nothing says it is chunk's: it passes, as does a UDP packet too short to
/// hold a UDP header.
#[inline(always)]
pub fn ipv4(ip: &[u8; IPV4_MIN_HLEN], protocol: u8, udp_port: u16) -> Result<Ipv4Info, Verdict> {
    if ip[0] >> 4 != 4 {
        return Err(Verdict::Pass);
    }
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    let (transport, first_fragment) = if ip[9] == protocol {
        if frag & IP_MF_OR_OFFSET != 0 {
            return Err(Counter::Fragment.into());
        }
        if header_len < IPV4_MIN_HLEN || total_len < header_len + HEADER_LEN {
            return Err(Counter::Truncated.into());
        }
        (Transport::Ip, false)
    } else if ip[9] == IPPROTO_UDP && udp_port != 0 {
        if frag & IP_OFFSET != 0 || header_len < IPV4_MIN_HLEN || total_len < header_len + UDP_HLEN
        {
            return Err(Verdict::Pass);
        }
        (Transport::Udp, frag & IP_MF_OR_OFFSET != 0)
    } else {
        return Err(Verdict::Pass);
    };
    Ok(Ipv4Info {
        header_len,
        total_len,
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        transport,
        first_fragment,
    })
}

/// What the fixed IPv6 header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Info {
    /// The payload length: extension headers and upper-layer packet, not the fixed header.
    pub payload_len: usize,
    /// The first extension header's or the upper-layer header's type.
    pub next_header: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}

/// Step 1 (IPv6): the fixed 40-byte header. A payload length of 0 is a jumbogram's (RFC 2675,
/// the real length is in a hop-by-hop option) or an empty packet: chunk sends neither, so it
/// passes rather than being walked.
#[inline(always)]
pub fn ipv6(ip: &[u8; IPV6_HLEN]) -> Result<Ipv6Info, Verdict> {
    let payload_len = u16::from_be_bytes([ip[4], ip[5]]) as usize;
    if ip[0] >> 4 != 6 || payload_len == 0 {
        return Err(Verdict::Pass);
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    Ok(Ipv6Info {
        payload_len,
        next_header: ip[6],
        src,
        dst,
    })
}

/// What an IPv6 next-header value is to the receiver ([`next_header`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The upper-layer header: the chunk header itself, or UDP.
    Upper(Transport),
    /// An extension header to step over ([`ext_header`]).
    Ext,
    /// A Fragment header ([`fragment`]).
    Fragment,
}

/// Step 1a (IPv6), once per header in the chain: what next header `nh` is. Any protocol other
/// than chunk's (or UDP with a port set) passes, untouched.
#[inline(always)]
pub fn next_header(nh: u8, protocol: u8, udp_port: u16) -> Result<Next, Verdict> {
    if nh == protocol {
        Ok(Next::Upper(Transport::Ip))
    } else if nh == IPPROTO_UDP && udp_port != 0 {
        Ok(Next::Upper(Transport::Udp))
    } else if nh == IPV6_HOP_BY_HOP || nh == IPV6_ROUTING || nh == IPV6_DEST_OPTS {
        Ok(Next::Ext)
    } else if nh == IPV6_FRAGMENT {
        Ok(Next::Fragment)
    } else {
        Err(Verdict::Pass)
    }
}

/// Step 1b (IPv6): an extension header's first two bytes, with `walked` bytes of extension
/// headers before it. Returns the next header and the bytes walked after this one; an
/// extension header that runs past the payload length is `truncated`.
#[inline(always)]
pub fn ext_header(
    hdr: &[u8; 2],
    walked: usize,
    payload_len: usize,
) -> Result<(u8, usize), Counter> {
    let walked = walked + (hdr[1] as usize + 1) * 8;
    if walked > payload_len {
        return Err(Counter::Truncated);
    }
    Ok((hdr[0], walked))
}

/// Step 1c (IPv6): a Fragment header. A fragment of chunk's protocol is dropped (as an IPv4
/// one is); one of another protocol, or a later fragment of UDP, passes. `Ok` means a first
/// fragment of UDP: whether it is chunk's is up to its port, in the UDP header right after this
/// one, which [`udp`] checks with `first_fragment` set (it is never accepted).
#[inline(always)]
pub fn fragment(frag: &[u8; IPV6_FRAG_HLEN], protocol: u8, udp_port: u16) -> Result<(), Verdict> {
    let nh = frag[0];
    if nh == protocol {
        return Err(Counter::Fragment.into());
    }
    let offset = u16::from_be_bytes([frag[2], frag[3]]) >> 3;
    if nh == IPPROTO_UDP && udp_port != 0 && offset == 0 {
        Ok(())
    } else {
        Err(Verdict::Pass)
    }
}

/// Step 1d (IPv6): the upper-layer header is met after `walked` bytes of extension headers.
/// Returns the bytes left for it. Too short for a chunk header is `truncated`; too short for a
/// UDP header passes (nothing says whose it is).
#[inline(always)]
pub fn ipv6_upper(
    transport: Transport,
    walked: usize,
    payload_len: usize,
) -> Result<usize, Verdict> {
    let left = payload_len - walked;
    match transport {
        Transport::Ip if left < HEADER_LEN => Err(Counter::Truncated.into()),
        Transport::Udp if left < UDP_HLEN => Err(Verdict::Pass),
        _ => Ok(left),
    }
}

/// Step 2 (UDP, either family): the UDP header, given what the IP layer leaves for it
/// (`l4_len`: UDP header and chunk packet) and the receiver's port (not 0). Returns the source
/// port, where the sender listens (behind a NAT, the only way back). Another destination port
/// passes. The UDP length must be the IP layer's: shorter than a chunk header is `truncated`,
/// as an IPv4 total length too short for one is; otherwise a disagreement is `bad_length`, as
/// one between the chunk header and the IP length is. The UDP checksum is not checked: under
/// checksum offload (and on veth) XDP may see a partial one, and the chunk checksum covers the
/// chunk packet anyway.
#[inline(always)]
pub fn udp(
    udp: &[u8; UDP_HLEN],
    l4_len: usize,
    port: u16,
    first_fragment: bool,
) -> Result<u16, Verdict> {
    if port == 0 || u16::from_be_bytes([udp[2], udp[3]]) != port {
        return Err(Verdict::Pass);
    }
    if first_fragment {
        return Err(Counter::Fragment.into());
    }
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if len < UDP_HLEN + HEADER_LEN {
        return Err(Counter::Truncated.into());
    }
    if len != l4_len {
        return Err(Counter::BadLength.into());
    }
    Ok(u16::from_be_bytes([udp[0], udp[1]]))
}

/// Step 4, before the allowlist: a sender in UDP must be answerable, so its source port is not
/// 0 (RFC 768 lets a sender that wants no answers send from 0). Counted with the allowlist's
/// refusals: the source is not one chunk admits.
#[inline(always)]
pub fn answerable(transport: Transport, src_port: u16) -> Result<(), Counter> {
    if transport == Transport::Udp && src_port == 0 {
        return Err(Counter::NotAllowed);
    }
    Ok(())
}

/// Step 4 too, for IPv6: a source that no IPv6 packet may have — multicast, or IPv4-mapped
/// (`::ffff:0:0/96`, RFC 4291 2.5.5.2: never on the wire; taken as its IPv4 address it would
/// join an IPv4 peer's transfers and slip past an IPv6-only allowlist). The kernel's own stack
/// drops both before any socket sees them; the XDP program runs before it and must refuse them
/// itself.
#[inline(always)]
pub fn ipv6_source(src: &[u8; 16]) -> Result<(), Counter> {
    let mapped = src[..10] == [0; 10] && src[10] == 0xff && src[11] == 0xff;
    if src[0] == 0xff || mapped {
        return Err(Counter::NotAllowed);
    }
    Ok(())
}

/// Step 3: the chunk header, given the length the IP (and UDP) headers give the chunk packet
/// (`l4_len`: what is left after them). Returns the payload length.
#[inline(always)]
pub fn header(hdr: &[u8; HEADER_LEN], l4_len: usize, max_payload: usize) -> Result<usize, Counter> {
    if u16::from_be_bytes([hdr[0], hdr[1]]) != MAGIC || hdr[field::VERSION] != VERSION {
        return Err(Counter::BadMagic);
    }
    let t = hdr[field::MSG_TYPE];
    if MessageType::from_u8(t).is_none() && !crate::wire::envelope::is_envelope(t) {
        return Err(Counter::BadType);
    }
    let payload_len = u16::from_be_bytes([hdr[6], hdr[7]]) as usize;
    if HEADER_LEN + payload_len != l4_len || payload_len > max_payload {
        return Err(Counter::BadLength);
    }
    Ok(payload_len)
}

/// The checksum the header carries.
#[inline(always)]
pub fn carried_checksum(hdr: &[u8; HEADER_LEN]) -> u32 {
    u32::from_be_bytes([hdr[16], hdr[17], hdr[18], hdr[19]])
}

/// Step 6, after the checksum: a sealed packet ([`envelope::SEALED`]) must name a session that
/// `open` says the receiver has, or it is `unknown_session` (forged or stale: dropped before it
/// costs an AEAD open). Any other type is not looked at. The session id is the transfer id
/// field read big-endian, as [`session_id`] reads it.
#[inline(always)]
pub fn session(hdr: &[u8; HEADER_LEN], open: impl FnOnce(u32) -> bool) -> Result<(), Counter> {
    if hdr[field::MSG_TYPE] == envelope::SEALED && !open(session_id(hdr)) {
        return Err(Counter::UnknownSession);
    }
    Ok(())
}

/// The session id of a sealed packet: its transfer id field.
#[inline(always)]
pub fn session_id(hdr: &[u8; HEADER_LEN]) -> u32 {
    u32::from_be_bytes([hdr[8], hdr[9], hdr[10], hdr[11]])
}

/// An IPv4 packet the checks accepted: where its chunk packet is in the buffer, and its
/// addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub ip: Ipv4Info,
    /// The chunk packet (header and payload) within the buffer given to [`packet`].
    pub chunk: core::ops::Range<usize>,
}

/// Every step, for a whole IPv4 packet of chunk's IP protocol in memory (the raw socket path):
/// [`ip_packet`] without UDP, for IPv4 only (an IPv6 packet passes).
pub fn packet(
    buf: &mut [u8],
    protocol: u8,
    max_payload: usize,
    allowed: impl FnOnce([u8; 4]) -> bool,
) -> Result<Accepted, Verdict> {
    if buf.first().is_none_or(|b| b >> 4 != 4) {
        return Err(Verdict::Pass);
    }
    let a = ip_packet(buf, protocol, 0, max_payload, |src| match src {
        IpAddr::V4(a) => allowed(a.octets()),
        IpAddr::V6(_) => false,
    })?;
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (a.src, a.dst) else {
        unreachable!("an IPv4 packet has IPv4 addresses");
    };
    Ok(Accepted {
        ip: Ipv4Info {
            header_len: a.chunk.start,
            total_len: a.chunk.end,
            src: src.octets(),
            dst: dst.octets(),
            transport: Transport::Ip,
            first_fragment: false,
        },
        chunk: a.chunk,
    })
}

/// A packet of either family, over IP or in UDP, that the checks accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptedIp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub transport: Transport,
    /// The UDP source port (0 for [`Transport::Ip`]).
    pub src_port: u16,
    /// The chunk packet (header and payload) within the buffer given to [`ip_packet`].
    pub chunk: core::ops::Range<usize>,
}

/// What the IP layer of either family left: where the upper-layer header starts and the IP
/// packet ends, within the buffer.
struct IpLayer {
    header_len: usize,
    total_len: usize,
    transport: Transport,
    first_fragment: bool,
    src: IpAddr,
    dst: IpAddr,
}

/// Every step, for a whole IP packet in memory (IPv4 or IPv6, by its version; chunk's IP
/// protocol, or UDP to `udp_port` when that is not 0), exactly as the XDP program takes it
/// after the Ethernet header: the IP layer, UDP, chunk header, `allowed(source)`, then the
/// checksum, which it checks and zeroes in place so that the result is exactly what the XDP
/// program hands over (parse it with
/// [`Repr::parse_checksum_already_checked`](crate::wire::Repr::parse_checksum_already_checked)).
/// The buffer may be longer than the IP packet (Ethernet padding), never shorter.
pub fn ip_packet(
    buf: &mut [u8],
    protocol: u8,
    udp_port: u16,
    max_payload: usize,
    allowed: impl FnOnce(IpAddr) -> bool,
) -> Result<AcceptedIp, Verdict> {
    let ip = match buf.first().map(|b| b >> 4) {
        Some(4) => {
            let Some(h) = buf.first_chunk::<IPV4_MIN_HLEN>() else {
                return Err(Verdict::Pass);
            };
            let i = ipv4(h, protocol, udp_port)?;
            IpLayer {
                header_len: i.header_len,
                total_len: i.total_len,
                transport: i.transport,
                first_fragment: i.first_fragment,
                src: i.src.into(),
                dst: i.dst.into(),
            }
        }
        Some(6) => ipv6_layer(buf, protocol, udp_port)?,
        _ => return Err(Verdict::Pass),
    };
    let mut l4 = ip.header_len;
    let mut src_port = 0;
    if ip.transport == Transport::Udp {
        let Some(u) = buf.get(l4..).and_then(|b| b.first_chunk::<UDP_HLEN>()) else {
            return Err(Verdict::Pass);
        };
        src_port = udp(u, ip.total_len - l4, udp_port, ip.first_fragment)?;
        l4 += UDP_HLEN;
    }
    if buf.len() < ip.total_len {
        return Err(Counter::Truncated.into());
    }
    let chunk = l4..ip.total_len;
    let Some(hdr) = buf[chunk.clone()].first_chunk::<HEADER_LEN>() else {
        return Err(Counter::Truncated.into());
    };
    header(hdr, chunk.len(), max_payload)?;
    let expected = carried_checksum(hdr);
    answerable(ip.transport, src_port)?;
    if let IpAddr::V6(a) = ip.src {
        ipv6_source(&a.octets())?;
    }
    if !allowed(ip.src) {
        return Err(Counter::NotAllowed.into());
    }
    buf[chunk.start + field::CHECKSUM.start..chunk.start + field::CHECKSUM.end].fill(0);
    if checksum::checksum(&buf[chunk.clone()]) != expected {
        return Err(Counter::BadChecksum.into());
    }
    Ok(AcceptedIp {
        src: ip.src,
        dst: ip.dst,
        transport: ip.transport,
        src_port,
        chunk,
    })
}

/// The IPv6 steps over a buffer, as the XDP program walks the frame: fixed header, then
/// extension headers up to [`MAX_EXT_HEADERS`], until the upper-layer header.
fn ipv6_layer(buf: &[u8], protocol: u8, udp_port: u16) -> Result<IpLayer, Verdict> {
    let Some(h) = buf.first_chunk::<IPV6_HLEN>() else {
        return Err(Verdict::Pass);
    };
    let ip = ipv6(h)?;
    let at = |o: usize| buf.get(IPV6_HLEN + o..).unwrap_or_default();
    let mut nh = ip.next_header;
    let mut walked = 0;
    let mut n = 0;
    let transport = loop {
        match next_header(nh, protocol, udp_port)? {
            Next::Upper(t) => break t,
            Next::Fragment => {
                let f = at(walked).first_chunk::<IPV6_FRAG_HLEN>();
                let Some(f) = f.filter(|_| walked + IPV6_FRAG_HLEN <= ip.payload_len) else {
                    return Err(Counter::Truncated.into());
                };
                fragment(f, protocol, udp_port)?;
                let u = at(walked + IPV6_FRAG_HLEN).first_chunk::<UDP_HLEN>();
                let fits = walked + IPV6_FRAG_HLEN + UDP_HLEN <= ip.payload_len;
                let Some(u) = u.filter(|_| fits) else {
                    return Err(Verdict::Pass);
                };
                return Err(udp(u, 0, udp_port, true).err().unwrap_or(Verdict::Pass));
            }
            Next::Ext => {
                if n == MAX_EXT_HEADERS {
                    return Err(Counter::ExtHeaders.into());
                }
                let Some(e) = at(walked).first_chunk::<2>() else {
                    return Err(Counter::Truncated.into());
                };
                (nh, walked) = ext_header(e, walked, ip.payload_len)?;
                n += 1;
            }
        }
    };
    ipv6_upper(transport, walked, ip.payload_len)?;
    Ok(IpLayer {
        header_len: IPV6_HLEN + walked,
        total_len: IPV6_HLEN + ip.payload_len,
        transport,
        first_fragment: false,
        src: ip.src.into(),
        dst: ip.dst.into(),
    })
}

/// The steps after the IP (and UDP) headers, for a bare chunk packet, as an IPv6 raw socket or a
/// UDP socket delivers it (the kernel has taken the headers off): chunk header and lengths
/// (`buf` is exactly the chunk packet), `allowed` (the caller's view of the source), then the
/// checksum, checked and zeroed in place as [`packet`] does.
pub fn chunk(buf: &mut [u8], max_payload: usize, allowed: bool) -> Result<(), Counter> {
    let Some(hdr) = buf.first_chunk::<HEADER_LEN>() else {
        return Err(Counter::Truncated);
    };
    header(hdr, buf.len(), max_payload)?;
    let expected = carried_checksum(hdr);
    if !allowed {
        return Err(Counter::NotAllowed);
    }
    buf[field::CHECKSUM].fill(0);
    if checksum::checksum(buf) != expected {
        return Err(Counter::BadChecksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Message, Repr};
    use core::net::Ipv6Addr;

    const PROTO: u8 = 253;
    const PORT: u16 = 4790;

    /// An IPv4 packet (no options) from 198.18.0.1 to 198.18.0.2 around a chunk packet.
    fn ipv4_packet(chunk: &[u8]) -> Vec<u8> {
        ipv4_carrying(PROTO, chunk)
    }

    /// An IPv4 packet (no options, DF) of IP protocol `proto` from 198.18.0.1 to 198.18.0.2.
    fn ipv4_carrying(proto: u8, l4: &[u8]) -> Vec<u8> {
        let total = (IPV4_MIN_HLEN + l4.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(l4);
        p
    }

    const SRC6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

    /// An IPv6 packet from 2001:2::1 to 2001:2::2 with next header `nh` and this payload
    /// (extension headers and upper-layer packet).
    fn ipv6_packet(nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 0, nh, 64];
        p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&SRC6);
        p.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        p.extend_from_slice(payload);
        p
    }

    /// A generic extension header of `units + 1` 8-byte units (the rest is Pad1 options).
    fn ext(nh: u8, units: u8) -> Vec<u8> {
        let mut e = vec![0u8; (units as usize + 1) * 8];
        e[0] = nh;
        e[1] = units;
        e
    }

    /// A Fragment header: next header `nh`, fragment offset `offset` (8-byte units), M flag.
    fn frag(nh: u8, offset: u16, more: bool) -> Vec<u8> {
        let o = (offset << 3) | u16::from(more);
        let mut f = vec![nh, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        f[2..4].copy_from_slice(&o.to_be_bytes());
        f
    }

    /// A UDP datagram from port 40000 to `dst` around a chunk packet. The checksum is junk on
    /// purpose: it is not checked.
    fn udp_datagram(dst: u16, chunk: &[u8]) -> Vec<u8> {
        let mut u = vec![0x9c, 0x40, 0, 0, 0, 0, 0x12, 0x34];
        u[2..4].copy_from_slice(&dst.to_be_bytes());
        u[4..6].copy_from_slice(&((UDP_HLEN + chunk.len()) as u16).to_be_bytes());
        u.extend_from_slice(chunk);
        u
    }

    fn data_packet(payload: &[u8]) -> Vec<u8> {
        let repr = Repr {
            transfer_id: 7,
            seq: 3,
            flags: 0,
            message: Message::Data { payload },
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        buf
    }

    fn run(buf: &mut [u8]) -> Result<Accepted, Verdict> {
        packet(buf, PROTO, 4000, |_| true)
    }

    /// [`ip_packet`] with UDP on [`PORT`] and every source allowed.
    fn run_any(buf: &mut [u8]) -> Result<AcceptedIp, Verdict> {
        ip_packet(buf, PROTO, PORT, 4000, |_| true)
    }

    /// The verdict on `good` after `f` changed it.
    fn verdict(good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Result<AcceptedIp, Verdict> {
        let mut p = good.to_vec();
        f(&mut p);
        run_any(&mut p)
    }

    /// IPv6 sources no packet may have are refused even with every source allowed: a mapped
    /// IPv4 address (it would pass for an IPv4 peer) and a multicast one; the Fragment header
    /// must lie within the payload length.
    #[test]
    fn mapped_and_multicast_ipv6_sources_are_refused() {
        let good = ipv6_packet(PROTO, &data_packet(b"v6"));
        assert!(verdict(&good, |_| {}).is_ok());
        let mapped = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 18, 0, 1];
        assert_eq!(
            verdict(&good, |p| p[8..24].copy_from_slice(&mapped)).unwrap_err(),
            Counter::NotAllowed.into()
        );
        assert_eq!(
            verdict(&good, |p| p[8] = 0xff).unwrap_err(),
            Counter::NotAllowed.into()
        );
        // A Fragment header in the Ethernet padding after a packet that claims none of it.
        let mut padded = ipv6_packet(44, &[]);
        padded[4..6].copy_from_slice(&4u16.to_be_bytes());
        padded.extend_from_slice(&[0; 4]);
        padded.extend_from_slice(&frag(PROTO, 0, false));
        assert_eq!(run_any(&mut padded).unwrap_err(), Counter::Truncated.into());
    }

    fn defect(good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> Verdict {
        verdict(good, f).unwrap_err()
    }

    fn set_be16(p: &mut [u8], at: usize, v: u16) {
        p[at..at + 2].copy_from_slice(&v.to_be_bytes());
    }

    fn be16(p: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([p[at], p[at + 1]])
    }

    /// Adds `d` to the big-endian u16 at `at`.
    fn bump(p: &mut [u8], at: usize, d: i16) {
        let v = be16(p, at).wrapping_add_signed(d);
        set_be16(p, at, v);
    }

    #[test]
    fn accepts_a_valid_packet_and_zeroes_its_checksum() {
        let chunk = data_packet(b"hello");
        let mut p = ipv4_packet(&chunk);
        let a = run(&mut p).unwrap();
        assert_eq!(a.chunk, 20..20 + chunk.len());
        assert_eq!(a.ip.src, [198, 18, 0, 1]);
        let got = Repr::parse_checksum_already_checked(&p[a.chunk]).unwrap();
        assert_eq!(got.message, Message::Data { payload: b"hello" });
    }

    #[test]
    fn each_defect_has_its_counter() {
        let chunk = data_packet(b"hello world");
        let good = ipv4_packet(&chunk);
        let case = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut p = good.clone();
            f(&mut p);
            run(&mut p).unwrap_err()
        };
        assert_eq!(case(&|p| p[9] = 17), Verdict::Pass);
        assert_eq!(case(&|p| p[0] = 0x65), Verdict::Pass);
        assert_eq!(case(&|p| p[6] = 0x20), Counter::Fragment.into());
        assert_eq!(case(&|p| p[7] = 1), Counter::Fragment.into());
        assert_eq!(case(&|p| p[0] = 0x44), Counter::Truncated.into());
        assert_eq!(case(&|p| p.truncate(30)), Counter::Truncated.into());
        assert_eq!(case(&|p| p[20] ^= 1), Counter::BadMagic.into());
        assert_eq!(case(&|p| p[22] = 9), Counter::BadMagic.into());
        assert_eq!(case(&|p| p[23] = 0xEE), Counter::BadType.into());
        assert_eq!(case(&|p| p[27] += 1), Counter::BadLength.into());
        assert_eq!(
            case(&|p| *p.last_mut().unwrap() ^= 0x80),
            Counter::BadChecksum.into()
        );
        let mut p = good.clone();
        assert_eq!(
            packet(&mut p, PROTO, 4, |_| true).unwrap_err(),
            Counter::BadLength.into()
        );
        let mut p = good.clone();
        assert_eq!(
            packet(&mut p, PROTO, 4000, |src| src == [10, 0, 0, 1]).unwrap_err(),
            Counter::NotAllowed.into()
        );
    }

    #[test]
    fn a_bare_chunk_packet_gets_the_same_checks() {
        let good = data_packet(b"bare");
        let mut p = good.clone();
        assert_eq!(chunk(&mut p, 4000, true), Ok(()));
        assert_eq!(p[field::CHECKSUM], [0; 4]);
        let got = Repr::parse_checksum_already_checked(&p).unwrap();
        assert_eq!(got.message, Message::Data { payload: b"bare" });
        let case = |f: &dyn Fn(&mut Vec<u8>), allowed: bool| {
            let mut p = good.clone();
            f(&mut p);
            chunk(&mut p, 4000, allowed).unwrap_err()
        };
        assert_eq!(case(&|p| p.truncate(19), true), Counter::Truncated);
        assert_eq!(case(&|p| p[0] ^= 1, true), Counter::BadMagic);
        assert_eq!(case(&|p| p.push(0), true), Counter::BadLength);
        assert_eq!(case(&|_| {}, false), Counter::NotAllowed);
        assert_eq!(case(&|p| p[21] ^= 4, true), Counter::BadChecksum);
    }

    #[test]
    fn a_sealed_packet_must_name_an_open_session() {
        // Magic, version, type 7 (sealed); session id 0x12345678 in the transfer id field.
        let mut hdr: [u8; HEADER_LEN] = [
            0x43, 0x4B, 2, 7, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 1, 0, 0, 0, 0,
        ];
        assert_eq!(header(&hdr, HEADER_LEN, 4000), Ok(0));
        assert_eq!(session_id(&hdr), 0x1234_5678);
        assert_eq!(session(&hdr, |sid| sid == 0x1234_5678), Ok(()));
        assert_eq!(session(&hdr, |_| false), Err(Counter::UnknownSession));
        // Handshakes open sessions, and the plain types have none: not looked at.
        for t in [1, 2, 3, 4, 5, 6, envelope::HANDSHAKE] {
            hdr[field::MSG_TYPE] = t;
            assert_eq!(session(&hdr, |_| false), Ok(()), "type {t}");
        }
    }

    #[test]
    fn options_and_ethernet_padding_are_handled() {
        let chunk = data_packet(b"opt");
        let mut p = ipv4_packet(&chunk);
        // Four bytes of options (NOPs): IHL 6.
        p.splice(20..20, [1u8, 1, 1, 1]);
        p[0] = 0x46;
        let total = (p.len() as u16).to_be_bytes();
        p[2..4].copy_from_slice(&total);
        p.extend_from_slice(&[0; 6]); // padding after the IP packet
        let a = run(&mut p).unwrap();
        assert_eq!(a.chunk, 24..24 + chunk.len());
    }

    #[test]
    fn the_ipv4_wrapper_takes_neither_ipv6_nor_udp() {
        let chunk = data_packet(b"v4 only");
        let mut v6 = ipv6_packet(PROTO, &chunk);
        assert_eq!(run(&mut v6).unwrap_err(), Verdict::Pass);
        let mut u = ipv4_carrying(IPPROTO_UDP, &udp_datagram(PORT, &chunk));
        assert_eq!(run(&mut u).unwrap_err(), Verdict::Pass);
        // What it takes, it takes as chunk straight over IP.
        let mut a = ipv4_packet(&chunk);
        let new = run_any(&mut a).unwrap();
        assert_eq!(new.chunk, 20..20 + chunk.len());
        assert_eq!((new.transport, new.src_port), (Transport::Ip, 0));
    }

    #[test]
    fn accepts_ipv6_with_and_without_extension_headers() {
        let chunk = data_packet(b"six");
        let mut p = ipv6_packet(PROTO, &chunk);
        let a = run_any(&mut p).unwrap();
        assert_eq!(a.chunk, 40..40 + chunk.len());
        assert_eq!(a.src, IpAddr::V6(Ipv6Addr::from(SRC6)));
        assert_eq!(a.dst, "2001:2::2".parse::<IpAddr>().unwrap());
        assert_eq!((a.transport, a.src_port), (Transport::Ip, 0));
        let got = Repr::parse_checksum_already_checked(&p[a.chunk]).unwrap();
        assert_eq!(got.message, Message::Data { payload: b"six" });

        // Hop-by-hop (8 bytes), routing (24), destination options (16), then chunk.
        let mut payload = ext(IPV6_ROUTING, 0);
        payload.extend(ext(IPV6_DEST_OPTS, 2));
        payload.extend(ext(PROTO, 1));
        payload.extend_from_slice(&chunk);
        let mut p = ipv6_packet(IPV6_HOP_BY_HOP, &payload);
        p.extend_from_slice(&[0; 5]); // Ethernet padding
        let a = run_any(&mut p).unwrap();
        assert_eq!(a.chunk, 88..88 + chunk.len());
    }

    /// `n` destination-options headers, then chunk's packet.
    fn with_ext_headers(n: usize, chunk: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        for i in 0..n {
            payload.extend(ext(if i + 1 == n { PROTO } else { IPV6_DEST_OPTS }, 0));
        }
        payload.extend_from_slice(chunk);
        ipv6_packet(if n == 0 { PROTO } else { IPV6_DEST_OPTS }, &payload)
    }

    #[test]
    fn at_most_max_ext_headers_are_walked() {
        let chunk = data_packet(b"deep");
        let mut p = with_ext_headers(MAX_EXT_HEADERS, &chunk);
        assert_eq!(
            run_any(&mut p).unwrap().chunk.start,
            40 + 8 * MAX_EXT_HEADERS
        );
        let mut p = with_ext_headers(MAX_EXT_HEADERS + 1, &chunk);
        assert_eq!(run_any(&mut p).unwrap_err(), Counter::ExtHeaders.into());
        // Whatever the upper layer would have been: the walk stops first.
        let mut p = with_ext_headers(MAX_EXT_HEADERS + 1, &chunk);
        p[40 + 8 * MAX_EXT_HEADERS] = 6;
        assert_eq!(run_any(&mut p).unwrap_err(), Counter::ExtHeaders.into());
    }

    #[test]
    fn each_ipv6_defect_has_its_counter() {
        let chunk = data_packet(b"hello six");
        let good = ipv6_packet(PROTO, &chunk);
        let one_ext = with_ext_headers(1, &chunk);
        assert_eq!(defect(&good, |p| p[0] = 0x40), Verdict::Pass);
        // Other upper layers: TCP, ICMPv6, no next header; UDP with UDP off.
        for nh in [6, 58, 59] {
            assert_eq!(defect(&good, |p| p[6] = nh), Verdict::Pass);
            assert_eq!(defect(&one_ext, |p| p[40] = nh), Verdict::Pass);
        }
        let mut p = ipv6_packet(IPPROTO_UDP, &udp_datagram(PORT, &chunk));
        assert_eq!(
            ip_packet(&mut p, PROTO, 0, 4000, |_| true).unwrap_err(),
            Verdict::Pass
        );
        // A jumbogram's zero payload length.
        assert_eq!(defect(&good, |p| set_be16(p, 4, 0)), Verdict::Pass);
        // Lengths: the IP packet longer than the buffer, or too short for a chunk header.
        assert_eq!(defect(&good, |p| bump(p, 4, 1)), Counter::Truncated.into());
        assert_eq!(defect(&good, |p| p.truncate(50)), Counter::Truncated.into());
        assert_eq!(
            defect(&good, |p| set_be16(p, 4, 19)),
            Counter::Truncated.into()
        );
        assert_eq!(
            defect(&good, |p| {
                bump(p, 4, 1);
                p.push(0)
            }),
            Counter::BadLength.into()
        );
        // An extension header running past the payload length, or past the buffer.
        assert_eq!(defect(&one_ext, |p| p[41] = 200), Counter::Truncated.into());
        assert_eq!(
            defect(&one_ext, |p| {
                p.truncate(41);
            }),
            Counter::Truncated.into()
        );
        // The chunk header after extension headers.
        assert_eq!(defect(&one_ext, |p| p[48] ^= 1), Counter::BadMagic.into());
        assert_eq!(defect(&good, |p| p[43] = 0xEE), Counter::BadType.into());
        assert_eq!(
            defect(&one_ext, |p| *p.last_mut().unwrap() ^= 1),
            Counter::BadChecksum.into()
        );
        let mut p = good.clone();
        assert_eq!(
            ip_packet(&mut p, PROTO, PORT, 4000, |src| src.is_ipv4()).unwrap_err(),
            Counter::NotAllowed.into()
        );
    }

    #[test]
    fn ipv6_fragments_are_dropped_when_they_are_chunks_and_passed_otherwise() {
        let chunk = data_packet(b"frag");
        let fragmented = |f: Vec<u8>, upper: &[u8], hop: bool| {
            let mut payload = if hop { ext(44, 0) } else { Vec::new() };
            payload.extend(f);
            payload.extend_from_slice(upper);
            ipv6_packet(if hop { IPV6_HOP_BY_HOP } else { 44 }, &payload)
        };
        let frag_case = |f: Vec<u8>, upper: &[u8], hop: bool| {
            run_any(&mut fragmented(f, upper, hop)).unwrap_err()
        };
        let ours = udp_datagram(PORT, &chunk);
        let theirs = udp_datagram(53, &chunk);
        for hop in [false, true] {
            for (offset, more) in [(0, true), (0, false), (100, false)] {
                assert_eq!(
                    frag_case(frag(PROTO, offset, more), &chunk, hop),
                    Counter::Fragment.into()
                );
                assert_eq!(frag_case(frag(6, offset, more), &chunk, hop), Verdict::Pass);
            }
            assert_eq!(
                frag_case(frag(IPPROTO_UDP, 0, true), &ours, hop),
                Counter::Fragment.into()
            );
            assert_eq!(
                frag_case(frag(IPPROTO_UDP, 0, true), &theirs, hop),
                Verdict::Pass
            );
            // A later fragment has no UDP header; nor has a first one cut short.
            assert_eq!(
                frag_case(frag(IPPROTO_UDP, 1, false), &ours, hop),
                Verdict::Pass
            );
            assert_eq!(
                frag_case(frag(IPPROTO_UDP, 0, true), &ours[..4], hop),
                Verdict::Pass
            );
        }
        // UDP off: a UDP fragment is nobody's business.
        let mut p = fragmented(frag(IPPROTO_UDP, 0, true), &ours, false);
        assert_eq!(
            ip_packet(&mut p, PROTO, 0, 4000, |_| true).unwrap_err(),
            Verdict::Pass
        );
        // A Fragment header cut short.
        let mut p = fragmented(frag(PROTO, 0, true), &[], false);
        p.truncate(44);
        assert_eq!(run_any(&mut p).unwrap_err(), Counter::Truncated.into());
    }

    /// The same UDP checks in either family: `wrap` puts a UDP datagram in an IP packet, and
    /// `udp_at` is where the UDP header starts in it.
    fn udp_defects(wrap: impl Fn(&[u8]) -> Vec<u8>, udp_at: usize) {
        let chunk = data_packet(b"in udp");
        let good = wrap(&udp_datagram(PORT, &chunk));
        let a = verdict(&good, |_| {}).unwrap();
        assert_eq!(a.transport, Transport::Udp);
        assert_eq!(a.src_port, 40000);
        assert_eq!(a.chunk, udp_at + 8..udp_at + 8 + chunk.len());
        let mut p = good.clone();
        run_any(&mut p).unwrap();
        let got = Repr::parse_checksum_already_checked(&p[a.chunk]).unwrap();
        assert_eq!(got.message, Message::Data { payload: b"in udp" });
        // Padding after the IP packet.
        verdict(&good, |p| p.extend_from_slice(&[0; 9])).unwrap();

        // Another port, or UDP off.
        let other = wrap(&udp_datagram(PORT + 1, &chunk));
        assert_eq!(defect(&other, |_| {}), Verdict::Pass);
        let mut p = good.clone();
        assert_eq!(
            ip_packet(&mut p, PROTO, 0, 4000, |_| true).unwrap_err(),
            Verdict::Pass
        );
        // Cut inside the UDP header: no port to see. Cut after it: ours, truncated.
        assert_eq!(defect(&good, |p| p.truncate(udp_at + 3)), Verdict::Pass);
        assert_eq!(
            defect(&good, |p| p.truncate(udp_at + 8 + 10)),
            Counter::Truncated.into()
        );
        // The UDP length disagreeing with the IP layer's, or too short for a chunk header.
        let ulen = udp_at + 4;
        assert_eq!(
            defect(&good, |p| bump(p, ulen, 1)),
            Counter::BadLength.into()
        );
        assert_eq!(
            defect(&good, |p| bump(p, ulen, -1)),
            Counter::BadLength.into()
        );
        assert_eq!(
            defect(&good, |p| set_be16(p, ulen, 27)),
            Counter::Truncated.into()
        );
        assert_eq!(
            defect(&good, |p| set_be16(p, ulen, 0)),
            Counter::Truncated.into()
        );
        // The chunk packet inside.
        let c = udp_at + 8;
        assert_eq!(defect(&good, |p| p[c] ^= 1), Counter::BadMagic.into());
        assert_eq!(defect(&good, |p| p[c + 3] = 0xEE), Counter::BadType.into());
        assert_eq!(
            defect(&good, |p| *p.last_mut().unwrap() ^= 1),
            Counter::BadChecksum.into()
        );
        // The UDP checksum is not checked.
        verdict(&good, |p| p[udp_at + 6] ^= 0xff).unwrap();
        let mut p = good.clone();
        assert_eq!(
            ip_packet(&mut p, PROTO, PORT, 4000, |_| false).unwrap_err(),
            Counter::NotAllowed.into()
        );
    }

    #[test]
    fn udp_over_ipv4_has_the_same_checks() {
        udp_defects(|u| ipv4_carrying(IPPROTO_UDP, u), 20);
        let chunk = data_packet(b"v4 udp");
        let good = ipv4_carrying(IPPROTO_UDP, &udp_datagram(PORT, &chunk));
        // A first fragment (MF, offset 0) to our port is ours; to another port, or a later
        // fragment (no UDP header in it), is not.
        assert_eq!(defect(&good, |p| p[6] = 0x20), Counter::Fragment.into());
        assert_eq!(
            defect(&good, |p| {
                p[6] = 0x20;
                p[22] ^= 1
            }),
            Verdict::Pass
        );
        assert_eq!(defect(&good, |p| p[7] = 1), Verdict::Pass);
        assert_eq!(defect(&good, |p| p[6] = 0x21), Verdict::Pass);
        // An IP total length too short for a UDP header.
        assert_eq!(defect(&good, |p| set_be16(p, 2, 27)), Verdict::Pass);
        // An IP total length the frame does not hold.
        assert_eq!(defect(&good, |p| bump(p, 2, 1)), Counter::BadLength.into());
        assert_eq!(
            defect(&good, |p| {
                bump(p, 2, 1);
                bump(p, 24, 1)
            }),
            Counter::Truncated.into()
        );
        // Options before the UDP header.
        let mut p = good.clone();
        p.splice(20..20, [1u8, 1, 1, 1]);
        p[0] = 0x46;
        let len = p.len() as u16;
        set_be16(&mut p, 2, len);
        assert_eq!(run_any(&mut p).unwrap().chunk.start, 32);
    }

    #[test]
    fn udp_over_ipv6_has_the_same_checks() {
        udp_defects(|u| ipv6_packet(IPPROTO_UDP, u), 40);
        let chunk = data_packet(b"v6 udp");
        // After an extension header.
        let mut payload = ext(IPPROTO_UDP, 1);
        payload.extend(udp_datagram(PORT, &chunk));
        let mut p = ipv6_packet(IPV6_ROUTING, &payload);
        let a = run_any(&mut p).unwrap();
        assert_eq!(a.chunk.start, 40 + 16 + 8);
        // A payload length too short for a UDP header.
        let good = ipv6_packet(IPPROTO_UDP, &udp_datagram(PORT, &chunk));
        assert_eq!(defect(&good, |p| set_be16(p, 4, 7)), Verdict::Pass);
        assert_eq!(defect(&good, |p| bump(p, 4, 1)), Counter::BadLength.into());
    }

    proptest::proptest! {
        /// Whatever the bytes, the whole-packet check does not panic, and what it accepts is a
        /// chunk packet inside the buffer that parses.
        #[test]
        fn never_panics_and_accepts_only_chunk_packets(
            kind in 0usize..4,
            flips in proptest::collection::vec((0usize..120, proptest::prelude::any::<u8>()), 0..4),
            cut in 0usize..130,
        ) {
            let chunk = data_packet(b"0123456789abcdef");
            let mut p = match kind {
                0 => ipv4_packet(&chunk),
                1 => ipv4_carrying(IPPROTO_UDP, &udp_datagram(PORT, &chunk)),
                2 => with_ext_headers(2, &chunk),
                _ => ipv6_packet(IPPROTO_UDP, &udp_datagram(PORT, &chunk)),
            };
            for (at, x) in flips {
                if let Some(b) = p.get_mut(at) {
                    *b ^= x;
                }
            }
            p.truncate(cut);
            if let Ok(a) = run_any(&mut p) {
                proptest::prop_assert!(a.chunk.end <= p.len());
                proptest::prop_assert!(Repr::parse_checksum_already_checked(&p[a.chunk]).is_ok());
            }
        }
    }
}
