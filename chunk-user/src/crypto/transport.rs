//! Sealed packets (type 7): a whole chunk packet encrypted and authenticated with AES-256-GCM
//! (`ring`)
//! under one direction's key of a session, with an explicit 64-bit counter as the nonce, as
//! WireGuard frames its transport data after its Noise handshake.
//!
//! ```text
//! | header: type 7, flags 0, length, session id, seq 0, checksum | counter: u64 BE | ciphertext | tag: 16 |
//! ```
//!
//! - Associated data: the 20 header bytes with the checksum field zeroed.
//! - Nonce: 4 zero bytes, then the counter big-endian (Noise's AESGCM nonce encoding).
//! - Key: the direction's key from the handshake's Split, passed through Noise's `REKEY` once per
//!   [`EPOCH_LEN`] counters: counter `c` is sealed under `REKEY^(c >> 20)(k)`, so that no key
//!   seals more than 2^20 packets (AES-GCM's confidentiality limit for this use, RFC 9001
//!   § 6.6, is 2^23).
//! - Plaintext: a chunk packet of types 1 to 6 with its checksum field zero and no `AUTH`; or
//!   nothing (a session confirmation).
//!
//! A counter is used once per direction and session, for one packet: a retransmitted chunk is
//! sealed again under a new counter. The opener refuses a counter it has accepted before and one
//! older than [`REPLAY_WINDOW`] behind the highest it has accepted (RFC 6479's sliding window).

use chunk_common::wire::{self, HEADER_LEN, Packet, envelope, field};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// Bytes of the explicit counter.
pub const COUNTER_LEN: usize = 8;
/// Bytes of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Where the plaintext starts in a sealed packet (and where a caller writes it to seal in place).
pub const INNER_AT: usize = HEADER_LEN + COUNTER_LEN;
/// Bytes a sealed packet adds to the chunk packet it carries.
pub const OVERHEAD: usize = INNER_AT + TAG_LEN;
/// Counters sealed under one key before the next `REKEY`.
pub const EPOCH_BITS: u32 = 20;
pub const EPOCH_LEN: u64 = 1 << EPOCH_BITS;
/// How far behind the highest accepted counter a packet may still arrive.
pub const REPLAY_WINDOW: u64 = (BLOCKS as u64 - 1) * 64;
/// The highest counter a sealer uses (2^64 − 1 is `REKEY`'s nonce).
pub const MAX_COUNTER: u64 = u64::MAX - 1;

const BLOCKS: usize = 128;

/// Why a sealed packet did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("sealed packet too short")]
    Truncated,
    #[error("sealed packet replayed (its counter was seen, or is too old)")]
    Replayed,
    #[error("sealed packet does not authenticate (wrong key, or changed on the way)")]
    BadTag,
    #[error("sealed packet holds no chunk packet")]
    BadInner,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// An AES-256-GCM key (ring's, the implementation rustls and quinn use: 4.5 times as fast here
/// as RustCrypto's `aes-gcm`, see docs/SECURITY.md).
#[derive(Clone)]
struct Cipher(std::sync::Arc<LessSafeKey>);

impl Cipher {
    fn new(key: &[u8; 32]) -> Cipher {
        Cipher(std::sync::Arc::new(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key"),
        )))
    }

    /// Encrypts `data` in place; returns the tag.
    fn seal(&self, counter: u64, ad: &[u8], data: &mut [u8]) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(nonce(counter), Aad::from(ad), data)
            .expect("AES-GCM seals any packet");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Decrypts `data` in place if `tag` authenticates it.
    fn open(&self, counter: u64, ad: &[u8], data: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = <[u8; TAG_LEN]>::try_from(tag) else {
            return false;
        };
        self.0
            .open_in_place_separate_tag(nonce(counter), Aad::from(ad), Tag::from(tag), data, 0..)
            .is_ok()
    }
}

/// Noise's `REKEY(k)`: the first 32 bytes of `ENCRYPT(k, 2^64 − 1, "", 32 zero bytes)`.
pub fn rekey(key: &[u8; 32]) -> [u8; 32] {
    let mut k = [0u8; 32];
    let _tag = Cipher::new(key).seal(u64::MAX, &[], &mut k);
    k
}

