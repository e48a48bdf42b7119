//! Reads the XDP program's ring buffer from tokio: waits for the ring's fd to become readable,
//! then drains every record available, so that one wake-up serves a batch of chunks.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use chunk_common::ring::{RECORD_HEADER_LEN, RecordHeader};
use tokio::io::{Interest, unix::AsyncFd};

/// A chunk packet as the kernel handed it over. Its CRC has been checked (and zeroed) in the
/// kernel: parse it with [`chunk_common::wire::Repr::parse_crc_checked`].
#[derive(Debug)]
pub struct Received<'a> {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub rx_queue: u32,
    pub packet: &'a [u8],
}

/// Splits a ring-buffer record into its header and packet; `None` if it is inconsistent (which
/// would be a kernel-side bug, so it is logged and skipped rather than trusted).
pub fn parse_record(rec: &[u8]) -> Option<Received<'_>> {
    if rec.len() < RECORD_HEADER_LEN {
        return None;
    }
    let mut h = RecordHeader::default();
    h.src_addr.copy_from_slice(&rec[0..4]);
    h.dst_addr.copy_from_slice(&rec[4..8]);
    h.packet_len = u16::from_ne_bytes([rec[8], rec[9]]);
    h.rx_queue = u32::from_ne_bytes([rec[12], rec[13], rec[14], rec[15]]);
    let end = RECORD_HEADER_LEN + h.packet_len as usize;
    let packet = rec.get(RECORD_HEADER_LEN..end)?;
    Some(Received {
        src: Ipv4Addr::from(h.src_addr),
        dst: Ipv4Addr::from(h.dst_addr),
        rx_queue: h.rx_queue,
        packet,
    })
}

/// How long the reader lets records gather after a batch before it reads again. The kernel
/// interrupts (wakes) the reader only for a record that finds it caught up; a reader that reads
/// each record as it comes is caught up every time, and each record then costs an interrupt (a
/// self-IPI through irq_work, on the core that runs XDP: 10 % of all CPU time in a profile of
/// a 256 MiB transfer on veth). Napping this long between batches makes it one interrupt per
/// batch, for at most this much extra latency.
const NAP: Duration = Duration::from_micros(50);

/// The async reader over the ring buffer.
pub struct ChunkReader {
    fd: AsyncFd<RingBuf<MapData>>,
    /// Records that did not parse (see [`parse_record`]).
    pub bad_records: u64,
    /// When the last batch that found records ended, if the last read found any.
    last_batch: Option<Instant>,
}

impl ChunkReader {
    pub fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open and unchanged until it is
        // dropped, which happens only when this AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(ChunkReader {
            fd,
            bad_records: 0,
            last_batch: None,
        })
    }

    /// Waits for at least one record, then hands each available record (up to `max`) to `f`.
    /// Returns how many records `f` saw.
    pub async fn read_batch(
        &mut self,
        max: usize,
        mut f: impl FnMut(Received<'_>),
    ) -> std::io::Result<usize> {
        if let Some(last) = self.last_batch.take() {
            // Records were flowing: let more gather (a short blocking sleep: tokio's timers
            // are too coarse), then read without waiting for a wakeup.
            let since = last.elapsed();
            if since < NAP {
                std::thread::sleep(NAP - since);
            }
            let n = drain(self.fd.get_mut(), max, &mut f, &mut self.bad_records);
            if n > 0 {
                self.last_batch = Some(Instant::now());
                return Ok(n);
            }
        }
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let n = drain(guard.get_inner_mut(), max, &mut f, &mut self.bad_records);
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            self.last_batch = Some(Instant::now());
            return Ok(n);
        }
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
