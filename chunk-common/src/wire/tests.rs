//! Byte fixtures for every message type (the same bytes as the examples in docs/PROTOCOL.md),
//! a sealed (pre-shared-key) packet whose tag is recomputed here, and properties of parse and
//! emit.

use super::*;
use proptest::prelude::*;

const TID: u32 = 0x0A0B_0C0D;
const HASH: [u8; 32] = {
    let mut h = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        h[i] = i as u8;
        i += 1;
    }
    h
};

static DATA_BYTES: [u8; 25] = [
    0x43, 0x4b, 0x02, 0x01, 0x00, 0x01, 0x00, 0x05, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x07,
    0xa2, 0xd5, 0xf0, 0x7f, 0x68, 0x65, 0x6c, 0x6c, 0x6f,
];
static ACK_BYTES: [u8; 33] = [
    0x43, 0x4b, 0x02, 0x02, 0x00, 0x00, 0x00, 0x0d, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x05,
    0x33, 0x8d, 0xf8, 0xe7, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0xfa,
    0x0a,
];
/// The ack the receiver sends when chunks 0..=4 and 7 have arrived: the bitmap starts at the
/// cumulative index, so its bit 0 (chunk 5, the first missing one) is always clear.
static ACK_FROM_CUMULATIVE_BYTES: [u8; 33] = [
    0x43, 0x4b, 0x02, 0x02, 0x00, 0x00, 0x00, 0x0d, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x05,
    0x6a, 0xab, 0xa5, 0xee, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x78,
    0x04,
];
static OFFER_BYTES: [u8; 89] = [
    0x43, 0x4b, 0x02, 0x03, 0x00, 0x00, 0x00, 0x45, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0xe5, 0x83, 0x27, 0x2e, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0xb8, 0x00, 0x00, 0x05, 0x78,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x01, 0xa4, 0x00, 0x00, 0x00, 0x00, 0x65, 0x53, 0xf1, 0x00,
    0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x61, 0x2e, 0x74, 0x78, 0x74,
];
static OFFER_DIR_BYTES: [u8; 90] = [
    0x43, 0x4b, 0x02, 0x03, 0x00, 0x08, 0x00, 0x46, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0xb7, 0x53, 0x29, 0x15, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x78,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xed, 0x00, 0x00, 0x00, 0x00, 0x65, 0x53, 0xf1, 0x00,
    0x01, 0x00, 0x00, 0x06, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x70, 0x68, 0x6f, 0x74, 0x6f, 0x73,
];
static OFFER_STREAM_BYTES: [u8; 92] = [
    0x43, 0x4b, 0x02, 0x03, 0x00, 0x20, 0x00, 0x48, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0xed, 0x99, 0xfc, 0xea, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x78,
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0xa4, 0x00, 0x00, 0x00, 0x00, 0x65, 0x53, 0xf1, 0x00,
    0x01, 0x00, 0x00, 0x08, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x64, 0x75, 0x6d, 0x70, 0x2e, 0x73, 0x71, 0x6c,
];
static OFFER_BUNDLE_BYTES: [u8; 84] = [
    0x43, 0x4b, 0x02, 0x03, 0x00, 0x40, 0x00, 0x40, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0x41, 0x95, 0x3c, 0x6c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0xf6, 0x00, 0x00, 0x05, 0x78,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x01, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f,
];
static OFFER_LINK_BYTES: [u8; 88] = [
    0x43, 0x4b, 0x02, 0x03, 0x00, 0x10, 0x00, 0x44, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0x92, 0x0b, 0x63, 0x47, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x05, 0x78,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0xff, 0x00, 0x00, 0x00, 0x00, 0x65, 0x53, 0xf1, 0x00,
    0x01, 0x00, 0x00, 0x04, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
    0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
    0x1c, 0x1d, 0x1e, 0x1f, 0x62, 0x2f, 0x69, 0x6e,
];
static COMPLETE_BYTES: [u8; 56] = [
    0x43, 0x4b, 0x02, 0x04, 0x00, 0x00, 0x00, 0x24, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x03,
    0x48, 0x83, 0x89, 0x6d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
static ABORT_BYTES: [u8; 28] = [
    0x43, 0x4b, 0x02, 0x05, 0x00, 0x00, 0x00, 0x08, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x00,
    0x73, 0xdd, 0x39, 0x39, 0x00, 0x05, 0x65, 0x78, 0x69, 0x73, 0x74, 0x73,
];

static HASH_BYTES: [u8; 56] = [
    0x43, 0x4b, 0x02, 0x06, 0x00, 0x00, 0x00, 0x24, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x03,
    0x89, 0x7d, 0xb7, 0x9c, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
    0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17,
    0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];

/// The pre-shared key file of the authentication example: the 32 bytes 0x00..=0x1f.
const PSK_SECRET: [u8; 32] = HASH;
/// BLAKE3 `derive_key("chunk psk v1", PSK_SECRET)`.
static PSK_KEY_BYTES: [u8; 32] = [
    0x3e, 0xfe, 0xc5, 0x7d, 0x56, 0xb8, 0x0b, 0x2f, 0x31, 0x4f, 0xd7, 0x20, 0xff, 0xb0, 0xea, 0x84,
    0x8a, 0x54, 0x6e, 0x6b, 0x1c, 0xb3, 0x06, 0xd7, 0xc8, 0x9e, 0x67, 0xb5, 0x1c, 0x87, 0xc3, 0xd1,
];
/// Milliseconds since the Unix epoch in the sealed example's trailer.
const SEALED_TIMESTAMP_MS: u64 = 1_700_000_000_123;
/// The data fixture sealed with [`PSK_KEY_BYTES`] at [`SEALED_TIMESTAMP_MS`] (computed with
/// chunk-user's `auth::Key::seal`; `sealed_fixture_is_the_data_fixture_sealed` recomputes it).
static SEALED_BYTES: [u8; 49] = [
    0x43, 0x4b, 0x02, 0x01, 0x00, 0x05, 0x00, 0x1d, 0x0a, 0x0b, 0x0c, 0x0d, 0x00, 0x00, 0x00, 0x07,
    0x23, 0x21, 0x4a, 0x03, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x00, 0x00, 0x01, 0x8b, 0xcf, 0xe5, 0x68,
    0x7b, 0x65, 0xd9, 0x5d, 0xbf, 0x9f, 0x6c, 0x1c, 0x1f, 0xee, 0x81, 0x43, 0xf1, 0xa2, 0x97, 0xaf,
    0x9e,
];

fn data_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 7,
        flags: flags::MORE_CHUNKS,
        message: Message::Data { payload: b"hello" },
    }
}

