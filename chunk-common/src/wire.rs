//! The chunk wire format: a 20-byte header carried directly in IPv4, then a payload.
//!
//! ```text
//!  0               1               2               3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-------------------------------+---------------+---------------+
//! |        magic 0x43 0x4B        |   version 2   | message type  |
//! +-------------------------------+---------------+---------------+
//! |             flags             |        payload length         |
//! +-------------------------------+-------------------------------+
//! |                          transfer id                          |
//! +---------------------------------------------------------------+
//! |                        sequence number                        |
//! +---------------------------------------------------------------+
//! |       checksum over header (this field zero) and payload      |
//! +---------------------------------------------------------------+
//! |                       payload ...                             |
//! ```
//!
//! All integers are big-endian (network byte order). `docs/PROTOCOL.md` is the full specification;
//! the tests at the bottom decode its byte examples.
//!
//! As in smoltcp, [`Packet`] is a zero-copy view with checked construction and one accessor per
//! field, and [`Repr`] is the parsed, high-level form with `parse` and `emit`.

use core::ops::Range;

use crate::checksum;

/// Byte ranges of the header fields.
pub mod field {
    use core::ops::Range;
    pub type Field = Range<usize>;

    pub const MAGIC: Field = 0..2;
    pub const VERSION: usize = 2;
    pub const MSG_TYPE: usize = 3;
    pub const FLAGS: Field = 4..6;
    pub const PAYLOAD_LEN: Field = 6..8;
    pub const TRANSFER_ID: Field = 8..12;
    pub const SEQ: Field = 12..16;
    pub const CHECKSUM: Field = 16..20;
    pub const PAYLOAD: usize = 20;
}

/// Bytes of the chunk header.
pub const HEADER_LEN: usize = field::PAYLOAD;

/// "CK": the first two bytes of every chunk packet.
pub const MAGIC: u16 = 0x434B;

/// The protocol version this code speaks. A packet with another version is dropped.
pub const VERSION: u8 = 2;

/// Errors from parsing a chunk packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the header, or than the payload length the header claims.
    Truncated,
    /// The magic or version is not chunk's.
    BadMagic,
    /// The message type is unknown.
    BadType,
    /// A length disagrees with the buffer, or a body is inconsistent (e.g. an offer whose chunk
    /// count does not match its size).
    BadLength,
    /// The checksum does not match.
    BadChecksum,
    /// A body field holds a value the protocol does not allow.
    Malformed,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Error::Truncated => "truncated chunk packet",
            Error::BadMagic => "not a chunk packet (bad magic or version)",
            Error::BadType => "unknown chunk message type",
            Error::BadLength => "chunk length fields disagree",
            Error::BadChecksum => "chunk checksum mismatch",
            Error::Malformed => "malformed chunk message body",
        })
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// The kinds of chunk message.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Sender → receiver: one chunk of file data; the sequence number is the chunk index.
    Data = 1,
    /// Receiver → sender: which chunks have arrived (cumulative index plus a bitmap).
    Ack = 2,
    /// Sender → receiver: a file's metadata, which opens (or resumes) a transfer.
    Offer = 3,
    /// Receiver → sender: every chunk arrived and the whole-file hash was checked.
    Complete = 4,
    /// Either way: the transfer is over, with a reason.
    Abort = 5,
    /// Sender → receiver: the whole-file hash, once the sender has read the whole file.
    Hash = 6,
}

impl MessageType {
    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Ack),
            3 => Some(Self::Offer),
            4 => Some(Self::Complete),
            5 => Some(Self::Abort),
            6 => Some(Self::Hash),
            _ => None,
        }
    }
}

/// Envelope types: packets of the session layer (docs/PROTOCOL.md, "Encryption"), which carry
/// no transfer message of their own. They share the header, its checksum and the receive path's
/// checks with the [`MessageType`]s; the transfer id field holds a session id.
pub mod envelope {
    /// A sealed packet: a whole chunk packet (types 1 to 6), encrypted and authenticated under a
    /// session's key. Its transfer id field is the session id.
    pub const SEALED: u8 = 7;
    /// A handshake message (Noise) that opens a session; its sequence number is the message's
    /// place in the handshake (1, 2, 3).
    pub const HANDSHAKE: u8 = 8;

    /// Whether `t` is an envelope type.
    pub const fn is_envelope(t: u8) -> bool {
        t == SEALED || t == HANDSHAKE
    }
}

