//! `chunk xdp-cost`: what the XDP program costs per packet, measured in the kernel
//! (`BPF_PROG_TEST_RUN`), for the benchmark and for anyone comparing two machines.

use anyhow::Result;

use crate::net::xdp_cost;

#[derive(clap::Args)]
pub struct XdpCostArgs {
    /// Chunk payload sizes to run, in bytes (at least two).
    #[arg(long, value_delimiter = ',', default_values_t = [0usize, 512, 1436, 2900, 4036, 8960])]
    pub sizes: Vec<usize>,
    /// Runs per trial, for each size and kind (valid, corrupt).
    #[arg(long, default_value_t = 20_000)]
    pub repeat: u32,
    /// Trials; each figure is the least mean run time among them.
    #[arg(long, default_value_t = 7)]
    pub trials: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: XdpCostArgs) -> Result<()> {
    let cost = xdp_cost::measure(&args.sizes, args.repeat, args.trials)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cost)?);
        return Ok(());
    }
    println!(
        "{:>8} {:>8} {:>10} {:>10}",
        "payload", "bytes", "valid ns", "corrupt ns"
    );
    for r in &cost.rows {
        println!(
            "{:>8} {:>8} {:>10.0} {:>10.0}",
            r.payload, r.packet_bytes, r.valid_ns, r.corrupt_ns
        );
    }
    println!(
        "valid: {:.3} ns/byte + {:.0} ns per packet; corrupt: {:.3} ns/byte; least of {} trials of {} runs; verifier: {} instructions",
        cost.valid_ns_per_byte,
        cost.valid_fixed_ns,
        cost.corrupt_ns_per_byte,
        cost.trials,
        cost.repeat,
        cost.verified_insns.map_or("?".into(), |n| n.to_string())
    );
    println!(
        "\n{:<20} {:>8} {:>14} {:>10} {:>16}",
        "path", "headers", "valid ns/byte", "fixed ns", "corrupt ns/byte"
    );
    for p in &cost.paths {
        println!(
            "{:<20} {:>8} {:>14.3} {:>10.0} {:>16.3}",
            p.path, p.header_bytes, p.valid_ns_per_byte, p.valid_fixed_ns, p.corrupt_ns_per_byte
        );
    }
    Ok(())
}
