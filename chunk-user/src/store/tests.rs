use std::os::unix::fs::{MetadataExt, PermissionsExt};

use proptest::prelude::*;

use super::*;

const CHUNK: u32 = 1000;

thread_local! {
    /// Makes this thread's storage behave as on a file system without `O_TMPFILE`.
    pub(super) static NO_UNNAMED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn data(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i * 31 % 251) as u8).collect()
}

fn offer(name: &str, data: &[u8]) -> OfferInfo {
    OfferInfo {
        src: std::net::Ipv4Addr::new(198, 18, 0, 1).into(),
        transfer_id: 1,
        name: name.into(),
        size: data.len() as u64,
        chunk_size: CHUNK,
        chunk_count: data.len().div_ceil(CHUNK as usize) as u32,
        mode: 0o640,
        mtime: 1_700_000_000,
        tag: *blake3::hash(data).as_bytes(),
        directory: false,
        symlink: false,
        stream: false,
        bundle: false,
    }
}

fn write_chunks(
    st: &mut FsStorage,
    h: &mut FsHandle,
    data: &[u8],
    which: impl Iterator<Item = u32>,
) {
    for i in which {
        let start = i as usize * CHUNK as usize;
        let end = (start + CHUNK as usize).min(data.len());
        st.write(h, i, start as u64, &data[start..end]).unwrap();
    }
}

/// Every entry under `dir`, recursively, as relative paths.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_file_written_out_of_order_lands_under_its_name_with_mode_and_mtime() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let d = data(10_500);
    let o = offer("sub/dir/f.bin", &d);
    let mut h = st.open(&o).unwrap().handle;
    assert_eq!(
        listing(tmp.path()),
        ["sub", "sub/dir", "sub/dir/.f.bin.part"]
    );
    write_chunks(&mut st, &mut h, &d, (0..11).rev());
    let v = st.finish(h, &o.tag).unwrap();
    assert!(v.verified);
    let path = tmp.path().join("sub/dir/f.bin");
    assert_eq!(std::fs::read(&path).unwrap(), d);
    let md = std::fs::metadata(&path).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(md.mtime(), 1_700_000_000);
    assert_eq!(listing(tmp.path()), ["sub", "sub/dir", "sub/dir/f.bin"]);
}

#[test]
fn a_late_first_chunk_after_megabytes_of_others_still_hashes_right() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let d = data(6_000_500);
    let o = offer("f", &d);
    let mut h = st.open(&o).unwrap().handle;
    let n = o.chunk_count;
    // 1..n/2 arrive, then chunk 0 (a long catch-up), then the rest with a hole at 3000.
    write_chunks(&mut st, &mut h, &d, 1..n / 2);
    write_chunks(&mut st, &mut h, &d, 0..1);
    write_chunks(&mut st, &mut h, &d, (n / 2..n).filter(|&i| i != 3000));
    write_chunks(&mut st, &mut h, &d, 3000..3001);
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), d);
}

#[test]
fn an_empty_file_is_received() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let o = offer("empty", &[]);
    let h = st.open(&o).unwrap().handle;
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("empty")).unwrap(), b"");
}

#[test]
fn a_wrong_hash_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let d = data(3000);
    let o = offer("f", &d);
    let mut h = st.open(&o).unwrap().handle;
    let mut wrong = d.clone();
    wrong[5] ^= 1;
    write_chunks(&mut st, &mut h, &wrong, 0..3);
    let v = st.finish(h, &o.tag).unwrap();
    assert!(!v.verified);
    assert_eq!(v.hash, *blake3::hash(&wrong).as_bytes());
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
}

#[test]
fn an_interrupted_transfer_resumes_with_the_chunks_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(20_000);
    let o = offer("f", &d);
    {
        let mut st = FsStorage::new(tmp.path(), false).unwrap();
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &d, (0..7).chain([9, 15, 19]));
        st.abandon(h, true);
    }
    assert_eq!(listing(tmp.path()), [".f.part", ".f.part.state"]);
    // A new receiver process.
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let opened = st.open(&o).unwrap();
    let have = opened.already_have.expect("resume");
    let members: Vec<u32> = (0..20).filter(|&i| have.contains(i)).collect();
    assert_eq!(members, [0, 1, 2, 3, 4, 5, 6, 9, 15, 19]);
    let mut h = opened.handle;
    write_chunks(&mut st, &mut h, &d, (0..20).filter(|i| !have.contains(*i)));
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), d);
    assert_eq!(listing(tmp.path()), ["f"]);
}

