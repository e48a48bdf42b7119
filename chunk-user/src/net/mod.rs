//! Everything in chunk that touches the network or the kernel: the XDP loader and its maps
//! ([`xdp`]), the ring-buffer reader ([`ring`]), the receive path as one interface ([`rx`]), raw IP
//! sockets ([`raw`]) and batched sending ([`tx`]).

pub mod link;
pub mod place;
pub mod raw;
pub mod ring;
pub mod rx;
pub mod sock;
pub mod tx;
pub mod xdp;