/// Header flags. Bits not named here are sent as zero and ignored on receipt.
pub mod flags {
    /// Data: more chunks follow this one (clear on the last chunk). The seed tool's `more_chunk`.
    pub const MORE_CHUNKS: u16 = 1 << 0;
    /// Data or offer: the sender asks for an acknowledgement right away (tail probe, keep-alive).
    pub const ACK_NOW: u16 = 1 << 1;
    /// Any message: the payload ends with a pre-shared-key authentication trailer (timestamp and
    /// tag; docs/PROTOCOL.md, "Authentication").
    pub const AUTH: u16 = 1 << 2;
    /// Offer: the name is a directory (file size 0): the receiver makes it, and applies its mode
    /// and mtime at the verdict (docs/PROTOCOL.md, "Offer").
    pub const DIRECTORY: u16 = 1 << 3;
    /// Offer: the name is a symbolic link, its content (1 to [`MAX_LINK_TARGET`] bytes) the
    /// link's target (docs/PROTOCOL.md, "Offer").
    pub const SYMLINK: u16 = 1 << 4;
    /// Offer: a stream, whose size the sender learns only at its end (stdin): the offer's
    /// file size is 0 and its chunk count [`UNKNOWN_COUNT`](super::UNKNOWN_COUNT); the end is
    /// the chunk without `MORE_CHUNKS`, and the hash message's count (docs/PROTOCOL.md,
    /// "Streams").
    pub const STREAM: u16 = 1 << 5;
    /// Offer: a bundle, many small files in one transfer: the content is a manifest and the
    /// members' bytes ([`bundle`](crate::bundle)); the offer's name is empty (docs/PROTOCOL.md,
    /// "Bundles").
    pub const BUNDLE: u16 = 1 << 6;
    /// The longest symbolic-link target an offer carries (Linux's `PATH_MAX` − 1).
    pub const MAX_LINK_TARGET: u64 = 4095;
}

/// A read/write view of a chunk packet (header and payload) in a buffer.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

fn be16(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_be_bytes([b[r.start], b[r.start + 1]])
}

fn be32(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_be_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic on a short buffer.
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after [`check_len`](Self::check_len).
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// The buffer holds a whole header and the payload length it claims. Trailing bytes beyond
    /// the payload are allowed here (Ethernet padding); [`validate`](Self::validate) is stricter.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + self.payload_len() as usize {
            Err(Error::Truncated)
        } else {
            Ok(())
        }
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn magic(&self) -> u16 {
        be16(self.buffer.as_ref(), field::MAGIC)
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    pub fn msg_type_raw(&self) -> u8 {
        self.buffer.as_ref()[field::MSG_TYPE]
    }
    pub fn msg_type(&self) -> Option<MessageType> {
        MessageType::from_u8(self.msg_type_raw())
    }
    pub fn flags(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLAGS)
    }
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }
    pub fn transfer_id(&self) -> u32 {
        be32(self.buffer.as_ref(), field::TRANSFER_ID)
    }
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), field::SEQ)
    }
    pub fn checksum(&self) -> u32 {
        be32(self.buffer.as_ref(), field::CHECKSUM)
    }
    /// The payload, as long as the header says.
    pub fn payload(&self) -> &[u8] {
        let end = HEADER_LEN + self.payload_len() as usize;
        &self.buffer.as_ref()[HEADER_LEN..end]
    }

    /// The checksum of header and payload with the checksum field taken as zero.
    pub fn compute_checksum(&self) -> u32 {
        let b = self.buffer.as_ref();
        let end = HEADER_LEN + self.payload_len() as usize;
        checksum::packet_checksum(&b[..end])
    }

    /// Everything the XDP program checks, in the same order: length, magic and version, type,
    /// the payload length against the buffer (`buffer` must end where the packet ends), checksum.
    pub fn validate(&self) -> Result<()> {
        self.validate_structure()?;
        if self.compute_checksum() != self.checksum() {
            return Err(Error::BadChecksum);
        }
        Ok(())
    }

    /// [`validate`](Self::validate) without the checksum.
    pub fn validate_structure(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.magic() != MAGIC || self.version() != VERSION {
            return Err(Error::BadMagic);
        }
        if self.msg_type().is_none() {
            return Err(Error::BadType);
        }
        if HEADER_LEN + self.payload_len() as usize != len {
            return Err(Error::BadLength);
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn put16(&mut self, r: Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    fn put32(&mut self, r: Range<usize>, v: u32) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_magic(&mut self, v: u16) {
        self.put16(field::MAGIC, v)
    }
    pub fn set_version(&mut self, v: u8) {
        self.buffer.as_mut()[field::VERSION] = v
    }
    pub fn set_msg_type(&mut self, v: MessageType) {
        self.buffer.as_mut()[field::MSG_TYPE] = v as u8
    }
    pub fn set_flags(&mut self, v: u16) {
        self.put16(field::FLAGS, v)
    }
    pub fn set_payload_len(&mut self, v: u16) {
        self.put16(field::PAYLOAD_LEN, v)
    }
    pub fn set_transfer_id(&mut self, v: u32) {
        self.put32(field::TRANSFER_ID, v)
    }
    pub fn set_seq(&mut self, v: u32) {
        self.put32(field::SEQ, v)
    }
    pub fn set_checksum(&mut self, v: u32) {
        self.put32(field::CHECKSUM, v)
    }
    /// The payload, as long as the header says.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
    /// Computes and stores the checksum; call it last.
    pub fn fill_checksum(&mut self) {
        let c = self.compute_checksum();
        self.set_checksum(c)
    }
}

/// The bytes of a hash carried in offers and completions (BLAKE3 or SHA-256: both 32 bytes).
pub const HASH_LEN: usize = 32;

/// Which whole-file hash an offer carries. An algorithm this side does not know still parses
/// (as [`HashAlg::Other`]), so that a receiver can refuse the offer with `unsupported` instead of
/// leaving the sender to time out on a packet it dropped as malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    /// 1: BLAKE3, 32-byte digest.
    Blake3,
    /// Any other code.
    Other(u8),
}

impl HashAlg {
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => HashAlg::Blake3,
            c => HashAlg::Other(c),
        }
    }

    pub const fn code(self) -> u8 {
        match self {
            HashAlg::Blake3 => 1,
            HashAlg::Other(c) => c,
        }
    }
}