fn ack_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 5,
        flags: 0,
        message: Message::Ack(AckRepr {
            cumulative: 5,
            echo: 9,
            delay_us: 250,
            base: 6,
            bitmap: &[0b0000_1010],
        }),
    }
}

fn ack_from_cumulative_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 5,
        flags: 0,
        message: Message::Ack(AckRepr {
            cumulative: 5,
            echo: 7,
            delay_us: 120,
            base: 5,
            bitmap: &[0b0000_0100],
        }),
    }
}

fn offer_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: 0,
        message: Message::Offer(OfferRepr {
            file_size: 3000,
            chunk_size: 1400,
            chunk_count: 3,
            mode: 0o644,
            mtime: 1_700_000_000,
            hash_alg: HashAlg::Blake3,
            tag: HASH,
            name: b"a.txt",
        }),
    }
}

fn offer_dir_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: flags::DIRECTORY,
        message: Message::Offer(OfferRepr {
            file_size: 0,
            chunk_size: 1400,
            chunk_count: 0,
            mode: 0o755,
            mtime: 1_700_000_000,
            hash_alg: HashAlg::Blake3,
            tag: HASH,
            name: b"photos",
        }),
    }
}

fn offer_link_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: flags::SYMLINK,
        message: Message::Offer(OfferRepr {
            file_size: 10,
            chunk_size: 1400,
            chunk_count: 1,
            mode: 0o777,
            mtime: 1_700_000_000,
            hash_alg: HashAlg::Blake3,
            tag: HASH,
            name: b"b/in",
        }),
    }
}