/// One direction's key at some epoch.
#[derive(Clone)]
struct EpochKey {
    epoch: u64,
    key: [u8; 32],
    cipher: Cipher,
}

impl EpochKey {
    fn new(key: [u8; 32]) -> Self {
        EpochKey {
            epoch: 0,
            cipher: Cipher::new(&key),
            key,
        }
    }

    fn next(&self) -> Self {
        let key = rekey(&self.key);
        EpochKey {
            epoch: self.epoch + 1,
            cipher: Cipher::new(&key),
            key,
        }
    }
}

/// The sending half of a session: seals packets under consecutive counters.
pub struct Sealer {
    sid: u32,
    key: EpochKey,
    next: u64,
}

impl Sealer {
    pub fn new(sid: u32, key: [u8; 32]) -> Self {
        Sealer {
            sid,
            key: EpochKey::new(key),
            next: 0,
        }
    }

    /// A sealer that starts at `counter` (tests of the epoch change).
    #[cfg(test)]
    pub fn starting_at(sid: u32, key: [u8; 32], counter: u64) -> Self {
        let mut s = Sealer::new(sid, key);
        while s.key.epoch < counter >> EPOCH_BITS {
            s.key = s.key.next();
        }
        s.next = counter;
        s
    }

    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Counters used so far.
    pub fn sealed(&self) -> u64 {
        self.next
    }

    /// Seals the `inner_len` bytes at `buf[INNER_AT..]` (a chunk packet, or nothing) in place:
    /// writes the header and counter before them and the tag after, and the checksum. Returns
    /// the sealed packet's length. `buf` needs [`OVERHEAD`] bytes of room besides the inner
    /// packet. The inner packet's checksum field is zeroed (the seal covers it).
    pub fn seal(&mut self, buf: &mut [u8], inner_len: usize) -> wire::Result<usize> {
        let len = OVERHEAD + inner_len;
        if buf.len() < len {
            return Err(wire::Error::Truncated);
        }
        let payload_len = u16::try_from(len - HEADER_LEN).map_err(|_| wire::Error::BadLength)?;
        let counter = self.next;
        // Never reached: 2^64 packets. Refused rather than wrapped.
        if counter > MAX_COUNTER {
            return Err(wire::Error::Malformed);
        }
        // What the opener would refuse inside is not sealed (a packet with `AUTH`, an envelope,
        // a length that disagrees): see `Opener::open`.
        if inner_len != 0 && !valid_inner(&buf[INNER_AT..INNER_AT + inner_len]) {
            return Err(wire::Error::Malformed);
        }
        if counter >> EPOCH_BITS != self.key.epoch {
            self.key = self.key.next();
        }
        self.next += 1;
        if inner_len >= HEADER_LEN {
            buf[INNER_AT + field::CHECKSUM.start..INNER_AT + field::CHECKSUM.end].fill(0);
        }
        write_header(
            &mut buf[..HEADER_LEN],
            envelope::SEALED,
            self.sid,
            0,
            payload_len,
        );
        buf[HEADER_LEN..INNER_AT].copy_from_slice(&counter.to_be_bytes());
        let (head, rest) = buf.split_at_mut(INNER_AT);
        let tag = self
            .key
            .cipher
            .seal(counter, &head[..HEADER_LEN], &mut rest[..inner_len]);
        buf[INNER_AT + inner_len..len].copy_from_slice(&tag);
        Packet::new_unchecked(&mut buf[..len]).fill_checksum();
        Ok(len)
    }
}

/// Writes a 20-byte envelope header (checksum zero).
pub fn write_header(h: &mut [u8], msg_type: u8, sid: u32, seq: u32, payload_len: u16) {
    h[field::MAGIC].copy_from_slice(&wire::MAGIC.to_be_bytes());
    h[field::VERSION] = wire::VERSION;
    h[field::MSG_TYPE] = msg_type;
    h[field::FLAGS].fill(0);
    h[field::PAYLOAD_LEN].copy_from_slice(&payload_len.to_be_bytes());
    h[field::TRANSFER_ID].copy_from_slice(&sid.to_be_bytes());
    h[field::SEQ].copy_from_slice(&seq.to_be_bytes());
    h[field::CHECKSUM].fill(0);
}