/// Consecutive chunks are gathered and written together; a receiver that dies before writing
/// them must not have recorded them, so that the resume asks for them again.
#[test]
fn chunks_not_yet_written_are_not_claimed_after_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(20_000);
    let o = offer("f", &d);
    {
        let mut st = FsStorage::new(tmp.path(), false).unwrap();
        let mut h = st.open(&o).unwrap().handle;
        // 0..5 in a run, then 9 (a jump: 0..5 are written), then 10 and 11 (pending).
        write_chunks(&mut st, &mut h, &d, (0..5).chain([9, 10, 11]));
        h.save_state();
        assert!(!h.unsaved, "the record was saved");
        // The process dies here: no abandon, no flush (the handle has no Drop of its own).
        drop(h);
    }
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let opened = st.open(&o).unwrap();
    let have = opened.already_have.expect("resume");
    let members: Vec<u32> = (0..20).filter(|&i| have.contains(i)).collect();
    assert_eq!(members, [0, 1, 2, 3, 4]);
    let mut h = opened.handle;
    write_chunks(&mut st, &mut h, &d, 5..20);
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), d);
}

#[test]
fn a_different_file_under_the_same_name_starts_over() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(5000);
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let mut h = st.open(&offer("f", &d)).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..3);
    st.abandon(h, true);
    let mut other = d.clone();
    other[0] ^= 0xff;
    let opened = st.open(&offer("f", &other)).unwrap();
    assert!(opened.already_have.is_none());
    st.abandon(opened.handle, false);
    assert!(listing(tmp.path()).is_empty());
}

#[test]
fn existing_files_are_kept_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("f"), b"precious").unwrap();
    let d = data(100);
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let r = st.open(&offer("f", &d)).unwrap_err();
    assert_eq!(r.reason, AbortReason::Exists);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"precious");

    let mut st = FsStorage::new(tmp.path(), true).unwrap();
    let o = offer("f", &d);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..1);
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), d);
}

#[test]
fn a_name_being_received_is_refused_to_a_second_offer() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(100);
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let _h = st.open(&offer("f", &d)).unwrap();
    assert_eq!(
        st.open(&offer("f", &d)).unwrap_err().reason,
        AbortReason::Exists
    );
}

/// Two receivers sharing one directory (one per interface, say), two senders offering different
/// files under one name: the second receiver must not write into the first one's part file.
#[test]
fn a_second_receiver_on_the_same_directory_is_refused_the_name_being_received() {
    let tmp = tempfile::tempdir().unwrap();
    let a = data(10_000);
    let mut b = data(10_000);
    b[0] ^= 1;
    let (oa, ob) = (offer("f", &a), offer("f", &b));
    let mut st1 = FsStorage::new(tmp.path(), false).unwrap();
    let mut st2 = FsStorage::new(tmp.path(), false).unwrap();
    let mut h1 = st1.open(&oa).unwrap().handle;
    write_chunks(&mut st1, &mut h1, &a, 0..3);
    let refusal = st2.open(&ob).unwrap_err();
    assert_eq!(refusal.reason, AbortReason::Exists);
    assert!(
        refusal.message.contains("another receiver"),
        "{}",
        refusal.message
    );
    write_chunks(&mut st1, &mut h1, &a, 3..10);
    assert!(st1.finish(h1, &oa.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), a);
    // Now the name exists, of the offer's size: the second receiver checks it against the
    // sender's hash, which differs: `exists`, and the file stays as it was.
    let h2 = st2.open(&ob).unwrap().handle;
    let e = st2.finish(h2, blake3::hash(&b).as_bytes()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{e}");
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), a);
}

/// An offer for a file already there, of its size: every chunk is had, nothing is written, and
/// the verdict is the hash of what is there (a tree sent again moves only what is missing); of
/// another size it is refused as before.
#[test]
fn an_existing_file_of_the_offers_size_is_checked_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let a = data(10_000);
    std::fs::write(tmp.path().join("f"), &a).unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let o = offer("f", &a);
    let opened = st.open(&o).unwrap();
    assert_eq!(opened.already_have.as_ref().map(|h| h.len()), Some(10));
    assert!(
        st.finish(opened.handle, blake3::hash(&a).as_bytes())
            .unwrap()
            .verified
    );
    assert_eq!(listing(tmp.path()), ["f"]);
    // Abandoned, it leaves nothing either.
    let opened = st.open(&o).unwrap();
    st.abandon(opened.handle, true);
    assert_eq!(listing(tmp.path()), ["f"]);
    let longer = data(10_001);
    assert_eq!(
        st.open(&offer("f", &longer)).unwrap_err().reason,
        AbortReason::Exists
    );
    assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), a);
}

/// A transfer closed before any chunk arrived (the sender failed, or went silent) leaves no
/// part file behind; one that got chunks keeps them for a resume.
#[test]
fn a_transfer_that_got_no_chunk_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = data(10_000);
    let o = offer("f", &d);
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let h = st.open(&o).unwrap().handle;
    assert_eq!(listing(tmp.path()), [".f.part"]);
    st.abandon(h, true);
    assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..2);
    st.abandon(h, true);
    assert_eq!(listing(tmp.path()), [".f.part", ".f.part.state"]);
}

