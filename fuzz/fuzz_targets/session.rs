//! The session layer on arbitrary bytes: handshake messages and sealed packets (checksums made
//! valid, so they get past the receive path's checks) fed to a receiver that answers
//! handshakes. Nothing panics; everything it answers is a valid chunk packet; a sealed packet
//! opens only to a chunk packet; sealing then opening any valid packet gives it back.
#![no_main]

use std::sync::LazyLock;

use chunk::{
    crypto::{
        AuthorizedKeys, Credentials, SecretKey,
        handshake::Initiator,
        session::{ResponderConfig, Sessions},
        transport::{INNER_AT, OVERHEAD, Opener, Sealer},
    },
    intake::Intake,
    proto::Peer,
};
use chunk_common::{
    classify,
    wire::{Packet, Repr, envelope, field},
};
use libfuzzer_sys::fuzz_target;

const PEER: Peer = Peer::ipv4(std::net::Ipv4Addr::new(198, 18, 0, 1));

static KEY: LazyLock<SecretKey> = LazyLock::new(|| SecretKey::from_bytes([0x44; 32]));

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    // A receiver of one of the three suites.
    let creds = match mode % 3 {
        0 => Credentials {
            psk: Some([5; 32]),
            key: None,
        },
        1 => Credentials {
            psk: None,
            key: Some(KEY.clone()),
        },
        _ => Credentials {
            psk: Some([5; 32]),
            key: Some(KEY.clone()),
        },
    };
    let authorized =
        AuthorizedKeys::parse(&format!("{}\n", SecretKey::from_bytes([0x33; 32]).public()))
            .unwrap();
    let mut intake = Intake::receiver(
        None,
        Sessions::new(Some(ResponderConfig { creds, authorized })),
        mode & 4 != 0,
    );
    for part in data.split(|&b| b == 0xA5).take(16) {
        if part.len() < 20 {
            continue;
        }
        let mut p = part.to_vec();
        p[0] = 0x43;
        p[1] = 0x4b;
        p[field::VERSION] = 2;
        if p[field::MSG_TYPE] & 1 == 0 {
            p[field::MSG_TYPE] = if p[field::MSG_TYPE] & 2 == 0 {
                envelope::SEALED
            } else {
                envelope::HANDSHAKE
            };
        }
        let len = (p.len() - 20) as u16;
        p[field::PAYLOAD_LEN].copy_from_slice(&len.to_be_bytes());
        Packet::new_unchecked(&mut p[..]).fill_checksum();
        if classify::chunk(&mut p, 9180, true).is_err() {
            continue;
        }
        if let Ok(repr) = intake.open_checked(PEER, &p, 1_700_000_000_000) {
            let mut b = vec![0u8; repr.buffer_len()];
            repr.emit(&mut b).expect("an opened message emits");
        }
        for (_, answer) in intake.take_outbox() {
            let mut a = answer.clone();
            assert!(
                classify::chunk(&mut a, 9180, true).is_ok(),
                "an answer is a valid chunk packet"
            );
        }
    }
    // Through a real session: a suite-1 handshake with this receiver (when it speaks suite 1),
    // then the parts sealed under it, so that what lies behind a valid seal (the inner packet's
    // checks, bindings, the takeover rule) is reached too.
    if mode % 3 == 0 {
        let creds = Credentials { psk: Some([5; 32]), key: None };
        let mut init = Initiator::start(&creds, 0x5e55, 1_700_000_000_000).unwrap();
        let mut reply = None;
        let mut m1 = init.packet().to_vec();
        if classify::chunk(&mut m1, 9180, true).is_ok() {
            let _ = intake.open_checked(PEER, &m1, 1_700_000_000_000);
            reply = intake.take_outbox().next().map(|(_, p)| p);
        }
        if let Some(reply) = reply
            && init.read_reply(&reply).is_ok()
            && let Ok(mut keys) = init.finish()
        {
            for part in data.split(|&b| b == 0x5A).take(16) {
                let mut buf = vec![0u8; OVERHEAD + part.len()];
                buf[INNER_AT..INNER_AT + part.len()].copy_from_slice(part);
                let Ok(n) = keys.sealer.seal(&mut buf, part.len()) else {
                    continue;
                };
                buf.truncate(n);
                assert!(classify::chunk(&mut buf, 9180, true).is_ok(), "a sealed packet is valid");
                if let Ok(repr) = intake.open_checked(PEER, &buf, 1_700_000_000_000) {
                    let mut b = vec![0u8; repr.buffer_len()];
                    repr.emit(&mut b).expect("an opened message emits");
                }
                let _ = intake.take_outbox().count();
            }
        }
    }
    // An opener on the raw bytes.
    let mut out = vec![0u8; data.len() + 64];
    let mut o = Opener::new(7, [9; 32]);
    if let Ok(n) = o.open(data, &mut out)
        && n > 0
    {
        assert!(Packet::new_unchecked(&out[..n]).msg_type().is_some());
    }
    // Sealing and opening any valid packet gives it back.
    if let Ok(repr) = Repr::parse_checksum_already_checked(data) {
        let mut buf = vec![0u8; OVERHEAD + repr.buffer_len()];
        let n = repr.emit(&mut buf[INNER_AT..]).unwrap();
        let mut s = Sealer::new(7, [9; 32]);
        // What cannot be opened (`AUTH` set) is not sealed either.
        let Ok(m) = s.seal(&mut buf, n) else {
            return;
        };
        let mut o = Opener::new(7, [9; 32]);
        let k = o.open(&buf[..m], &mut out).expect("a sealed packet opens");
        assert_eq!(
            Repr::parse_checksum_already_checked(&out[..k]).unwrap(),
            repr
        );
        assert!(o.open(&buf[..m], &mut out).is_err(), "once");
    }
});
