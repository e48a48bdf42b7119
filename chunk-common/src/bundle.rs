//! A bundle: many small files sent as the content of one transfer (an offer flagged
//! [`BUNDLE`](crate::wire::flags::BUNDLE)), so that a tree of thousands of small files does
//! not pay an offer, a hash message and a verdict (and their round trips) per file.
//!
//! The content starts with a manifest, then each member's bytes at the offset the manifest
//! gives; bytes that belong to neither (padding, so that each member starts a chunk) are zero.
//!
//! ```text
//! manifest header (8 bytes):   member count (u32) | manifest length (u32, header included)
//! one entry per member:        offset (u64) | size (u64) | mtime (i64) | mode (u32)
//!   (64 bytes + name)          | name length (u16) | reserved (u16, 0) | BLAKE3 of the member (32)
//!                              | name (name length bytes)
//! ```
//!
//! All integers big-endian. docs/PROTOCOL.md ("Bundles") is the specification: the rules
//! [`Manifest::parse`] checks, and what a receiver does with a member it already holds.

use core::ops::Range;

use crate::wire::HASH_LEN;

/// Bytes of the manifest's header.
pub const HEADER_LEN: usize = 8;
/// Bytes of a member's entry before its name.
pub const ENTRY_LEN: usize = 64;

mod field {
    use core::ops::Range;
    pub const COUNT: Range<usize> = 0..4;
    pub const LENGTH: Range<usize> = 4..8;

    pub const OFFSET: Range<usize> = 0..8;
    pub const SIZE: Range<usize> = 8..16;
    pub const MTIME: Range<usize> = 16..24;
    pub const MODE: Range<usize> = 24..28;
    pub const NAME_LEN: Range<usize> = 28..30;
    pub const RESERVED: Range<usize> = 30..32;
    pub const HASH: Range<usize> = 32..64;
}

/// Why a manifest is not one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Fewer bytes than the header or the entries need.
    Truncated,
    /// No member, a length that disagrees with the entries, an empty name.
    BadLength,
    /// A member before the manifest's end or before the previous member's end, or past the
    /// content's end; or the last member not ending where the content does.
    BadOffset,
}

/// One member of a bundle, as its manifest entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member<'a> {
    /// Where its bytes start in the bundle's content.
    pub offset: u64,
    pub size: u64,
    /// Seconds since the Unix epoch (applied when 0 or more, as an offer's).
    pub mtime: i64,
    /// Unix permission bits (`mode & 0o777` applied, as an offer's).
    pub mode: u32,
    /// BLAKE3 of its bytes.
    pub hash: [u8; HASH_LEN],
    /// Its path relative to the receiver's directory, with the rules of an offer's name.
    pub name: &'a [u8],
}

impl Member<'_> {
    /// Bytes of its entry in the manifest.
    pub const fn entry_len(&self) -> usize {
        ENTRY_LEN + self.name.len()
    }

    /// Its bytes' range in the content.
    pub const fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.size
    }

    /// Writes its entry at the start of `buf` (at least [`Member::entry_len`] bytes).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[field::OFFSET].copy_from_slice(&self.offset.to_be_bytes());
        buf[field::SIZE].copy_from_slice(&self.size.to_be_bytes());
        buf[field::MTIME].copy_from_slice(&self.mtime.to_be_bytes());
        buf[field::MODE].copy_from_slice(&self.mode.to_be_bytes());
        buf[field::NAME_LEN].copy_from_slice(&(self.name.len() as u16).to_be_bytes());
        buf[field::RESERVED].fill(0);
        buf[field::HASH].copy_from_slice(&self.hash);
        buf[ENTRY_LEN..ENTRY_LEN + self.name.len()].copy_from_slice(self.name);
    }
}

/// The manifest's length for `count` members whose names take `names_len` bytes in all.
pub const fn manifest_size(count: usize, names_len: usize) -> u64 {
    (HEADER_LEN + count * ENTRY_LEN + names_len) as u64
}

/// Where chunk's sender starts the member that follows content ending at `end`: the next
/// multiple of the chunk size, so that no chunk holds bytes of two members (or of the manifest
/// and a member).
pub const fn next_offset(end: u64, chunk_size: u32) -> u64 {
    end.div_ceil(chunk_size as u64) * chunk_size as u64
}

