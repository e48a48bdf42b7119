//! The wire parser on arbitrary bytes: never panics, and whatever parses emits and parses back
//! to the same message. The bundle manifest's parser too: what it takes has its members in
//! order, ending at the content's end.
#![no_main]

use chunk_common::{
    bundle::Manifest,
    wire::{Packet, Repr},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for parsed in [Repr::parse_bytes(data), Repr::parse_checksum_already_checked(data)] {
        if let Ok(repr) = parsed {
            let mut buf = vec![0u8; repr.buffer_len()];
            let n = repr.emit(&mut buf).expect("a parsed message emits");
            let again = Repr::parse_bytes(&buf[..n]).expect("an emitted packet parses");
            assert_eq!(again, repr);
        }
    }
    for size in [data.len() as u64, u64::from(data.first().copied().unwrap_or(0)) << 8] {
        if let Ok(m) = Manifest::parse(data, size) {
            let mut end = 0;
            for member in m.members() {
                assert!(member.offset >= end);
                end = member.offset + member.size;
            }
            assert_eq!(end, size);
        }
    }
    if let Ok(p) = Packet::new_checked(data) {
        let _ = (
            p.flags(),
            p.seq(),
            p.transfer_id(),
            p.payload().len(),
            p.validate(),
        );
    }
});