#[test]
fn symlinks_inside_the_directory_do_not_lead_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), tmp.path().join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("victim"), tmp.path().join(".x.part")).unwrap();
    std::fs::write(outside.path().join("victim"), b"untouched").unwrap();
    let d = data(100);
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let r = st.open(&offer("evil/x", &d)).unwrap_err();
    assert_eq!(r.reason, AbortReason::BadName, "{r:?}");
    let r = st.open(&offer("x", &d)).unwrap_err();
    assert_eq!(r.reason, AbortReason::BadName, "{r:?}");
    assert_eq!(listing(outside.path()), ["victim"]);
    assert_eq!(
        std::fs::read(outside.path().join("victim")).unwrap(),
        b"untouched"
    );
}

#[test]
fn names_of_work_files_and_non_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    let d = data(10);
    let mut st = FsStorage::new(tmp.path(), true).unwrap();
    for name in [".f.part", "a/.g.part.state"] {
        assert_eq!(
            st.open(&offer(name, &d)).unwrap_err().reason,
            AbortReason::BadName
        );
    }
    assert_eq!(
        st.open(&offer("d", &d)).unwrap_err().reason,
        AbortReason::Exists
    );
}

#[test]
fn fifos_and_other_non_files_under_the_name_or_the_part_name_are_never_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let mkfifo = |name: &str| {
        let path =
            std::ffi::CString::new(tmp.path().join(name).into_os_string().into_encoded_bytes())
                .unwrap();
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    };
    mkfifo("p");
    mkfifo(".q.part");
    let d = data(10);
    // Even with --overwrite: opening either FIFO for writing would block the receiver.
    let mut st = FsStorage::new(tmp.path(), true).unwrap();
    for name in ["p", "q"] {
        let r = st.open(&offer(name, &d)).unwrap_err();
        assert_eq!(r.reason, AbortReason::Exists, "{name}: {}", r.message);
        assert!(r.message.contains("not a regular file"), "{}", r.message);
    }
    let ty = |n: &str| {
        std::fs::symlink_metadata(tmp.path().join(n))
            .unwrap()
            .file_type()
    };
    use std::os::unix::fs::FileTypeExt;
    assert!(ty("p").is_fifo() && ty(".q.part").is_fifo());
    assert_eq!(listing(tmp.path()), [".q.part", "p"]);
}

#[test]
fn offers_larger_than_the_free_space_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let mut o = offer("huge", &[]);
    o.size = 1 << 60;
    o.chunk_count = u32::MAX - 1;
    let r = st.open(&o).unwrap_err();
    assert_eq!(r.reason, AbortReason::NoSpace, "{r:?}");
    assert!(listing(tmp.path()).is_empty());
}

/// A refused offer leaves nothing, not even the directories made for its name; directories
/// that were there before stay.
#[test]
fn a_refused_offer_takes_away_the_directories_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("kept")).unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let mut o = offer("kept/new/deeper/huge", &[]);
    o.size = 1 << 60;
    o.chunk_count = u32::MAX - 1;
    let r = st.open(&o).unwrap_err();
    assert_eq!(r.reason, AbortReason::NoSpace, "{r:?}");
    assert_eq!(listing(tmp.path()), ["kept"]);
    // The same name accepted: the directories are made, and stay with the file.
    let d = data(3000);
    let o = offer("kept/new/deeper/f", &d);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..3);
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(
        std::fs::read(tmp.path().join("kept/new/deeper/f")).unwrap(),
        d
    );
}

proptest! {
    #[test]
    fn the_state_record_round_trips(
        prefix in 0u32..5000,
        extra in proptest::collection::vec(0u32..20_000, 0..200),
    ) {
        let mut o = offer("f", &[]);
        o.size = 20_000 * CHUNK as u64;
        o.chunk_count = 20_000;
        let mut set = ChunkSet::with_prefix(prefix);
        for i in extra {
            set.insert(i);
        }
        let decoded = decode_state(&encode_state(&o, &set), &o).unwrap();
        for i in 0..20_000 {
            prop_assert_eq!(decoded.contains(i), set.contains(i), "index {}", i);
        }
        // Another file's record does not apply.
        let mut other = o.clone();
        other.tag[0] ^= 1;
        prop_assert!(decode_state(&encode_state(&o, &set), &other).is_none());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn staged_hashing_equals_plain_blake3(
        data in proptest::collection::vec(any::<u8>(), 0..300_000),
        cuts in proptest::collection::vec(1usize..70_000, 1..20),
    ) {
        let mut staged = StagedHasher::default();
        let mut rest = &data[..];
        for c in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (a, b) = rest.split_at((*c).min(rest.len()));
            staged.update(a);
            rest = b;
        }
        prop_assert_eq!(staged.finalize(), blake3::hash(&data));
    }
}

