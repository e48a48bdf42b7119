//! chunk: reliable file transfer over a custom IPv4 protocol, received through XDP.
//!
//! - [`proto`]: the sans-IO sender and receiver state machines, and the simulated network that
//!   tests them (no sockets, files or clocks: time and I/O are parameters);
//! - [`intake`]: bytes off the wire → a checked, authenticated message, for both sides;
//! - [`driver`]: the I/O loop around each core (receive path or socket in, core, packets out);
//! - [`net`]: the XDP loader, the kernel's counters, the ring-buffer reader, raw sockets;
//! - [`store`]: the receiver's files (confinement, part files, resume state);
//! - [`report`]: the serde types other processes read (state file, `--json` output);
//! - [`cmd`]: the `chunk` subcommands (arguments → config → driver → report); the binary
//!   (`src/main.rs`) only parses and dispatches.

pub mod auth;
pub mod cmd;
pub mod crypto;
pub mod driver;
pub mod intake;
pub mod net;
pub mod path_cache;
pub mod proto;
pub mod report;
pub mod store;

/// The compiled XDP program, embedded so the binary needs no source tree at run time.
#[cfg(feature = "xdp")]
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chunk-xdp"));
/// Built without the `xdp` feature (fuzzing): there is no program to load.
#[cfg(not(feature = "xdp"))]
pub static XDP_OBJECT: &[u8] = &[];

/// The bytes of fixture `name` in docs/PROTOCOL.md (`0000: 43 4b … | comment` lines after a
/// `<!-- fixture: name -->` marker), for the tests that check the spec against the code.
#[cfg(test)]
pub(crate) fn doc_fixture(name: &str) -> Option<Vec<u8>> {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let start = doc.find(&format!("<!-- fixture: {name} -->"))?;
    let block = doc[start..].split("```").nth(1)?;
    Some(
        block
            .lines()
            .skip(1)
            .flat_map(|l| {
                let hex = l.split('|').next().unwrap_or("");
                let hex = hex.split_once(':').map_or("", |(_, h)| h);
                hex.split_whitespace()
                    .map(|t| u8::from_str_radix(t, 16).expect("hex"))
                    .collect::<Vec<_>>()
            })
            .collect(),
    )
}