fn offer_stream_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: flags::STREAM,
        message: Message::Offer(OfferRepr {
            file_size: 0,
            chunk_size: 1400,
            chunk_count: UNKNOWN_COUNT,
            mode: 0o644,
            mtime: 1_700_000_000,
            hash_alg: HashAlg::Blake3,
            tag: HASH,
            name: b"dump.sql",
        }),
    }
}

fn offer_bundle_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: flags::BUNDLE,
        message: Message::Offer(OfferRepr {
            file_size: 2806,
            chunk_size: 1400,
            chunk_count: 3,
            mode: 0o600,
            mtime: 0,
            hash_alg: HashAlg::Blake3,
            tag: HASH,
            name: b"",
        }),
    }
}

fn complete_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 3,
        flags: 0,
        message: Message::Complete(CompleteRepr {
            status: CompleteStatus::Verified,
            hash: HASH,
        }),
    }
}

fn abort_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 0,
        flags: 0,
        message: Message::Abort(AbortRepr {
            reason: AbortReason::Exists,
            message: b"exists",
        }),
    }
}

fn hash_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 3,
        flags: 0,
        message: Message::Hash(HashRepr {
            alg: HashAlg::Blake3,
            hash: HASH,
        }),
    }
}

/// What the wire layer sees in a sealed packet: a data packet with `AUTH` set whose payload is
/// the chunk followed by the 24-byte trailer.
fn sealed_repr() -> Repr<'static> {
    Repr {
        transfer_id: TID,
        seq: 7,
        flags: flags::MORE_CHUNKS | flags::AUTH,
        message: Message::Data {
            payload: &SEALED_BYTES[HEADER_LEN..],
        },
    }
}

/// Every packet example, in the order docs/PROTOCOL.md shows them.
fn fixtures() -> [(&'static str, &'static [u8], Repr<'static>); 12] {
    [
        ("data", &DATA_BYTES, data_repr()),
        ("ack", &ACK_BYTES, ack_repr()),
        (
            "ack-from-cumulative",
            &ACK_FROM_CUMULATIVE_BYTES,
            ack_from_cumulative_repr(),
        ),
        ("offer", &OFFER_BYTES, offer_repr()),
        ("offer-directory", &OFFER_DIR_BYTES, offer_dir_repr()),
        ("offer-link", &OFFER_LINK_BYTES, offer_link_repr()),
        ("offer-stream", &OFFER_STREAM_BYTES, offer_stream_repr()),
        ("offer-bundle", &OFFER_BUNDLE_BYTES, offer_bundle_repr()),
        ("complete", &COMPLETE_BYTES, complete_repr()),
        ("abort", &ABORT_BYTES, abort_repr()),
        ("hash", &HASH_BYTES, hash_repr()),
        ("sealed", &SEALED_BYTES, sealed_repr()),
    ]
}

#[test]
fn fixtures_parse_to_their_repr() {
    for (name, bytes, repr) in fixtures() {
        assert_eq!(Repr::parse_bytes(bytes), Ok(repr), "{name}");
    }
}

#[test]
fn fixtures_emit_from_their_repr() {
    for (name, bytes, repr) in fixtures() {
        let mut buf = [0u8; 128];
        let n = repr.emit(&mut buf).unwrap();
        assert_eq!(&buf[..n], bytes, "{name}");
        assert_eq!(repr.buffer_len(), n, "{name}");
    }
}

/// What a sealed packet's plaintext is: the same bytes with the checksum field zero.
#[test]
fn emit_without_checksum_is_emit_with_a_zero_checksum_field() {
    for (name, bytes, repr) in fixtures() {
        let mut buf = [0xEEu8; 128];
        let n = repr.emit_without_checksum(&mut buf).unwrap();
        let mut expect = bytes.to_vec();
        expect[field::CHECKSUM].fill(0);
        assert_eq!(&buf[..n], expect.as_slice(), "{name}");
    }
}

#[test]
fn data_view_accessors() {
    let p = Packet::new_checked(&DATA_BYTES[..]).unwrap();
    assert_eq!(p.magic(), MAGIC);
    assert_eq!(p.version(), VERSION);
    assert_eq!(p.msg_type(), Some(MessageType::Data));
    assert_eq!(p.flags(), flags::MORE_CHUNKS);
    assert_eq!(p.payload_len(), 5);
    assert_eq!(p.transfer_id(), TID);
    assert_eq!(p.seq(), 7);
    assert_eq!(p.checksum(), 0xA2D5_F07F);
    assert_eq!(p.payload(), b"hello");
    assert_eq!(p.compute_checksum(), p.checksum());
}

#[test]
fn ack_membership() {
    let Message::Ack(a) = ack_repr().message else {
        unreachable!()
    };
    let got: Vec<u32> = (0..20).filter(|&i| a.has(i)).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 7, 9]);
    assert_eq!(a.bitmap_indices().collect::<Vec<_>>(), [7, 9]);

    let Message::Ack(a) = ack_from_cumulative_repr().message else {
        unreachable!()
    };
    let got: Vec<u32> = (0..20).filter(|&i| a.has(i)).collect();
    assert_eq!(got, [0, 1, 2, 3, 4, 7]);
}