/// RFC 6479's anti-replay window: which of the last [`REPLAY_WINDOW`] counters were accepted.
#[derive(Clone)]
pub struct ReplayWindow {
    highest: Option<u64>,
    bits: [u64; BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            highest: None,
            bits: [0; BLOCKS],
        }
    }
}

impl ReplayWindow {
    /// Whether `c` may be new (checked before the tag; [`ReplayWindow::accept`] after it).
    pub fn check(&self, c: u64) -> bool {
        match self.highest {
            None => true,
            Some(h) if c > h => true,
            Some(h) if h - c >= REPLAY_WINDOW => false,
            Some(_) => self.bits[(c / 64) as usize % BLOCKS] & (1 << (c % 64)) == 0,
        }
    }

    /// Records `c` as accepted (it passed [`ReplayWindow::check`] and its tag).
    pub fn accept(&mut self, c: u64) {
        match self.highest {
            Some(h) if c <= h => {}
            Some(h) => {
                let (from, to) = (h / 64, c / 64);
                for b in (from + 1..=to).take(BLOCKS) {
                    self.bits[b as usize % BLOCKS] = 0;
                }
                self.highest = Some(c);
            }
            None => self.highest = Some(c),
        }
        self.bits[(c / 64) as usize % BLOCKS] |= 1 << (c % 64);
    }
}

/// The receiving half of a session: opens sealed packets, each counter once.
pub struct Opener {
    sid: u32,
    key: EpochKey,
    /// The previous epoch's key, for packets reordered across an epoch change.
    prev: Option<EpochKey>,
    window: ReplayWindow,
    /// Packets that failed to authenticate.
    pub failures: u64,
    /// Packets refused as replays.
    pub replays: u64,
    /// Packets opened.
    pub opened: u64,
}

impl Opener {
    pub fn new(sid: u32, key: [u8; 32]) -> Self {
        Opener {
            sid,
            key: EpochKey::new(key),
            prev: None,
            window: ReplayWindow::default(),
            failures: 0,
            replays: 0,
            opened: 0,
        }
    }

    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Opens a sealed packet whose checksum was checked, into `out`: returns the plaintext's
    /// length (a chunk packet with its checksum field zero, or 0 for a confirmation). The
    /// counter is then spent.
    pub fn open(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, OpenError> {
        if packet.len() < OVERHEAD {
            return Err(OpenError::Truncated);
        }
        let inner_len = packet.len() - OVERHEAD;
        if out.len() < inner_len {
            return Err(OpenError::Truncated);
        }
        let counter = u64::from_be_bytes(packet[HEADER_LEN..INNER_AT].try_into().expect("8"));
        if counter > MAX_COUNTER || !self.window.check(counter) {
            self.replays += 1;
            return Err(OpenError::Replayed);
        }
        let epoch = counter >> EPOCH_BITS;
        // The next epoch's key is derived only to try it (committed once a packet opens with
        // it); anything further ahead or further behind than one epoch cannot be genuine.
        let next;
        let key = if epoch == self.key.epoch {
            &self.key
        } else if epoch == self.key.epoch + 1 {
            next = self.key.next();
            &next
        } else if let Some(prev) = self.prev.as_ref().filter(|p| p.epoch == epoch) {
            prev
        } else {
            self.failures += 1;
            return Err(OpenError::BadTag);
        };
        let mut ad = [0u8; HEADER_LEN];
        ad.copy_from_slice(&packet[..HEADER_LEN]);
        ad[field::CHECKSUM].fill(0);
        out[..inner_len].copy_from_slice(&packet[INNER_AT..INNER_AT + inner_len]);
        let tag = &packet[INNER_AT + inner_len..];
        if !key.cipher.open(counter, &ad, &mut out[..inner_len], tag) {
            self.failures += 1;
            return Err(OpenError::BadTag);
        }
        if epoch == self.key.epoch + 1 {
            let newer = key.clone();
            self.prev = Some(std::mem::replace(&mut self.key, newer));
        }
        self.window.accept(counter);
        self.opened += 1;
        if inner_len != 0 && !valid_inner(&out[..inner_len]) {
            return Err(OpenError::BadInner);
        }
        Ok(inner_len)
    }
}

/// A chunk packet of types 1 to 6 with its own length and no `AUTH`: never another envelope.
fn valid_inner(inner: &[u8]) -> bool {
    let p = Packet::new_unchecked(inner);
    inner.len() >= HEADER_LEN
        && p.msg_type().is_some()
        && HEADER_LEN + p.payload_len() as usize == inner.len()
        && p.flags() & wire::flags::AUTH == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use chunk_common::wire::{Message, Repr, flags};
    use proptest::prelude::*;

    fn inner(payload: &[u8]) -> Vec<u8> {
        let r = Repr {
            transfer_id: 77,
            seq: 5,
            flags: flags::MORE_CHUNKS,
            message: Message::Data { payload },
        };
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf).unwrap();
        buf
    }

