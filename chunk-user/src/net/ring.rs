//! Reads the XDP program's ring buffer: the receive driver polls the ring's fd, then drains
//! every record available, so that one wake-up serves a batch of chunks.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData, RingBuf};
use chunk_common::ring::{RECORD_HEADER_LEN, RecordHeader, TRANSPORT_IP, TRANSPORT_UDP};

use crate::proto::Peer;

use super::rx::Received;

/// Splits a ring-buffer record into its header and packet; `None` if it is inconsistent (which
/// would be a kernel-side bug, so it is logged and skipped rather than trusted).
pub fn parse_record(rec: &[u8], clock: Clock) -> Option<Received<'_>> {
    let h = RecordHeader::read(rec)?;
    let end = RECORD_HEADER_LEN + h.packet_len as usize;
    let packet = rec.get(RECORD_HEADER_LEN..end)?;
    let (src, dst) = (h.src_ip()?, h.dst_ip()?);
    let src = match h.transport {
        TRANSPORT_IP => Peer::ip(src),
        // The program drops UDP from port 0 (it could not be answered).
        TRANSPORT_UDP if h.src_port != 0 => Peer::udp(std::net::SocketAddr::new(src, h.src_port)),
        _ => return None,
    };
    Some(Received {
        src,
        dst,
        rx_queue: h.rx_queue,
        arrived: clock.instant(h.age_us(clock.mono_us)),
        packet,
    })
}

/// The oldest a record's arrival is believed to be: one older than this is read as arriving
/// when it is handled.
const MAX_AGE: Duration = Duration::from_secs(60);

/// One reading of the clock the program stamps records with, and of [`Instant`]'s, taken
/// together: a record's age on the first is its arrival on the second.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    now: Instant,
    mono_us: u32,
}

/// `CLOCK_MONOTONIC` in microseconds, its low 32 bits: the program's stamp
/// (`RecordHeader::arrived_us`) of a record arriving now.
pub fn monotonic_us() -> u32 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1000) as u32
}

impl Clock {
    pub fn now() -> Self {
        Clock {
            mono_us: monotonic_us(),
            now: Instant::now(),
        }
    }

    /// When a record `age_us` old arrived; `None` past [`MAX_AGE`]. A record stamped after
    /// this reading (the batch goes on draining) has a "negative" age: the 32 bits are read as
    /// signed.
    fn instant(&self, age_us: u32) -> Option<Instant> {
        let age = age_us as i32;
        let span = Duration::from_micros(age.unsigned_abs() as u64);
        if span > MAX_AGE {
            None
        } else if age >= 0 {
            self.now.checked_sub(span)
        } else {
            Some(self.now + span)
        }
    }
}

/// The reader over the ring buffer. It never blocks: the driver waits on [`ChunkReader::fd`].
pub struct ChunkReader {
    ring: RingBuf<MapData>,
    /// The program's reader-busy flag, when the reader drives it ([`set_busy`](Self::set_busy)).
    busy: Option<(Array<MapData, u32>, bool)>,
    /// Records that did not parse (see [`parse_record`]).
    pub bad_records: u64,
}

impl ChunkReader {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        ChunkReader {
            ring,
            busy: None,
            bad_records: 0,
        }
    }

    /// A reader that tells the program when it drains batch after batch (and needs no wakeup).
    pub fn with_busy_flag(ring: RingBuf<MapData>, flag: Array<MapData, u32>) -> Self {
        ChunkReader {
            busy: Some((flag, false)),
            ..Self::new(ring)
        }
    }

    /// Says whether the reader is busy (draining again soon without being woken) or may sleep on
    /// the fd; a system call only when it changes. Failing to say so costs only wakeups (busy
    /// not set) or one bounded wait (idle not set: the driver caps its first wait).
    pub fn set_busy(&mut self, busy: bool) {
        if let Some((flag, now)) = &mut self.busy {
            if *now != busy && flag.set(0, u32::from(busy), 0).is_ok() {
                *now = busy;
            }
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
    let clock = Clock::now();
    while n < max {
        let Some(item) = ring.next() else { break };
        match parse_record(&item, clock) {
            Some(r) => f(r),
            None => *bad_records += 1,
        }
        n += 1;
    }
    n
}