#[test]
fn each_check_has_its_error() {
    assert_eq!(Repr::parse_bytes(&DATA_BYTES[..19]), Err(Error::Truncated));
    let mut b = DATA_BYTES;
    b[0] = 0x44;
    assert_eq!(Repr::parse_bytes(&b), Err(Error::BadMagic));
    // Version 1 (CRC-32) and anything else but 2 is another protocol.
    for v in [0, 1, 3] {
        let mut b = DATA_BYTES;
        b[2] = v;
        assert_eq!(Repr::parse_bytes(&b), Err(Error::BadMagic));
    }
    let mut b = DATA_BYTES;
    b[3] = 9;
    assert_eq!(Repr::parse_bytes(&b), Err(Error::BadType));
    // One byte short of the claimed payload, and one byte of trailing junk.
    assert_eq!(Repr::parse_bytes(&DATA_BYTES[..24]), Err(Error::BadLength));
    let mut long = [0u8; 26];
    long[..25].copy_from_slice(&DATA_BYTES);
    assert_eq!(Repr::parse_bytes(&long), Err(Error::BadLength));
    let mut b = DATA_BYTES;
    b[24] ^= 1;
    assert_eq!(Repr::parse_bytes(&b), Err(Error::BadChecksum));
    // The view alone accepts trailing bytes (Ethernet padding) but not a short payload.
    assert!(Packet::new_checked(&long[..]).is_ok());
    assert_eq!(
        Packet::new_checked(&DATA_BYTES[..24]).err(),
        Some(Error::Truncated)
    );
}

#[test]
fn offer_body_must_be_consistent() {
    let mut buf = [0u8; 128];
    let mut repr = offer_repr();
    if let Message::Offer(o) = &mut repr.message {
        o.chunk_count = 4; // 3000 bytes at 1400 per chunk are 3 chunks
    }
    let n = repr.emit(&mut buf).unwrap();
    assert_eq!(Repr::parse_bytes(&buf[..n]), Err(Error::Malformed));
    assert_eq!(chunk_count(0, 1400), Some(0));
    assert_eq!(chunk_count(1400, 1400), Some(1));
    assert_eq!(chunk_count(1401, 1400), Some(2));
    assert_eq!(chunk_count(1, 0), None);
    assert_eq!(chunk_count(u64::MAX, 1), None);
    assert_eq!(chunk_count(u32::MAX as u64, 1), Some(u32::MAX));
}