/// One member to lay out with [`build`].
#[cfg(any(feature = "std", test))]
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    pub name: &'a [u8],
    pub bytes: &'a [u8],
    pub mode: u32,
    pub mtime: i64,
    /// BLAKE3 of `bytes` (this crate has no BLAKE3; the caller's).
    pub hash: [u8; HASH_LEN],
}

/// A bundle's whole content, laid out as chunk's sender lays it out ([`next_offset`]).
#[cfg(any(feature = "std", test))]
pub fn build(chunk_size: u32, members: &[Source<'_>]) -> std::vec::Vec<u8> {
    extern crate std;
    let names: usize = members.iter().map(|m| m.name.len()).sum();
    let mlen = manifest_size(members.len(), names);
    let mut out = std::vec![0u8; mlen as usize];
    emit_header(members.len() as u32, mlen as usize - HEADER_LEN, &mut out);
    let mut at = HEADER_LEN;
    let mut end = mlen;
    for src in members {
        let offset = next_offset(end, chunk_size);
        let m = Member {
            offset,
            size: src.bytes.len() as u64,
            mtime: src.mtime,
            mode: src.mode,
            hash: src.hash,
            name: src.name,
        };
        m.emit(&mut out[at..]);
        at += m.entry_len();
        end = offset + m.size;
    }
    let mut end = mlen;
    for src in members {
        let offset = next_offset(end, chunk_size);
        out.resize(offset as usize, 0);
        out.extend_from_slice(src.bytes);
        end = offset + src.bytes.len() as u64;
    }
    out
}

/// Writes a manifest header for `count` members whose entries take `entries_len` bytes.
pub fn emit_header(count: u32, entries_len: usize, buf: &mut [u8]) {
    buf[field::COUNT].copy_from_slice(&count.to_be_bytes());
    buf[field::LENGTH].copy_from_slice(&((HEADER_LEN + entries_len) as u32).to_be_bytes());
}

/// The manifest's length, from the content's first [`HEADER_LEN`] bytes.
pub fn manifest_len(content: &[u8]) -> Result<u32, Error> {
    let b = content.get(field::LENGTH).ok_or(Error::Truncated)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A checked manifest: the entries of a content of a known size.
#[derive(Clone, Copy, Debug)]
pub struct Manifest<'a> {
    count: u32,
    entries: &'a [u8],
}

impl<'a> Manifest<'a> {
    /// Checks the manifest at the start of a content of `content_size` bytes (`bytes` holds at
    /// least the manifest): at least one member, a length that is its header and entries
    /// exactly, no empty name, and members in order of offset, each starting at or after the
    /// manifest's end and the previous member's end, the last ending at the content's end.
    pub fn parse(bytes: &'a [u8], content_size: u64) -> Result<Self, Error> {
        let len = manifest_len(bytes)? as usize;
        let b = &bytes[field::COUNT];
        let count = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        if count == 0 || len < HEADER_LEN {
            return Err(Error::BadLength);
        }
        let entries = bytes.get(HEADER_LEN..len).ok_or(Error::Truncated)?;
        let m = Manifest { count, entries };
        let mut at = 0usize;
        let mut end = len as u64;
        for _ in 0..count {
            let (member, next) = m.entry_at(at)?;
            if member.name.is_empty() {
                return Err(Error::BadLength);
            }
            if member.offset < end {
                return Err(Error::BadOffset);
            }
            end = member
                .offset
                .checked_add(member.size)
                .ok_or(Error::BadOffset)?;
            at = next;
        }
        if at != entries.len() {
            return Err(Error::BadLength);
        }
        if end != content_size {
            return Err(Error::BadOffset);
        }
        Ok(m)
    }

    fn entry_at(&self, at: usize) -> Result<(Member<'a>, usize), Error> {
        let e = self
            .entries
            .get(at..at + ENTRY_LEN)
            .ok_or(Error::Truncated)?;
        let u64_at = |r: Range<usize>| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&e[r]);
            u64::from_be_bytes(w)
        };
        let name_len = u16::from_be_bytes([e[field::NAME_LEN][0], e[field::NAME_LEN][1]]) as usize;
        let name = self
            .entries
            .get(at + ENTRY_LEN..at + ENTRY_LEN + name_len)
            .ok_or(Error::Truncated)?;
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&e[field::HASH]);
        let m = &e[field::MODE];
        Ok((
            Member {
                offset: u64_at(field::OFFSET),
                size: u64_at(field::SIZE),
                mtime: u64_at(field::MTIME) as i64,
                mode: u32::from_be_bytes([m[0], m[1], m[2], m[3]]),
                hash,
                name,
            },
            at + ENTRY_LEN + name_len,
        ))
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The members, in order.
    pub fn members(&self) -> Members<'a> {
        Members {
            manifest: *self,
            at: 0,
            left: self.count,
        }
    }
}

