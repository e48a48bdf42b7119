//! The receive path's checks on arbitrary IP packets of either family, straight over IP or in
//! UDP: they never panic; what they accept is a chunk packet inside the buffer, its checksum
//! field zeroed, that parses, and nothing else in the buffer changed.
#![no_main]

use std::net::IpAddr;

use chunk_common::{
    classify::{self, Transport},
    wire::{Repr, field},
};
use libfuzzer_sys::fuzz_target;

const PROTOCOL: u8 = chunk_common::DEFAULT_IP_PROTOCOL;
const PORT: u16 = 4790;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the settings: UDP on or off, the payload limit, and which sources
    // are allowed; the rest is the IP packet.
    let Some((&settings, packet)) = data.split_first() else {
        return;
    };
    let udp_port = if settings & 1 != 0 { PORT } else { 0 };
    let max_payload = if settings & 2 != 0 { 64 } else { 9180 };
    let allow_v6 = settings & 4 != 0;
    let allowed = |src: IpAddr| src.is_ipv4() || allow_v6;

    let mut buf = packet.to_vec();
    let verdict = classify::ip_packet(&mut buf, PROTOCOL, udp_port, max_payload, allowed);
    if let Ok(a) = &verdict {
        assert!(a.chunk.end <= buf.len() && a.chunk.len() >= chunk_common::wire::HEADER_LEN);
        assert_eq!(buf[a.chunk.start..][field::CHECKSUM], [0; 4]);
        let repr = Repr::parse_checksum_already_checked(&buf[a.chunk.clone()]);
        assert!(repr.is_ok(), "accepted, but does not parse: {repr:?}");
        assert!(a.chunk.len() - chunk_common::wire::HEADER_LEN <= max_payload);
        match a.transport {
            Transport::Ip => assert_eq!(a.src_port, 0),
            Transport::Udp => assert_ne!(udp_port, 0),
        }
        assert!(a.src.is_ipv4() || allow_v6);
        // Only the checksum field changed.
        let mut expect = packet.to_vec();
        expect[a.chunk.start..][field::CHECKSUM].fill(0);
        assert_eq!(buf, expect);
    }
});
