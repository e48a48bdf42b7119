//! The CRC32 chunk puts in every header: IEEE 802.3 (reflected polynomial 0xEDB88320, initial
//! value and final XOR 0xFFFFFFFF), the same function as `crc32fast` and zlib.
//!
//! It is computed *slicing-by-8*: eight 256-entry tables let one step fold eight bytes. The XDP
//! program calls [`step8`] and [`step1`] from its own bounded loop (the verifier needs to see the
//! bounds there), and userspace calls [`Crc32`]; both use the same tables and the same steps, so
//! the kernel and userspace cannot disagree about what a valid packet is.

/// `TABLES[0]` is the classic byte-at-a-time table; `TABLES[k][i]` is the CRC of byte `i`
/// followed by `k` zero bytes, which is what lets [`step8`] fold eight bytes at once.
pub static TABLES: [[u32; 256]; 8] = make_tables();

const POLY: u32 = 0xEDB8_8320;

const fn make_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// The running state before any byte (the CRC's initial value).
pub const INIT: u32 = 0xFFFF_FFFF;

/// Turns a running state into the CRC value (the final XOR).
#[inline(always)]
pub const fn finish(state: u32) -> u32 {
    state ^ 0xFFFF_FFFF
}

/// Folds one byte into the running state.
#[inline(always)]
pub fn step1(state: u32, byte: u8) -> u32 {
    (state >> 8) ^ TABLES[0][((state ^ byte as u32) & 0xff) as usize]
}

/// Folds eight bytes into the running state; `word` is the eight bytes read as a little-endian
/// `u64` (`u64::from_le_bytes`).
#[inline(always)]
pub fn step8(state: u32, word: u64) -> u32 {
    let lo = state ^ (word as u32);
    let hi = (word >> 32) as u32;
    TABLES[7][(lo & 0xff) as usize]
        ^ TABLES[6][((lo >> 8) & 0xff) as usize]
        ^ TABLES[5][((lo >> 16) & 0xff) as usize]
        ^ TABLES[4][(lo >> 24) as usize]
        ^ TABLES[3][(hi & 0xff) as usize]
        ^ TABLES[2][((hi >> 8) & 0xff) as usize]
        ^ TABLES[1][((hi >> 16) & 0xff) as usize]
        ^ TABLES[0][(hi >> 24) as usize]
}

/// An incremental CRC32 for userspace and tests.
#[derive(Clone, Copy, Debug)]
pub struct Crc32 {
    state: u32,
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32 {
    pub const fn new() -> Self {
        Self { state: INIT }
    }

    /// Folds `data` in. Userspace builds (feature `std`) use crc32fast, which picks the CPU's
    /// carry-less multiply when it has one (several times faster than the tables, and the
    /// sender computes a CRC for every packet); the kernel's table path, [`step8`]/[`step1`], is
    /// tested against it.
    #[cfg(feature = "std")]
    pub fn update(&mut self, data: &[u8]) {
        let mut h = crc32fast::Hasher::new_with_initial(finish(self.state));
        h.update(data);
        self.state = finish(h.finalize());
    }

    /// Folds `data` in with the tables.
    #[cfg(not(feature = "std"))]
    pub fn update(&mut self, data: &[u8]) {
        self.update_tables(data)
    }

    /// Folds `data` in with the tables, eight bytes per step: what the XDP program does.
    pub fn update_tables(&mut self, data: &[u8]) {
        let mut state = self.state;
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            state = step8(state, u64::from_le_bytes(b));
        }
        for &byte in words.remainder() {
            state = step1(state, byte);
        }
        self.state = state;
    }

    pub const fn finish(&self) -> u32 {
        finish(self.state)
    }
}

/// The CRC32 of `data` in one call.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(&[0u8; 32]), 0x190A_55AD);
    }

    proptest! {
        #[test]
        fn matches_crc32fast(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            prop_assert_eq!(crc32(&data), crc32fast::hash(&data));
            let mut tables = Crc32::new();
            tables.update_tables(&data);
            prop_assert_eq!(tables.finish(), crc32fast::hash(&data));
        }

        #[test]
        fn incremental_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..600),
                                       cut in 0usize..600) {
            let cut = cut.min(data.len());
            let mut c = Crc32::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            prop_assert_eq!(c.finish(), crc32fast::hash(&data));
            let mut t = Crc32::new();
            t.update_tables(&data[..cut]);
            t.update_tables(&data[cut..]);
            prop_assert_eq!(t.finish(), crc32fast::hash(&data));
        }
    }
}
