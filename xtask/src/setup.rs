//! `cargo xtask setup`: everything the build and the tests need, installed idempotently.
//!
//! - the nightly toolchain's `rust-src` (for `-Z build-std=core`);
//! - `bpf-linker`, built against the nightly compiler's own libLLVM (no system LLVM of the right
//!   version exists on our machines), installed in `$CARGO_HOME/bin`;
//! - the Debian packages the tests, the demo and the bench use (iproute2, nftables, bpftool,
//!   ping; OpenSSH's server, for the bench's scp, with its system service left off).
//!
//! Each step checks first and says what it found, so a second run takes well under a second.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cmd_output, run_cmd};

/// The bpf-linker release known to build against the nightly's LLVM (see shared/TOOLCHAIN.md).
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

/// Where setup installs bpf-linker.
pub fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin").join("bpf-linker")
}

pub fn setup(quiet_when_done: bool) -> Result<()> {
    let say = |s: &str| {
        if !quiet_when_done {
            eprintln!("setup: {s}");
        }
    };
    nightly_rust_src(&say)?;
    bpf_linker(&say)?;
    system_packages(&say)?;
    Ok(())
}

fn nightly_rust_src(say: &dyn Fn(&str)) -> Result<()> {
    let toolchains = cmd_output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to build the eBPF program (https://rustup.rs)")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain: the eBPF crate needs one. Install it with \
             `rustup toolchain install nightly --component rust-src`"
        );
    }
    let installed = cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src: present");
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run_cmd(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("cannot add rust-src to nightly; without it the eBPF crate cannot build core")
}

fn bpf_linker(say: &dyn Fn(&str)) -> Result<()> {
    let linker = bpf_linker_path();
    if linker.is_file()
        && Command::new(&linker)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    {
        say(&format!("bpf-linker: present ({})", linker.display()));
        return Ok(());
    }
    let sysroot = cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    // The nightly ships its LLVM as lib/libLLVM.so.<major>.<minor>-rust-<version>: that file name
    // is the soname the linker binary will ask the loader for.
    let soname = std::fs::read_dir(&sysroot_lib)
        .with_context(|| format!("reading {}", sysroot_lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}: this nightly does not ship its LLVM as a shared library",
                sysroot_lib.display()
            )
        })?;
    let major: u32 = soname
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {soname}"))?;
    // bpf-linker's build links with -lLLVM from $LLVM_PREFIX/lib: a prefix whose lib/ holds the
    // nightly's library under both names is enough. Only the build needs it: the binary finds
    // the library at run time through an rpath into the sysroot.
    let prefix = cargo_home().join("chunk-llvm-prefix").join(&soname);
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot_lib.join(&soname), &link)
            .with_context(|| format!("symlink {}", link.display()))?;
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against the nightly's LLVM {major} \
         (about a minute, once)"
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
        "--root",
    ])
    .arg(cargo_home())
    .env("LLVM_PREFIX", &prefix)
    .env(
        "RUSTFLAGS",
        format!("-C link-arg=-Wl,-rpath,{}", sysroot_lib.display()),
    );
    run_cmd(&mut cmd).context(
        "building bpf-linker failed: it needs crates.io and a C++ compiler (g++); \
         see shared/TOOLCHAIN.md",
    )?;
    Ok(())
}

/// Debian packages and the commands that show they are there.
const PACKAGES: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
    ("ping", "iputils-ping"),
    ("sshd", "openssh-server"),
    // The bench's tree cases compare chunk with rsync (to an rsync daemon of their own).
    ("rsync", "rsync"),
];

/// Debian's ssh service does not start while this file exists (its systemd unit and init
/// script both check it).
const SSHD_NOT_TO_BE_RUN: &str = "/etc/ssh/sshd_not_to_be_run";

fn system_packages(say: &dyn Fn(&str)) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !on_path(cmd))
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        say("system packages: present");
        return Ok(());
    }
    if missing.contains(&"openssh-server") && unsafe { libc::geteuid() } == 0 {
        // The bench runs an sshd of its own in a namespace; the package alone would also start
        // one on every interface of the host, and at every boot. Installed here, it does not.
        std::fs::create_dir_all("/etc/ssh")?;
        std::fs::write(
            SSHD_NOT_TO_BE_RUN,
            "Written by chunk's `cargo xtask setup`: the ssh service stays off (the bench \
             starts sshd itself). Remove this file to run the service.\n",
        )
        .with_context(|| format!("writing {SSHD_NOT_TO_BE_RUN}"))?;
        eprintln!("setup: {SSHD_NOT_TO_BE_RUN} keeps the ssh service off; remove it to run it");
    }
    apt_install(&missing)
}

/// Installs Debian packages that are not installed yet (as root, with apt-get).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root || !on_path("apt-get") {
        bail!(
            "missing system packages: {}. Install them (Debian/Ubuntu: `apt-get install {}`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let install = || {
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    if install().is_err() {
        // A fresh machine's package lists may be empty or stale.
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        install().with_context(|| format!("apt-get install {}", missing.join(" ")))?;
    }
    Ok(())
}

pub fn on_path(cmd: &str) -> bool {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(cmd).is_file())
}
