//! The in-kernel check's cost, from `chunk xdp-cost --json`: the XDP program run by the kernel
//! on one frame many times (`BPF_PROG_TEST_RUN`), for a few payload sizes, valid and corrupt.
//! Its slope, nanoseconds per byte, is the cost of the copy and checksum, free of the veth path
//! and the scheduler around it, so it compares two machines (or two builds) directly.
//!
//! It runs once per benchmark, outside the namespaces (it attaches nothing). If it fails, the
//! results say why and the rest of the benchmark stands.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::tools::output_within;

/// Payload sizes: a small and a 1500-byte link's, then multi-buffer frames (4 KB, a 9000-byte
/// link's chunk), which the program takes in fragments.
const SIZES: &str = "0,512,1436,2900,4036,8960";
/// Runs per size and kind; the same on every machine, so the figures compare.
const REPEAT: u32 = 20_000;

/// One payload size (`chunk xdp-cost`'s row; the field names are its JSON's).
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct CostRow {
    pub payload: usize,
    /// Chunk header and payload: what the program checks and copies.
    pub packet_bytes: usize,
    /// Mean run time on a valid chunk.
    pub valid_ns: f64,
    /// Mean run time on the same chunk with one bit flipped.
    pub corrupt_ns: f64,
}

/// `chunk xdp-cost --json`'s output.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Cost {
    pub rows: Vec<CostRow>,
    pub valid_ns_per_byte: f64,
    pub corrupt_ns_per_byte: f64,
    pub valid_fixed_ns: f64,
    pub repeat: u32,
    pub verified_insns: Option<u32>,
}

/// The measurement, or why there is none (results.json has either the figures or `error`).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum XdpCost {
    Measured(Cost),
    Failed { error: String },
}

impl XdpCost {
    pub fn cost(&self) -> Option<&Cost> {
        match self {
            XdpCost::Measured(c) => Some(c),
            XdpCost::Failed { .. } => None,
        }
    }
}

/// Runs `bin xdp-cost` once.
pub fn measure(bin: &str) -> XdpCost {
    match run(bin) {
        Ok(c) => XdpCost::Measured(c),
        Err(e) => XdpCost::Failed {
            error: format!("{e:#}"),
        },
    }
}

fn run(bin: &str) -> Result<Cost> {
    let mut c = Command::new(bin);
    c.args(["xdp-cost", "--json", "--sizes", SIZES, "--repeat"])
        .arg(REPEAT.to_string());
    let out = output_within(c, Duration::from_secs(120))?;
    if !out.status.success() {
        bail!(
            "chunk xdp-cost failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).context("chunk xdp-cost's JSON")
}

/// results.md's section.
pub fn markdown(cost: &XdpCost) -> String {
    let c = match cost {
        XdpCost::Measured(c) => c,
        XdpCost::Failed { error } => {
            return format!("\nIn-kernel check (`chunk xdp-cost`): not measured: {error}\n");
        }
    };
    let mut o = format!(
        "\nIn-kernel check (`chunk xdp-cost`, BPF_PROG_TEST_RUN, mean of {} runs per figure): \
         valid chunks {:.3} ns/byte + {:.0} ns per packet, corrupt {:.3} ns/byte; verifier: {} \
         instructions.\n\n\
         | payload bytes | packet bytes | valid ns | corrupt ns |\n|---:|---:|---:|---:|\n",
        c.repeat,
        c.valid_ns_per_byte,
        c.valid_fixed_ns,
        c.corrupt_ns_per_byte,
        c.verified_insns.map_or("?".into(), |n| n.to_string()),
    );
    for r in &c.rows {
        o.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} |\n",
            r.payload, r.packet_bytes, r.valid_ns, r.corrupt_ns
        ));
    }
    o
}

/// What `chunk xdp-cost --json` prints, as chunk-user's `net::xdp_cost::Cost` writes it.
#[cfg(test)]
pub const SAMPLE_OUTPUT: &str = r#"{
  "rows": [
{ "payload": 0, "packet_bytes": 20, "valid_ns": 60.0, "corrupt_ns": 40.0 },
{ "payload": 1436, "packet_bytes": 1456, "valid_ns": 420.0, "corrupt_ns": 380.0 }
  ],
  "valid_ns_per_byte": 0.25,
  "corrupt_ns_per_byte": 0.236,
  "valid_fixed_ns": 54.0,
  "repeat": 20000,
  "verified_insns": 84000
}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunk_xdp_cost_json_and_reports_either_way() {
        let c: Cost = serde_json::from_str(SAMPLE_OUTPUT).unwrap();
        assert_eq!(c.rows[1].packet_bytes, 1456);
        let md = markdown(&XdpCost::Measured(c.clone()));
        assert!(md.contains("0.250 ns/byte + 54 ns per packet"), "{md}");
        assert!(md.contains("| 1436 | 1456 | 420 | 380 |"), "{md}");
        let v = serde_json::to_value(XdpCost::Measured(c)).unwrap();
        assert_eq!(v["valid_ns_per_byte"], 0.25);
        let failed = XdpCost::Failed {
            error: "no BPF".into(),
        };
        assert!(markdown(&failed).contains("not measured: no BPF"));
        assert_eq!(serde_json::to_value(&failed).unwrap()["error"], "no BPF");
    }
}
