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
    /// The handshake message that opened it and the answer it got, for repeats.
    first: Vec<u8>,
    reply: Vec<u8>,
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
    first: Vec<u8>,
    reply: Vec<u8>,
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

/// The sessions of one side, and (on a receiver) the handshakes it answers.
pub struct Sessions {
    open: HashMap<(Peer, u32), Session>,
    bindings: HashMap<(Peer, u32), u32>,
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
            open: HashMap::new(),
            bindings: HashMap::new(),
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
                first: Vec::new(),
                reply: Vec::new(),
                transfers: VecDeque::new(),
            },
        );
        self.changes.push(FilterChange::Allow(sid));
    }

    /// Closes a session (a sender's old one, replaced by a new handshake).
    pub fn remove(&mut self, peer: Peer, sid: u32) {
        if let Some(s) = self.open.remove(&(peer, sid)) {
            for tid in s.transfers {
                if self.bindings.get(&(peer, tid)) == Some(&sid) {
                    self.bindings.remove(&(peer, tid));
                }
            }
            self.changes.push(FilterChange::Forget(sid));
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
        if self.bindings.insert((peer, tid), sid).is_none() {
            s.transfers.push_back(tid);
            if s.transfers.len() > MAX_TRANSFERS_PER_SESSION
                && let Some(old) = s.transfers.pop_front()
            {
                self.bindings.remove(&(peer, old));
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
                // A new session of the same sender (its peer, and with key pairs its key) takes
                // its transfers over: it opened one after losing the old (a receiver restart, a
                // long outage). Any other session may not touch them.
                let remote = self.open.get(&(peer, sid)).map(|s| s.remote);
                let owner = self.open.get(&(peer, other)).map(|s| s.remote);
                if owner.is_some() && owner != remote {
                    return Err(SessionError::WrongSession);
                }
                self.bindings.remove(&(peer, tid));
                self.bind(peer, tid, sid);
                Ok(n)
            }
            Some(_) => Ok(n),
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
        let Ok((code, sid, seq, _)) = handshake::parse(packet) else {
            self.counts.handshakes_failed += 1;
            return Vec::new();
        };
        let Some(cfg) = &self.responder else {
            // A receiver without keys says so (in clear: there is nothing to seal with), at the
            // handshake rate.
            if !self.rate.take(now) {
                self.counts.handshakes_limited += 1;
                return Vec::new();
            }
            self.counts.handshakes_refused += 1;
            return vec![clear_abort(
                sid,
                AbortReason::Unsupported,
                "this receiver has no keys (--key, --psk-file): it takes clear transfers only",
            )];
        };
        match seq {
            1 => {
                if let Some(s) = self.open.get(&(peer, sid)) {
                    return if s.first == packet {
                        vec![s.reply.clone()]
                    } else {
                        self.counts.handshakes_failed += 1;
                        Vec::new()
                    };
                }
                if let Some(p) = self.pending.get(&(peer, sid)) {
                    return if p.first == packet {
                        vec![p.reply.clone()]
                    } else {
                        self.counts.handshakes_failed += 1;
                        Vec::new()
                    };
                }
                let from_source = self
                    .open
                    .keys()
                    .filter(|(p, _)| p.addr() == peer.addr())
                    .count();
                if self.open.len() >= MAX_SESSIONS
                    || from_source >= MAX_SESSIONS_PER_SOURCE
                    || self.pending.len() >= MAX_PENDING
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
                                first: packet.to_vec(),
                                reply: reply.clone(),
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
                                first: packet.to_vec(),
                                reply: reply.clone(),
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
                        vec![clear_abort(
                            sid,
                            AbortReason::Unsupported,
                            &format!(
                                "this receiver's encryption needs {}; the sender has {theirs}",
                                ours.needs()
                            ),
                        )]
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
                    if s.first != packet {
                        self.counts.handshakes_failed += 1;
                        return Vec::new();
                    }
                    // Its answer was lost: say it again.
                    let refused = s.refused;
                    return if refused {
                        let msg = s.reply.clone();
                        vec![msg]
                    } else {
                        self.confirmation(peer, sid).into_iter().collect()
                    };
                }
                let Some(p) = self.pending.remove(&(peer, sid)) else {
                    self.counts.handshakes_failed += 1;
                    return Vec::new();
                };
                let keys = match p.state.finish(packet) {
                    Ok(k) => k,
                    Err(e) => {
                        self.counts.handshakes_failed += 1;
                        tracing::debug!(%peer, error = %e, "handshake message 3 dropped");
                        return Vec::new();
                    }
                };
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
                        first: packet.to_vec(),
                        reply: Vec::new(),
                        transfers: VecDeque::new(),
                    },
                );
                let _ = code;
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
                        s.reply = a.clone();
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
                    self.bindings.remove(&(key.0, tid));
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