    fn seal(s: &mut Sealer, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; OVERHEAD + inner.len()];
        buf[INNER_AT..INNER_AT + inner.len()].copy_from_slice(inner);
        let n = s.seal(&mut buf, inner.len()).unwrap();
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn a_sealed_packet_is_a_valid_chunk_packet_and_opens_to_its_inner_packet() {
        let mut s = Sealer::new(0xabcd, [3; 32]);
        let mut o = Opener::new(0xabcd, [3; 32]);
        let plain = inner(b"hello");
        let sealed = seal(&mut s, &plain);
        // The receive path's checks pass (the kernel's among them).
        let mut checked = sealed.clone();
        assert_eq!(
            chunk_common::classify::chunk(&mut checked, 9180, true).map(|_| ()),
            Ok(())
        );
        assert_eq!(sealed[field::MSG_TYPE], envelope::SEALED);
        assert!(
            !sealed.windows(5).any(|w| w == b"hello"),
            "plaintext on the wire"
        );
        let mut out = vec![0u8; sealed.len()];
        let n = o.open(&sealed, &mut out).unwrap();
        let mut expect = plain.clone();
        expect[field::CHECKSUM].fill(0);
        assert_eq!(&out[..n], expect.as_slice());
        let r = Repr::parse_checksum_already_checked(&out[..n]).unwrap();
        assert_eq!(r.message, Message::Data { payload: b"hello" });
    }

    #[test]
    fn replays_are_refused_and_reordering_within_the_window_is_not() {
        let mut s = Sealer::new(1, [3; 32]);
        let mut o = Opener::new(1, [3; 32]);
        let packets: Vec<_> = (0..10_000).map(|_| seal(&mut s, &inner(b"x"))).collect();
        let mut out = vec![0u8; 100];
        assert!(o.open(&packets[5], &mut out).is_ok());
        assert_eq!(o.open(&packets[5], &mut out), Err(OpenError::Replayed));
        assert!(o.open(&packets[2], &mut out).is_ok());
        assert!(o.open(&packets[9_000], &mut out).is_ok());
        // 9 000 − 2 000 is within the window; 9 000 − 500 not.
        assert!(o.open(&packets[2_000], &mut out).is_ok());
        assert_eq!(o.open(&packets[500], &mut out), Err(OpenError::Replayed));
        assert_eq!(o.open(&packets[2_000], &mut out), Err(OpenError::Replayed));
        assert_eq!(o.open(&packets[9_000], &mut out), Err(OpenError::Replayed));
        assert!(o.open(&packets[8_999], &mut out).is_ok());
        assert_eq!(o.replays, 4);
    }

    /// Only packets that authenticate move the window: a forged packet with a high counter
    /// does not make the genuine ones below it look old.
    #[test]
    fn a_forged_high_counter_does_not_move_the_window() {
        let mut s = Sealer::new(1, [3; 32]);
        let mut o = Opener::new(1, [3; 32]);
        let genuine: Vec<_> = (0..5).map(|_| seal(&mut s, &inner(b"x"))).collect();
        let mut forged = genuine[0].clone();
        forged[HEADER_LEN..INNER_AT].copy_from_slice(&(REPLAY_WINDOW * 3).to_be_bytes());
        let mut out = vec![0u8; 100];
        assert_eq!(o.open(&forged, &mut out), Err(OpenError::BadTag));
        for p in &genuine {
            assert!(o.open(p, &mut out).is_ok());
        }
    }

