//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/`, each run for a bounded time from the
//! checked-in corpus (`fuzz/corpus/<target>`, read-only here: new inputs go to a scratch
//! directory, so a run never dirties the checkout). A crash or panic fails the command and
//! leaves the reproducer under `fuzz/artifacts/<target>/`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result, bail};

use crate::{run_cmd, setup, workspace_root};

/// Every target: the wire parser, the receive-path checks on whole frames of either family,
/// authentication, offered names against real storage, and the receiver core fed arbitrary
/// packet sequences.
pub const TARGETS: &[&str] = &["wire", "classify", "auth", "session", "names", "receiver"];

/// The cargo-fuzz release setup installs.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Targets to run (default: all).
    pub targets: Vec<String>,
}

/// Installs cargo-fuzz into `$CARGO_HOME/bin` if it is not there.
pub fn ensure_cargo_fuzz() -> Result<PathBuf> {
    let bin = setup::cargo_home().join("bin").join("cargo-fuzz");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 30 s, once)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
                "--root",
            ])
            .arg(setup::cargo_home()),
    )
    .context("installing cargo-fuzz (needs crates.io)")?;
    Ok(bin)
}

/// PATH with the directory of `bin` first.
fn path_with(bin: &std::path::Path) -> std::ffi::OsString {
    let dir = bin.parent().expect("an installed binary has a directory");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("PATH entries are valid")
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    for t in &targets {
        if !TARGETS.contains(t) {
            bail!("no fuzz target {t:?}; there are {}", TARGETS.join(", "));
        }
    }
    let cargo_fuzz = ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let scratch = workspace_root().join("target").join("fuzz-scratch");
    for t in targets {
        let new_inputs = scratch.join(t);
        let _ = std::fs::remove_dir_all(&new_inputs);
        std::fs::create_dir_all(&new_inputs)?;
        eprintln!("xtask: fuzzing {t} for {} s", args.seconds);
        // `cargo +nightly fuzz`: the rustup proxy picks the nightly (sanitizers need it) and
        // finds cargo-fuzz on PATH. libFuzzer's running commentary goes to a log; a summary (or,
        // on a crash, the log's end) is printed.
        let log_path = scratch.join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)?;
        let status = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env("PATH", path_with(&cargo_fuzz))
            .env("CHUNK_FUZZ_TMP", new_inputs.with_extension("tmp"))
            .args(["+nightly", "fuzz", "run", t])
            .arg(&new_inputs)
            .arg(fuzz_dir.join("corpus").join(t))
            .arg("--")
            .arg(format!("-max_total_time={}", args.seconds))
            .arg("-rss_limit_mb=4096")
            .arg("-print_final_stats=1")
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running cargo fuzz")?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            bail!(
                "fuzz target {t} failed ({status}); reproducer under fuzz/artifacts/{t}/, full log {}",
                log_path.display()
            );
        }
        let done = text
            .lines()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("(no summary)");
        let cov = text
            .lines()
            .rev()
            .find(|l| l.contains(" cov: "))
            .and_then(|l| l.split(" cov: ").nth(1))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?");
        eprintln!("xtask: fuzz {t}: {done}, coverage {cov} edges, no crash");
        let _ = std::fs::remove_dir_all(new_inputs.with_extension("tmp"));
    }
    Ok(())
}
