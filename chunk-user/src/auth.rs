//! Pre-shared-key authentication (`--psk-file`): every packet carries a keyed-BLAKE3 tag.
//!
//! A sealed packet has the `AUTH` flag and ends with a 24-byte trailer inside its payload (the
//! payload length counts it, so the kernel's length and checksum checks cover it unchanged):
//!
//! ```text
//! | header (AUTH set) | message body | timestamp: u64 ms since the Unix epoch, BE | tag: 16 bytes |
//! ```
//!
//! The tag is the first 16 bytes of `BLAKE3-keyed(key, packet without the tag, checksum field
//! zeroed)`, the key `BLAKE3-derive_key("chunk psk v1", file contents)`. The checksum is then computed
//! over everything, tag included, as for any packet. The timestamp makes an offer replayable only
//! within [`OFFER_WINDOW`]; the receiver refuses older (or future) offers, and a transfer is
//! bound to its offer by its transfer id. See docs/SECURITY.md for what this does and does not
//! protect.

use std::{io, path::Path, time::Duration};

use chunk_common::wire::{self, HEADER_LEN, Packet, field, flags};

/// Bytes of the tag.
pub const TAG_LEN: usize = 16;
/// Bytes the trailer adds to a packet.
pub const TRAILER_LEN: usize = 8 + TAG_LEN;
/// How far an offer's timestamp may be from the receiver's clock.
pub const OFFER_WINDOW: Duration = Duration::from_secs(30);

const CONTEXT: &str = "chunk psk v1";
const NOISE_CONTEXT: &str = "chunk noise psk v1";

/// The keys both sides derive from the shared file: the tag key (`chunk psk v1`) and the
/// handshake's Noise PSK (`chunk noise psk v1`).
#[derive(Clone)]
pub struct Psk([u8; 32], [u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

/// Why a packet did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("packet is not authenticated")]
    Unauthenticated,
    #[error("packet is authenticated but no key is configured")]
    NoKey,
    #[error("authentication tag does not match")]
    BadTag,
    #[error("packet too short for its trailer")]
    Truncated,
}

impl Psk {
    /// Derives the key from a file's contents (at least 16 bytes; use e.g. 32 random bytes).
    pub fn from_file(path: &Path) -> io::Result<Psk> {
        let secret = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Psk::from_secret(&secret).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: a pre-shared key needs at least 16 bytes (e.g. `head -c 32 /dev/urandom`)",
                    path.display()
                ),
            )
        })
    }

    pub fn from_secret(secret: &[u8]) -> Option<Psk> {
        (secret.len() >= 16).then(|| {
            Psk(
                blake3::derive_key(CONTEXT, secret),
                blake3::derive_key(NOISE_CONTEXT, secret),
            )
        })
    }

    /// The PSK the handshake mixes in (docs/PROTOCOL.md, "Encryption").
    pub fn noise_key(&self) -> [u8; 32] {
        self.1
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let h = blake3::keyed_hash(&self.0, data);
        let mut t = [0; TAG_LEN];
        t.copy_from_slice(&h.as_bytes()[..TAG_LEN]);
        t
    }

    /// Seals the packet in `buf[..len]` (a complete chunk packet as `Repr::emit` wrote it):
    /// appends the trailer, sets `AUTH`, fixes the length and the checksum. `buf` needs
    /// [`TRAILER_LEN`] bytes of room. Returns the new length.
    pub fn seal(&self, buf: &mut [u8], len: usize, now_ms: u64) -> wire::Result<usize> {
        let new_len = len + TRAILER_LEN;
        if buf.len() < new_len || len < HEADER_LEN {
            return Err(wire::Error::Truncated);
        }
        let payload_len =
            u16::try_from(new_len - HEADER_LEN).map_err(|_| wire::Error::BadLength)?;
        // Already sealed (`AUTH` set, a trailer at its end): sealing it again would make a
        // packet whose opening gives back neither it nor what it held.
        if Packet::new_unchecked(&buf[..len]).flags() & flags::AUTH != 0 {
            return Err(wire::Error::Malformed);
        }
        buf[len..len + 8].copy_from_slice(&now_ms.to_be_bytes());
        let mut p = Packet::new_unchecked(&mut buf[..new_len]);
        p.set_flags(p.flags() | flags::AUTH);
        p.set_payload_len(payload_len);
        p.set_checksum(0);
        let tag = self.tag(&buf[..len + 8]);
        buf[len + 8..new_len].copy_from_slice(&tag);
        Packet::new_unchecked(&mut buf[..new_len]).fill_checksum();
        Ok(new_len)
    }

    /// Checks a packet's tag and copies it, trailer removed and `AUTH` cleared, into `out` with
    /// its checksum field zeroed (parse it with `Repr::parse_checksum_already_checked`). The packet's own checksum must
    /// have been checked already (by the kernel, or by the caller); its checksum field may be zeroed.
    /// Returns the stripped length and the timestamp.
    pub fn open(&self, packet: &[u8], out: &mut [u8]) -> Result<(usize, u64), AuthError> {
        open_with(Some(self), packet, out)
    }
}

