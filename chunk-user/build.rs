//! Builds the XDP program (chunk-ebpf) for the BPF target with the nightly toolchain and
//! bpf-linker, so the `chunk` binary can embed it and never needs the source tree at run time.
//! `cargo xtask setup` installs what this needs; without it the error says so.

use std::{env, path::PathBuf};

fn main() -> anyhow::Result<()> {
    // Without the default `xdp` feature (the fuzz targets, which only need the protocol core),
    // nothing is built and the binary cannot attach.
    if env::var_os("CARGO_FEATURE_XDP").is_none() {
        return Ok(());
    }
    // bpf-linker may live where `cargo xtask setup` put it without being on PATH (a fresh
    // CARGO_HOME in CI, say): look there too.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        let bin = home.join("bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
        if !dirs.contains(&bin) {
            dirs.push(bin);
            // SAFETY: build scripts are single-threaded at this point.
            unsafe { env::set_var("PATH", env::join_paths(dirs)?) };
        }
    }
    let found = env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("bpf-linker").is_file());
    if !found {
        anyhow::bail!(
            "bpf-linker not found: run `cargo xtask setup` once (it installs the nightly's rust-src \
             and builds bpf-linker against the nightly's LLVM)"
        );
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir.join("../chunk-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("UTF-8 path");
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../chunk-common/src").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "chunk-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
