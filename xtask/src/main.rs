//! `cargo xtask`: chunk's single entry point for everything that is not plain cargo.
//!
//! - `setup`: install the eBPF toolchain and the test tools (idempotent, fast when done);
//! - `build`: build the XDP program and the `chunk` binary that embeds it;
//! - `test`: unit tests, then the network-namespace integration tests (root);
//! - `demo`: the main job, end to end between two namespaces;
//! - `sim`: the protocol core's figures on the simulated network;
//! - `bench`: chunk against TCP (`nc`, or CUBIC and BBR chosen per socket) and UFTP on the same
//!   links, in one run; the WAN cases on a delay line.

mod bench;
mod demo;
mod fuzz;
mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the nightly's rust-src, bpf-linker and the test tools (idempotent).
    Setup,
    /// Build the XDP program and the `chunk` binary (target/{debug,release}/chunk).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the unit tests, a short fuzz of every target, then the network-namespace integration
    /// tests (needs root).
    Test {
        /// Only the unit tests (no root needed).
        #[arg(long)]
        unit_only: bool,
        /// Seconds each fuzz target runs (0: skip fuzzing).
        #[arg(long, default_value_t = 10)]
        fuzz_seconds: u64,
        /// Extra arguments for the integration tests' test binary (a name filter, say).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the main job between two fresh namespaces (needs root).
    Demo(demo::DemoArgs),
    /// Print the protocol core's goodput figures on the simulated network.
    Sim,
    /// Run the cargo-fuzz targets for a bounded time each.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmark chunk (XDP and socket) against nc (TCP) and UFTP, clean, lossy and flooded;
    /// writes target/bench/results.{md,json} and goodput.png; `--cases wan,share`: long links
    /// on a delay line against TCP CUBIC, TCP BBR and UFTP, into wan.{md,json,png} (needs root).
    Bench(Box<bench::BenchArgs>),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup(false),
        Cmd::Build { release } => {
            setup::setup(true)?;
            let bin = build(release)?;
            eprintln!("built {}", bin.display());
            Ok(())
        }
        Cmd::Test {
            unit_only,
            fuzz_seconds,
            args,
        } => test(unit_only, fuzz_seconds, &args),
        Cmd::Demo(args) => {
            setup::setup(true)?;
            let bin = build(true)?;
            demo::run(&bin, &args)
        }
        Cmd::Bench(args) => {
            setup::setup(true)?;
            let bin = match &args.chunk_bin {
                Some(bin) => bin.clone(),
                None => build(true)?,
            };
            bench::run(&bin, &args)
        }
        Cmd::Fuzz(args) => {
            setup::setup(true)?;
            fuzz::run(&args)
        }
        Cmd::Sim => run_cmd(cargo().args([
            "test",
            "-p",
            "chunk-user",
            "--release",
            "--lib",
            "print_figures",
            "--",
            "--ignored",
            "--nocapture",
        ])),
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the workspace) if set, else `target/`.
fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => workspace_root().join(dir),
        _ => workspace_root().join("target"),
    }
}

/// `cargo` as the one running us, in the workspace root, with setup's bin directory on PATH (the
/// eBPF build needs bpf-linker there).
pub fn cargo() -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    let bin = setup::cargo_home().join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if !dirs.contains(&bin) {
        dirs.insert(0, bin);
    }
    c.env(
        "PATH",
        env::join_paths(dirs).expect("PATH entries are valid"),
    );
    c
}

fn build(release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "chunk-user", "--bin", "chunk"]);
    if release {
        c.arg("--release");
    }
    run_cmd(&mut c)?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("chunk");
    if !bin.is_file() {
        bail!("the build succeeded but {} is missing", bin.display());
    }
    Ok(bin)
}

fn test(unit_only: bool, fuzz_seconds: u64, args: &[String]) -> Result<()> {
    setup::setup(true)?;
    eprintln!("xtask: unit and property tests");
    run_cmd(cargo().args(["test", "--workspace", "--exclude", "chunk-tests"]))?;
    if unit_only {
        return Ok(());
    }
    if fuzz_seconds > 0 {
        fuzz::run(&fuzz::FuzzArgs {
            seconds: fuzz_seconds,
            targets: Vec::new(),
        })?;
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the integration tests create network namespaces and attach XDP programs, which \
             needs root: run `sudo -E cargo xtask test`, or `cargo xtask test --unit-only`"
        );
    }
    let removed = chunk_tests::sweep_stale_namespaces()?;
    if !removed.is_empty() {
        eprintln!("xtask: removed stale namespaces: {}", removed.join(", "));
    }
    // Release: the end-to-end tests move hundreds of MiB, which an unoptimised protocol core
    // would make slow, and it is the binary users run.
    let bin = build(true)?;
    eprintln!(
        "xtask: network-namespace integration tests (chunk binary: {})",
        bin.display()
    );
    run_cmd(
        cargo()
            .args(["test", "-p", "chunk-tests", "--"])
            .args(args)
            .env("CHUNK_BIN", &bin),
    )
}

/// Runs a command, inheriting stdio; fails if it fails.
pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with its stderr if it fails.
pub fn cmd_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