/// The offer body: a file's metadata. Fixed part, then `name_len` bytes of name.
pub mod offer {
    use super::field::Field;
    pub const FILE_SIZE: Field = 0..8;
    pub const CHUNK_SIZE: Field = 8..12;
    pub const CHUNK_COUNT: Field = 12..16;
    pub const MODE: Field = 16..20;
    pub const MTIME: Field = 20..28;
    pub const HASH_ALG: usize = 28;
    pub const RESERVED: usize = 29;
    pub const NAME_LEN: Field = 30..32;
    pub const TAG: Field = 32..64;
    pub const NAME: usize = 64;
}

/// A file offer. The sender retransmits it until an ack or an abort answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferRepr<'a> {
    pub file_size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// Unix permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// The algorithm of the whole-file hash that the hash message will carry.
    pub hash_alg: HashAlg,
    /// The sender's identity of this version of the file (not its hash, which the sender only
    /// knows once it has read the file): equal tags let a receiver resume a partial copy; the
    /// hash message decides whether the copy is the file.
    pub tag: [u8; HASH_LEN],
    /// The file's name relative to the receiver's output directory, UTF-8, `/`-separated. The
    /// wire only carries bytes: the receiver decides what names it accepts.
    pub name: &'a [u8],
}

/// Bytes of chunk `index` in a file of `file_size` bytes cut into `chunk_size`-byte chunks (the
/// last chunk may be shorter; a data packet's payload must be exactly this long). The caller
/// makes sure `index` is below the chunk count.
pub const fn chunk_len(file_size: u64, chunk_size: u32, index: u32) -> usize {
    let start = index as u64 * chunk_size as u64;
    let left = file_size.saturating_sub(start);
    if left < chunk_size as u64 {
        left as usize
    } else {
        chunk_size as usize
    }
}

/// A stream's offer carries this chunk count (with file size 0): not known yet.
pub const UNKNOWN_COUNT: u32 = u32::MAX;

/// How many chunks a file of `file_size` bytes needs at `chunk_size` bytes each (an empty file
/// has none), or `None` if that is more than a `u32` can count or `chunk_size` is zero.
pub const fn chunk_count(file_size: u64, chunk_size: u32) -> Option<u32> {
    if chunk_size == 0 {
        return None;
    }
    let n = file_size.div_ceil(chunk_size as u64);
    if n > u32::MAX as u64 {
        None
    } else {
        Some(n as u32)
    }
}

