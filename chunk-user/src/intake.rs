//! Packet intake, the one way bytes become a message for a core, on both sides and in the tests:
//! the receive path's checks ([`chunk_common::classify`]: IPv4 header, chunk header, lengths,
//! source, checksum), then the pre-shared key's tag ([`crate::auth`]), then the body
//! ([`Repr::parse_checksum_already_checked`]), then the offer-freshness rule of sealed offers.
//!
//! The receiver's packets come out of a receive path that has already run the classify step
//! (the XDP program, or the socket path in userspace): [`Intake::open_checked`]. The sender reads
//! whole IPv4 packets off its raw socket: [`Intake::open_ip`] runs the same classify step first.

use std::{ops::Range, time::Instant};

use chunk_common::{
    classify::{self, Verdict},
    counters::Counter,
    wire::{self, AbortReason, Message, Repr, envelope},
};

use crate::{
    auth::{self, AuthError, Psk},
    crypto::session::{self, SessionError, Sessions},
    proto::Peer,
};

/// Why a packet did not reach the core. Each is counted by the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Not a chunk packet at all (another protocol on the socket): not worth counting.
    #[error("not a chunk packet")]
    NotChunk,
    /// The receive-path checks refused it, for this counter's reason.
    #[error("refused by the receive-path checks: {}", .0.name())]
    Classify(Counter),
    /// The key's tag is missing, unexpected or wrong.
    #[error("{0}")]
    Auth(AuthError),
    /// Header, lengths and checksum are fine, the body is not what its type says.
    #[error("malformed message body: {0}")]
    Body(wire::Error),
    /// A sealed offer whose timestamp is outside the window (docs/PROTOCOL.md, Authentication):
    /// a captured offer played again cannot start a new file.
    #[error("stale offer (replayed, or the clocks are apart)")]
    StaleOffer,
    /// Taken by the session layer, nothing for the core: a handshake message (its answers are
    /// in the outbox), or a session's confirmation.
    #[error("session layer")]
    Envelope,
    /// A sealed packet that did not open (counted in the sessions' counts).
    #[error("{0}")]
    Session(SessionError),
    /// A clear packet for an encrypted transfer, or a clear offer to a receiver that requires
    /// encryption (answered, from the outbox).
    #[error("clear packet refused: encryption required")]
    Clear,
}

/// Opens packets for one side: its pre-shared key's tag (if any, for unencrypted but
/// authenticated transfers), its sessions (encrypted transfers), a buffer to open into, and the
/// packets the session layer answers with.
pub struct Intake {
    key: Option<Psk>,
    scratch: Vec<u8>,
    sessions: Sessions,
    /// A receiver answers handshakes (a sender only makes them).
    receiver: bool,
    require_encryption: bool,
    outbox: Vec<(Peer, Vec<u8>)>,
}

impl Intake {
    /// An intake without sessions (a sender's, until its handshake; or a test's).
    pub fn new(key: Option<Psk>) -> Self {
        Intake {
            key,
            scratch: vec![0; 1 << 16],
            sessions: Sessions::new(None),
            receiver: false,
            require_encryption: false,
            outbox: Vec::new(),
        }
    }

    /// A receiver's intake: `sessions` answers handshakes when it has a responder;
    /// `require_encryption` refuses clear offers.
    pub fn receiver(key: Option<Psk>, sessions: Sessions, require_encryption: bool) -> Self {
        Intake {
            sessions,
            receiver: true,
            require_encryption,
            ..Intake::new(key)
        }
    }

    pub fn key(&self) -> Option<&Psk> {
        self.key.as_ref()
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn sessions_mut(&mut self) -> &mut Sessions {
        &mut self.sessions
    }

    /// Packets the session layer wants sent (handshake answers, refusals), with their peer.
    pub fn take_outbox(&mut self) -> std::vec::Drain<'_, (Peer, Vec<u8>)> {
        self.outbox.drain(..)
    }

    /// The receive path's checks on a whole IPv4 packet of chunk's `protocol` (as a raw socket
    /// delivers it; `allowed` says which sources count): where the chunk packet lies, and its
    /// source. The buffer is changed (its checksum field is zeroed by the check).
    pub fn check_ip(
        ip_packet: &mut [u8],
        protocol: u8,
        allowed: impl FnOnce([u8; 4]) -> bool,
    ) -> Result<(Range<usize>, Peer), Rejected> {
        let accepted = classify::packet(ip_packet, protocol, u16::MAX as usize, allowed).map_err(
            |v| match v {
                Verdict::Pass => Rejected::NotChunk,
                Verdict::Drop(c) => Rejected::Classify(c),
            },
        )?;
        let src = std::net::Ipv4Addr::from(accepted.ip.src);
        Ok((accepted.chunk, Peer::from(src)))
    }