    #[test]
    fn the_key_changes_every_epoch_and_reordering_across_the_change_opens() {
        let start = EPOCH_LEN - 2;
        let mut s = Sealer::starting_at(1, [3; 32], start);
        let mut o = Opener::new(1, [3; 32]);
        let p: Vec<_> = (0..4).map(|_| seal(&mut s, &inner(b"x"))).collect();
        let mut out = vec![0u8; 100];
        // The opener is at epoch 0: it takes epoch 1's first packet, then a late epoch-0 one.
        assert!(o.open(&p[2], &mut out).is_ok());
        assert!(o.open(&p[1], &mut out).is_ok());
        assert!(o.open(&p[3], &mut out).is_ok());
        assert!(o.open(&p[0], &mut out).is_ok());
        // The two epochs' keys differ: a packet of epoch 1 under epoch 0's key does not open.
        let mut k0 = Sealer::new(1, [3; 32]);
        (k0.key.epoch, k0.next) = (1, EPOCH_LEN + 10);
        let forged = seal(&mut k0, &inner(b"x"));
        assert_eq!(o.open(&forged, &mut out), Err(OpenError::BadTag));
        assert_eq!(rekey(&[3; 32]), s.key.key);
        // Two epochs ahead is refused without a try.
        let mut far = Sealer::starting_at(1, [3; 32], 3 * EPOCH_LEN);
        let p = seal(&mut far, &inner(b"x"));
        assert_eq!(o.open(&p, &mut out), Err(OpenError::BadTag));
    }

    #[test]
    fn an_empty_seal_is_a_confirmation_and_an_envelope_inside_is_refused() {
        let mut s = Sealer::new(1, [3; 32]);
        let mut o = Opener::new(1, [3; 32]);
        let mut out = vec![0u8; 100];
        assert_eq!(o.open(&seal(&mut s, &[]), &mut out), Ok(0));
        let mut nested = inner(b"x");
        nested[field::MSG_TYPE] = envelope::SEALED;
        // Not sealed by this side; refused when another side seals it.
        let mut buf = vec![0u8; OVERHEAD + nested.len()];
        buf[INNER_AT..INNER_AT + nested.len()].copy_from_slice(&nested);
        assert_eq!(s.seal(&mut buf, nested.len()), Err(wire::Error::Malformed));
        let counter = 1u64;
        let len = (buf.len() - HEADER_LEN) as u16;
        write_header(&mut buf[..HEADER_LEN], envelope::SEALED, 1, 0, len);
        buf[HEADER_LEN..INNER_AT].copy_from_slice(&counter.to_be_bytes());
        let (head, rest) = buf.split_at_mut(INNER_AT);
        let tag =
            Cipher::new(&[3; 32]).seal(counter, &head[..HEADER_LEN], &mut rest[..nested.len()]);
        let n = INNER_AT + nested.len();
        buf[n..].copy_from_slice(&tag);
        assert_eq!(o.open(&buf, &mut out), Err(OpenError::BadInner));
    }

    proptest! {
        /// Any change but the checksum field breaks the seal; another key or session id too.
        #[test]
        fn any_change_breaks_the_seal(
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut s = Sealer::new(9, [7; 32]);
            let mut sealed = seal(&mut s, &inner(&payload));
            let i = at.index(sealed.len());
            prop_assume!(!field::CHECKSUM.contains(&i));
            sealed[i] ^= 1 << bit;
            let mut out = vec![0u8; sealed.len()];
            prop_assert!(Opener::new(9, [7; 32]).open(&sealed, &mut out).is_err());
            sealed[i] ^= 1 << bit;
            prop_assert!(Opener::new(9, [8; 32]).open(&sealed, &mut out).is_err());
            sealed[field::TRANSFER_ID.start] ^= 1;
            prop_assert!(Opener::new(9, [7; 32]).open(&sealed, &mut out).is_err());
        }

        /// The window accepts each counter once, whatever the order, within its reach.
        #[test]
        fn the_window_accepts_each_counter_once(counters in proptest::collection::vec(0u64..20_000, 1..400)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::BTreeSet::new();
            let mut highest = None::<u64>;
            for c in counters {
                let fresh = !seen.contains(&c) && highest.is_none_or(|h| c > h || h - c < REPLAY_WINDOW);
                prop_assert_eq!(w.check(c), fresh, "counter {}", c);
                if fresh {
                    w.accept(c);
                    seen.insert(c);
                    highest = Some(highest.map_or(c, |h| h.max(c)));
                }
            }
        }
    }
}
