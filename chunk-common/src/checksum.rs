//! The checksum chunk puts in every header (protocol version 2): the low 32 bits of **XXH64**
//! with seed 0 (Yann Collet's xxHash, 64-bit variant, as specified in the xxHash repository's
//! `doc/xxhash_spec.md`), computed over the whole chunk packet with its own four bytes taken as
//! zero.
//!
//! Why not CRC-32 any more (version 1): the eBPF instruction set has no carry-less multiply, no
//! SIMD and no CRC helper, so the in-kernel CRC was a table lookup per byte — measured at about
//! 1 ns per byte with slicing-by-8, two thirds of the XDP program's time on a 1.4 KB packet.
//! XXH64 needs only 64-bit multiplies, adds and shifts, four independent lanes of eight bytes:
//! about an eighth of the instructions per byte, and no table in the cache. It is not a CRC:
//! it guarantees no particular burst length, but any corruption passes it with probability
//! about 2^-32, like a CRC-32 against random errors; the link layer has its own CRC, and every
//! file is checked end to end with BLAKE3. Neither is proof against forgery (see
//! docs/SECURITY.md).
//!
//! The XDP program runs the steps here ([`Lanes::stripe`], [`tail8`], [`tail4`], [`tail1`],
//! [`finish`]) from its own bounded loops, because the verifier must see the bounds; userspace
//! calls [`packet_checksum`]. Both use the same steps; the tests here compare them with the
//! `xxhash-rust` crate, the reference implementation's Rust port, and the namespace tests (and
//! `chunk xdp-cost`, which refuses a figure unless every valid frame was accepted) show the
//! kernel accepting exactly what userspace computes.

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// Where the checksum field sits in a chunk packet (the header's bytes 16..20).
pub const FIELD_AT: usize = 16;

#[inline(always)]
fn round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

#[inline(always)]
fn merge(acc: u64, lane: u64) -> u64 {
    (acc ^ round(0, lane)).wrapping_mul(P1).wrapping_add(P4)
}

/// The four accumulators of an input of 32 bytes or more.
#[derive(Clone, Copy, Debug)]
pub struct Lanes([u64; 4]);

impl Default for Lanes {
    fn default() -> Self {
        Self::new()
    }
}

impl Lanes {
    pub const fn new() -> Self {
        Lanes([P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)])
    }

    /// Folds one 32-byte stripe in, as four little-endian `u64`s.
    #[inline(always)]
    pub fn stripe(&mut self, w: [u64; 4]) {
        self.0[0] = round(self.0[0], w[0]);
        self.0[1] = round(self.0[1], w[1]);
        self.0[2] = round(self.0[2], w[2]);
        self.0[3] = round(self.0[3], w[3]);
    }

    /// The state after the last whole stripe: the lanes converged into one.
    #[inline(always)]
    pub fn converge(self) -> u64 {
        let [a, b, c, d] = self.0;
        let h = a
            .rotate_left(1)
            .wrapping_add(b.rotate_left(7))
            .wrapping_add(c.rotate_left(12))
            .wrapping_add(d.rotate_left(18));
        merge(merge(merge(merge(h, a), b), c), d)
    }
}

/// The state of an input shorter than 32 bytes, before its bytes.
pub const SHORT_START: u64 = P5;

/// After the stripes (or [`SHORT_START`]), the input's length goes in.
#[inline(always)]
pub fn add_len(h: u64, len: u64) -> u64 {
    h.wrapping_add(len)
}

/// Folds in eight remaining bytes, as a little-endian `u64`.
#[inline(always)]
pub fn tail8(h: u64, w: u64) -> u64 {
    (h ^ round(0, w))
        .rotate_left(27)
        .wrapping_mul(P1)
        .wrapping_add(P4)
}

/// Folds in four remaining bytes, as a little-endian `u32`.
#[inline(always)]
pub fn tail4(h: u64, w: u32) -> u64 {
    (h ^ (w as u64).wrapping_mul(P1))
        .rotate_left(23)
        .wrapping_mul(P2)
        .wrapping_add(P3)
}

/// Folds in one remaining byte.
#[inline(always)]
pub fn tail1(h: u64, b: u8) -> u64 {
    (h ^ (b as u64).wrapping_mul(P5))
        .rotate_left(11)
        .wrapping_mul(P1)
}

/// XXH64's final mix ("avalanche").
#[inline(always)]
fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The final mix, and the 32 bits the header carries (XXH64's low half).
#[inline(always)]
pub fn finish(h: u64) -> u32 {
    avalanche(h) as u32
}

/// XXH64 of `data` with seed 0, reading each word through `word64`/`word32` (so that a caller
/// can take some bytes as zero without copying).
#[inline(always)]
fn xxh64_with(data: &[u8], word64: impl Fn(usize) -> u64, word32: impl Fn(usize) -> u32) -> u64 {
    let len = data.len();
    let mut i = 0;
    let mut h = if len >= 32 {
        let mut lanes = Lanes::new();
        while i + 32 <= len {
            lanes.stripe([word64(i), word64(i + 8), word64(i + 16), word64(i + 24)]);
            i += 32;
        }
        lanes.converge()
    } else {
        SHORT_START
    };
    h = add_len(h, len as u64);
    while i + 8 <= len {
        h = tail8(h, word64(i));
        i += 8;
    }
    if i + 4 <= len {
        h = tail4(h, word32(i));
        i += 4;
    }
    while i < len {
        h = tail1(h, data[i]);
        i += 1;
    }
    avalanche(h)
}

fn le64(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

fn le32(data: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[at..at + 4]);
    u32::from_le_bytes(b)
}

/// XXH64 of `data`, seed 0 (the full 64 bits).
pub fn xxh64(data: &[u8]) -> u64 {
    xxh64_with(data, |at| le64(data, at), |at| le32(data, at))
}

/// The checksum of a chunk packet (header and body, `packet` ending where the packet ends), its
/// own field at [`FIELD_AT`] taken as zero whatever it holds. Every read starts at a multiple
/// of four from the packet's start, so the field is always either the low half of the `u64` at
/// 16 or the `u32` at 16.
pub fn packet_checksum(packet: &[u8]) -> u32 {
    let h = xxh64_with(
        packet,
        |at| {
            let w = le64(packet, at);
            if at == FIELD_AT { w & !0xFFFF_FFFF } else { w }
        },
        |at| if at == FIELD_AT { 0 } else { le32(packet, at) },
    );
    h as u32
}

/// The checksum of `data` taken as it is (the caller has zeroed the field).
pub fn checksum(data: &[u8]) -> u32 {
    xxh64(data) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // XXH64 test values from the xxHash reference (seed 0).
        assert_eq!(xxh64(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxh64(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxh64(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    proptest! {
        #[test]
        fn matches_the_reference(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            prop_assert_eq!(xxh64(&data), xxhash_rust::xxh64::xxh64(&data, 0));
            prop_assert_eq!(checksum(&data), xxhash_rust::xxh64::xxh64(&data, 0) as u32);
        }

        #[test]
        fn packet_checksum_ignores_its_field(
            data in proptest::collection::vec(any::<u8>(), 20..3000),
            field in any::<u32>(),
        ) {
            let mut zeroed = data.clone();
            zeroed[FIELD_AT..FIELD_AT + 4].fill(0);
            let want = xxhash_rust::xxh64::xxh64(&zeroed, 0) as u32;
            let mut with = data.clone();
            with[FIELD_AT..FIELD_AT + 4].copy_from_slice(&field.to_be_bytes());
            prop_assert_eq!(packet_checksum(&with), want);
        }
    }
}