fn link_offer(name: &str, target: &[u8]) -> OfferInfo {
    OfferInfo {
        symlink: true,
        mode: 0o777,
        ..offer(name, target)
    }
}

/// Links only with `--links`, and only with targets that stay inside DIR: a sender cannot
/// plant a way out.
#[test]
fn links_are_made_only_when_allowed_and_only_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let mut plain = FsStorage::new(tmp.path(), false).unwrap();
    let refusal = plain.open(&link_offer("l", b"x")).unwrap_err();
    assert_eq!(refusal.reason, AbortReason::Unsupported);
    assert!(refusal.message.contains("--links"), "{}", refusal.message);
    let mut st = FsStorage::new(tmp.path(), false).unwrap().with_links(true);
    for (name, target, ok) in [
        ("d/in", &b"../x"[..], true),
        ("out", &b"../x"[..], false),
        ("d/abs", &b"/etc/passwd"[..], false),
        ("d/deep", &b"../../x"[..], false),
    ] {
        let o = link_offer(name, target);
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, target, 0..1);
        let r = st.finish(h, blake3::hash(target).as_bytes());
        assert_eq!(r.is_ok(), ok, "{name} -> {target:?}: {r:?}");
        if !ok {
            assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::InvalidInput);
            assert!(
                std::fs::symlink_metadata(tmp.path().join(name)).is_err(),
                "{name}"
            );
        }
    }
    assert_eq!(
        std::fs::read_link(tmp.path().join("d/in")).unwrap(),
        std::path::Path::new("../x")
    );
    // No work files left.
    assert_eq!(listing(&tmp.path().join("d")), ["in"]);
}

/// A stream: nothing is set aside or resumed at its offer, its chunks (out of order, holes
/// filled late) are written and hashed before its end is known, and once `end_stream` says
/// its size it verifies and lands as a file would. A stream that is abandoned leaves nothing.
#[test]
fn a_stream_written_out_of_order_lands_once_its_end_is_known() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let d = data(3_000_777);
    let stream = |name: &str| OfferInfo {
        size: 0,
        chunk_count: chunk_common::wire::UNKNOWN_COUNT,
        stream: true,
        bundle: false,
        ..offer(name, &d)
    };
    let o = stream("s.bin");
    let opened = st.open(&o).unwrap();
    assert!(opened.already_have.is_none());
    let mut h = opened.handle;
    let n = d.len().div_ceil(CHUNK as usize) as u32;
    // Whole chunks with holes, the holes later (hashing catches up from the file), then the
    // end told before the last chunk is written, as the receiver core does.
    write_chunks(&mut st, &mut h, &d, (1..n - 1).filter(|i| i % 97 != 5));
    write_chunks(&mut st, &mut h, &d, (1..n - 1).filter(|i| i % 97 == 5));
    write_chunks(&mut st, &mut h, &d, 0..1);
    st.end_stream(&mut h, d.len() as u64, n).unwrap();
    write_chunks(&mut st, &mut h, &d, n - 1..n);
    assert!(st.finish(h, &o.tag).unwrap().verified);
    assert_eq!(std::fs::read(tmp.path().join("s.bin")).unwrap(), d);

    // Interrupted, before its end is known or after: no part file, no record to resume from.
    let o = stream("cut.bin");
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..10);
    st.abandon(h, true);
    assert_eq!(listing(tmp.path()), ["s.bin"]);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..10);
    st.end_stream(&mut h, 20 * CHUNK as u64, 20).unwrap();
    st.abandon(h, true);
    assert_eq!(listing(tmp.path()), ["s.bin"]);
    // An end that leaves out a chunk already written is refused.
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &d, 0..10);
    assert!(st.end_stream(&mut h, 5 * CHUNK as u64, 5).is_err());
}

/// A bundle's content as chunk's sender lays it out: (name, bytes, mode), mtime 1600000000.
fn bundle_content(members: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let sources: Vec<_> = members
        .iter()
        .map(|(name, bytes, mode)| chunk_common::bundle::Source {
            name: name.as_bytes(),
            bytes,
            mode: *mode,
            mtime: 1_600_000_000,
            hash: *blake3::hash(bytes).as_bytes(),
        })
        .collect();
    chunk_common::bundle::build(CHUNK, &sources)
}

fn bundle_offer(content: &[u8]) -> OfferInfo {
    let tag = *blake3::hash(content).as_bytes();
    OfferInfo {
        name: crate::proto::receiver::bundle_name(&tag),
        mode: 0o600,
        mtime: 0,
        tag,
        bundle: true,
        ..offer("unused", content)
    }
}

