//! Encryption (docs/PROTOCOL.md, "Encryption"; docs/SECURITY.md): identities, the Noise
//! handshake that opens a session, sealed packets under the session's keys, and the sessions
//! each side holds.
//!
//! Nothing here is home-made cryptography: the handshake is a standard Noise pattern run by
//! `snow`; sealed packets are AES-256-GCM (`ring`) under the keys of Noise's
//! Split, with an explicit counter nonce and RFC 6479's replay window, as WireGuard frames its
//! data; the key changes by Noise's own `REKEY`.

pub mod handshake;
pub mod keys;
pub mod session;
pub mod transport;

pub use handshake::{Credentials, Suite};
pub use keys::{AuthorizedKeys, KnownHosts, PublicKey, SecretKey};