impl<'a> OfferRepr<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        if body.len() < offer::NAME {
            return Err(Error::Truncated);
        }
        let name_len = be16(body, offer::NAME_LEN) as usize;
        if body.len() != offer::NAME + name_len {
            return Err(Error::BadLength);
        }
        let hash_alg = HashAlg::from_code(body[offer::HASH_ALG]);
        let mut tag = [0u8; HASH_LEN];
        tag.copy_from_slice(&body[offer::TAG]);
        let mut size = [0u8; 8];
        size.copy_from_slice(&body[offer::FILE_SIZE]);
        let mut mtime = [0u8; 8];
        mtime.copy_from_slice(&body[offer::MTIME]);
        let repr = OfferRepr {
            file_size: u64::from_be_bytes(size),
            chunk_size: be32(body, offer::CHUNK_SIZE),
            chunk_count: be32(body, offer::CHUNK_COUNT),
            mode: be32(body, offer::MODE),
            mtime: i64::from_be_bytes(mtime),
            hash_alg,
            tag,
            name: &body[offer::NAME..],
        };
        if chunk_count(repr.file_size, repr.chunk_size) != Some(repr.chunk_count)
            && !repr.is_stream()
        {
            return Err(Error::Malformed);
        }
        Ok(repr)
    }

    /// Whether the offer has a stream's size and count (file size 0, [`UNKNOWN_COUNT`] chunks,
    /// a chunk size of at least 1); its `STREAM` flag must say so too.
    pub fn is_stream(&self) -> bool {
        self.file_size == 0 && self.chunk_count == UNKNOWN_COUNT && self.chunk_size > 0
    }

    pub fn body_len(&self) -> usize {
        offer::NAME + self.name.len()
    }

    fn emit(&self, body: &mut [u8]) {
        body[offer::FILE_SIZE].copy_from_slice(&self.file_size.to_be_bytes());
        body[offer::CHUNK_SIZE].copy_from_slice(&self.chunk_size.to_be_bytes());
        body[offer::CHUNK_COUNT].copy_from_slice(&self.chunk_count.to_be_bytes());
        body[offer::MODE].copy_from_slice(&self.mode.to_be_bytes());
        body[offer::MTIME].copy_from_slice(&self.mtime.to_be_bytes());
        body[offer::HASH_ALG] = self.hash_alg.code();
        body[offer::RESERVED] = 0;
        body[offer::NAME_LEN].copy_from_slice(&(self.name.len() as u16).to_be_bytes());
        body[offer::TAG].copy_from_slice(&self.tag);
        body[offer::NAME..offer::NAME + self.name.len()].copy_from_slice(self.name);
    }
}

/// The ack body: which chunks beyond the cumulative index (in the header's sequence number)
/// have arrived, as a bitmap.
pub mod ack {
    use super::field::Field;
    /// The sequence number of the packet that triggered this ack (for RTT samples), or
    /// `u32::MAX` when none did (a timer, an answer to an offer).
    pub const ECHO: Field = 0..4;
    /// The chunk index that bit 0 of the bitmap stands for.
    pub const BASE: Field = 4..8;
    /// Receiver's delay between the triggering packet and this ack, in microseconds (saturating).
    pub const DELAY_US: Field = 8..12;
    pub const BITMAP: usize = 12;
}

/// The largest ack bitmap: 8192 chunks beyond `base` per ack.
pub const MAX_ACK_BITMAP_LEN: usize = 1024;

/// The ack `echo` value that names no data packet (an answer to an offer, a repeated ack).
pub const NO_ECHO: u32 = u32::MAX;

/// An acknowledgement. Chunk `i` has arrived if `i < cumulative`, or if bit `i - base` of the
/// bitmap is set (bit `k` is bit `k % 8`, least significant first, of byte `k / 8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AckRepr<'a> {
    /// Every chunk below this index has arrived (carried in the header's sequence number).
    pub cumulative: u32,
    pub echo: u32,
    pub delay_us: u32,
    pub base: u32,
    pub bitmap: &'a [u8],
}

impl<'a> AckRepr<'a> {
    pub fn parse(cumulative: u32, body: &'a [u8]) -> Result<Self> {
        if body.len() < ack::BITMAP {
            return Err(Error::Truncated);
        }
        let bitmap = &body[ack::BITMAP..];
        if bitmap.len() > MAX_ACK_BITMAP_LEN {
            return Err(Error::BadLength);
        }
        Ok(AckRepr {
            cumulative,
            echo: be32(body, ack::ECHO),
            base: be32(body, ack::BASE),
            delay_us: be32(body, ack::DELAY_US),
            bitmap,
        })
    }

