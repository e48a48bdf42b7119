//! The handshake that opens a session: a Noise pattern (through `snow`) in handshake packets
//! (type 8), after which both sides hold one key per direction for sealed packets.
//!
//! ```text
//! | header: type 8, flags 0, length, session id, seq = message number (1, 2, 3), checksum |
//! | suite: u8 | reserved: 3 bytes, 0 | the Noise handshake message |
//! ```
//!
//! | suite | Noise protocol | credentials | messages |
//! |---|---|---|---|
//! | 1 | `Noise_NNpsk0_25519_AESGCM_BLAKE2s` | the pre-shared key | 1 → 2 |
//! | 2 | `Noise_XX_25519_AESGCM_BLAKE2s` | a key pair each | 1 → 2 → 3, then a confirmation |
//! | 3 | `Noise_XXpsk3_25519_AESGCM_BLAKE2s` | both | as 2 |
//!
//! The prologue, `"chunk session v1"`, the suite byte and the session id (u32 BE), binds each
//! message to its suite and session. Payloads: message 1 of suite 1 carries the initiator's
//! clock (u64 ms since the Unix epoch, BE), encrypted and authenticated under the pre-shared
//! key, so a replay after 30 s is refused unanswered; message 1 of suites 2 and 3 carries 64
//! zero bytes, so that it is as long as the answer it asks for (no amplification); all other
//! payloads are empty.

use chunk_common::wire::{HEADER_LEN, Packet, envelope, field};
use snow::{Builder, HandshakeState, params::NoiseParams};

use super::{
    keys::{PublicKey, SecretKey},
    transport::{Opener, Sealer, write_header},
};

/// Bytes before the Noise message in a handshake packet's body.
pub const PREFIX_LEN: usize = 4;
/// The longest Noise message chunk sends or takes (the longest is 96 bytes).
pub const MAX_NOISE_LEN: usize = 256;
/// Message 1's padding in suites 2 and 3.
pub const XX_PADDING: usize = 64;
/// How far a suite-1 message 1's clock may be from the responder's.
pub const CLOCK_WINDOW_MS: u64 = 30_000;

const PROLOGUE: &[u8] = b"chunk session v1";

/// A handshake's Noise protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    Psk = 1,
    Keys = 2,
    KeysPsk = 3,
}

impl Suite {
    pub fn from_code(c: u8) -> Option<Suite> {
        match c {
            1 => Some(Suite::Psk),
            2 => Some(Suite::Keys),
            3 => Some(Suite::KeysPsk),
            _ => None,
        }
    }

    pub fn noise_name(self) -> &'static str {
        match self {
            Suite::Psk => "Noise_NNpsk0_25519_AESGCM_BLAKE2s",
            Suite::Keys => "Noise_XX_25519_AESGCM_BLAKE2s",
            Suite::KeysPsk => "Noise_XXpsk3_25519_AESGCM_BLAKE2s",
        }
    }

    /// What a peer needs to speak it, for messages.
    pub fn needs(self) -> &'static str {
        match self {
            Suite::Psk => "the pre-shared key only (--psk-file)",
            Suite::Keys => "key pairs (--key), no pre-shared key",
            Suite::KeysPsk => "key pairs (--key) and the pre-shared key (--psk-file)",
        }
    }

    /// Handshake messages before the initiator has the keys (the responder's last message).
    fn messages(self) -> u32 {
        match self {
            Suite::Psk => 2,
            Suite::Keys | Suite::KeysPsk => 3,
        }
    }
}

/// What one side brings to a handshake.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// The Noise PSK (derived from `--psk-file`, see [`crate::auth::Psk::noise_key`]).
    pub psk: Option<[u8; 32]>,
    pub key: Option<SecretKey>,
}

impl Credentials {
    /// The suite these credentials speak, if any.
    pub fn suite(&self) -> Option<Suite> {
        match (&self.key, &self.psk) {
            (None, None) => None,
            (None, Some(_)) => Some(Suite::Psk),
            (Some(_), None) => Some(Suite::Keys),
            (Some(_), Some(_)) => Some(Suite::KeysPsk),
        }
    }
}

