//! The wire parser on arbitrary bytes: never panics, and whatever parses emits and parses back
//! to the same message.
#![no_main]

use chunk_common::wire::{Packet, Repr};
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