#[test]
fn abort_reasons_round_trip() {
    for code in 0..=20u16 {
        assert_eq!(AbortReason::from_code(code).code(), code);
    }
}

/// Pulls the hex blocks out of docs/PROTOCOL.md: each is preceded by a line
/// `<!-- fixture: NAME -->`.
fn doc_examples() -> Vec<(String, Vec<u8>)> {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- fixture: ") else {
            continue;
        };
        let name = rest.trim_end_matches("-->").trim().to_string();
        assert_eq!(lines.next().map(str::trim), Some("```text"), "{name}");
        let mut bytes = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            // Each line is an offset, a colon, hex bytes, and optionally `|` and a comment.
            let hex = l.split('|').next().unwrap();
            let hex = hex.split_once(':').map_or(hex, |(_, h)| h);
            for tok in hex.split_whitespace() {
                bytes.push(u8::from_str_radix(tok, 16).expect("hex byte in PROTOCOL.md"));
            }
        }
        out.push((name, bytes));
    }
    out
}

#[test]
fn protocol_doc_examples_are_the_fixtures() {
    let mut examples = doc_examples();
    let names: Vec<&str> = examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "ipv6-data",
            "udp4-data",
            "data",
            "ack",
            "ack-from-cumulative",
            "offer",
            "offer-directory",
            "offer-link",
            "offer-stream",
            "offer-bundle",
            "bundle-manifest",
            "complete",
            "abort",
            "hash",
            "psk-key",
            "sealed",
            "noise-psk",
            "psk-handshake-1",
            "psk-handshake-2",
            "psk-sealed-data",
            "xx-handshake-1",
            "xx-handshake-2",
            "xx-handshake-3",
            "xx-confirmation",
            "xx-sealed-data"
        ]
    );
    // The encryption examples need the cryptography: chunk-user's
    // `crypto::handshake::fixtures` recomputes them. Here: each packet among them passes the
    // receive path's checks, as an envelope.
    for (name, mut bytes) in examples.split_off(16) {
        if name == "noise-psk" {
            continue;
        }
        assert_eq!(
            crate::classify::chunk(&mut bytes, 9180, true),
            Ok(()),
            "PROTOCOL.md example {name}"
        );
        assert!(envelope::is_envelope(bytes[field::MSG_TYPE]), "{name}");
    }
    // The transport examples are whole IP packets: `transport_examples_carry_the_data_fixture`.
    examples.drain(..2);
    // The derived key is not a packet: it is checked against BLAKE3 here, the rest below.
    // The bundle's manifest is content, not a packet: it parses as the manifest of the two
    // files shown (chunk-user's `the_bundle_example_is_what_the_sender_builds` builds it).
    let (name, manifest) = examples.remove(8);
    assert_eq!(name, "bundle-manifest");
    let m = crate::bundle::Manifest::parse(&manifest, 2806).expect("PROTOCOL.md bundle-manifest");
    let members: Vec<_> = m.members().map(|m| (m.name, m.offset, m.size)).collect();
    assert_eq!(
        members,
        [(&b"a.txt"[..], 1400, 5), (&b"b/c.txt"[..], 2800, 6)]
    );
    let (_, key) = examples.remove(11);
    assert_eq!(key, PSK_KEY_BYTES, "PROTOCOL.md example psk-key");
    assert_eq!(
        blake3::derive_key("chunk psk v1", &PSK_SECRET),
        PSK_KEY_BYTES,
        "psk-key is BLAKE3 derive_key of the example key file"
    );
    assert_eq!(examples.len(), fixtures().len());
    for ((name, bytes), (fname, fbytes, repr)) in examples.iter().zip(fixtures()) {
        assert_eq!(name, fname);
        assert_eq!(bytes.as_slice(), fbytes, "PROTOCOL.md example {name}");
        assert_eq!(
            Repr::parse_bytes(bytes),
            Ok(repr),
            "PROTOCOL.md example {name}"
        );
    }
}