fn chunks_of(content: &[u8]) -> u32 {
    content.len().div_ceil(CHUNK as usize) as u32
}

/// A bundle: its files land under their names (directories made), with their modes and
/// times, an empty one too; the bundle's own work files are gone, and the verdict lists them.
#[test]
fn a_bundle_puts_each_file_in_place_with_its_mode_and_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let big = data(2500);
    let c = bundle_content(&[
        ("a.txt", b"hello", 0o644),
        ("d/e/empty", b"", 0o600),
        ("d/big.bin", &big, 0o755),
    ]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    // Not all of the manifest yet: nothing to say.
    assert_eq!(st.read_manifest(&mut h).unwrap(), None);
    write_chunks(&mut st, &mut h, &c, 0..1);
    // Nothing here: nothing filled in.
    assert_eq!(st.read_manifest(&mut h).unwrap(), Some(vec![]));
    write_chunks(&mut st, &mut h, &c, (1..chunks_of(&c)).rev());
    let v = st.finish(h, &o.tag).unwrap();
    assert!(v.verified);
    assert_eq!(
        v.members,
        [
            ("a.txt".to_owned(), 5),
            ("d/e/empty".to_owned(), 0),
            ("d/big.bin".to_owned(), 2500)
        ]
    );
    assert_eq!(
        listing(tmp.path()),
        ["a.txt", "d", "d/big.bin", "d/e", "d/e/empty"]
    );
    assert_eq!(std::fs::read(tmp.path().join("d/big.bin")).unwrap(), big);
    for (name, mode) in [("a.txt", 0o644), ("d/e/empty", 0o600), ("d/big.bin", 0o755)] {
        let md = std::fs::metadata(tmp.path().join(name)).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, mode, "{name}");
        assert_eq!(md.mtime(), 1_600_000_000, "{name}");
    }
}

