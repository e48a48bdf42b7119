//! The record the XDP program hands to userspace through the BPF ring buffer.
//!
//! The XDP program assembles a [`Record`] in per-CPU scratch memory (a size the verifier knows),
//! checks the checksum there, and copies only the used part into the ring buffer: a record in the ring
//! is a [`RecordHeader`] followed by the chunk packet (chunk header and payload, exactly as on
//! the wire, except that the checksum field has been zeroed by the check), at most [`RECORD_LEN`]
//! bytes, padded by the kernel to a multiple of 8. The header says which address family and
//! which transport (straight over IP, or in UDP) the packet came by.

use crate::wire::HEADER_LEN;

/// The largest chunk packet (header and payload) a record can carry: protocol version 2's limit
/// (docs/PROTOCOL.md), a multiple of 8, and room for the chunk packet of a 9216-byte jumbo MTU
/// (the largest common one) after its IPv4 or IPv6 header.
pub const MAX_PACKET_LEN: usize = 9200;

/// Bytes of the [`RecordHeader`] at the start of a record.
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// Bytes of the largest ring-buffer record (and of the scratch record).
pub const RECORD_LEN: usize = RECORD_HEADER_LEN + MAX_PACKET_LEN;

/// The largest payload a chunk packet can carry through the XDP path (9180).
pub const MAX_PAYLOAD_LEN: usize = MAX_PACKET_LEN - HEADER_LEN;

/// [`RecordHeader::family`] of an IPv4 packet.
pub const FAMILY_IPV4: u8 = 4;
/// [`RecordHeader::family`] of an IPv6 packet.
pub const FAMILY_IPV6: u8 = 6;

/// [`RecordHeader::transport`]: the chunk header follows the IP header (and, for IPv6, its
/// extension headers) directly: IP protocol / next header = chunk's protocol number.
pub const TRANSPORT_IP: u8 = 0;
/// [`RecordHeader::transport`]: the chunk header follows a UDP header (`--udp PORT`).
pub const TRANSPORT_UDP: u8 = 1;

/// What the kernel knows about a packet that userspace needs and the packet does not carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// Source address, in network byte order as in the IP header: where acks go. IPv4 in the
    /// first 4 bytes, the rest zero.
    pub src_addr: [u8; 16],
    /// Destination address, in network byte order: the address the sender aimed at (IPv4 in the
    /// first 4 bytes).
    pub dst_addr: [u8; 16],
    /// Length of the chunk packet that follows (header and payload).
    pub packet_len: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    /// [`TRANSPORT_IP`] or [`TRANSPORT_UDP`].
    pub transport: u8,
    /// The UDP source port, in host byte order (0 for [`TRANSPORT_IP`]): where acks go.
    pub src_port: u16,
    /// Zero.
    pub _reserved: u16,
    /// The RX queue the frame arrived on (for spreading work over cores).
    pub rx_queue: u32,
    /// When the program took the packet: `CLOCK_MONOTONIC` (`bpf_ktime_get_ns`) in
    /// microseconds, its low 32 bits (they wrap every 71.6 minutes; only an age is read from
    /// them, see [`RecordHeader::age_us`]). The receiver's acks count their delay from it, so a
    /// receiver busy elsewhere (opening a file) or napping does not show as path delay. Also
    /// keeps the packet 8-byte aligned in the record (the checksum reads it in words).
    pub arrived_us: u32,
}

const _: () = assert!(RECORD_HEADER_LEN == 48);
const _: () = assert!(RECORD_HEADER_LEN.is_multiple_of(8) && MAX_PACKET_LEN.is_multiple_of(8));

impl RecordHeader {
    /// Reads the header at the start of a ring-buffer record, as the XDP program wrote it (its
    /// integers in the host's byte order); `None` if the record is shorter than a header.
    pub fn read(rec: &[u8]) -> Option<Self> {
        use core::mem::offset_of;
        let rec = rec.get(..RECORD_HEADER_LEN)?;
        let at = |o: usize, n: usize| &rec[o..o + n];
        let u16_at = |o: usize| u16::from_ne_bytes([rec[o], rec[o + 1]]);
        let mut h = RecordHeader::default();
        h.src_addr
            .copy_from_slice(at(offset_of!(RecordHeader, src_addr), 16));
        h.dst_addr
            .copy_from_slice(at(offset_of!(RecordHeader, dst_addr), 16));
        h.packet_len = u16_at(offset_of!(RecordHeader, packet_len));
        h.family = rec[offset_of!(RecordHeader, family)];
        h.transport = rec[offset_of!(RecordHeader, transport)];
        h.src_port = u16_at(offset_of!(RecordHeader, src_port));
        let q = at(offset_of!(RecordHeader, rx_queue), 4);
        h.rx_queue = u32::from_ne_bytes([q[0], q[1], q[2], q[3]]);
        let t = at(offset_of!(RecordHeader, arrived_us), 4);
        h.arrived_us = u32::from_ne_bytes([t[0], t[1], t[2], t[3]]);
        Some(h)
    }

    /// Microseconds between the packet's arrival and `now_us`, a reading of the same clock
    /// (`CLOCK_MONOTONIC` in microseconds, truncated to 32 bits as [`arrived_us`](Self::arrived_us)
    /// is).
    pub fn age_us(&self, now_us: u32) -> u32 {
        now_us.wrapping_sub(self.arrived_us)
    }

    fn ip(&self, a: &[u8; 16]) -> Option<core::net::IpAddr> {
        match self.family {
            FAMILY_IPV4 => Some(core::net::IpAddr::from([a[0], a[1], a[2], a[3]])),
            FAMILY_IPV6 => Some(core::net::IpAddr::from(*a)),
            _ => None,
        }
    }

    /// The source address; `None` for an unknown family (a kernel/userspace mismatch).
    pub fn src_ip(&self) -> Option<core::net::IpAddr> {
        self.ip(&self.src_addr)
    }

    /// The destination address; `None` for an unknown family.
    pub fn dst_ip(&self) -> Option<core::net::IpAddr> {
        self.ip(&self.dst_addr)
    }
}

/// A ring-buffer record at its largest, as the XDP program builds it in scratch memory.
#[repr(C)]
pub struct Record {
    pub header: RecordHeader,
    /// The chunk packet; only the first `header.packet_len` bytes are meaningful.
    pub packet: [u8; MAX_PACKET_LEN],
}

const _: () = assert!(core::mem::size_of::<Record>() == RECORD_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let h = RecordHeader {
            src_addr: [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            dst_addr: [0x20, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            packet_len: 1234,
            family: FAMILY_IPV6,
            transport: TRANSPORT_UDP,
            src_port: 40000,
            _reserved: 0,
            rx_queue: 3,
            arrived_us: 0xffff_fff0,
        };
        // SAFETY: RecordHeader is plain old data without padding.
        let bytes: [u8; RECORD_HEADER_LEN] = unsafe { core::mem::transmute(h) };
        let got = RecordHeader::read(&bytes).unwrap();
        assert_eq!(got, h);
        // The clock's low 32 bits wrap: the age does not.
        assert_eq!(got.age_us(0x10), 0x20);
        assert_eq!(got.src_ip(), Some("2001:2::1".parse().unwrap()));
        let mut v4 = h;
        v4.family = FAMILY_IPV4;
        v4.src_addr = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(v4.src_ip(), Some("198.18.0.1".parse().unwrap()));
        v4.family = 5;
        assert_eq!(v4.src_ip(), None);
    }
}
