//! Where a running receiver leaves things for others to find: its maps pinned under
//! `/sys/fs/bpf/chunk/<key>/` (for `bpftool map dump pinned ...`), and a state file
//! `/run/chunk/<key>.json` (for `chunk stats`). `<key>` is the interface name, with the network
//! namespace's inode appended outside the initial namespace (`veth0@netns4026532289`), so that
//! receivers in different namespaces with the same interface name never collide. (bpffs
//! refuses names with dots, so in the pin directory's name dots become underscores.)

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where bpffs is mounted on a normal system.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory state files go into.
pub const RUN_DIR: &str = "/run/chunk";

/// The name this namespace's receiver on `iface` goes by.
pub fn key(iface: &str) -> String {
    let own = std::fs::metadata("/proc/self/ns/net").map(|m| m.ino()).ok();
    let init = std::fs::metadata("/proc/1/ns/net").map(|m| m.ino()).ok();
    match own {
        Some(own) if Some(own) != init => format!("{iface}@netns{own}"),
        _ => iface.to_string(),
    }
}

/// The directory a receiver on `iface` pins its maps in.
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(BPFFS)
        .join("chunk")
        .join(key(iface).replace('.', "_"))
}

/// The state file of a receiver on `iface`.
pub fn state_file(iface: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{}.json", key(iface)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_the_interface() {
        let k = key("veth0");
        assert!(k == "veth0" || k.starts_with("veth0@netns"), "{k}");
        assert!(!pin_dir("eth0.100").to_string_lossy().contains('.'));
        assert!(pin_dir("veth0").starts_with("/sys/fs/bpf/chunk"));
        assert_eq!(
            state_file("veth0").extension().and_then(|e| e.to_str()),
            Some("json")
        );
    }
}