/// [`Psk::open`] for a side that may have no key: then an authenticated packet is refused
/// ([`AuthError::NoKey`]) and others pass through unchanged (copied, checksum zeroed).
pub fn open_with(
    key: Option<&Psk>,
    packet: &[u8],
    out: &mut [u8],
) -> Result<(usize, u64), AuthError> {
    if packet.len() < HEADER_LEN || out.len() < packet.len() {
        return Err(AuthError::Truncated);
    }
    let authed = Packet::new_unchecked(packet).flags() & flags::AUTH != 0;
    let n = packet.len();
    match (key, authed) {
        (None, false) => {
            out[..n].copy_from_slice(packet);
            out[field::CHECKSUM].fill(0);
            Ok((n, 0))
        }
        (None, true) => Err(AuthError::NoKey),
        (Some(_), false) => Err(AuthError::Unauthenticated),
        (Some(key), true) => {
            if n < HEADER_LEN + TRAILER_LEN {
                return Err(AuthError::Truncated);
            }
            out[..n].copy_from_slice(packet);
            out[field::CHECKSUM].fill(0);
            let tag = key.tag(&out[..n - TAG_LEN]);
            // Constant time: every byte is compared whatever the first difference.
            let diff = tag
                .iter()
                .zip(&out[n - TAG_LEN..n])
                .fold(0u8, |d, (a, b)| d | (a ^ b));
            if diff != 0 {
                return Err(AuthError::BadTag);
            }
            let ts_at = n - TRAILER_LEN;
            let ts = u64::from_be_bytes(out[ts_at..ts_at + 8].try_into().expect("8 bytes"));
            let stripped = n - TRAILER_LEN;
            let mut p = Packet::new_unchecked(&mut out[..stripped]);
            p.set_flags(p.flags() & !flags::AUTH);
            p.set_payload_len((stripped - HEADER_LEN) as u16);
            Ok((stripped, ts))
        }
    }
}

/// Milliseconds since the Unix epoch, for seal.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether an offer's timestamp is within [`OFFER_WINDOW`] of `now_ms`.
pub fn fresh(ts_ms: u64, now_ms: u64) -> bool {
    ts_ms.abs_diff(now_ms) <= OFFER_WINDOW.as_millis() as u64
}

#[cfg(test)]
mod tests {

    /// A packet that already has `AUTH` is not sealed again (the fuzz target found that
    /// seal-then-open gave such a packet back without its flag).
    #[test]
    fn a_packet_already_flagged_authenticated_is_not_sealed_again() {
        use chunk_common::wire::{Message, Repr};
        let key = Psk::from_secret(b"0123456789abcdef").unwrap();
        let repr = Repr {
            transfer_id: 1,
            seq: 0,
            flags: flags::AUTH,
            message: Message::Data { payload: b"x" },
        };
        let mut buf = vec![0u8; repr.buffer_len() + TRAILER_LEN];
        let n = repr.emit(&mut buf).unwrap();
        assert_eq!(key.seal(&mut buf, n, 1), Err(wire::Error::Malformed));
    }

    use chunk_common::wire::{Message, Repr};
    use proptest::prelude::*;