    pub fn body_len(&self) -> usize {
        ack::BITMAP + self.bitmap.len()
    }

    fn emit(&self, body: &mut [u8]) {
        body[ack::ECHO].copy_from_slice(&self.echo.to_be_bytes());
        body[ack::BASE].copy_from_slice(&self.base.to_be_bytes());
        body[ack::DELAY_US].copy_from_slice(&self.delay_us.to_be_bytes());
        body[ack::BITMAP..ack::BITMAP + self.bitmap.len()].copy_from_slice(self.bitmap);
    }

    /// Whether this ack says chunk `index` has arrived.
    pub fn has(&self, index: u32) -> bool {
        if index < self.cumulative {
            return true;
        }
        let Some(k) = index.checked_sub(self.base) else {
            return false;
        };
        let k = k as usize;
        k / 8 < self.bitmap.len() && self.bitmap[k / 8] & (1 << (k % 8)) != 0
    }

    /// The chunk indices the bitmap marks as arrived, in increasing order.
    pub fn bitmap_indices(&self) -> impl Iterator<Item = u32> + 'a {
        let base = self.base;
        self.bitmap
            .iter()
            .enumerate()
            .flat_map(move |(byte_i, &byte)| {
                (0..8u32)
                    .filter(move |bit| byte & (1 << bit) != 0)
                    .filter_map(move |bit| base.checked_add(byte_i as u32 * 8 + bit))
            })
    }
}

/// The completion body.
pub mod complete {
    use super::field::Field;
    pub const STATUS: usize = 0;
    pub const RESERVED: Field = 1..4;
    pub const HASH: Field = 4..36;
    pub const LEN: usize = 36;
}

/// What the receiver found when it checked the whole file.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompleteStatus {
    /// The hash matched; the file is in place under its final name.
    Verified = 0,
    /// The hash did not match; nothing was left under the final name.
    HashMismatch = 1,
}

/// The receiver's verdict on a whole file. Its sequence number is the chunk count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompleteRepr {
    pub status: CompleteStatus,
    /// The hash the receiver computed over what it wrote.
    pub hash: [u8; HASH_LEN],
}

impl CompleteRepr {
    pub fn parse(body: &[u8]) -> Result<Self> {
        if body.len() != complete::LEN {
            return Err(Error::BadLength);
        }
        let status = match body[complete::STATUS] {
            0 => CompleteStatus::Verified,
            1 => CompleteStatus::HashMismatch,
            _ => return Err(Error::Malformed),
        };
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&body[complete::HASH]);
        Ok(CompleteRepr { status, hash })
    }

    fn emit(&self, body: &mut [u8]) {
        body[complete::STATUS] = self.status as u8;
        body[complete::RESERVED].fill(0);
        body[complete::HASH].copy_from_slice(&self.hash);
    }
}

/// The hash body: the algorithm, then the whole-file hash. Its sequence number is the chunk count.
pub mod hash_msg {
    use super::field::Field;
    pub const ALG: usize = 0;
    pub const RESERVED: Field = 1..4;
    pub const HASH: Field = 4..36;
    pub const LEN: usize = 36;
}

/// The sender's whole-file hash, sent once it has read the whole file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRepr {
    pub alg: HashAlg,
    pub hash: [u8; HASH_LEN],
}

impl HashRepr {
    pub fn parse(body: &[u8]) -> Result<Self> {
        if body.len() != hash_msg::LEN {
            return Err(Error::BadLength);
        }
        let mut hash = [0u8; HASH_LEN];
        hash.copy_from_slice(&body[hash_msg::HASH]);
        Ok(HashRepr {
            alg: HashAlg::from_code(body[hash_msg::ALG]),
            hash,
        })
    }

    fn emit(&self, body: &mut [u8]) {
        body[hash_msg::ALG] = self.alg.code();
        body[hash_msg::RESERVED].fill(0);
        body[hash_msg::HASH].copy_from_slice(&self.hash);
    }
}

/// The abort body: a reason code, then a human-readable UTF-8 message.
pub mod abort {
    use super::field::Field;
    pub const REASON: Field = 0..2;
    pub const MESSAGE: usize = 2;
}

