//! The `chunk` subcommands, one module each. Each has an `Args` struct (clap) and a `run`.

pub mod listen;
pub mod probe;
pub mod recv;
pub mod send;
pub mod sim;
pub mod stats;
pub mod xdp_cost;
