//! The sessions one side holds, and the receiver's answers to handshakes.
//!
//! A session is named by its peer and its session id (chosen at random by the initiator). A
//! transfer belongs to the session whose sealed packet first named it: from then on its packets
//! are taken only sealed under that session (a clear packet, or one sealed under another
//! session, for it is refused), and its answers are sealed under it.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use chunk_common::wire::{AbortReason, AbortRepr, Message, Repr};

use super::{
    handshake::{self, Credentials, HandshakeError, PendingResponder, Responded, SessionKeys},
    keys::{AuthorizedKeys, PublicKey},
    transport::{INNER_AT, OVERHEAD, Opener, Sealer},
};
use crate::proto::Peer;

/// Transfers one session may name before the oldest is forgotten.
pub const MAX_TRANSFERS_PER_SESSION: usize = 256;
/// Sessions a receiver holds at once, and from one source address.
pub const MAX_SESSIONS: usize = 1024;
pub const MAX_SESSIONS_PER_SOURCE: usize = 32;
/// Handshakes between messages 2 and 3 a receiver holds at once.
pub const MAX_PENDING: usize = 256;
/// How long a handshake may wait for message 3, and a session for its first sealed packet.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes answered per second (bursts as large), for all sources together: each costs
/// Diffie-Hellman operations.
pub const HANDSHAKES_PER_SECOND: u32 = 50;

/// One open session.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
    /// The peer's static public key (suites 2 and 3), and its comment in the authorized keys.
    pub remote: Option<PublicKey>,
    pub remote_name: Option<String>,
    pub suite: handshake::Suite,
    /// The peer has shown it holds the keys (a sealed packet from it opened, or its message 3).
    pub confirmed: bool,
    /// The receiver refused the peer's key: nothing from it is taken.
    pub refused: bool,
    pub last_heard: Instant,
    /// When it opened: a newer session of the same sender takes over an older one's transfers,
    /// never the other way.
    pub opened: Instant,
    /// The handshake's message 1 and the answer it got (message 2), and with key pairs message
    /// 3 and, for a refused key, the refusal: repeats get the same answer again.
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    msg3: Vec<u8>,
    refusal: Vec<u8>,
    transfers: VecDeque<u32>,
}

/// What the receiver counts of sessions and handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionCounts {
    /// Sessions opened (handshakes completed).
    pub handshakes: u64,
    /// Handshakes refused: an unknown sender key, or another suite.
    pub handshakes_refused: u64,
    /// Handshake messages that failed: malformed, not authenticating, stale, or for no
    /// handshake in progress.
    pub handshakes_failed: u64,
    /// Handshakes not answered because of the rate or the session limits.
    pub handshakes_limited: u64,
    /// Sealed packets that did not authenticate.
    pub seal_failures: u64,
    /// Sealed packets whose counter was used before.
    pub replayed: u64,
    /// Sealed packets for no session (where the receive path did not already drop them).
    pub unknown_session: u64,
    /// Clear packets refused: for a transfer that is encrypted, or a clear offer to a receiver
    /// that requires encryption.
    pub clear_refused: u64,
    /// Sessions closed after their timeout.
    pub sessions_expired: u64,
}

/// A change in the set of open sessions, for the receive path's filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterChange {
    Allow(u32),
    Forget(u32),
}

/// The receiver's handshake credentials and rules.
pub struct ResponderConfig {
    pub creds: Credentials,
    /// With suites 2 and 3, the senders admitted.
    pub authorized: AuthorizedKeys,
}

struct Pending {
    state: PendingResponder,
    msg1: Vec<u8>,
    msg2: Vec<u8>,
    at: Instant,
}

/// A token bucket.
struct Rate {
    tokens: f64,
    at: Option<Instant>,
}