/// Why a transfer was aborted or an offer refused. Unknown codes parse as [`AbortReason::Other`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortReason {
    /// The file is larger than the receiver accepts.
    TooLarge,
    /// The name is not acceptable (traversal, absolute, NUL, not UTF-8, ...).
    BadName,
    /// The receiver has too many transfers open.
    TooManyTransfers,
    /// Not enough free space for the file.
    NoSpace,
    /// A file by that name exists and the receiver does not overwrite.
    Exists,
    /// The peer was silent too long.
    Timeout,
    /// A user or an operator cancelled it.
    Cancelled,
    /// A local I/O error (disk full, permissions).
    Io,
    /// The offer is not one this receiver supports (chunk size, hash algorithm).
    Unsupported,
    /// The transfer id is not known to the receiver.
    UnknownTransfer,
    /// The receiver does not admit the sender's key (encryption with key pairs).
    Unauthorized,
    /// The receiver takes only encrypted transfers (`--require-encryption`).
    EncryptionRequired,
    /// A code this version does not know.
    Other(u16),
}

impl AbortReason {
    pub const fn code(self) -> u16 {
        match self {
            AbortReason::TooLarge => 1,
            AbortReason::BadName => 2,
            AbortReason::TooManyTransfers => 3,
            AbortReason::NoSpace => 4,
            AbortReason::Exists => 5,
            AbortReason::Timeout => 6,
            AbortReason::Cancelled => 7,
            AbortReason::Io => 8,
            AbortReason::Unsupported => 9,
            AbortReason::UnknownTransfer => 10,
            AbortReason::Unauthorized => 11,
            AbortReason::EncryptionRequired => 12,
            AbortReason::Other(c) => c,
        }
    }

    pub const fn from_code(code: u16) -> Self {
        match code {
            1 => AbortReason::TooLarge,
            2 => AbortReason::BadName,
            3 => AbortReason::TooManyTransfers,
            4 => AbortReason::NoSpace,
            5 => AbortReason::Exists,
            6 => AbortReason::Timeout,
            7 => AbortReason::Cancelled,
            8 => AbortReason::Io,
            9 => AbortReason::Unsupported,
            10 => AbortReason::UnknownTransfer,
            11 => AbortReason::Unauthorized,
            12 => AbortReason::EncryptionRequired,
            c => AbortReason::Other(c),
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            AbortReason::TooLarge => "file too large",
            AbortReason::BadName => "file name not allowed",
            AbortReason::TooManyTransfers => "too many transfers",
            AbortReason::NoSpace => "not enough space",
            AbortReason::Exists => "file exists",
            AbortReason::Timeout => "peer timed out",
            AbortReason::Cancelled => "cancelled",
            AbortReason::Io => "I/O error",
            AbortReason::Unsupported => "unsupported offer",
            AbortReason::UnknownTransfer => "unknown transfer",
            AbortReason::Unauthorized => "sender key not authorized",
            AbortReason::EncryptionRequired => "encryption required",
            AbortReason::Other(_) => "unknown reason",
        }
    }
}

/// An abort, with the reason and a message for humans (may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortRepr<'a> {
    pub reason: AbortReason,
    pub message: &'a [u8],
}

impl<'a> AbortRepr<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self> {
        if body.len() < abort::MESSAGE {
            return Err(Error::Truncated);
        }
        Ok(AbortRepr {
            reason: AbortReason::from_code(be16(body, abort::REASON)),
            message: &body[abort::MESSAGE..],
        })
    }

    pub fn body_len(&self) -> usize {
        abort::MESSAGE + self.message.len()
    }

    fn emit(&self, body: &mut [u8]) {
        body[abort::REASON].copy_from_slice(&self.reason.code().to_be_bytes());
        body[abort::MESSAGE..abort::MESSAGE + self.message.len()].copy_from_slice(self.message);
    }
}