/// A member already there with its content: its chunks are counted as received from the
/// manifest on (the sender need not send them), and it verifies as it is. One there with other
/// content is `exists`, after the others went in; nothing of the bundle is left behind.
#[test]
fn a_bundle_fills_in_what_is_there_and_never_replaces_other_content() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let big = data(2500);
    std::fs::create_dir(tmp.path().join("d")).unwrap();
    std::fs::write(tmp.path().join("d/big.bin"), &big).unwrap();
    let c = bundle_content(&[("a.txt", b"hello", 0o644), ("d/big.bin", &big, 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..1);
    // Chunk 1 is a.txt's; 2..5 are d/big.bin's, which is here.
    assert_eq!(st.read_manifest(&mut h).unwrap(), Some(vec![2, 3, 4]));
    write_chunks(&mut st, &mut h, &c, 1..2);
    let v = st.finish(h, &o.tag).unwrap();
    assert!(v.verified);
    assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"hello");
    assert_eq!(std::fs::read(tmp.path().join("d/big.bin")).unwrap(), big);

    // Other content under a member's name.
    std::fs::write(tmp.path().join("d/big.bin"), b"mine").unwrap();
    let c = bundle_content(&[("d/big.bin", &big, 0o644), ("new.txt", b"new", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
    assert_eq!(st.read_manifest(&mut h).unwrap(), Some(vec![]));
    let e = st.finish(h, &o.tag).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert!(e.to_string().contains("d/big.bin"), "{e}");
    assert_eq!(
        std::fs::read(tmp.path().join("d/big.bin")).unwrap(),
        b"mine"
    );
    assert_eq!(std::fs::read(tmp.path().join("new.txt")).unwrap(), b"new");
    assert_eq!(listing(tmp.path()), ["a.txt", "d", "d/big.bin", "new.txt"]);
}

/// A manifest naming a way out, or a work file, ends the bundle before anything is made; a
/// manifest that is not one is `InvalidData`; a bundle whose hash differs leaves nothing.
#[test]
fn a_bad_bundle_is_refused_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    for (name, kind) in [
        ("../out", io::ErrorKind::InvalidInput),
        ("/abs", io::ErrorKind::InvalidInput),
        ("d/.x.part", io::ErrorKind::InvalidInput),
    ] {
        let c = bundle_content(&[("ok", b"1", 0o644), (name, b"2", 0o644)]);
        let o = bundle_offer(&c);
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &c, 0..1);
        let e = st.read_manifest(&mut h).unwrap_err();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        st.abandon(h, false);
    }
    let mut c = bundle_content(&[("ok", b"1", 0o644), ("two", b"2", 0o644)]);
    c[0..4].copy_from_slice(&5u32.to_be_bytes());
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..1);
    let e = st.read_manifest(&mut h).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    st.abandon(h, false);
    // A hash that differs: nothing placed.
    let c = bundle_content(&[("ok", b"1", 0o644), ("two", b"2", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
    let v = st.finish(h, &[0; 32]).unwrap();
    assert!(!v.verified);
    assert!(v.members.is_empty());
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
}

/// In a directory too large to list for each bundle, a member already there is still found
/// (looked up by name) and filled in.
#[test]
fn a_member_in_a_large_directory_is_found_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    std::fs::create_dir(&big).unwrap();
    let mut i = 0;
    while std::fs::metadata(&big).unwrap().len() <= LIST_UP_TO {
        for _ in 0..1000 {
            std::fs::File::create(big.join(format!("entry-with-a-longish-name-{i:06}"))).unwrap();
            i += 1;
        }
    }
    let d = data(2500);
    std::fs::write(big.join("m.bin"), &d).unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    assert!(st.names_in("big").is_none(), "looked up, not listed");
    let c = bundle_content(&[("new.txt", b"new", 0o644), ("big/m.bin", &d, 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..1);
    // Chunk 1 is new.txt's, 2..5 are big/m.bin's.
    assert_eq!(st.read_manifest(&mut h).unwrap(), Some(vec![2, 3, 4]));
}

/// A manifest naming a file twice, or leaving a gap of a chunk or more, is not one; a member
/// whose bytes are not its manifest hash's ends the bundle at its verdict, and so does a name
/// that holds a link even where overwriting is allowed; an abandoned bundle leaves nothing.
#[test]
fn bundle_rules_a_sender_must_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), true).unwrap();
    let twice = bundle_content(&[("a", b"1", 0o644), ("a", b"2", 0o644)]);
    // Its second member one chunk later than the layout's, the gap zeros.
    let mut gap = bundle_content(&[("a", b"1", 0o644), ("b", b"2", 0o644)]);
    let second = chunk_common::bundle::HEADER_LEN + chunk_common::bundle::ENTRY_LEN + 1;
    let off = u64::from_be_bytes(gap[second..second + 8].try_into().unwrap());
    gap[second..second + 8].copy_from_slice(&(off + CHUNK as u64).to_be_bytes());
    gap.splice(off as usize..off as usize, vec![0u8; CHUNK as usize]);
    for (what, c) in [("twice", twice), ("gap", gap)] {
        let o = bundle_offer(&c);
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
        let e = st.read_manifest(&mut h).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
        st.abandon(h, true);
    }
    assert_eq!(listing(tmp.path()), Vec::<String>::new(), "nothing kept");

    let lying = chunk_common::bundle::build(
        CHUNK,
        &[chunk_common::bundle::Source {
            name: b"lie",
            bytes: b"true bytes",
            mode: 0o644,
            mtime: 0,
            hash: *blake3::hash(b"other bytes").as_bytes(),
        }],
    );
    let o = bundle_offer(&lying);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &lying, 0..chunks_of(&lying));
    let e = st.finish(h, &o.tag).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");

    std::os::unix::fs::symlink("elsewhere", tmp.path().join("link")).unwrap();
    let c = bundle_content(&[("link", b"x", 0o644), ("ok", b"y", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
    let e = st.finish(h, &o.tag).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
    assert!(
        std::fs::symlink_metadata(tmp.path().join("link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(listing(tmp.path()), ["link", "ok"]);
}

/// A receiver that dies in a bundle leaves nothing: the bundle's content waits in a file with
/// no name, and so does each member until its name is given. A named leftover of an older
/// receiver is removed at the next start, unless another receiver holds it.
#[test]
fn a_receiver_that_dies_in_a_bundle_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let c = bundle_content(&[("d/a.txt", b"hello", 0o644), ("b.txt", b"world", 0o600)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c) - 1);
    assert_eq!(listing(tmp.path()), Vec::<String>::new(), "no work file");
    // The members written, none named yet: their directory only.
    h.flush().unwrap();
    let manifest = read_manifest_bytes(&h).unwrap();
    let manifest = chunk_common::bundle::Manifest::parse(&manifest, c.len() as u64).unwrap();
    let mut dir = None;
    let staged: Vec<_> = manifest
        .members()
        .map(|m| {
            st.placer
                .stage_member(&h, &m, &c, &mut dir, &HashSet::new())
                .unwrap()
        })
        .collect();
    assert_eq!(listing(tmp.path()), ["d"]);
    // The process dies: its files are closed, nothing else happens.
    drop(staged);
    drop(h);
    drop(st);
    assert_eq!(listing(tmp.path()), ["d"]);

    // An older receiver's named work files, and its records: removed at the start, unless
    // locked; a file's part whose name only starts alike, and a FIFO, stay (never opened).
    let old = ".chunk-bundle-00112233445566778899aabbccddeeff";
    let held = ".chunk-bundle-ffeeddccbbaa99887766554433221100.part";
    for n in [".part", ".part.state", ".part.state.tmp"] {
        std::fs::write(tmp.path().join(format!("{old}{n}")), b"old").unwrap();
    }
    let held_file = std::fs::File::create(tmp.path().join(held)).unwrap();
    rustix::fs::flock(&held_file, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let kept = [
        ".chunk-bundle-notes.txt.part",
        ".chunk-bundle-00112233445566778899aabbccddeeff0.part",
        ".mine.part",
    ];
    for k in kept {
        std::fs::write(tmp.path().join(k), b"a file's, resumable").unwrap();
    }
    let fifo = ".chunk-bundle-0123456789abcdef0123456789abcdef.part";
    rustix::fs::mknodat(
        rustix::fs::CWD,
        tmp.path().join(fifo),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _st = FsStorage::new(tmp.path(), false).unwrap();
    let mut expected: Vec<String> = kept.iter().map(|k| k.to_string()).collect();
    expected.extend([held.to_owned(), fifo.to_owned(), "d".to_owned()]);
    expected.sort();
    assert_eq!(listing(tmp.path()), expected);
}

/// A bundle is never resumed: however long it stays open, the receiver writes no record of
/// its chunks (which a dead receiver would leave behind).
#[test]
fn a_bundle_keeps_no_record_of_its_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let big = data(5000);
    let c = bundle_content(&[("a.bin", &big, 0o644), ("b.txt", b"b", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    for i in 0..chunks_of(&c) - 1 {
        // Open for longer than a record's interval before each chunk.
        h.last_save -= STATE_SAVE_INTERVAL * 2;
        write_chunks(&mut st, &mut h, &c, i..i + 1);
    }
    h.flush().unwrap();
    assert_eq!(listing(tmp.path()), Vec::<String>::new());
    // A file's does (the check above would see it).
    let f = offer("f.bin", &big);
    let mut fh = st.open(&f).unwrap().handle;
    fh.last_save -= STATE_SAVE_INTERVAL * 2;
    write_chunks(&mut st, &mut fh, &big, 0..1);
    fh.flush().unwrap();
    assert_eq!(listing(tmp.path()), [".f.bin.part", ".f.bin.part.state"]);
}

/// Where the file system makes no unnamed file, a bundle's work files have names: they are
/// removed at its verdict (members named, replaced, or found in place), and those a dead
/// receiver left are removed at the next start.
#[test]
fn without_unnamed_files_a_bundle_still_leaves_nothing() {
    NO_UNNAMED.set(true);
    let tmp = tempfile::tempdir().unwrap();
    // Placed, then found in place, then replaced.
    for overwrite in [false, false, true] {
        let mut st = FsStorage::new(tmp.path(), overwrite).unwrap();
        let c = bundle_content(&[("d/a.txt", b"hello", 0o644), ("b.txt", b"world", 0o600)]);
        let o = bundle_offer(&c);
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
        assert!(st.finish(h, &o.tag).unwrap().verified, "{overwrite}");
        assert_eq!(
            listing(tmp.path()),
            ["b.txt", "d", "d/a.txt"],
            "{overwrite}"
        );
        assert_eq!(std::fs::read(tmp.path().join("b.txt")).unwrap(), b"world");
    }
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let c = bundle_content(&[("x.txt", b"x", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..1);
    h.flush().unwrap();
    let left = listing(tmp.path());
    assert!(
        left.iter().any(|n| n.starts_with(".chunk-bundle-")),
        "{left:?}"
    );
    drop(h);
    drop(st);
    NO_UNNAMED.set(false);
    let _st = FsStorage::new(tmp.path(), false).unwrap();
    assert_eq!(listing(tmp.path()), ["b.txt", "d", "d/a.txt"]);
}

/// With overwriting allowed, a bundle's member replaces a regular file under its name (through
/// a name beside it, for as long as a rename takes) and leaves no work file.
#[test]
fn an_overwriting_bundle_replaces_files_and_leaves_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), true).unwrap();
    std::fs::write(tmp.path().join("a.txt"), b"old contents").unwrap();
    let c = bundle_content(&[("a.txt", b"new", 0o640), ("b.txt", b"b", 0o644)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
    assert_eq!(st.read_manifest(&mut h).unwrap(), Some(vec![]));
    let v = st.finish(h, &o.tag).unwrap();
    assert!(v.verified);
    assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"new");
    let md = std::fs::metadata(tmp.path().join("a.txt")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o640);
    assert_eq!(listing(tmp.path()), ["a.txt", "b.txt"]);

    // The side name taken (by anyone): the member fails, and what holds the name stays.
    let side = ".a.txt.00000001.tmp";
    std::fs::write(tmp.path().join(side), b"not the receiver's").unwrap();
    let c = bundle_content(&[("a.txt", b"newer", 0o640)]);
    let o = bundle_offer(&c);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &c, 0..chunks_of(&c));
    let e = st.finish(h, &o.tag).unwrap_err();
    assert!(e.to_string().contains("replacing a.txt"), "{e}");
    assert_eq!(std::fs::read(tmp.path().join("a.txt")).unwrap(), b"new");
    assert_eq!(
        std::fs::read(tmp.path().join(side)).unwrap(),
        b"not the receiver's"
    );
}

/// A file's and a bundle's verdicts go to the placing thread: the loop's fd wakes when one is
/// reached, they come back in order under their tickets, the names stay taken until then, and
/// past the limit of verdicts waiting the receiver's thread reaches its own.
#[test]
fn verdicts_reached_on_the_placing_thread_come_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut st = FsStorage::new(tmp.path(), false)
        .unwrap()
        .with_finish_thread();
    assert!(st.finish_fd().is_none());
    let one = data(2500);
    let o = offer("one", &one);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &one, 0..3);
    let c = bundle_content(&[("b/x", b"xx", 0o644), ("b/y", b"yyy", 0o644)]);
    let bo = bundle_offer(&c);
    let mut bh = st.open(&bo).unwrap().handle;
    write_chunks(&mut st, &mut bh, &c, 0..chunks_of(&c));
    assert!(st.start_finish(h, &o.tag, 7).is_none());
    assert!(st.start_finish(bh, &bo.tag, 8).is_none());
    // Until its verdict is taken, the name is still being received.
    let again = st.open(&o).expect_err("refused");
    assert!(
        again.message.contains("being received"),
        "{}",
        again.message
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 2 {
        let fd = st.finish_fd().expect("verdicts under way");
        crate::driver::wait::until(&[fd], Some(deadline)).unwrap();
        assert!(Instant::now() < deadline, "no verdict within 10 s");
        while let Some((ticket, r)) = st.poll_finished() {
            got.push((ticket, r.unwrap()));
        }
    }
    assert!(st.finish_fd().is_none());
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [7, 8]);
    assert!(got.iter().all(|g| g.1.verified));
    assert_eq!(got[1].1.members.len(), 2);
    assert_eq!(std::fs::read(tmp.path().join("one")).unwrap(), one);
    assert_eq!(std::fs::read(tmp.path().join("b/y")).unwrap(), b"yyy");
    // Now it is there: other content under the name is refused as an existing file.
    let again = st.open(&offer("one", &data(100))).expect_err("refused");
    assert_eq!(again.reason, AbortReason::Exists);
    assert!(
        !again.message.contains("being received"),
        "{}",
        again.message
    );

    // Twenty at once: sixteen wait for the thread, the rest are reached at once.
    let mut at_once = 0;
    for i in 0..20u64 {
        let f = data(10 + i as usize);
        let o = offer(&format!("many/{i}"), &f);
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &f, 0..1);
        if let Some(r) = st.start_finish(h, &o.tag, 100 + i) {
            assert!(r.unwrap().verified);
            at_once += 1;
        }
    }
    assert_eq!(at_once, 4);
    let rest = st.wait_finished();
    assert_eq!(
        rest.iter().map(|r| r.0).collect::<Vec<_>>(),
        (100..116).collect::<Vec<_>>()
    );
    assert!(rest.iter().all(|r| r.1.as_ref().unwrap().verified));
    assert_eq!(
        std::fs::read_dir(tmp.path().join("many")).unwrap().count(),
        20
    );
}

/// On a file system in memory (`/dev/shm`, tmpfs) a verdict is reached at once: there is no
/// disk to wait for, and a thread would only add its wakeups.
#[test]
fn in_memory_verdicts_are_reached_at_once() {
    let Ok(tmp) = tempfile::tempdir_in("/dev/shm") else {
        return;
    };
    assert!(in_memory(
        rustix::fs::open(tmp.path(), OFlags::RDONLY, Mode::empty()).unwrap()
    ));
    let mut st = FsStorage::new(tmp.path(), false).unwrap();
    let one = data(2500);
    let o = offer("one", &one);
    let mut h = st.open(&o).unwrap().handle;
    write_chunks(&mut st, &mut h, &one, 0..3);
    assert!(st.start_finish(h, &o.tag, 1).unwrap().unwrap().verified);
    assert!(st.finish_fd().is_none());
    let disk = tempfile::tempdir().unwrap();
    if !in_memory(rustix::fs::open(disk.path(), OFlags::RDONLY, Mode::empty()).unwrap()) {
        let mut st = FsStorage::new(disk.path(), false).unwrap();
        let mut h = st.open(&o).unwrap().handle;
        write_chunks(&mut st, &mut h, &one, 0..3);
        assert!(
            st.start_finish(h, &o.tag, 1).is_none(),
            "on disk: the thread"
        );
        assert!(st.wait_finished()[0].1.as_ref().unwrap().verified);
    }
}
