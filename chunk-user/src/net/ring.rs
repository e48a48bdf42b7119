//! Reads the XDP program's ring buffer: the receive driver polls the ring's fd, then drains
//! every record available, so that one wake-up serves a batch of chunks.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, BorrowedFd},
};

use aya::maps::{MapData, RingBuf};
use chunk_common::ring::{RECORD_HEADER_LEN, RecordHeader};

use super::rx::Received;

/// Splits a ring-buffer record into its header and packet; `None` if it is inconsistent (which
/// would be a kernel-side bug, so it is logged and skipped rather than trusted).
pub fn parse_record(rec: &[u8]) -> Option<Received<'_>> {
    let h = RecordHeader::read(rec)?;
    let end = RECORD_HEADER_LEN + h.packet_len as usize;
    let packet = rec.get(RECORD_HEADER_LEN..end)?;
    Some(Received {
        src: Ipv4Addr::from(h.src_addr),
        dst: Ipv4Addr::from(h.dst_addr),
        rx_queue: h.rx_queue,
        packet,
    })
}

/// The reader over the ring buffer. It never blocks: the driver waits on [`ChunkReader::fd`].
pub struct ChunkReader {
    ring: RingBuf<MapData>,
    /// Records that did not parse (see [`parse_record`]).
    pub bad_records: u64,
}

impl ChunkReader {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        ChunkReader {
            ring,
            bad_records: 0,
        }
    }

    /// The ring's fd: readable when the kernel has signalled new records.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }

    /// Hands each available record (up to `max`) to `f`, without waiting. Returns how many.
    pub fn read_batch(&mut self, max: usize, mut f: impl FnMut(Received<'_>)) -> usize {
        drain(&mut self.ring, max, &mut f, &mut self.bad_records)
    }
}

/// Hands up to `max` records to `f`; returns how many there were.
fn drain(
    ring: &mut RingBuf<MapData>,
    max: usize,
    f: &mut impl FnMut(Received<'_>),
    bad_records: &mut u64,
) -> usize {
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else { break };
        match parse_record(&item) {
            Some(r) => f(r),
            None => *bad_records += 1,
        }
        n += 1;
    }
    n
}
