//! `--rss-check`: the receiver's peak RSS with chunk for a 64 MiB and a 4 GiB file, on a clean
//! link, one round each. Bounded memory means the two are the same.

use std::path::Path;

use serde::Serialize;

use super::{Bench, BenchArgs, Case, run::Outcome, tools::Tool, topology::Net};
use crate::demo::generate;

/// The receiver's peak RSS with one chunk tool for one file size (the field names are
/// results.json's).
#[derive(Clone, Debug, Serialize)]
pub struct RssRow {
    pub tool: Tool,
    #[serde(rename = "file_mib")]
    pub mib: u64,
    #[serde(rename = "goodput_mb_s")]
    pub goodput: Option<f64>,
    pub recv_rss_mib: Option<f64>,
    pub error: Option<String>,
}

/// Receives a small and a large file with every chunk tool this binary has, in `dir`.
pub fn check(bin: &str, socket_mode: bool, dir: &Path, args: &BenchArgs) -> Vec<RssRow> {
    let mut rows = Vec::new();
    let tools: Vec<Tool> = [Tool::ChunkXdp, Tool::ChunkSocket]
        .into_iter()
        .filter(|t| *t == Tool::ChunkXdp || socket_mode)
        .collect();
    for mib in [64u64, 4096] {
        let row = |tool: Tool, e: String| RssRow {
            tool,
            mib,
            goodput: None,
            recv_rss_mib: None,
            error: Some(e),
        };
        let _ = std::fs::remove_dir_all(dir);
        let file = dir.join("rss.bin");
        eprintln!(
            "bench: rss check, generating {mib} MiB in {}",
            dir.display()
        );
        let hash = match std::fs::create_dir_all(dir)
            .map_err(anyhow::Error::from)
            .and_then(|()| generate(&file, mib << 20))
        {
            Ok(h) => h,
            Err(e) => {
                rows.extend(tools.iter().map(|&t| row(t, format!("{e:#}"))));
                continue;
            }
        };
        let net = match Net::new(args.mtu) {
            Ok(n) => n,
            Err(e) => {
                rows.extend(tools.iter().map(|&t| row(t, format!("{e:#}"))));
                continue;
            }
        };
        let b = Bench {
            args,
            bin: bin.into(),
            socket_mode,
            keys: Err(Outcome::NotAvailable("not made for the RSS check".into())),
            ssh: Err(Outcome::NotAvailable("not made for the RSS check".into())),
            net,
            work: dir.to_path_buf(),
            file: file.clone(),
            hash,
            tree: None,
        };
        for &tool in &tools {
            let r = b.run(tool, Case::Clean, 0);
            let error = r.outcome.error();
            eprintln!(
                "bench: rss check {} {mib} MiB: {:.1} MB/s, receiver peak RSS {} KiB{}",
                tool.name(),
                r.goodput(mib << 20),
                r.recv_rss_kib,
                error
                    .as_deref()
                    .map(|e| format!(", FAILED: {e}"))
                    .unwrap_or_default()
            );
            let measured = r.outcome.is_measured();
            rows.push(RssRow {
                tool,
                mib,
                goodput: measured.then(|| r.goodput(mib << 20)),
                recv_rss_mib: measured.then(|| r.recv_rss_kib as f64 / 1024.0),
                error,
            });
        }
        drop(b);
        let _ = std::fs::remove_dir_all(dir);
    }
    rows
}
