//! Offered names: what `validate_name` accepts is relative and has no `.`, `..` or empty
//! component, and storage never creates anything outside its directory, whatever the name: in
//! an offer, or in a bundle's manifest.
#![no_main]

use std::{net::Ipv4Addr, path::PathBuf, sync::OnceLock};

use chunk::{
    proto::{OfferInfo, Storage, validate_name},
    store::FsStorage,
};
use libfuzzer_sys::fuzz_target;

/// `$CHUNK_FUZZ_TMP/chunk-fuzz-<pid>/{root,outside}` (or under the temp dir): storage writes under root; nothing may appear in
/// outside, which root/escape links to.
fn dirs() -> &'static (PathBuf, PathBuf) {
    static DIRS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    DIRS.get_or_init(|| {
        // `cargo xtask fuzz` points this into its scratch directory and removes it afterwards.
        let base = std::env::var_os("CHUNK_FUZZ_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("chunk-fuzz-{}", std::process::id()));
        let root = base.join("root");
        let outside = base.join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        let _ = std::os::unix::fs::symlink(&outside, root.join("escape"));
        (root, outside)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = validate_name(data) else {
        return;
    };
    assert!(!name.starts_with('/'));
    assert!(!name.contains('\0'));
    assert!(
        name.split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
    );
    if name.len() > 200 || name.split('/').count() > 8 {
        return;
    }
    let (root, outside) = dirs();
    let mut st = FsStorage::new(root, false).unwrap();
    let offer = OfferInfo {
        src: Ipv4Addr::new(198, 18, 0, 1).into(),
        transfer_id: 1,
        name: name.to_owned(),
        size: 3,
        chunk_size: 3,
        chunk_count: 1,
        mode: 0o644,
        mtime: 0,
        tag: [0; 32],
        directory: false,
        symlink: false,
        stream: false,
        bundle: false,
    };
    if let Ok(opened) = st.open(&offer) {
        let mut h = opened.handle;
        st.write(&mut h, 0, 0, b"abc").unwrap();
        let v = st.finish(h, blake3::hash(b"abc").as_bytes()).unwrap();
        assert!(v.verified);
        let _ = std::fs::remove_file(root.join(name));
    }
    assert_eq!(
        std::fs::read_dir(outside).unwrap().count(),
        0,
        "{name:?} escaped"
    );
    // The name in a bundle, beside another file.
    let content = bundle(&[(data, b"abc"), (b"fuzz-other", b"d")]);
    let tag = *blake3::hash(&content).as_bytes();
    let offer = OfferInfo {
        name: chunk::proto::receiver::bundle_name(&tag),
        size: content.len() as u64,
        chunk_size: 64,
        chunk_count: content.len().div_ceil(64) as u32,
        tag,
        bundle: true,
        ..offer
    };
    if let Ok(opened) = st.open(&offer) {
        let mut h = opened.handle;
        for (i, c) in content.chunks(64).enumerate() {
            st.write(&mut h, i as u32, i as u64 * 64, c).unwrap();
        }
        match st.read_manifest(&mut h) {
            Ok(_) => {
                let v = st.finish(h, blake3::hash(&content).as_bytes());
                assert!(v.is_err() || v.unwrap().verified);
            }
            Err(_) => st.abandon(h, false),
        }
        let _ = std::fs::remove_file(root.join(name));
        let _ = std::fs::remove_file(root.join("fuzz-other"));
    }
    assert_eq!(
        std::fs::read_dir(outside).unwrap().count(),
        0,
        "{name:?} escaped from a bundle"
    );
});

/// A bundle's content of `members` (name, bytes), in chunks of 64.
fn bundle(members: &[(&[u8], &[u8])]) -> Vec<u8> {
    let sources: Vec<_> = members
        .iter()
        .map(|(name, bytes)| chunk_common::bundle::Source {
            name,
            bytes,
            mode: 0o644,
            mtime: 0,
            hash: *blake3::hash(bytes).as_bytes(),
        })
        .collect();
    chunk_common::bundle::build(64, &sources)
}