/// The Internet checksum (RFC 1071).
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The IPv6 and UDP examples of docs/PROTOCOL.md, "Transport", are the data example behind the
/// headers they describe, and the UDP example's IPv4 and UDP checksums are right (a sender must
/// send a valid UDP checksum).
#[test]
fn transport_examples_carry_the_data_fixture() {
    let examples = doc_examples();
    let get = |name: &str| {
        examples
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .unwrap()
    };
    let v6 = get("ipv6-data");
    assert_eq!(v6[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([v6[4], v6[5]]) as usize, v6.len() - 40);
    assert_eq!((v6[6], v6[40]), (60, crate::DEFAULT_IP_PROTOCOL));
    assert_eq!(v6[48..], DATA_BYTES);

    let u4 = get("udp4-data");
    assert_eq!(internet_checksum(&u4[..20]), 0, "IPv4 header checksum");
    assert_eq!(u16::from_be_bytes([u4[2], u4[3]]) as usize, u4.len());
    assert_eq!(u4[9], 17);
    let udp = &u4[20..];
    assert_eq!(u16::from_be_bytes([udp[4], udp[5]]) as usize, udp.len());
    let mut pseudo = u4[12..20].to_vec();
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(udp);
    assert_eq!(internet_checksum(&pseudo), 0, "UDP checksum");
    assert_eq!(udp[8..], DATA_BYTES);

    // And the receive path's checks take them, with the addresses and port they say.
    use crate::classify::{Transport, ip_packet};
    let mut zeroed = DATA_BYTES.to_vec();
    zeroed[field::CHECKSUM].fill(0);
    let mut p = v6.clone();
    let a = ip_packet(&mut p, crate::DEFAULT_IP_PROTOCOL, 0, 9180, |_| true).unwrap();
    assert_eq!(a.src, "2001:2::1".parse::<core::net::IpAddr>().unwrap());
    assert_eq!((a.transport, a.src_port), (Transport::Ip, 0));
    assert_eq!(p[a.chunk], zeroed);
    let mut p = u4.clone();
    let a = ip_packet(&mut p, crate::DEFAULT_IP_PROTOCOL, 47000, 9180, |_| true).unwrap();
    assert_eq!(a.src, "198.18.0.1".parse::<core::net::IpAddr>().unwrap());
    assert_eq!((a.transport, a.src_port), (Transport::Udp, 40001));
    assert_eq!(p[a.chunk], zeroed);
}

/// The sealed example is the data example with the trailer of docs/PROTOCOL.md,
/// "Authentication": `AUTH` set and the trailer counted in the payload length, the tag the first
/// 16 bytes of keyed BLAKE3 over everything before it with the checksum field zeroed, and the checksum over
/// the whole packet, tag included. Opening it gives back the data example.
#[test]
fn sealed_fixture_is_the_data_fixture_sealed() {
    const TRAILER: usize = 24;
    let sealed = &SEALED_BYTES[..];
    let n = sealed.len();
    assert_eq!(n, DATA_BYTES.len() + TRAILER);
    let p = Packet::new_checked(sealed).unwrap();
    assert!(
        p.validate().is_ok(),
        "a sealed packet passes the kernel's checks as it is"
    );
    assert_eq!(p.flags(), flags::MORE_CHUNKS | flags::AUTH);
    assert_eq!(p.payload_len() as usize, 5 + TRAILER);
    // Everything before the trailer but flags, length and checksum is the unsealed packet's.
    assert_eq!(sealed[..4], DATA_BYTES[..4]);
    assert_eq!(sealed[8..16], DATA_BYTES[8..16]);
    assert_eq!(sealed[20..25], DATA_BYTES[20..25]);
    assert_eq!(sealed[25..33], SEALED_TIMESTAMP_MS.to_be_bytes());

    let mut tagged = sealed[..n - 16].to_vec();
    tagged[field::CHECKSUM].fill(0);
    let tag = *blake3::keyed_hash(&PSK_KEY_BYTES, &tagged).as_bytes();
    assert_eq!(sealed[n - 16..], tag[..16], "tag");

    // Opening: drop the trailer, clear AUTH, fix the length; the checksum is then the data example's.
    let mut opened = sealed[..n - TRAILER].to_vec();
    let mut q = Packet::new_unchecked(&mut opened[..]);
    q.set_flags(q.flags() & !flags::AUTH);
    q.set_payload_len(5);
    q.fill_checksum();
    assert_eq!(opened, DATA_BYTES);
}

fn arb_message() -> impl Strategy<Value = (u32, u32, u16, u8, Vec<u8>, Vec<u8>, u64, u32)> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        1u8..=6,
        proptest::collection::vec(any::<u8>(), 0..1500),
        proptest::collection::vec(any::<u8>(), 0..MAX_ACK_BITMAP_LEN),
        any::<u64>(),
        1u32..10_000,
    )
}