    /// The receive path's checks on a bare chunk packet (as an IPv6 raw socket or a UDP socket
    /// delivers it; `allowed`: whether its source counts). Zeroes its checksum field.
    pub fn check_bare(packet: &mut [u8], allowed: bool) -> Result<(), Rejected> {
        classify::chunk(packet, u16::MAX as usize, allowed).map_err(Rejected::Classify)
    }

    /// A whole IPv4 packet of chunk's `protocol`: [`Intake::check_ip`], then opened.
    pub fn open_ip<'a>(
        &'a mut self,
        ip_packet: &'a mut [u8],
        protocol: u8,
        allowed: impl FnOnce([u8; 4]) -> bool,
        now_ms: u64,
    ) -> Result<Repr<'a>, Rejected> {
        let (chunk, from) = Self::check_ip(ip_packet, protocol, allowed)?;
        let ip_packet: &'a [u8] = ip_packet;
        self.open_checked(from, &ip_packet[chunk], now_ms)
    }

    /// A bare chunk packet from `from`: [`Intake::check_bare`], then opened.
    pub fn open_bare<'a>(
        &'a mut self,
        packet: &'a mut [u8],
        from: Peer,
        allowed: bool,
        now_ms: u64,
    ) -> Result<Repr<'a>, Rejected> {
        Self::check_bare(packet, allowed)?;
        let packet: &'a [u8] = packet;
        self.open_checked(from, packet, now_ms)
    }

    /// A chunk packet from `from` that the receive path has already classified: its checksum
    /// was checked and its checksum field zeroed. Without a key or session, an unsealed packet
    /// is parsed where it lies (in the ring buffer's record): no copy on the hot path. A packet
    /// with a tag or a seal is opened into the scratch buffer, once.
    pub fn open_checked<'a>(
        &'a mut self,
        from: Peer,
        packet: &'a [u8],
        now_ms: u64,
    ) -> Result<Repr<'a>, Rejected> {
        self.open_checked_at(from, packet, now_ms, Instant::now())
    }

    /// [`Intake::open_checked`] at `now`, a clock the caller read already (the receive loop
    /// reads it once per packet; this spares a second read per sealed packet).
    pub fn open_checked_at<'a>(
        &'a mut self,
        from: Peer,
        packet: &'a [u8],
        now_ms: u64,
        now: Instant,
    ) -> Result<Repr<'a>, Rejected> {
        if packet.len() < wire::HEADER_LEN {
            return Err(Rejected::Body(wire::Error::Truncated));
        }
        match packet[wire::field::MSG_TYPE] {
            envelope::HANDSHAKE => {
                if self.receiver {
                    let answers = self.sessions.handshake(from, packet, now_ms, now);
                    self.outbox.extend(answers.into_iter().map(|a| (from, a)));
                }
                return Err(Rejected::Envelope);
            }
            envelope::SEALED => {
                let n = self
                    .sessions
                    .open(from, packet, &mut self.scratch, now)
                    .map_err(Rejected::Session)?;
                if n == 0 {
                    return Err(Rejected::Envelope);
                }
                return Repr::parse_checksum_already_checked(&self.scratch[..n])
                    .map_err(Rejected::Body);
            }
            _ => {}
        }
        let tid = wire::Packet::new_unchecked(packet).transfer_id();
        if self.sessions.was_encrypted(from, tid) {
            self.sessions.counts.clear_refused += 1;
            return Err(Rejected::Clear);
        }
        let sealed = wire::Packet::new_unchecked(packet).flags() & wire::flags::AUTH != 0;
        let repr = if self.key.is_none() && !sealed {
            Repr::parse_checksum_already_checked(packet).map_err(Rejected::Body)?
        } else {
            let (n, sealed_at) = auth::open_with(self.key.as_ref(), packet, &mut self.scratch)
                .map_err(Rejected::Auth)?;
            let repr =
                Repr::parse_checksum_already_checked(&self.scratch[..n]).map_err(Rejected::Body)?;
            if self.key.is_some()
                && matches!(repr.message, Message::Offer(_))
                && !auth::fresh(sealed_at, now_ms)
            {
                return Err(Rejected::StaleOffer);
            }
            repr
        };
        if self.receiver && self.require_encryption && matches!(repr.message, Message::Offer(_)) {
            self.sessions.counts.clear_refused += 1;
            // Answered at the handshake rate (a refusal is longer than the shortest offer).
            if !self.sessions.answer_token(now) {
                return Err(Rejected::Clear);
            }
            let mut answer = session::clear_abort(
                tid,
                AbortReason::EncryptionRequired,
                "receiver takes encrypted transfers only",
            );
            if let Some(key) = &self.key {
                let n = answer.len();
                answer.resize(n + auth::TRAILER_LEN, 0);
                let m = key
                    .seal(&mut answer, n, auth::now_ms())
                    .expect("room for the trailer");
                answer.truncate(m);
            }
            self.outbox.push((from, answer));
            return Err(Rejected::Clear);
        }
        Ok(repr)
    }

    /// Makes the chunk packet at `buf[at..at + len]`, to `to`, ready to send: sealed under its
    /// transfer's session (then `at` must be [`crate::crypto::transport::INNER_AT`]), else
    /// tagged with the pre-shared key if there is one, else as it is. Returns where the packet
    /// to send lies in `buf`; `None` (send nothing) for a transfer that was encrypted and has no
    /// session now: it never goes out in clear.
    pub fn seal_out(
        &mut self,
        to: Peer,
        buf: &mut [u8],
        at: usize,
        len: usize,
    ) -> Option<Range<usize>> {
        if at == crate::crypto::transport::INNER_AT
            && let Some(n) = self.sessions.seal(to, buf, len)
        {
            return Some(0..n);
        }
        let tid = wire::Packet::new_unchecked(&buf[at..at + len]).transfer_id();
        if self.sessions.was_encrypted(to, tid) {
            return None;
        }
        Some(match &self.key {
            Some(key) => {
                let n = key
                    .seal(&mut buf[at..], len, auth::now_ms())
                    .expect("the buffer has room for the trailer");
                at..at + n
            }
            None => {
                // A packet meant to be sealed may have been written without its checksum
                // (`Sender::set_sealed`). A zero field is filled: if it was a computed zero,
                // filling it computes the same zero again.
                let mut p = wire::Packet::new_unchecked(&mut buf[at..at + len]);
                if p.checksum() == 0 {
                    p.fill_checksum();
                }
                at..at + len
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Peer = Peer::ipv4(std::net::Ipv4Addr::new(198, 18, 0, 1));
    use chunk_common::wire::{AbortReason, AbortRepr, HashAlg, OfferRepr};

    fn ip(chunk: &[u8]) -> Vec<u8> {
        let total = (20 + chunk.len()) as u16;
        let mut p = vec![
            0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 253, 0, 0, 198, 18, 0, 2, 198, 18, 0, 1,
        ];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(chunk);
        p
    }

    fn emit(repr: &Repr<'_>, key: Option<&Psk>, sealed_at: u64) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len() + auth::TRAILER_LEN];
        let mut n = repr.emit(&mut buf).unwrap();
        if let Some(k) = key {
            n = k.seal(&mut buf, n, sealed_at).unwrap();
        }
        buf.truncate(n);
        buf
    }

    fn abort() -> Repr<'static> {
        Repr {
            transfer_id: 9,
            seq: 0,
            flags: 0,
            message: Message::Abort(AbortRepr {
                reason: AbortReason::Exists,
                message: b"exists",
            }),
        }
    }

    fn offer() -> Repr<'static> {
        Repr {
            transfer_id: 9,
            seq: 0,
            flags: 0,
            message: Message::Offer(OfferRepr {
                file_size: 0,
                chunk_size: 1400,
                chunk_count: 0,
                mode: 0o644,
                mtime: 0,
                hash_alg: HashAlg::Blake3,
                tag: [0; 32],
                name: b"a",
            }),
        }
    }

    #[test]
    fn a_sender_checks_source_checksum_key_and_body_in_turn() {
        let key = Psk::from_secret(b"0123456789abcdef").unwrap();
        let mut intake = Intake::new(Some(key.clone()));
        let to = [198, 18, 0, 2];
        let good = ip(&emit(&abort(), Some(&key), 1));
        let mut p = good.clone();
        let repr = intake.open_ip(&mut p, 253, |s| s == to, 1).unwrap();
        assert_eq!(repr.message, abort().message);
        // Another source, a flipped bit, no tag, another protocol.
        let mut p = good.clone();
        assert_eq!(
            intake.open_ip(&mut p, 253, |_| false, 1),
            Err(Rejected::Classify(Counter::NotAllowed))
        );
        let mut p = good.clone();
        p[30] ^= 1;
        assert_eq!(
            intake.open_ip(&mut p, 253, |_| true, 1),
            Err(Rejected::Classify(Counter::BadChecksum))
        );
        let mut p = ip(&emit(&abort(), None, 0));
        assert_eq!(
            intake.open_ip(&mut p, 253, |_| true, 1),
            Err(Rejected::Auth(AuthError::Unauthenticated))
        );
        let mut p = good.clone();
        p[9] = 17;
        assert_eq!(
            intake.open_ip(&mut p, 253, |_| true, 1),
            Err(Rejected::NotChunk)
        );
    }

    #[test]
    fn a_bare_packet_gets_the_same_checks() {
        let key = Psk::from_secret(b"0123456789abcdef").unwrap();
        let mut intake = Intake::new(Some(key.clone()));
        let good = emit(&abort(), Some(&key), 1);
        let mut p = good.clone();
        assert_eq!(
            intake.open_bare(&mut p, PEER, true, 1).unwrap().message,
            abort().message
        );
        let mut p = good.clone();
        assert_eq!(
            intake.open_bare(&mut p, PEER, false, 1),
            Err(Rejected::Classify(Counter::NotAllowed))
        );
        let mut p = good.clone();
        p[25] ^= 1;
        assert_eq!(
            intake.open_bare(&mut p, PEER, true, 1),
            Err(Rejected::Classify(Counter::BadChecksum))
        );
    }

    /// Without a key, a receiver's data packet is parsed in place: its payload is the ring
    /// record's bytes, not a copy.
    #[test]
    fn unsealed_packets_are_not_copied() {
        let repr = Repr {
            transfer_id: 1,
            seq: 0,
            flags: 0,
            message: Message::Data { payload: b"hello" },
        };
        let mut packet = emit(&repr, None, 0);
        packet[16..20].fill(0);
        let mut intake = Intake::new(None);
        let opened = intake.open_checked(PEER, &packet, 0).unwrap();
        let Message::Data { payload } = opened.message else {
            panic!("data")
        };
        assert!(packet.as_ptr_range().contains(&payload.as_ptr()));
    }

    /// A packet written for a seal without its checksum (`Sender::set_sealed`) that finds no
    /// session and goes out clear (a transfer never bound) leaves with a valid checksum.
    #[test]
    fn a_packet_meant_for_a_seal_that_goes_out_clear_gets_its_checksum() {
        use crate::crypto::transport::INNER_AT;
        let mut intake = Intake::new(None);
        let mut buf = vec![0u8; 200];
        let n = abort().emit_without_checksum(&mut buf[INNER_AT..]).unwrap();
        let range = intake.seal_out(PEER, &mut buf, INNER_AT, n).unwrap();
        assert_eq!(range, INNER_AT..INNER_AT + n);
        assert_eq!(&buf[range], emit(&abort(), None, 0).as_slice());
    }

    #[test]
    fn sealed_offers_must_be_fresh_other_messages_need_not() {
        let key = Psk::from_secret(b"0123456789abcdef").unwrap();
        let mut intake = Intake::new(Some(key.clone()));
        let now = 1_700_000_000_000u64;
        let window = auth::OFFER_WINDOW.as_millis() as u64;
        let check = |intake: &mut Intake, repr: &Repr<'_>, at: u64| {
            let mut p = ip(&emit(repr, Some(&key), at));
            intake.open_ip(&mut p, 253, |_| true, now).map(|_| ())
        };
        assert_eq!(check(&mut intake, &offer(), now - window), Ok(()));
        assert_eq!(
            check(&mut intake, &offer(), now - window - 1),
            Err(Rejected::StaleOffer)
        );
        assert_eq!(
            check(&mut intake, &offer(), now + window + 1),
            Err(Rejected::StaleOffer)
        );
        assert_eq!(check(&mut intake, &abort(), now - 10 * window), Ok(()));
        // Without a key there is no timestamp to check.
        let mut open = Intake::new(None);
        let mut p = ip(&emit(&offer(), None, 0));
        assert!(open.open_ip(&mut p, 253, |_| true, now).is_ok());
    }
}