impl Rate {
    fn take(&mut self, now: Instant) -> bool {
        let cap = HANDSHAKES_PER_SECOND as f64;
        let elapsed = self
            .at
            .map_or(1.0, |a| now.saturating_duration_since(a).as_secs_f64());
        self.tokens = (self.tokens + elapsed * cap).min(cap);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Transfers remembered as encrypted after their session is gone (their packets are then
/// dropped, never sent or taken in clear).
const MAX_REMEMBERED: usize = 65_536;
/// Handshakes waiting for message 3 from one source address.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

/// The hasher of the two maps every sealed packet looks up, on both sides (`open`, `bindings`):
/// foldhash, seeded at random per process, a few nanoseconds a lookup where the standard
/// library's SipHash-1-3 took tens (docs/PERFORMANCE.md, "Encryption"). What is inserted into
/// them is authenticated first (a completed handshake, a sealed packet that opened) and their
/// sizes are bounded ([`MAX_SESSIONS`], [`MAX_TRANSFERS_PER_SESSION`]); the maps any source
/// fills unauthenticated (`pending`, `encrypted`'s lookups of clear packets) keep SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// The sessions of one side, and (on a receiver) the handshakes it answers.
pub struct Sessions {
    open: FastMap<(Peer, u32), Session>,
    bindings: FastMap<(Peer, u32), u32>,
    /// Every transfer ever bound (up to [`MAX_REMEMBERED`], oldest forgotten first).
    encrypted: HashMap<(Peer, u32), Option<PublicKey>>,
    encrypted_order: VecDeque<(Peer, u32)>,
    responder: Option<ResponderConfig>,
    pending: HashMap<(Peer, u32), Pending>,
    rate: Rate,
    changes: Vec<FilterChange>,
    pub counts: SessionCounts,
}

/// Why a packet was refused by the session layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("sealed packet for no open session")]
    UnknownSession,
    #[error("{0}")]
    Open(super::transport::OpenError),
    #[error("the transfer belongs to another session")]
    WrongSession,
    #[error("the session's key was refused")]
    Refused,
}

impl Sessions {
    /// A side without a responder: a sender, or a receiver without keys.
    pub fn new(responder: Option<ResponderConfig>) -> Self {
        Sessions {
            open: FastMap::default(),
            bindings: FastMap::default(),
            encrypted: Default::default(),
            encrypted_order: VecDeque::new(),
            responder,
            pending: HashMap::new(),
            rate: Rate {
                tokens: HANDSHAKES_PER_SECOND as f64,
                at: None,
            },
            changes: Vec::new(),
            counts: SessionCounts::default(),
        }
    }

    pub fn responds(&self) -> bool {
        self.responder.is_some()
    }

    /// A token of the handshake rate, for other clear answers (refusals of clear offers).
    pub fn answer_token(&mut self, now: Instant) -> bool {
        self.rate.take(now)
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The filter changes since the last call (the receive path applies them).
    pub fn take_changes(&mut self) -> impl Iterator<Item = FilterChange> + '_ {
        self.changes.drain(..)
    }

    /// Adds a session this side opened (a sender's, after its handshake).
    pub fn insert(&mut self, peer: Peer, keys: SessionKeys, now: Instant) {
        let sid = keys.sealer.sid();
        self.open.insert(
            (peer, sid),
            Session {
                sealer: keys.sealer,
                opener: keys.opener,
                remote: keys.remote,
                remote_name: None,
                suite: keys.suite,
                confirmed: true,
                refused: false,
                last_heard: now,
                opened: now,
                msg1: Vec::new(),
                msg2: Vec::new(),
                msg3: Vec::new(),
                refusal: Vec::new(),
                transfers: VecDeque::new(),
            },
        );
        // A sender has no receive path to tell.
        if self.responds() {
            self.changes.push(FilterChange::Allow(sid));
        }
    }

    /// Whether `tid` from `peer` was ever an encrypted transfer (of a session open or gone).
    pub fn was_encrypted(&self, peer: Peer, tid: u32) -> bool {
        self.encrypted.contains_key(&(peer, tid))
    }

    /// Closes a session (a sender's old one, replaced by a new handshake).
    pub fn remove(&mut self, peer: Peer, sid: u32) {
        if let Some(s) = self.open.remove(&(peer, sid)) {
            for tid in s.transfers {
                if self.bindings.get(&(peer, tid)) == Some(&sid) {
                    self.bindings.remove(&(peer, tid));
                }
            }
            if self.responds() && !s.refused {
                self.changes.push(FilterChange::Forget(sid));
            }
        }
    }

    pub fn get(&self, peer: Peer, sid: u32) -> Option<&Session> {
        self.open.get(&(peer, sid))
    }

    /// Names `tid` as `sid`'s transfer (a sender does this for each file it sends).
    pub fn bind(&mut self, peer: Peer, tid: u32, sid: u32) {
        let Some(s) = self.open.get_mut(&(peer, sid)) else {
            return;
        };
        if self.bindings.insert((peer, tid), sid) != Some(sid) {
            s.transfers.push_back(tid);
            if s.transfers.len() > MAX_TRANSFERS_PER_SESSION
                && let Some(old) = s.transfers.pop_front()
                && self.bindings.get(&(peer, old)) == Some(&sid)
            {
                self.bindings.remove(&(peer, old));
            }
        }
        if self.encrypted.insert((peer, tid), s.remote).is_none() {
            self.encrypted_order.push_back((peer, tid));
            if self.encrypted_order.len() > MAX_REMEMBERED
                && let Some(old) = self.encrypted_order.pop_front()
            {
                self.encrypted.remove(&old);
            }
        }
    }

    /// The session a transfer belongs to, if any.
    pub fn session_of(&self, peer: Peer, tid: u32) -> Option<u32> {
        self.bindings.get(&(peer, tid)).copied()
    }

    /// Opens a sealed packet from `peer` (checksum checked) into `out`; returns the inner
    /// packet's length (0 for a confirmation). The inner packet's transfer is bound to the
    /// session, or must already be.
    pub fn open(
        &mut self,
        peer: Peer,
        packet: &[u8],
        out: &mut [u8],
        now: Instant,
    ) -> Result<usize, SessionError> {
        let sid = chunk_common::wire::Packet::new_unchecked(packet).transfer_id();
        let Some(s) = self.open.get_mut(&(peer, sid)) else {
            self.counts.unknown_session += 1;
            return Err(SessionError::UnknownSession);
        };
        if s.refused {
            return Err(SessionError::Refused);
        }
        let n = match s.opener.open(packet, out) {
            Ok(n) => n,
            Err(e) => {
                match e {
                    super::transport::OpenError::Replayed => self.counts.replayed += 1,
                    _ => self.counts.seal_failures += 1,
                }
                return Err(SessionError::Open(e));
            }
        };
        s.confirmed = true;
        s.last_heard = now;
        if n == 0 {
            return Ok(0);
        }
        let tid = chunk_common::wire::Packet::new_unchecked(&out[..n]).transfer_id();
        match self.bindings.get(&(peer, tid)) {
            Some(&other) if other != sid => {
                // A newer session of the same sender (its peer, and with key pairs its key)
                // takes its transfers over: it opened one after losing the old (a receiver
                // restart, a long outage). No other session may touch them, and an older one
                // never takes them back.
                let this = self.open.get(&(peer, sid)).map(|s| (s.remote, s.opened));
                let owner = self.open.get(&(peer, other)).map(|s| (s.remote, s.opened));
                let takes_over = match (this, owner) {
                    (Some((r, at)), Some((owner_r, owner_at))) => r == owner_r && at > owner_at,
                    (Some(_), None) => true,
                    _ => false,
                };
                if !takes_over {
                    self.counts.seal_failures += 1;
                    return Err(SessionError::WrongSession);
                }
                self.bindings.remove(&(peer, tid));
                self.bind(peer, tid, sid);
                Ok(n)
            }
            Some(_) => Ok(n),
            // A receiver binds the transfers a session names; a sender binds its own.
            None if !self.responds() => Ok(n),
            // Its session is gone: only the same sender may take it up again.
            None if self
                .encrypted
                .get(&(peer, tid))
                .is_some_and(|r| Some(*r) != self.open.get(&(peer, sid)).map(|s| s.remote)) =>
            {
                self.counts.seal_failures += 1;
                Err(SessionError::WrongSession)
            }
            None => {
                self.bind(peer, tid, sid);
                Ok(n)
            }
        }
    }

    /// Seals the chunk packet at `buf[INNER_AT..INNER_AT + len]` for `peer` under its transfer's
    /// session; returns the sealed length, or `None` when the transfer has no session.
    pub fn seal(&mut self, peer: Peer, buf: &mut [u8], len: usize) -> Option<usize> {
        let tid =
            chunk_common::wire::Packet::new_unchecked(&buf[INNER_AT..INNER_AT + len]).transfer_id();
        let sid = *self.bindings.get(&(peer, tid))?;
        let s = self.open.get_mut(&(peer, sid))?;
        Some(
            s.sealer
                .seal(buf, len)
                .expect("the buffer has room for the seal"),
        )
    }

    /// An empty sealed packet of `sid` (the receiver's confirmation of a session).
    fn confirmation(&mut self, peer: Peer, sid: u32) -> Option<Vec<u8>> {
        let s = self.open.get_mut(&(peer, sid))?;
        let mut buf = vec![0u8; OVERHEAD];
        let n = s.sealer.seal(&mut buf, 0).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// A sealed abort of transfer 0 under `sid` (a refusal the peer can trust).
    fn sealed_abort(
        &mut self,
        peer: Peer,
        sid: u32,
        reason: AbortReason,
        msg: &str,
    ) -> Option<Vec<u8>> {
        let s = self.open.get_mut(&(peer, sid))?;
        let repr = abort(0, reason, msg);
        let mut buf = vec![0u8; OVERHEAD + repr.buffer_len()];
        let n = repr.emit(&mut buf[INNER_AT..]).ok()?;
        let n = s.sealer.seal(&mut buf, n).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// A receiver takes a handshake packet (checksum checked) from `peer`; returns the packets
    /// to send it (none, when the message is dropped).
    pub fn handshake(
        &mut self,
        peer: Peer,
        packet: &[u8],
        now_ms: u64,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let Ok((_, sid, seq, _)) = handshake::parse(packet) else {
            self.counts.handshakes_failed += 1;
            return Vec::new();
        };
        let Some(cfg) = &self.responder else {
            // A receiver without keys says so (in clear: there is nothing to seal with), to a
            // message 1, at the handshake rate.
            if seq != 1 {
                self.counts.handshakes_failed += 1;
                return Vec::new();
            }
            if !self.rate.take(now) {
                self.counts.handshakes_limited += 1;
                return Vec::new();
            }
            self.counts.handshakes_refused += 1;
            return vec![clear_abort(
                sid,
                AbortReason::Unsupported,
                "receiver has no keys: clear transfers only",
            )];
        };
        match seq {
            1 => {
                if let Some(s) = self.open.get(&(peer, sid)) {
                    return if s.msg1 == packet {
                        vec![s.msg2.clone()]
                    } else {
                        self.counts.handshakes_failed += 1;
                        Vec::new()
                    };
                }
                if let Some(p) = self.pending.get(&(peer, sid)) {
                    return if p.msg1 == packet {
                        vec![p.msg2.clone()]
                    } else {
                        self.counts.handshakes_failed += 1;
                        Vec::new()
                    };
                }
                // Refused sessions do not count: a refused key cannot crowd out another.
                let from_source = self
                    .open
                    .iter()
                    .filter(|((p, _), s)| p.addr() == peer.addr() && !s.refused)
                    .count();
                let pending_from_source = self
                    .pending
                    .keys()
                    .filter(|(p, _)| p.addr() == peer.addr())
                    .count();
                if self.open.len() >= MAX_SESSIONS
                    || from_source >= MAX_SESSIONS_PER_SOURCE
                    || self.pending.len() >= MAX_PENDING
                    || pending_from_source >= MAX_PENDING_PER_SOURCE
                    || !self.rate.take(now)
                {
                    self.counts.handshakes_limited += 1;
                    return Vec::new();
                }
                match handshake::respond(&cfg.creds, packet, now_ms) {
                    Ok(Responded::Done { reply, keys }) => {
                        self.counts.handshakes += 1;
                        self.open.insert(
                            (peer, sid),
                            Session {
                                sealer: keys.sealer,
                                opener: keys.opener,
                                remote: None,
                                remote_name: None,
                                suite: keys.suite,
                                confirmed: false,
                                refused: false,
                                last_heard: now,
                                opened: now,
                                msg1: packet.to_vec(),
                                msg2: reply.clone(),
                                msg3: Vec::new(),
                                refusal: Vec::new(),
                                transfers: VecDeque::new(),
                            },
                        );
                        self.changes.push(FilterChange::Allow(sid));
                        vec![reply]
                    }
                    Ok(Responded::Pending { reply, state }) => {
                        self.pending.insert(
                            (peer, sid),
                            Pending {
                                state,
                                msg1: packet.to_vec(),
                                msg2: reply.clone(),
                                at: now,
                            },
                        );
                        vec![reply]
                    }
                    Err(HandshakeError::WrongSuite(theirs)) => {
                        self.counts.handshakes_refused += 1;
                        let ours = cfg.creds.suite().expect("a responder has credentials");
                        let theirs = handshake::Suite::from_code(theirs)
                            .map_or("an unknown suite", |s| s.needs());
                        // Answered only as long as what asked (no amplification).
                        let answer = clear_abort(
                            sid,
                            AbortReason::Unsupported,
                            &format!("receiver needs {}; sender has {theirs}", ours.needs()),
                        );
                        if answer.len() > packet.len() {
                            return Vec::new();
                        }
                        vec![answer]
                    }
                    Err(e) => {
                        self.counts.handshakes_failed += 1;
                        tracing::debug!(%peer, error = %e, "handshake message 1 dropped");
                        Vec::new()
                    }
                }
            }
            3 => {
                if let Some(s) = self.open.get(&(peer, sid)) {
                    if s.msg3 != packet {
                        self.counts.handshakes_failed += 1;
                        return Vec::new();
                    }
                    // Its answer was lost: say it again.
                    return if s.refused {
                        vec![s.refusal.clone()]
                    } else {
                        self.confirmation(peer, sid).into_iter().collect()
                    };
                }
                let Some(p) = self.pending.get_mut(&(peer, sid)) else {
                    self.counts.handshakes_failed += 1;
                    return Vec::new();
                };
                // A message 3 that fails (forged) leaves the handshake waiting for the real one.
                let keys = match p.state.finish(packet) {
                    Ok(k) => k,
                    Err(e) => {
                        self.counts.handshakes_failed += 1;
                        tracing::debug!(%peer, error = %e, "handshake message 3 dropped");
                        return Vec::new();
                    }
                };
                let p = self.pending.remove(&(peer, sid)).expect("just used");
                let remote = keys.remote.expect("suites 2 and 3 carry the sender's key");
                let name = cfg.authorized.get(&remote).map(str::to_owned);
                let refused = name.is_none();
                self.open.insert(
                    (peer, sid),
                    Session {
                        sealer: keys.sealer,
                        opener: keys.opener,
                        remote: Some(remote),
                        remote_name: name.clone(),
                        suite: keys.suite,
                        confirmed: true,
                        refused,
                        last_heard: now,
                        opened: now,
                        msg1: p.msg1,
                        msg2: p.msg2,
                        msg3: packet.to_vec(),
                        refusal: Vec::new(),
                        transfers: VecDeque::new(),
                    },
                );
                if refused {
                    self.counts.handshakes_refused += 1;
                    tracing::warn!(%peer, key = %remote, "sender key refused: not in the authorized keys");
                    let msg = format!(
                        "this receiver does not know the sender's key {remote}: add it to its \
                         --authorized-keys file"
                    );
                    let a = self
                        .sealed_abort(peer, sid, AbortReason::Unauthorized, &msg)
                        .expect("just inserted");
                    if let Some(s) = self.open.get_mut(&(peer, sid)) {
                        s.refusal = a.clone();
                    }
                    vec![a]
                } else {
                    self.counts.handshakes += 1;
                    tracing::info!(%peer, key = %remote, name = name.as_deref().unwrap_or(""), "session opened");
                    self.changes.push(FilterChange::Allow(sid));
                    self.confirmation(peer, sid).into_iter().collect()
                }
            }
            _ => {
                self.counts.handshakes_failed += 1;
                Vec::new()
            }
        }
    }

    /// Closes sessions past their time: a handshake or an unconfirmed session after
    /// [`HANDSHAKE_TIMEOUT`], a session that heard nothing for `idle`.
    pub fn expire(&mut self, now: Instant, idle: Duration) {
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.at) < HANDSHAKE_TIMEOUT);
        let dead: Vec<_> = self
            .open
            .iter()
            .filter(|(_, s)| {
                let quiet = now.saturating_duration_since(s.last_heard);
                quiet >= idle
                    || (!s.confirmed && quiet >= HANDSHAKE_TIMEOUT)
                    || (s.refused && quiet >= HANDSHAKE_TIMEOUT)
            })
            .map(|(k, _)| *k)
            .collect();
        for key in dead {
            if let Some(s) = self.open.remove(&key) {
                self.counts.sessions_expired += 1;
                for tid in s.transfers {
                    // Only its own: a newer session may have taken the transfer over.
                    if self.bindings.get(&(key.0, tid)) == Some(&key.1) {
                        self.bindings.remove(&(key.0, tid));
                    }
                }
                if !s.refused {
                    self.changes.push(FilterChange::Forget(key.1));
                }
            }
        }
    }
}

fn abort<'a>(tid: u32, reason: AbortReason, msg: &'a str) -> Repr<'a> {
    Repr {
        transfer_id: tid,
        seq: 0,
        flags: 0,
        message: Message::Abort(AbortRepr {
            reason,
            message: msg.as_bytes(),
        }),
    }
}

