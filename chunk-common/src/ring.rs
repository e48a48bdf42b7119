//! The record the XDP program hands to userspace through the BPF ring buffer.
//!
//! The XDP program assembles a [`Record`] in per-CPU scratch memory (a size the verifier knows),
//! checks the checksum there, and copies only the used part into the ring buffer: a record in the ring
//! is a [`RecordHeader`] followed by the chunk packet (chunk header and payload, exactly as on
//! the wire, except that the checksum field has been zeroed by the check), at most [`RECORD_LEN`]
//! bytes, padded by the kernel to a multiple of 8.

use crate::wire::HEADER_LEN;

/// Bytes of the largest ring-buffer record (and of the scratch record): room for the chunk packet
/// of a 9216-byte jumbo frame (the largest common jumbo MTU) after its 20-byte IPv4 header.
pub const RECORD_LEN: usize = 9216;

/// Bytes of the [`RecordHeader`] at the start of a record.
pub const RECORD_HEADER_LEN: usize = core::mem::size_of::<RecordHeader>();

/// The largest chunk packet (header and payload) a record can carry.
pub const MAX_PACKET_LEN: usize = RECORD_LEN - RECORD_HEADER_LEN;

/// The largest payload a chunk packet can carry through the XDP path (9180).
pub const MAX_PAYLOAD_LEN: usize = MAX_PACKET_LEN - HEADER_LEN;

/// What the kernel knows about a packet that userspace needs and the packet does not carry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordHeader {
    /// IPv4 source address, in network byte order as in the IP header: where acks go.
    pub src_addr: [u8; 4],
    /// IPv4 destination address, in network byte order: the address the sender aimed at.
    pub dst_addr: [u8; 4],
    /// Length of the chunk packet that follows (header and payload).
    pub packet_len: u16,
    /// Zero; keeps the packet 4-byte aligned in the record.
    pub _reserved: u16,
    /// The RX queue the frame arrived on (for spreading work over cores).
    pub rx_queue: u32,
}

const _: () = assert!(RECORD_HEADER_LEN == 16);

impl RecordHeader {
    /// Reads the header at the start of a ring-buffer record, as the XDP program wrote it (its
    /// integers in the host's byte order); `None` if the record is shorter than a header.
    pub fn read(rec: &[u8]) -> Option<Self> {
        use core::mem::offset_of;
        let rec = rec.get(..RECORD_HEADER_LEN)?;
        let at = |o: usize, n: usize| &rec[o..o + n];
        let mut h = RecordHeader::default();
        h.src_addr
            .copy_from_slice(at(offset_of!(RecordHeader, src_addr), 4));
        h.dst_addr
            .copy_from_slice(at(offset_of!(RecordHeader, dst_addr), 4));
        let len = at(offset_of!(RecordHeader, packet_len), 2);
        h.packet_len = u16::from_ne_bytes([len[0], len[1]]);
        let q = at(offset_of!(RecordHeader, rx_queue), 4);
        h.rx_queue = u32::from_ne_bytes([q[0], q[1], q[2], q[3]]);
        Some(h)
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
