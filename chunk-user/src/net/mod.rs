//! Everything in chunk that touches the network or the kernel.
//!
//! - [`rx`]: the receive path as one interface (XDP or socket), and what both kinds share: the
//!   packets they hand over, their counters, the source allowlist, the state file they publish;
//! - [`xdp`]: the XDP program's loader, its maps and pins; [`ring`]: its ring-buffer reader;
//! - [`socket_rx`]: the receive path without XDP (a raw socket, the same checks in userspace);
//! - [`session_filter`]: the sessions either receive path lets sealed packets through for;
//! - [`raw`]: the sockets chunk packets travel on (raw IP of either family, or UDP);
//!   [`batch`]: sending in `sendmmsg` batches; [`packet_tx`]: the sender's packet socket on
//!   Ethernet routes; [`answer`]: the receiver's sockets for answers;
//! - [`link`]: interfaces and the XDP programs attached to them; [`paths`]: where a receiver
//!   leaves its pins and its state file.

pub mod answer;
pub mod batch;
pub mod link;
pub mod packet_tx;
pub mod paths;
pub mod raw;
pub mod ring;
pub mod rx;
pub mod session_filter;
pub mod socket_rx;
pub mod xdp;
pub mod xdp_cost;