/// A clear abort packet.
pub fn clear_abort(tid: u32, reason: AbortReason, msg: &str) -> Vec<u8> {
    let repr = abort(tid, reason, msg);
    let mut buf = vec![0u8; repr.buffer_len()];
    let n = repr.emit(&mut buf).expect("room");
    buf.truncate(n);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{
        SecretKey,
        handshake::Initiator,
        transport::{INNER_AT, OVERHEAD},
    };
    use chunk_common::wire::{Packet, envelope, field};

    const PEER: Peer = Peer::ipv4(std::net::Ipv4Addr::new(198, 18, 0, 1));

    fn keys(k: u8) -> Credentials {
        Credentials {
            psk: None,
            key: Some(SecretKey::from_bytes([k; 32])),
        }
    }

    /// A receiver admitting the sender key 1.
    fn receiver() -> Sessions {
        let authorized =
            AuthorizedKeys::parse(&SecretKey::from_bytes([1; 32]).public().to_string()).unwrap();
        Sessions::new(Some(ResponderConfig {
            creds: keys(9),
            authorized,
        }))
    }

    /// A whole XX handshake of sender key `k` with `r`; the sender's keys and the messages.
    fn connect(r: &mut Sessions, k: u8, sid: u32, now: Instant) -> (SessionKeys, Vec<Vec<u8>>) {
        let mut i = Initiator::start(&keys(k), sid, 0).unwrap();
        let m1 = i.packet().to_vec();
        let a = r.handshake(PEER, &m1, 0, now);
        i.read_reply(&a[0]).unwrap();
        let ik = i.finish().unwrap();
        let m3 = i.packet().to_vec();
        let b = r.handshake(PEER, &m3, 0, now);
        (ik, vec![m1, a[0].clone(), m3, b[0].clone()])
    }

    fn data(tid: u32) -> Vec<u8> {
        let r = Repr {
            transfer_id: tid,
            seq: 0,
            flags: 0,
            message: Message::Data { payload: b"x" },
        };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b).unwrap();
        b
    }

    fn seal(k: &mut SessionKeys, inner: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; OVERHEAD + inner.len()];
        b[INNER_AT..INNER_AT + inner.len()].copy_from_slice(inner);
        let n = k.sealer.seal(&mut b, inner.len()).unwrap();
        b.truncate(n);
        b
    }

    #[test]
    fn repeats_of_messages_1_and_3_get_the_same_answers_and_no_new_session() {
        let mut r = receiver();
        let now = Instant::now();
        let (mut ik, m) = connect(&mut r, 1, 5, now);
        assert_eq!(r.counts.handshakes, 1);
        assert_eq!(r.handshake(PEER, &m[0], 0, now), vec![m[1].clone()]);
        // A repeated message 3 gets a new confirmation, which opens.
        let c = r.handshake(PEER, &m[2], 0, now);
        assert_eq!(c.len(), 1);
        assert_eq!(ik.opener.open(&c[0], &mut [0u8; 64]), Ok(0));
        assert_eq!(r.counts.handshakes, 1);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_refused_key_gets_a_sealed_refusal_and_nothing_more() {
        let mut r = receiver();
        let now = Instant::now();
        let (mut ik, m) = connect(&mut r, 2, 6, now);
        let mut out = [0u8; 512];
        let n = ik.opener.open(&m[3], &mut out).unwrap();
        let abort = Repr::parse_checksum_already_checked(&out[..n]).unwrap();
        assert!(
            matches!(abort.message, Message::Abort(a) if a.reason == AbortReason::Unauthorized)
        );
        assert_eq!(r.handshake(PEER, &m[2], 0, now), vec![m[3].clone()]);
        let p = seal(&mut ik, &data(77));
        assert_eq!(r.open(PEER, &p, &mut out, now), Err(SessionError::Refused));
        assert!(
            r.take_changes().next().is_none(),
            "a refused session is not let through"
        );
        assert_eq!(r.counts.handshakes_refused, 1);
    }

    #[test]
    fn a_forged_message_3_does_not_kill_the_handshake() {
        let mut r = receiver();
        let now = Instant::now();
        let mut i = Initiator::start(&keys(1), 8, 0).unwrap();
        let a = r.handshake(PEER, i.packet(), 0, now);
        i.read_reply(&a[0]).unwrap();
        let _ = i.finish().unwrap();
        let mut forged = i.packet().to_vec();
        forged[40] ^= 1;
        Packet::new_unchecked(&mut forged[..]).fill_checksum();
        assert!(r.handshake(PEER, &forged, 0, now).is_empty());
        assert_eq!(r.handshake(PEER, i.packet(), 0, now).len(), 1);
        assert_eq!(r.counts.handshakes, 1);
    }

    /// A transfer is its session's: another sender's session cannot touch it, a newer session
    /// of the same sender takes it over (and the older does not take it back), and when the
    /// older expires the newer keeps it.
    #[test]
    fn transfers_stay_with_their_session_or_a_newer_one_of_the_same_sender() {
        let mut r = receiver();
        let t0 = Instant::now();
        let mut out = [0u8; 512];
        let (mut a, _) = connect(&mut r, 1, 10, t0);
        assert!(r.open(PEER, &seal(&mut a, &data(77)), &mut out, t0).is_ok());
        assert_eq!(r.session_of(PEER, 77), Some(10));
        // Another authorized-key sender would need another key: a PSK-less other key is
        // refused anyway, so take the same key, a newer session.
        let t1 = t0 + Duration::from_millis(10);
        let (mut b, _) = connect(&mut r, 1, 11, t1);
        assert!(r.open(PEER, &seal(&mut b, &data(77)), &mut out, t1).is_ok());
        assert_eq!(r.session_of(PEER, 77), Some(11));
        assert_eq!(
            r.open(PEER, &seal(&mut a, &data(77)), &mut out, t1),
            Err(SessionError::WrongSession)
        );
        assert_eq!(r.session_of(PEER, 77), Some(11));
        // Session 10 falls silent and expires; 11 keeps the transfer.
        let t2 = t0 + Duration::from_secs(30);
        assert!(r.open(PEER, &seal(&mut b, &data(77)), &mut out, t2).is_ok());
        r.expire(t0 + Duration::from_secs(61), Duration::from_secs(60));
        assert!(r.get(PEER, 10).is_none());
        assert_eq!(r.session_of(PEER, 77), Some(11));
        // All gone: the transfer is still known as encrypted (never answered in clear).
        r.expire(t0 + Duration::from_secs(200), Duration::from_secs(60));
        assert_eq!(r.session_of(PEER, 77), None);
        assert!(r.was_encrypted(PEER, 77));
        let mut buf = vec![0u8; OVERHEAD + 64];
        let d = data(77);
        buf[INNER_AT..INNER_AT + d.len()].copy_from_slice(&d);
        assert_eq!(r.seal(PEER, &mut buf, d.len()), None);
    }

    #[test]
    fn handshakes_are_rate_limited_and_bounded_per_source() {
        let mut r = receiver();
        let now = Instant::now();
        let mut answered = 0;
        for sid in 0..200 {
            let i = Initiator::start(&keys(1), sid, 0).unwrap();
            answered += r.handshake(PEER, i.packet(), 0, now).len();
        }
        // Eight waiting for message 3 from one source, whatever the rate allows.
        assert_eq!(answered, MAX_PENDING_PER_SOURCE);
        assert_eq!(
            r.counts.handshakes_limited,
            200 - MAX_PENDING_PER_SOURCE as u64
        );
        // From many sources, the rate: 50 in the first instant.
        let mut r = receiver();
        let mut answered = 0;
        for n in 0..200u32 {
            let peer = Peer::ipv4(std::net::Ipv4Addr::from(0xc612_0000 + n));
            let i = Initiator::start(&keys(1), n, 0).unwrap();
            answered += r.handshake(peer, i.packet(), 0, now).len();
        }
        assert_eq!(answered, HANDSHAKES_PER_SECOND as usize);
    }

    #[test]
    fn a_receiver_without_keys_answers_only_message_1() {
        let mut r = Sessions::new(None);
        let now = Instant::now();
        let i = Initiator::start(&keys(1), 3, 0).unwrap();
        let a = r.handshake(PEER, i.packet(), 0, now);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0][field::MSG_TYPE], wire_abort());
        assert!(a[0].len() <= i.packet().len(), "no amplification");
        let mut m3 = i.packet().to_vec();
        m3[field::SEQ].copy_from_slice(&3u32.to_be_bytes());
        assert!(r.handshake(PEER, &m3, 0, now).is_empty());
        let _ = envelope::HANDSHAKE;
    }

    fn wire_abort() -> u8 {
        chunk_common::wire::MessageType::Abort as u8
    }
}
