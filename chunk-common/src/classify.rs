//! The receive path's checks, in one place for both receive paths: the XDP program calls the
//! step functions on the bytes it copied out of the frame, and the userspace socket path
//! (`chunk recv --mode socket`) calls [`packet`], which runs the same steps in the same order.
//! So a packet is accepted, or dropped for a given [`Counter`], the same way in the kernel and
//! out of it.
//!
//! The order is: IPv4 header ([`ipv4`]), chunk header ([`header`]), source allowlist (the caller's,
//! an LPM trie in the kernel), then the checksum.

use crate::{
    checksum,
    counters::Counter,
    wire::{HEADER_LEN, MAGIC, MessageType, VERSION, field},
};

/// The bytes of an IPv4 header without options.
pub const IPV4_MIN_HLEN: usize = 20;

/// The most IPv6 extension headers (hop-by-hop, routing, destination options) the XDP program
/// walks before the upper-layer header; a packet with more is dropped as
/// [`Counter::ExtHeaders`]. A bound, so that the verifier's walk of the loop is bounded too.
pub const MAX_EXT_HEADERS: usize = 8;

/// The IPv4 flags/fragment-offset bits that mark a fragment: "more fragments" and the offset.
const IP_MF_OR_OFFSET: u16 = 0x3FFF;

/// What to do with a packet that is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a chunk packet (another protocol, not IPv4): leave it to the stack.
    Pass,
    /// A chunk packet that is dropped, and why.
    Drop(Counter),
}

impl From<Counter> for Verdict {
    fn from(c: Counter) -> Self {
        Verdict::Drop(c)
    }
}

/// What the IPv4 header says about a chunk packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    /// The IP header's length, options included.
    pub header_len: usize,
    /// The IP total length: header and chunk packet.
    pub total_len: usize,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// Step 1: whether the first 20 bytes of an IPv4 packet belong to a chunk packet (IP protocol
/// `protocol`), and whether its IP header can carry one. Fragments are dropped: chunk packets
/// are sized to fit the path and never fragmented, so a fragment is junk (or an attack).
#[inline(always)]
pub fn ipv4(ip: &[u8; IPV4_MIN_HLEN], protocol: u8) -> Result<Ipv4Info, Verdict> {
    if ip[0] >> 4 != 4 || ip[9] != protocol {
        return Err(Verdict::Pass);
    }
    if u16::from_be_bytes([ip[6], ip[7]]) & IP_MF_OR_OFFSET != 0 {
        return Err(Counter::Fragment.into());
    }
    let header_len = ((ip[0] & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    if header_len < IPV4_MIN_HLEN || total_len < header_len + HEADER_LEN {
        return Err(Counter::Truncated.into());
    }
    Ok(Ipv4Info {
        header_len,
        total_len,
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
    })
}

/// Step 2: the chunk header, given the length the IP header gives the chunk packet (`l4_len`:
/// total length minus IP header length). Returns the payload length.
#[inline(always)]
pub fn header(hdr: &[u8; HEADER_LEN], l4_len: usize, max_payload: usize) -> Result<usize, Counter> {
    if u16::from_be_bytes([hdr[0], hdr[1]]) != MAGIC || hdr[field::VERSION] != VERSION {
        return Err(Counter::BadMagic);
    }
    if MessageType::from_u8(hdr[field::MSG_TYPE]).is_none() {
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

/// A packet the checks accepted: where its chunk packet is in the buffer, and its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub ip: Ipv4Info,
    /// The chunk packet (header and payload) within the buffer given to [`packet`].
    pub chunk: core::ops::Range<usize>,
}

/// Every step, for a whole IPv4 packet in memory (the socket path): IPv4 header, chunk header,
/// `allowed(source)`, then the checksum, which it checks and zeroes in place so that the result is
/// exactly what the XDP program hands over (parse it with
/// [`Repr::parse_checksum_already_checked`](crate::wire::Repr::parse_checksum_already_checked)).
pub fn packet(
    buf: &mut [u8],
    protocol: u8,
    max_payload: usize,
    allowed: impl FnOnce([u8; 4]) -> bool,
) -> Result<Accepted, Verdict> {
    let Some(ip) = buf.first_chunk::<IPV4_MIN_HLEN>() else {
        return Err(Verdict::Pass);
    };
    let ip = ipv4(ip, protocol)?;
    if buf.len() < ip.total_len {
        return Err(Counter::Truncated.into());
    }
    let chunk = ip.header_len..ip.total_len;
    let Some(hdr) = buf[chunk.clone()].first_chunk::<HEADER_LEN>() else {
        return Err(Counter::Truncated.into());
    };
    header(hdr, chunk.len(), max_payload)?;
    let expected = carried_checksum(hdr);
    if !allowed(ip.src) {
        return Err(Counter::NotAllowed.into());
    }
    buf[chunk.start + field::CHECKSUM.start..chunk.start + field::CHECKSUM.end].fill(0);
    if checksum::checksum(&buf[chunk.clone()]) != expected {
        return Err(Counter::BadChecksum.into());
    }
    Ok(Accepted { ip, chunk })
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

    const PROTO: u8 = 253;

    /// An IPv4 packet (no options) from 198.18.0.1 to 198.18.0.2 around a chunk packet.
    fn ip_packet(chunk: &[u8]) -> Vec<u8> {
        let total = (IPV4_MIN_HLEN + chunk.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, PROTO, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(chunk);
        p
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

    #[test]
    fn accepts_a_valid_packet_and_zeroes_its_checksum() {
        let chunk = data_packet(b"hello");
        let mut p = ip_packet(&chunk);
        let a = run(&mut p).unwrap();
        assert_eq!(a.chunk, 20..20 + chunk.len());
        assert_eq!(a.ip.src, [198, 18, 0, 1]);
        let got = Repr::parse_checksum_already_checked(&p[a.chunk]).unwrap();
        assert_eq!(got.message, Message::Data { payload: b"hello" });
    }

    #[test]
    fn each_defect_has_its_counter() {
        let chunk = data_packet(b"hello world");
        let good = ip_packet(&chunk);
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
    fn options_and_ethernet_padding_are_handled() {
        let chunk = data_packet(b"opt");
        let mut p = ip_packet(&chunk);
        // Four bytes of options (NOPs): IHL 6.
        p.splice(20..20, [1u8, 1, 1, 1]);
        p[0] = 0x46;
        let total = (p.len() as u16).to_be_bytes();
        p[2..4].copy_from_slice(&total);
        p.extend_from_slice(&[0; 6]); // padding after the IP packet
        let a = run(&mut p).unwrap();
        assert_eq!(a.chunk, 24..24 + chunk.len());
    }
}