/// Why a handshake message was not taken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed handshake message")]
    Malformed,
    #[error("the peer speaks suite {0}, this side another")]
    WrongSuite(u8),
    #[error("handshake message 1 is stale (replayed, or the clocks are more than 30 s apart)")]
    Stale,
    #[error("handshake message does not authenticate (another key, or changed on the way)")]
    Decrypt,
}

/// The keys of an open session.
pub struct SessionKeys {
    pub sealer: Sealer,
    pub opener: Opener,
    /// The peer's static public key (suites 2 and 3).
    pub remote: Option<PublicKey>,
    pub suite: Suite,
    /// Noise's handshake hash (a channel binding; in tests, both sides agree on it).
    pub handshake_hash: [u8; 32],
}

fn build(
    suite: Suite,
    sid: u32,
    creds: &Credentials,
    initiator: bool,
    ephemeral: Option<&[u8; 32]>,
) -> Result<HandshakeState, HandshakeError> {
    let params: NoiseParams = suite.noise_name().parse().expect("a valid Noise name");
    let mut prologue = PROLOGUE.to_vec();
    prologue.push(suite as u8);
    prologue.extend_from_slice(&sid.to_be_bytes());
    let bad = |_| HandshakeError::Malformed;
    let mut b = Builder::new(params).prologue(&prologue).map_err(bad)?;
    if let Some(k) = &creds.key {
        b = b.local_private_key(k.secret_bytes()).map_err(bad)?;
    }
    if let Some(psk) = &creds.psk {
        let at = if suite == Suite::Psk { 0 } else { 3 };
        b = b.psk(at, psk).map_err(bad)?;
    }
    if let Some(e) = ephemeral {
        b = b.fixed_ephemeral_key_for_testing_only(e);
    }
    if initiator {
        b.build_initiator()
    } else {
        b.build_responder()
    }
    .map_err(bad)
}

/// A handshake packet: header, suite, reserved, `noise`.
fn handshake_packet(suite: Suite, sid: u32, seq: u32, noise: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; HEADER_LEN + PREFIX_LEN + noise.len()];
    let len = (PREFIX_LEN + noise.len()) as u16;
    write_header(&mut p, envelope::HANDSHAKE, sid, seq, len);
    p[HEADER_LEN] = suite as u8;
    p[HEADER_LEN + PREFIX_LEN..].copy_from_slice(noise);
    Packet::new_unchecked(&mut p[..]).fill_checksum();
    p
}

/// A handshake packet's parts: suite code, session id, message number, Noise message.
pub fn parse(packet: &[u8]) -> Result<(u8, u32, u32, &[u8]), HandshakeError> {
    if packet.len() < HEADER_LEN + PREFIX_LEN
        || packet[field::MSG_TYPE] != envelope::HANDSHAKE
        || packet.len() - HEADER_LEN - PREFIX_LEN > MAX_NOISE_LEN
    {
        return Err(HandshakeError::Malformed);
    }
    let p = Packet::new_unchecked(packet);
    Ok((
        packet[HEADER_LEN],
        p.transfer_id(),
        p.seq(),
        &packet[HEADER_LEN + PREFIX_LEN..],
    ))
}

fn split(
    hs: &mut HandshakeState,
    suite: Suite,
    sid: u32,
    initiator: bool,
) -> Result<SessionKeys, HandshakeError> {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let (send, recv) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
    let remote = match hs.get_remote_static() {
        Some(k) => Some(PublicKey(
            k.try_into().map_err(|_| HandshakeError::Malformed)?,
        )),
        None => None,
    };
    let handshake_hash = hs
        .get_handshake_hash()
        .try_into()
        .map_err(|_| HandshakeError::Malformed)?;
    Ok(SessionKeys {
        sealer: Sealer::new(sid, send),
        opener: Opener::new(sid, recv),
        remote,
        suite,
        handshake_hash,
    })
}

/// The sender's side of a handshake.
pub struct Initiator {
    hs: HandshakeState,
    suite: Suite,
    sid: u32,
    /// The packet to send (again, until its answer comes).
    last: Vec<u8>,
}

impl Initiator {
    /// Message 1, for session `sid`, with the clock `now_ms`.
    pub fn start(creds: &Credentials, sid: u32, now_ms: u64) -> Result<Initiator, HandshakeError> {
        Self::start_with(creds, sid, now_ms, None)
    }