fn build<'a>(
    (tid, seq, fl, ty, bytes, bitmap, size, csize): &'a (
        u32,
        u32,
        u16,
        u8,
        Vec<u8>,
        Vec<u8>,
        u64,
        u32,
    ),
) -> Repr<'a> {
    // Keep the chunk count within a u32 so the offer is consistent.
    let size = size % (*csize as u64 * u32::MAX as u64);
    let message = match ty {
        1 => Message::Data { payload: bytes },
        2 => Message::Ack(AckRepr {
            cumulative: *seq,
            echo: tid.rotate_left(3),
            delay_us: *tid ^ 0x55,
            base: seq.wrapping_add(1),
            bitmap,
        }),
        3 => Message::Offer(OfferRepr {
            file_size: size,
            chunk_size: *csize,
            chunk_count: chunk_count(size, *csize).unwrap(),
            mode: 0o640,
            mtime: -5,
            hash_alg: HashAlg::Blake3,
            tag: [seq.to_le_bytes()[0]; 32],
            name: &bytes[..bytes.len().min(255)],
        }),
        4 => Message::Complete(CompleteRepr {
            status: if seq % 2 == 0 {
                CompleteStatus::Verified
            } else {
                CompleteStatus::HashMismatch
            },
            hash: [7; 32],
        }),
        6 => Message::Hash(HashRepr {
            alg: HashAlg::from_code(fl.to_le_bytes()[0]),
            hash: [seq.to_le_bytes()[1]; 32],
        }),
        _ => Message::Abort(AbortRepr {
            reason: AbortReason::from_code(*fl),
            message: bytes,
        }),
    };
    Repr {
        transfer_id: *tid,
        seq: *seq,
        flags: *fl,
        message,
    }
}

proptest! {
    #[test]
    fn parse_after_emit_is_identity(m in arb_message()) {
        let repr = build(&m);
        let mut buf = vec![0u8; repr.buffer_len()];
        let n = repr.emit(&mut buf).unwrap();
        prop_assert_eq!(n, buf.len());
        prop_assert_eq!(Repr::parse_bytes(&buf), Ok(repr));
    }

    #[test]
    /// A 32-bit checksum misses a given corruption with probability about 2^-32, so this holds
    /// for every case proptest will ever draw.
    fn any_single_bit_flip_is_detected(m in arb_message(), bit in any::<usize>()) {
        let repr = build(&m);
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut buf).unwrap();
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(Repr::parse_bytes(&buf).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Repr::parse_bytes(&bytes);
        if let Ok(p) = Packet::new_checked(&bytes[..]) {
            let _ = p.payload();
            let _ = p.compute_checksum();
        }
    }
}