/// The members of a checked [`Manifest`].
pub struct Members<'a> {
    manifest: Manifest<'a>,
    at: usize,
    left: u32,
}

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        if self.left == 0 {
            return None;
        }
        // Checked by `parse`.
        let (m, next) = self.manifest.entry_at(self.at).ok()?;
        self.at = next;
        self.left -= 1;
        Some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::vec::Vec;

    /// Members laid out as chunk's sender lays them out.
    fn build(members: &[(&[u8], &[u8])], chunk: u32) -> Vec<u8> {
        let sources: Vec<_> = members
            .iter()
            .map(|(name, bytes)| Source {
                name,
                bytes,
                mode: 0o644,
                mtime: 1_700_000_000,
                hash: [7; 32],
            })
            .collect();
        super::build(chunk, &sources)
    }

    #[test]
    fn a_built_bundle_parses_back() {
        let b = build(&[(b"a/x", b"hello"), (b"e", b""), (b"b", &[1; 3000])], 1400);
        let m = Manifest::parse(&b, b.len() as u64).unwrap();
        let got: Vec<_> = m.members().collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].name, b"a/x");
        assert_eq!(got[0].offset, 1400);
        assert_eq!(
            &b[got[0].range().start as usize..got[0].range().end as usize],
            b"hello"
        );
        assert_eq!(got[1].size, 0);
        assert_eq!(got[2].offset, 2800);
        assert_eq!(got[2].mode, 0o644);
        assert_eq!(got[2].mtime, 1_700_000_000);
    }

    #[test]
    fn bad_manifests_are_refused() {
        let b = build(&[(b"a", b"hello"), (b"b", b"world")], 16);
        let n = b.len() as u64;
        // The content must end where the last member does.
        assert_eq!(Manifest::parse(&b, n + 1).unwrap_err(), Error::BadOffset);
        // No member.
        let mut z = b.clone();
        z[0..4].copy_from_slice(&0u32.to_be_bytes());
        assert_eq!(Manifest::parse(&z, n).unwrap_err(), Error::BadLength);
        // One member more than the entries hold.
        let mut more = b.clone();
        more[0..4].copy_from_slice(&3u32.to_be_bytes());
        assert_eq!(Manifest::parse(&more, n).unwrap_err(), Error::Truncated);
        // Members out of order (the second before the first's end).
        let mut back = b.clone();
        let second = HEADER_LEN + ENTRY_LEN + 1;
        back[second..second + 8].copy_from_slice(&20u64.to_be_bytes());
        assert_eq!(Manifest::parse(&back, n).unwrap_err(), Error::BadOffset);
        // A member inside the manifest.
        let mut inside = b.clone();
        inside[HEADER_LEN..HEADER_LEN + 8].copy_from_slice(&4u64.to_be_bytes());
        assert_eq!(Manifest::parse(&inside, n).unwrap_err(), Error::BadOffset);
        // A length past the bytes.
        assert_eq!(Manifest::parse(&b[..20], n).unwrap_err(), Error::Truncated);
        assert_eq!(manifest_len(&b[..3]).unwrap_err(), Error::Truncated);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400), size in 0u64..1000) {
            if let Ok(m) = Manifest::parse(&bytes, size) {
                let mut end = 0;
                for member in m.members() {
                    proptest::prop_assert!(member.offset >= end);
                    end = member.range().end;
                }
                proptest::prop_assert_eq!(end, size);
            }
        }
    }
}