    pub(crate) fn start_with(
        creds: &Credentials,
        sid: u32,
        now_ms: u64,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<Initiator, HandshakeError> {
        let suite = creds.suite().ok_or(HandshakeError::Malformed)?;
        let mut hs = build(suite, sid, creds, true, ephemeral)?;
        let payload = match suite {
            Suite::Psk => now_ms.to_be_bytes().to_vec(),
            Suite::Keys | Suite::KeysPsk => vec![0; XX_PADDING],
        };
        let mut msg = [0u8; MAX_NOISE_LEN];
        let n = hs
            .write_message(&payload, &mut msg)
            .map_err(|_| HandshakeError::Malformed)?;
        Ok(Initiator {
            last: handshake_packet(suite, sid, 1, &msg[..n]),
            hs,
            suite,
            sid,
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// The packet to send now (and again until it is answered).
    pub fn packet(&self) -> &[u8] {
        &self.last
    }

    /// Takes message 2. Returns the responder's static key (suites 2 and 3), which the caller
    /// checks before [`Initiator::finish`] (message 3 tells the responder who we are).
    pub fn read_reply(&mut self, packet: &[u8]) -> Result<Option<PublicKey>, HandshakeError> {
        let (suite, sid, seq, noise) = parse(packet)?;
        if suite != self.suite as u8 {
            return Err(HandshakeError::WrongSuite(suite));
        }
        if sid != self.sid || seq != 2 || self.hs.is_my_turn() {
            return Err(HandshakeError::Malformed);
        }
        let mut payload = [0u8; MAX_NOISE_LEN];
        self.hs
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        Ok(match self.hs.get_remote_static() {
            Some(k) => Some(PublicKey(
                k.try_into().map_err(|_| HandshakeError::Malformed)?,
            )),
            None => None,
        })
    }

    /// After message 2: the session's keys, and for suites 2 and 3 message 3 (now
    /// [`Initiator::packet`]: sent until the responder's confirmation arrives).
    pub fn finish(&mut self) -> Result<SessionKeys, HandshakeError> {
        if self.suite.messages() == 3 {
            let mut msg = [0u8; MAX_NOISE_LEN];
            let n = self
                .hs
                .write_message(&[], &mut msg)
                .map_err(|_| HandshakeError::Malformed)?;
            self.last = handshake_packet(self.suite, self.sid, 3, &msg[..n]);
        }
        if !self.hs.is_handshake_finished() {
            return Err(HandshakeError::Malformed);
        }
        split(&mut self.hs, self.suite, self.sid, true)
    }

    /// Whether the session is usable only after the responder's confirmation (suites 2, 3).
    pub fn needs_confirmation(&self) -> bool {
        self.suite.messages() == 3
    }
}

/// What a responder does with message 1.
pub enum Responded {
    /// Suite 1: the session is open on this side; send `reply` (message 2).
    Done {
        reply: Vec<u8>,
        keys: Box<SessionKeys>,
    },
    /// Suites 2 and 3: send `reply` (message 2) and wait for message 3.
    Pending {
        reply: Vec<u8>,
        state: PendingResponder,
    },
}

/// A responder between messages 2 and 3.
pub struct PendingResponder {
    hs: Box<HandshakeState>,
    suite: Suite,
    sid: u32,
}

/// The suite and session id of a message 1, checked against this side's credentials.
pub fn respond(
    creds: &Credentials,
    packet: &[u8],
    now_ms: u64,
) -> Result<Responded, HandshakeError> {
    respond_with(creds, packet, now_ms, None)
}

pub(crate) fn respond_with(
    creds: &Credentials,
    packet: &[u8],
    now_ms: u64,
    ephemeral: Option<&[u8; 32]>,
) -> Result<Responded, HandshakeError> {
    let (code, sid, seq, noise) = parse(packet)?;
    let ours = creds.suite().ok_or(HandshakeError::WrongSuite(code))?;
    let suite = Suite::from_code(code).ok_or(HandshakeError::WrongSuite(code))?;
    if suite != ours {
        return Err(HandshakeError::WrongSuite(code));
    }
    if seq != 1 {
        return Err(HandshakeError::Malformed);
    }
    if suite != Suite::Psk && noise.len() < 32 + XX_PADDING {
        return Err(HandshakeError::Malformed);
    }
    let mut hs = build(suite, sid, creds, false, ephemeral)?;
    let mut payload = [0u8; MAX_NOISE_LEN];
    let n = hs
        .read_message(noise, &mut payload)
        .map_err(|_| HandshakeError::Decrypt)?;
    if suite == Suite::Psk {
        let ts: [u8; 8] = payload[..n]
            .try_into()
            .map_err(|_| HandshakeError::Malformed)?;
        if u64::from_be_bytes(ts).abs_diff(now_ms) > CLOCK_WINDOW_MS {
            return Err(HandshakeError::Stale);
        }
    }
    let mut msg = [0u8; MAX_NOISE_LEN];
    let n = hs
        .write_message(&[], &mut msg)
        .map_err(|_| HandshakeError::Malformed)?;
    let reply = handshake_packet(suite, sid, 2, &msg[..n]);
    if suite == Suite::Psk {
        let keys = split(&mut hs, suite, sid, false)?;
        Ok(Responded::Done {
            reply,
            keys: Box::new(keys),
        })
    } else {
        Ok(Responded::Pending {
            reply,
            state: PendingResponder {
                hs: Box::new(hs),
                suite,
                sid,
            },
        })
    }
}

impl PendingResponder {
    pub fn sid(&self) -> u32 {
        self.sid
    }

    /// Takes message 3: the session's keys, with the initiator's static key (to authorize). A
    /// message that fails leaves the handshake as it was (snow restores its state), so a forged
    /// message 3 cannot kill it.
    pub fn finish(&mut self, packet: &[u8]) -> Result<SessionKeys, HandshakeError> {
        let (suite, sid, seq, noise) = parse(packet)?;
        if suite != self.suite as u8 || sid != self.sid || seq != 3 {
            return Err(HandshakeError::Malformed);
        }
        let mut payload = [0u8; MAX_NOISE_LEN];
        self.hs
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        split(&mut self.hs, self.suite, self.sid, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(key: Option<u8>, psk: Option<u8>) -> Credentials {
        Credentials {
            key: key.map(|k| SecretKey::from_bytes([k; 32])),
            psk: psk.map(|p| [p; 32]),
        }
    }

    /// Runs a whole handshake; returns both sides' keys.
    fn run(i: &Credentials, r: &Credentials) -> Result<(SessionKeys, SessionKeys), HandshakeError> {
        let mut init = Initiator::start(i, 42, 1_000_000)?;
        match respond(r, init.packet(), 1_000_000)? {
            Responded::Done { reply, keys } => {
                assert_eq!(init.read_reply(&reply)?, None);
                Ok((init.finish()?, *keys))
            }
            Responded::Pending { reply, state } => {
                let remote = init.read_reply(&reply)?;
                assert_eq!(remote, r.key.as_ref().map(|k| k.public()));
                let ik = init.finish()?;
                let mut state = state;
                let rk = state.finish(init.packet())?;
                Ok((ik, rk))
            }
        }
    }

    fn talk(a: &mut SessionKeys, b: &mut SessionKeys) {
        let mut buf = vec![0u8; 200];
        let n = a.sealer.seal(&mut buf, 0).unwrap();
        let mut out = vec![0u8; 200];
        assert_eq!(b.opener.open(&buf[..n], &mut out), Ok(0));
    }

    #[test]
    fn every_suite_gives_both_sides_the_same_keys() {
        for (i, r) in [
            (creds(None, Some(5)), creds(None, Some(5))),
            (creds(Some(1), None), creds(Some(2), None)),
            (creds(Some(1), Some(5)), creds(Some(2), Some(5))),
        ] {
            let (mut ik, mut rk) = run(&i, &r).unwrap();
            assert_eq!(ik.handshake_hash, rk.handshake_hash);
            assert_eq!(rk.remote, i.key.as_ref().map(|k| k.public()));
            talk(&mut ik, &mut rk);
            talk(&mut rk, &mut ik);
        }
    }

    #[test]
    fn wrong_credentials_and_suites_fail() {
        // Another PSK.
        assert!(matches!(
            run(&creds(None, Some(5)), &creds(None, Some(6))),
            Err(HandshakeError::Decrypt)
        ));
        assert!(matches!(
            run(&creds(Some(1), Some(5)), &creds(Some(2), Some(6))),
            Err(HandshakeError::Decrypt)
        ));
        // Keys on one side, a PSK on the other.
        assert!(matches!(
            run(&creds(Some(1), None), &creds(None, Some(5))),
            Err(HandshakeError::WrongSuite(2))
        ));
    }

    #[test]
    fn a_stale_psk_message_1_is_refused_and_a_moved_one_does_not_authenticate() {
        let c = creds(None, Some(5));
        let init = Initiator::start(&c, 42, 1_000_000).unwrap();
        assert!(matches!(
            respond(&c, init.packet(), 1_000_000 + CLOCK_WINDOW_MS + 1),
            Err(HandshakeError::Stale)
        ));
        // Moved to another session id (checksum fixed): the prologue differs.
        let mut moved = init.packet().to_vec();
        moved[field::TRANSFER_ID.start] ^= 1;
        Packet::new_unchecked(&mut moved[..]).fill_checksum();
        assert!(matches!(
            respond(&c, &moved, 1_000_000),
            Err(HandshakeError::Decrypt)
        ));
    }

    #[test]
    fn an_xx_message_1_is_as_long_as_its_answer() {
        let (i, r) = (creds(Some(1), None), creds(Some(2), None));
        let init = Initiator::start(&i, 42, 0).unwrap();
        let Ok(Responded::Pending { reply, .. }) = respond(&r, init.packet(), 0) else {
            panic!("pending")
        };
        assert!(init.packet().len() >= reply.len());
        // Cut short, it is not answered.
        let mut short = init.packet()[..init.packet().len() - 1].to_vec();
        let n = (short.len() - HEADER_LEN) as u16;
        short[field::PAYLOAD_LEN].copy_from_slice(&n.to_be_bytes());
        assert!(matches!(
            respond(&r, &short, 0),
            Err(HandshakeError::Malformed)
        ));
    }
}

/// The spec's examples (docs/PROTOCOL.md, "Encryption"): every handshake message and sealed
/// packet there is what this code writes from the example's keys, byte for byte.
#[cfg(test)]
mod fixtures {
    use super::*;
    use crate::crypto::transport::{INNER_AT, OVERHEAD};

    pub(super) const SID: u32 = 0x0a0b_0c0d;
    pub(super) const CLOCK_MS: u64 = 1_700_000_000_123;
    const INIT_E: [u8; 32] = [0x11; 32];
    const RESP_E: [u8; 32] = [0x22; 32];

    fn psk_creds() -> Credentials {
        let secret: Vec<u8> = (0u8..32).collect();
        Credentials {
            psk: Some(crate::auth::Psk::from_secret(&secret).unwrap().noise_key()),
            key: None,
        }
    }

    fn xx_creds(k: u8) -> Credentials {
        Credentials {
            psk: None,
            key: Some(SecretKey::from_bytes([k; 32])),
        }
    }

    /// The data example of "Message bodies" (checksum as sent).
    fn data_packet() -> Vec<u8> {
        use chunk_common::wire::{Message, Repr, flags};
        let r = Repr {
            transfer_id: 0x0a0b_0c0d,
            seq: 7,
            flags: flags::MORE_CHUNKS,
            message: Message::Data { payload: b"hello" },
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b).unwrap();
        b
    }

    fn seal(keys: &mut SessionKeys, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; OVERHEAD + inner.len()];
        buf[INNER_AT..INNER_AT + inner.len()].copy_from_slice(inner);
        let n = keys.sealer.seal(&mut buf, inner.len()).unwrap();
        buf.truncate(n);
        buf
    }

    /// (name, bytes) of every example, in the order the spec shows them.
    pub(super) fn all() -> Vec<(&'static str, Vec<u8>)> {
        let mut v = Vec::new();
        // Suite 1.
        let c = psk_creds();
        v.push(("noise-psk", c.psk.unwrap().to_vec()));
        let mut i = Initiator::start_with(&c, SID, CLOCK_MS, Some(&INIT_E)).unwrap();
        v.push(("psk-handshake-1", i.packet().to_vec()));
        let Ok(Responded::Done { reply, keys: rk }) =
            respond_with(&c, i.packet(), CLOCK_MS, Some(&RESP_E))
        else {
            panic!("suite 1 answers at once")
        };
        v.push(("psk-handshake-2", reply.clone()));
        i.read_reply(&reply).unwrap();
        let mut ik = i.finish().unwrap();
        assert_eq!(ik.handshake_hash, rk.handshake_hash);
        v.push(("psk-sealed-data", seal(&mut ik, &data_packet())));
        // Suite 2.
        let (ic, rc) = (xx_creds(0x33), xx_creds(0x44));
        let mut i = Initiator::start_with(&ic, SID, CLOCK_MS, Some(&INIT_E)).unwrap();
        v.push(("xx-handshake-1", i.packet().to_vec()));
        let Ok(Responded::Pending { reply, state }) =
            respond_with(&rc, i.packet(), CLOCK_MS, Some(&RESP_E))
        else {
            panic!("suite 2 waits for message 3")
        };
        v.push(("xx-handshake-2", reply.clone()));
        i.read_reply(&reply).unwrap();
        let mut ik = i.finish().unwrap();
        v.push(("xx-handshake-3", i.packet().to_vec()));
        let mut state = state;
        let mut rk = state.finish(i.packet()).unwrap();
        v.push(("xx-confirmation", seal(&mut rk, &[])));
        v.push(("xx-sealed-data", seal(&mut ik, &data_packet())));
        v
    }

    /// Hex lines as the spec shows them (`0000: 43 4b …`).
    pub(super) fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .enumerate()
            .map(|(i, c)| {
                let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
                format!("{:04x}: {}\n", i * 16, h.join(" "))
            })
            .collect()
    }

    #[test]
    fn the_protocol_doc_encryption_examples_are_what_this_code_writes() {
        let mut missing = String::new();
        for (name, bytes) in all() {
            match crate::doc_fixture(name) {
                Some(doc) => assert_eq!(doc, bytes, "fixture {name}:\n{}", hex(&bytes)),
                None => {
                    missing += &format!("<!-- fixture: {name} -->\n```text\n{}```\n\n", hex(&bytes))
                }
            }
        }
        assert!(
            missing.is_empty(),
            "missing from docs/PROTOCOL.md:\n{missing}"
        );
    }

    /// The spec's sealed examples, read from docs/PROTOCOL.md, open under the keys their
    /// handshakes give the receiver: to the data example (checksum field zero), and the
    /// confirmation to nothing under the sender's.
    #[test]
    fn the_sealed_examples_open_to_the_data_example() {
        let mut d = data_packet();
        d[16..20].fill(0);
        let doc = |n: &str| crate::doc_fixture(n).expect("in PROTOCOL.md");
        let mut out = [0u8; 256];
        // Suite 1.
        let c = psk_creds();
        let i = Initiator::start_with(&c, SID, CLOCK_MS, Some(&INIT_E)).unwrap();
        let Ok(Responded::Done { keys: mut rk, .. }) =
            respond_with(&c, i.packet(), CLOCK_MS, Some(&RESP_E))
        else {
            panic!("suite 1 answers at once")
        };
        let n = rk.opener.open(&doc("psk-sealed-data"), &mut out).unwrap();
        assert_eq!(&out[..n], d.as_slice());
        // Suite 2.
        let (ic, rc) = (xx_creds(0x33), xx_creds(0x44));
        let mut i = Initiator::start_with(&ic, SID, CLOCK_MS, Some(&INIT_E)).unwrap();
        let Ok(Responded::Pending { reply, mut state }) =
            respond_with(&rc, i.packet(), CLOCK_MS, Some(&RESP_E))
        else {
            panic!("suite 2 waits for message 3")
        };
        i.read_reply(&reply).unwrap();
        let mut ik = i.finish().unwrap();
        let mut rk = state.finish(i.packet()).unwrap();
        let n = rk.opener.open(&doc("xx-sealed-data"), &mut out).unwrap();
        assert_eq!(&out[..n], d.as_slice());
        assert_eq!(ik.opener.open(&doc("xx-confirmation"), &mut out), Ok(0));
    }
}