    use super::*;

    /// The bytes of fixture `name` in docs/PROTOCOL.md (`0000: 43 4b … | comment` lines).
    fn doc_fixture(name: &str) -> Vec<u8> {
        crate::doc_fixture(name).expect("the fixture is in PROTOCOL.md")
    }

    /// The spec's authentication example is what this code seals and opens, byte for byte: key
    /// derivation from the example key file (bytes 00..1f), the data example sealed at
    /// 1 700 000 000 123 ms.
    #[test]
    fn the_protocol_doc_sealed_example_is_what_seal_writes() {
        let secret: Vec<u8> = (0u8..32).collect();
        let key = Psk::from_secret(&secret).unwrap();
        assert_eq!(key.0.as_slice(), doc_fixture("psk-key"));
        let data = doc_fixture("data");
        let sealed = doc_fixture("sealed");
        let mut buf = data.clone();
        buf.resize(data.len() + TRAILER_LEN, 0);
        let n = key.seal(&mut buf, data.len(), 1_700_000_000_123).unwrap();
        assert_eq!(&buf[..n], sealed.as_slice());
        let mut out = vec![0u8; n];
        let (m, ts) = key.open(&sealed, &mut out).unwrap();
        assert_eq!(ts, 1_700_000_000_123);
        let mut expect = data.clone();
        expect[16..20].fill(0);
        assert_eq!(&out[..m], expect.as_slice());
    }

    fn packet(payload: &[u8]) -> Vec<u8> {
        let r = Repr {
            transfer_id: 77,
            seq: 5,
            flags: flags::MORE_CHUNKS,
            message: Message::Data { payload },
        };
        let mut buf = vec![0u8; r.buffer_len() + TRAILER_LEN];
        let n = r.emit(&mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    fn sealed(key: &Psk, payload: &[u8]) -> Vec<u8> {
        let mut buf = packet(payload);
        let n = buf.len();
        buf.resize(n + TRAILER_LEN, 0);
        let m = key.seal(&mut buf, n, 1_700_000_000_123).unwrap();
        assert_eq!(m, buf.len());
        buf
    }

    #[test]
    fn a_sealed_packet_passes_the_checksum_and_opens_to_the_original() {
        let key = Psk::from_secret(b"sixteen bytes at least").unwrap();
        let s = sealed(&key, b"hello");
        // A valid chunk packet in its own right: the kernel's checks pass.
        assert!(Packet::new_checked(&s[..]).unwrap().validate().is_ok());
        let mut out = vec![0u8; s.len()];
        let (n, ts) = key.open(&s, &mut out).unwrap();
        assert_eq!(ts, 1_700_000_000_123);
        let r = Repr::parse_checksum_already_checked(&out[..n]).unwrap();
        assert_eq!(r.message, Message::Data { payload: b"hello" });
        assert_eq!(r.flags, flags::MORE_CHUNKS);
    }

    #[test]
    fn wrong_key_missing_key_and_missing_tag_are_refused() {
        let key = Psk::from_secret(b"sixteen bytes at least").unwrap();
        let other = Psk::from_secret(b"another sixteen bytes").unwrap();
        let s = sealed(&key, b"hello");
        let mut out = vec![0u8; s.len()];
        assert_eq!(other.open(&s, &mut out), Err(AuthError::BadTag));
        assert_eq!(open_with(None, &s, &mut out), Err(AuthError::NoKey));
        let plain = packet(b"hello");
        assert_eq!(key.open(&plain, &mut out), Err(AuthError::Unauthenticated));
        assert!(Psk::from_secret(b"short").is_none());
    }

    proptest! {
        #[test]
        fn any_change_but_the_checksum_breaks_the_tag(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let key = Psk::from_secret(&[7; 32]).unwrap();
            let mut s = sealed(&key, &payload);
            let i = at.index(s.len());
            prop_assume!(!field::CHECKSUM.contains(&i));
            s[i] ^= 1 << bit;
            let mut out = vec![0u8; s.len()];
            prop_assert!(key.open(&s, &mut out).is_err());
        }
    }
}
