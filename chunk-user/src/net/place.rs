//! Where a running receiver leaves things for others to find: its maps pinned under
//! `/sys/fs/bpf/chunk/<key>/` (for `bpftool map dump pinned ...`), and a state file
//! `/run/chunk/<key>.json` (for `chunk stats`). `<key>` is the interface name, with the network
//! namespace's inode appended outside the initial namespace (`veth0@netns4026532289`), so that
//! receivers in different namespaces with the same interface name never collide. (bpffs
//! refuses names with dots, so in the pin directory's name dots become underscores.)

use std::{
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where bpffs is mounted on a normal system.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory state files go into.
pub const RUN_DIR: &str = "/run/chunk";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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

/// Makes sure bpffs is mounted at [`BPFFS`], mounting it if not (as systemd does at boot; inside
/// `ip netns exec`, which remounts /sys, the mount is private to that command).
pub fn ensure_bpffs() -> io::Result<()> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let path = c"/sys/fs/bpf";
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type == BPF_FS_MAGIC {
        return Ok(());
    }
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            path.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `value` to `path` atomically (a temporary file renamed over it), so that a reader
/// never sees half a file.
pub fn write_json_atomic<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer_pretty(&mut f, value)?;
    f.write_all(b"\n")?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Whether process `pid` is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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

    #[test]
    fn json_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("x.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        write_json_atomic(&p, &serde_json::json!({"a": 2})).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["a"], 2);
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