/// A message body, by type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Chunk `seq` of the file; `payload` is the chunk's bytes (the seed tool's `load`).
    Data {
        payload: &'a [u8],
    },
    Ack(AckRepr<'a>),
    Offer(OfferRepr<'a>),
    Complete(CompleteRepr),
    Abort(AbortRepr<'a>),
    Hash(HashRepr),
}

/// A whole chunk packet, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Repr<'a> {
    pub transfer_id: u32,
    /// Data: the chunk index. Ack: the cumulative index. Complete and hash: the chunk count.
    /// Else zero.
    pub seq: u32,
    pub flags: u16,
    pub message: Message<'a>,
}

impl<'a> Repr<'a> {
    /// Validates a packet (see [`Packet::validate`]) and parses its body.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self> {
        Self::parse_bytes(packet.buffer)
    }

    /// Validates and parses a buffer that holds exactly one chunk packet.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self> {
        Self::parse_inner(bytes, true)
    }

    /// Like [`parse_bytes`](Self::parse_bytes) but without the checksum check, for packets whose checksum
    /// the XDP program has already verified (it zeroes the checksum field while checking it).
    pub fn parse_checksum_already_checked(bytes: &'a [u8]) -> Result<Self> {
        Self::parse_inner(bytes, false)
    }

    fn parse_inner(bytes: &'a [u8], check_checksum: bool) -> Result<Self> {
        let view = Packet::new_unchecked(bytes);
        view.validate_structure()?;
        if check_checksum && view.compute_checksum() != view.checksum() {
            return Err(Error::BadChecksum);
        }
        let body = packet_payload(bytes);
        let seq = view.seq();
        let message = match view.msg_type() {
            Some(MessageType::Data) => Message::Data { payload: body },
            Some(MessageType::Ack) => Message::Ack(AckRepr::parse(seq, body)?),
            Some(MessageType::Offer) => Message::Offer(OfferRepr::parse(body)?),
            Some(MessageType::Complete) => Message::Complete(CompleteRepr::parse(body)?),
            Some(MessageType::Abort) => Message::Abort(AbortRepr::parse(body)?),
            Some(MessageType::Hash) => Message::Hash(HashRepr::parse(body)?),
            None => return Err(Error::BadType),
        };
        Ok(Repr {
            transfer_id: view.transfer_id(),
            seq,
            flags: view.flags(),
            message,
        })
    }

    pub fn msg_type(&self) -> MessageType {
        match self.message {
            Message::Data { .. } => MessageType::Data,
            Message::Ack(_) => MessageType::Ack,
            Message::Offer(_) => MessageType::Offer,
            Message::Complete(_) => MessageType::Complete,
            Message::Abort(_) => MessageType::Abort,
            Message::Hash(_) => MessageType::Hash,
        }
    }

    /// Bytes of the body this message needs.
    pub fn payload_len(&self) -> usize {
        match &self.message {
            Message::Data { payload } => payload.len(),
            Message::Ack(a) => a.body_len(),
            Message::Offer(o) => o.body_len(),
            Message::Complete(_) => complete::LEN,
            Message::Abort(a) => a.body_len(),
            Message::Hash(_) => hash_msg::LEN,
        }
    }

    /// Bytes of the whole packet (header and body).
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Writes the packet, checksum included, at the start of `buf`; returns its length. Fails with
    /// [`Error::Truncated`] if `buf` is too short and [`Error::BadLength`] if the body is longer
    /// than a header can describe.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.emit_without_checksum(buf)?;
        Packet::new_unchecked(&mut buf[..len]).fill_checksum();
        Ok(len)
    }

    /// [`Repr::emit`] with the checksum field left zero: for a packet that is sealed before it
    /// leaves (the plaintext of a sealed packet carries a zero checksum, and the sealed packet's
    /// own checksum covers it), which spares a pass over every byte.
    pub fn emit_without_checksum(&self, buf: &mut [u8]) -> Result<usize> {
        let payload_len = self.payload_len();
        let len = HEADER_LEN + payload_len;
        if payload_len > u16::MAX as usize {
            return Err(Error::BadLength);
        }
        if buf.len() < len {
            return Err(Error::Truncated);
        }
        let mut p = Packet::new_unchecked(&mut buf[..len]);
        p.set_magic(MAGIC);
        p.set_version(VERSION);
        p.set_msg_type(self.msg_type());
        p.set_flags(self.flags);
        p.set_payload_len(payload_len as u16);
        p.set_transfer_id(self.transfer_id);
        p.set_seq(self.seq);
        p.set_checksum(0);
        let body = p.payload_mut();
        match &self.message {
            Message::Data { payload } => body.copy_from_slice(payload),
            Message::Ack(a) => a.emit(body),
            Message::Offer(o) => o.emit(body),
            Message::Complete(c) => c.emit(body),
            Message::Abort(a) => a.emit(body),
            Message::Hash(h) => h.emit(body),
        }
        Ok(len)
    }
}

fn packet_payload(b: &[u8]) -> &[u8] {
    &b[HEADER_LEN..]
}

#[cfg(test)]
mod tests;
