//! The receiver core fed an arbitrary script of packets from four sources: offers (good and
//! bad), chunks (right, corrupt, out of range), hash messages (right, wrong, any count), raw
//! bytes, aborts and the passing of time. It never
//! panics, everything it sends parses, its open transfers stay within the limit, and every file it
//! declares verified is exactly the content that was offered.
#![no_main]

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use chunk::proto::{MemStorage, Receiver, ReceiverConfig, chunk_len};
use chunk_common::wire::{
    self, AbortReason, AbortRepr, HashAlg, HashRepr, Message, OfferRepr, Repr, flags,
};
use libfuzzer_sys::fuzz_target;

fn content(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

const NAMES: [&[u8]; 5] = [b"a", b"d/b", b"c", b"../x", b""];

struct Offered {
    size: usize,
    chunk_size: u32,
}

fn run(data: &[u8]) -> Option<()> {
    let cfg = ReceiverConfig {
        max_transfers: 3,
        max_size: 1 << 20,
        ..ReceiverConfig::default()
    };
    let mut rx: Receiver<MemStorage> = Receiver::new(cfg);
    let mut st = MemStorage::new();
    st.capacity = Some(2 << 20);
    let mut now = Instant::now();
    let mut out = vec![0u8; 1 << 16];
    let mut offered: [[Option<Offered>; 4]; 4] = Default::default();
    let mut it = data.iter().copied();
    let mut scratch = vec![0u8; 1 << 16];
    loop {
        let op = it.next()?;
        let s = (op >> 6) as usize;
        let src: chunk::proto::Peer = Ipv4Addr::new(198, 18, 0, 1 + s as u8).into();
        let t = (op >> 4 & 3) as usize;
        let tid = t as u32;
        match op & 0x0f {
            0 | 1 => {
                let size = u16::from_le_bytes([it.next()?, it.next()?]) as usize;
                let chunk_size = 1 + it.next()? as u32 * 8;
                let name = NAMES[it.next()? as usize % NAMES.len()];
                let count = size.div_ceil(chunk_size as usize) as u32;
                let tag = [op; wire::HASH_LEN];
                let repr = Repr {
                    transfer_id: tid,
                    seq: 0,
                    flags: 0,
                    message: Message::Offer(OfferRepr {
                        file_size: size as u64,
                        chunk_size,
                        chunk_count: count,
                        mode: 0o644,
                        mtime: 0,
                        hash_alg: HashAlg::Blake3,
                        tag,
                        name,
                    }),
                };
                offered[s][t] = Some(Offered { size, chunk_size });
                rx.handle_packet(src, None, &repr, now, &mut st);
            }
            2 | 3 => {
                let index = u16::from_le_bytes([it.next()?, it.next()?]) as u32;
                let Some(o) = &offered[s][t] else { continue };
                let start = index as usize * o.chunk_size as usize;
                let len = chunk_len(o.size as u64, o.chunk_size, index);
                let mut payload = if start < o.size {
                    content(o.size)[start..start + len].to_vec()
                } else {
                    vec![0; (it.next()? % 8) as usize]
                };
                if op & 1 == 1 && !payload.is_empty() {
                    // Wrong data that passed the checksum: only the whole-file hash can catch it.
                    payload[0] ^= 0x55;
                }
                let repr = Repr {
                    transfer_id: tid,
                    seq: index,
                    flags: if op & 0x20 != 0 {
                        flags::ACK_NOW
                    } else {
                        flags::MORE_CHUNKS
                    },
                    message: Message::Data { payload: &payload },
                };
                rx.handle_packet(src, None, &repr, now, &mut st);
            }
            4 => {
                let len = it.next()? as usize;
                let bytes: Vec<u8> = (&mut it).take(len).collect();
                scratch[..bytes.len()].copy_from_slice(&bytes);
                if let Ok(repr) = Repr::parse_checksum_already_checked(&scratch[..bytes.len()]) {
                    rx.handle_packet(src, None, &repr, now, &mut st);
                }
            }
            5 => {
                let repr = Repr {
                    transfer_id: tid,
                    seq: 0,
                    flags: 0,
                    message: Message::Abort(AbortRepr {
                        reason: AbortReason::Cancelled,
                        message: b"fuzz",
                    }),
                };
                rx.handle_packet(src, None, &repr, now, &mut st);
            }
            6 => now += Duration::from_millis(it.next()? as u64),
            7 => now += Duration::from_secs(it.next()? as u64),
            8 => st.crash(),
            9 | 10 => {
                // The hash message: the offered content's (op 9) or another (op 10), with the
                // right chunk count or any.
                let Some(o) = &offered[s][t] else { continue };
                let hash = if op & 0x0f == 9 {
                    *blake3::hash(&content(o.size)).as_bytes()
                } else {
                    [it.next()?; wire::HASH_LEN]
                };
                let count = o.size.div_ceil(o.chunk_size as usize) as u32;
                let repr = Repr {
                    transfer_id: tid,
                    seq: if op & 0x20 != 0 { it.next()? as u32 } else { count },
                    flags: 0,
                    message: Message::Hash(HashRepr {
                        alg: HashAlg::Blake3,
                        hash,
                    }),
                };
                rx.handle_packet(src, None, &repr, now, &mut st);
            }
            _ => {}
        }
        if rx.poll_timeout().is_some_and(|d| d <= now) {
            rx.handle_timeout(now, &mut st);
        }
        while let Some(chunk::proto::Transmit { len: n, .. }) = rx.poll_transmit(now, &mut out) {
            Repr::parse_bytes(&out[..n]).expect("the receiver sends valid packets");
        }
        while rx.poll_event().is_some() {}
        assert!(rx.open_transfers() <= 3);
        for (name, f) in st.files() {
            assert_eq!(
                f.data,
                content(f.data.len()),
                "{name} verified with wrong content"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
