//! Authentication on arbitrary bytes: opening never panics; a packet that opens parses or is
//! refused cleanly; sealing then opening any valid packet gives it back.
#![no_main]

use chunk::auth::{Psk, TRAILER_LEN, open_with};
use chunk_common::wire::Repr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = Psk::from_secret(b"fuzzing key, sixteen bytes or more").unwrap();
    let mut out = vec![0u8; data.len().max(64)];
    if let Ok((n, _)) = open_with(Some(&key), data, &mut out) {
        let _ = Repr::parse_checksum_already_checked(&out[..n]);
    }
    let _ = open_with(None, data, &mut out);
    if let Ok(repr) = Repr::parse_checksum_already_checked(data) {
        let mut buf = vec![0u8; repr.buffer_len() + TRAILER_LEN];
        let n = repr.emit(&mut buf).unwrap();
        if let Ok(m) = key.seal(&mut buf, n, 12345) {
            let mut opened = vec![0u8; m];
            let (k, ts) = key
                .open(&buf[..m], &mut opened)
                .expect("sealed packets open");
            assert_eq!(ts, 12345);
            assert_eq!(Repr::parse_checksum_already_checked(&opened[..k]).unwrap(), repr);
        }
    }
});
