//! The receiver's files: [`FsStorage`] implements the core's [`Storage`] on a directory.
//!
//! A file `a/b.bin` is received as `DIR/a/.b.bin.part`, written chunk by chunk at its offset,
//! next to `DIR/a/.b.bin.part.state`, which records the offer it belongs to and the chunks on disk,
//! so an interrupted transfer (either side killed) resumes with only the missing chunks. When every
//! chunk is in, the part file is fsynced and hashed; if the BLAKE3 matches the offer's, it gets the
//! sender's permission bits and mtime and is renamed to `DIR/a/b.bin` (never replacing a file
//! unless `overwrite`), and the directory is fsynced. If the hash differs, both files are removed:
//! nothing wrong ever appears under a final name. That work (and a bundle's, whose files are
//! put in place each under its name) is done on a thread of its own ([`place`]), so that the
//! receiver goes on reading packets meanwhile (not when DIR is in memory: see [`in_memory`]).
//!
//! Confinement: every path is resolved under DIR with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, relative to an fd of DIR, so neither `..`, an absolute name, nor a symlink
//! planted inside DIR can lead a write outside it, whatever the core's name check let through.
//! Space: an offer is refused unless the file system has room, and the part file of anything
//! but a small file is allocated to its full size up front (`fallocate`), so a disk that fills up
//! refuses the offer instead of failing it half-way. The chunk record is small and rewritten as chunks arrive; when the disk is
//! full it cannot be saved, and the transfer goes on with the last record saved (which only ever
//! claims fewer chunks than are on disk, so a resume after a crash is still right).
//!
//! Several receivers may share one directory (one per interface, say): a part file is locked
//! (`flock`, exclusive) by the receiver writing it for as long as its transfer is open, so a
//! second receiver refuses an offer for the same name instead of writing into the same part file.
//! The lock goes with the process, so a receiver killed with -9 leaves nothing locked. A bundle's
//! files have no name until their verdict (`O_TMPFILE`, where the file system makes such files):
//! two receivers may take the same bundle at once, and the second finds each member in place
//! with its content. A receiver killed mid-bundle leaves nothing of it.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Read, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::{FileExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use chunk_common::{
    bundle,
    wire::{AbortReason, HASH_LEN},
};
use rustix::fs::{AtFlags, FallocateFlags, Mode, OFlags, ResolveFlags};

use crate::proto::{ChunkSet, HashCheck, OfferInfo, Opened, Refusal, Storage};
use place::{Finisher, Placer, members_open};

const PART_SUFFIX: &str = ".part";
const STATE_SUFFIX: &str = ".part.state";
const STATE_MAGIC: &[u8; 8] = b"chunkst1";
/// How often a transfer's chunk record is saved while chunks arrive. A crash loses at most this
/// much progress (those chunks are sent again), never claims a chunk that is not on disk.
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Bytes read back and hashed per written chunk while catching up after a filled hole.
const HASH_STEP: u64 = 1 << 20;

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// Receives files into one directory.
pub struct FsStorage {
    root: OwnedFd,
    root_path: PathBuf,
    overwrite: bool,
    /// Symbolic links are made (`--links`), when their targets stay inside DIR.
    links: bool,
    /// Final names (relative to DIR) being received now, or being put in place.
    in_use: HashSet<String>,
    placer: Arc<Placer>,
    /// Who puts files in place.
    placing: Placing,
    /// DIR is in memory ([`in_memory`]): a lone file is put in place at once, on the
    /// receiver's thread; only a bundle's files go to the placing thread.
    memory: bool,
}

/// Who puts a file or a bundle in place at its verdict.
enum Placing {
    /// A thread of its own, started for the first verdict.
    NotYet,
    Thread(Finisher),
    /// The receiver's thread: no thread could be started.
    Inline,
}

/// Whether `fd` is on a file system held in memory (tmpfs, ramfs), where syncing waits for
/// nothing: putting a lone file in place there is a few system calls, cheaper done at once
/// than handed to a thread (1 000 lone files of 100 KiB on tmpfs took about 11 % longer so, by
/// the medians of two sets of three runs). A bundle's hundreds of files are not.
pub(crate) fn in_memory(fd: impl AsFd) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|st| memory_fs(&st))
}

/// Whether a file system is held in memory (tmpfs, ramfs), by its `statfs`.
pub(crate) fn memory_fs(st: &rustix::fs::StatFs) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // `f_type`'s width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let t = st.f_type as i64;
    t == TMPFS_MAGIC || t == RAMFS_MAGIC
}

/// The process's umask, from /proc (reading it with umask(2) means setting it).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// One file being received.
#[derive(Debug)]
pub struct FsHandle {
    /// The directory the file goes in (under DIR).
    dir: OwnedFd,
    name: String,
    base: String,
    file: File,
    offer: OfferInfo,
    have: ChunkSet,
    unsaved: bool,
    last_save: Instant,
    /// State saves failed in a row (see [`FsHandle::save_state`]).
    save_failures: u32,
    /// BLAKE3 of the file's prefix of `hashed` chunks: chunks are hashed as they complete an
    /// in-order prefix, so most of the hashing is done when the last chunk arrives.
    hasher: StagedHasher,
    hashed: u32,
    /// Chunks received back to back, not yet written: one `pwrite` for many (see
    /// [`WRITE_BEHIND`]). They are not in `have` until written, so the state file never claims
    /// them; a crash loses at most these, and a resume asks for them again.
    pending: Pending,
    /// Bytes written since writeback was last started ([`WRITEBACK_EVERY`]).
    unflushed: u64,
    /// The file is already under its final name, the offer's size: opened read-only, every
    /// chunk counted as had, and the verdict is whether its hash is the sender's (a tree sent
    /// again moves only what is missing). Nothing is ever written to it.
    existing: bool,
    /// A directory offer: `file` is the directory, made (or found) at the offer; the verdict
    /// gives it the offer's mode and mtime.
    directory: bool,
    /// A symbolic-link offer (`--links`): the part file receives the target, the verdict makes
    /// the link. `existing_link`: the target of a link already under the name.
    symlink: bool,
    existing_link: Option<Vec<u8>>,
    /// A stream (its end told or not): never resumed, so no record, and nothing kept when it
    /// is abandoned.
    stream: bool,
    /// A bundle (docs/PROTOCOL.md, "Bundles"): the part file receives the manifest and the
    /// members, which the verdict puts in place under their own names.
    bundle: bool,
    /// A bundle's manifest chunks, once its first chunk told the manifest's length.
    manifest_chunks: Option<u32>,
    /// A chunk record (or its temporary file) may be on disk: one was found or left by an
    /// earlier receiver, or this one has written one. Without, there is nothing to remove.
    may_have_state: bool,
    /// The work file has no name (`O_TMPFILE`, a bundle's): nothing to remove, and a crash
    /// leaves nothing behind.
    unnamed: bool,
}

/// Files from this size on are allocated whole at the offer (`fallocate`); smaller ones are
/// not (see [`FsStorage::open`]).
const PREALLOCATE_FROM: u64 = 256 << 10;

/// Bytes written between two starts of writeback (`sync_file_range`, without waiting). The
/// verdict waits for `fsync`; with every dirty page of a large file still in memory that was
/// most of a second at the end of a 512 MiB transfer, during which nothing else happened. Started
/// as the file grows, the writeback runs alongside the transfer and the last `fsync` finds
/// little left to do.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Starts writeback of the file's dirty pages and returns at once. Best effort: on a file
/// system that does not support it, the final `fsync` does all the work, as before. (rustix
/// has no `sync_file_range`, hence libc.)
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a file descriptor we own; no memory is passed.
    let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
}

/// Bytes of consecutive chunks gathered before one positioned write. A `pwrite` per 1.4 KB
/// chunk meant 180k system calls a second, each taking the inode lock and updating times.
const WRITE_BEHIND: usize = 256 << 10;

/// Consecutive chunks waiting to be written.
#[derive(Debug, Default)]
struct Pending {
    data: Vec<u8>,
    offset: u64,
    first: u32,
    count: u32,
}

/// Bytes gathered before they are handed to BLAKE3: fed a packet at a time, BLAKE3 compresses
/// one block after another on one SIMD lane; fed 64 KiB at once, it hashes 1 KiB chunks many
/// lanes wide (the profile of a 256 MiB transfer showed per-packet hashing at 14 % of all CPU).
const HASH_STAGE: usize = 64 << 10;

/// A BLAKE3 hasher that gathers small updates into large ones. Same result, in order.
#[derive(Debug, Default)]
struct StagedHasher {
    hasher: blake3::Hasher,
    pending: Vec<u8>,
}

impl StagedHasher {
    fn update(&mut self, data: &[u8]) {
        if self.pending.len() + data.len() > HASH_STAGE {
            self.flush();
        }
        if data.len() >= HASH_STAGE {
            self.hasher.update(data);
        } else {
            if self.pending.capacity() == 0 {
                self.pending.reserve_exact(HASH_STAGE);
            }
            self.pending.extend_from_slice(data);
        }
    }

    fn flush(&mut self) {
        self.hasher.update(&self.pending);
        self.pending.clear();
    }

    fn finalize(&mut self) -> blake3::Hash {
        self.flush();
        self.hasher.finalize()
    }
}

impl FsStorage {
    /// Receives into `dir`, which must exist and be a directory.
    pub fn new(dir: &Path, overwrite: bool) -> io::Result<Self> {
        let root = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let memory = in_memory(&root);
        sweep_bundle_leftovers(&root);
        let unnamed = unnamed_files_work(&root);
        let placer = Arc::new(Placer {
            root: rustix::io::dup(&root)?,
            overwrite,
            umask: current_umask(),
            unnamed,
            members_open: members_open(),
        });
        Ok(FsStorage {
            links: false,
            root,
            root_path: dir.to_path_buf(),
            overwrite,
            in_use: HashSet::new(),
            placer,
            placing: Placing::NotYet,
            memory,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Readable when a verdict started by [`Storage::start_finish`] has been reached (for the
    /// receive loop to wait on); `None` while none is under way.
    pub fn finish_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.placing {
            Placing::Thread(f) if f.in_flight() > 0 => Some(f.wake_fd()),
            _ => None,
        }
    }

    /// Puts lone files in place on a thread of its own even when DIR is in memory (for tests).
    pub fn with_finish_thread(mut self) -> Self {
        self.memory = false;
        self
    }

    /// Makes symbolic links offered (`--links`) whose targets stay inside DIR.
    pub fn with_links(mut self, links: bool) -> Self {
        self.links = links;
        self
    }

    /// Opens (creating as needed) the directories of `name` under DIR (see
    /// [`Placer::open_parent`]).
    fn open_parent<'n>(&self, name: &'n str) -> Result<(OwnedFd, &'n str, Created), Refusal> {
        self.placer.open_parent(name)
    }
}

/// Whether `name` is one of a bundle's named work files: `.chunk-bundle-` and the 32 hex
/// digits of [`bundle_name`](crate::proto::receiver::bundle_name), then `.part` (or an older
/// chunk's record of it, `.part.state` and `.part.state.tmp`).
fn is_bundle_work_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(".chunk-bundle-") else {
        return false;
    };
    let (hex, suffix) = rest.split_at(rest.len().min(32));
    hex.len() == 32
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && [PART_SUFFIX, STATE_SUFFIX, ".part.state.tmp"].contains(&suffix)
}

/// Removes the named work files of bundles that a receiver which died left in DIR (an older
/// chunk's, or any on a file system without `O_TMPFILE`): a bundle is never resumed, so no one
/// claims them. Only regular files, and only those no other receiver sharing DIR holds (locked).
fn sweep_bundle_leftovers(root: &OwnedFd) {
    let Ok(fd) = rustix::fs::openat(
        root,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    let Ok(mut dir) = rustix::fs::Dir::new(fd) else {
        return;
    };
    let mut names = Vec::new();
    while let Some(Ok(entry)) = dir.next() {
        if let Ok(name) = entry.file_name().to_str()
            && is_bundle_work_file(name)
        {
            names.push(name.to_owned());
        }
    }
    let regular = |st: &rustix::fs::Stat| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    };
    let mut removed = 0;
    for name in names {
        // Looked at before it is opened: never open a FIFO or a device that carries the name.
        let Ok(st) = rustix::fs::statat(root, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if !regular(&st) {
            continue;
        }
        let Ok(fd) = rustix::fs::openat2(
            root,
            name.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
            Mode::empty(),
            resolve(),
        ) else {
            continue;
        };
        let same = rustix::fs::fstat(&fd)
            .is_ok_and(|f| regular(&f) && f.st_ino == st.st_ino && f.st_dev == st.st_dev);
        if same
            && rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
            && rustix::fs::unlinkat(root, name.as_str(), AtFlags::empty()).is_ok()
        {
            removed += 1;
        }
    }
    if removed > 0 {
        tracing::info!(
            removed,
            "removed work files of bundles an earlier receiver left"
        );
    }
}

/// Whether this receiver can keep a bundle's files unnamed until their verdict: DIR's file
/// system makes `O_TMPFILE` files and [`link_unnamed`] can name one. Tried once, at the start,
/// with a name no offer may take (see [`is_work_file`]); without, named work files are used.
fn unnamed_files_work(root: &OwnedFd) -> bool {
    let Ok(Some(fd)) = unnamed_file(root, 0o600) else {
        return false;
    };
    let probe = format!(".chunk-probe-{}.tmp", std::process::id());
    match link_unnamed(&fd, root, &probe) {
        Ok(()) => {
            let _ = rustix::fs::unlinkat(root, probe.as_str(), AtFlags::empty());
            true
        }
        Err(e) => {
            tracing::info!(error = %e, "cannot name a file made with O_TMPFILE: bundles' work \
                files get names");
            false
        }
    }
}

/// Directories made for an offer, innermost last, each with the directory it is in.
#[derive(Default)]
struct Created(Vec<(OwnedFd, String)>);

impl Created {
    /// Removes them again, innermost first (each only if still empty).
    fn remove(self) {
        for (parent, comp) in self.0.into_iter().rev() {
            let _ = rustix::fs::unlinkat(&parent, comp.as_str(), AtFlags::REMOVEDIR);
        }
    }
}

fn io_refusal(e: rustix::io::Errno) -> Refusal {
    if e == rustix::io::Errno::NOSPC || e == rustix::io::Errno::DQUOT {
        Refusal::new(AbortReason::NoSpace, "no space left on the receiver")
    } else {
        Refusal::new(AbortReason::Io, format!("receiver: {e}"))
    }
}

/// A file in `dir` with no name (`O_TMPFILE`), made with `mode` (less the umask): when
/// the receiver dies, the kernel frees it, where a named work file would stay. `None` where
/// the file system (NFS, an old kernel) makes none: the caller then names its work file.
pub(crate) fn unnamed_file(dir: &impl AsFd, mode: u32) -> rustix::io::Result<Option<OwnedFd>> {
    #[cfg(test)]
    if tests::NO_UNNAMED.get() {
        return Ok(None);
    }
    match rustix::fs::openat(
        dir,
        ".",
        OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    ) {
        Ok(fd) => Ok(Some(fd)),
        // open(2): EOPNOTSUPP from a file system without it, EISDIR from a kernel without it.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives the unnamed file `fd` the name `base` in `dir`, never replacing anything there
/// (`EEXIST`). `linkat` with `AT_EMPTY_PATH` needs `CAP_DAC_READ_SEARCH`; without it (ENOENT),
/// the file's `/proc/self/fd` link does the same.
pub(crate) fn link_unnamed(fd: &impl AsFd, dir: &impl AsFd, base: &str) -> rustix::io::Result<()> {
    match rustix::fs::linkat(fd, "", dir, base, AtFlags::EMPTY_PATH) {
        Err(rustix::io::Errno::NOENT) => {
            let proc = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
            rustix::fs::linkat(
                rustix::fs::CWD,
                proc.as_str(),
                dir,
                base,
                AtFlags::SYMLINK_FOLLOW,
            )
        }
        r => r,
    }
}

/// Reserves room for `offer` in the new, empty work file `fd`: refuses the offer when the file
/// system has less free space than its size, and allocates a large file whole where the file
/// system can.
fn reserve(fd: &impl AsFd, offer: &OfferInfo) -> Result<(), Refusal> {
    let vfs = rustix::fs::fstatvfs(fd).map_err(io_refusal)?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    // A file system that reports no size at all (ramfs) has no free space to compare either.
    if vfs.f_blocks != 0 && free < offer.size {
        return Err(Refusal::new(
            AbortReason::NoSpace,
            format!(
                "{}: {} bytes offered, {free} bytes free on the receiver",
                offer.name, offer.size
            ),
        ));
    }
    // A small file is written in one or two `pwrite`s as it completes: allocating it first is
    // a system call for nothing (the free-space check above still refuses an offer the disk
    // has no room for, and a disk that fills meanwhile fails the write, which ends the
    // transfer `no space`, as for a stream).
    if offer.size >= PREALLOCATE_FROM {
        match rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, offer.size) {
            Ok(()) => {}
            // Not every file system allocates ahead: ramfs, FAT, ext2 and ext3, NFS before 4.2
            // and many FUSE ones say so. The file is then written as it comes, as a small one
            // is (above).
            Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => {}
            Err(e) => return Err(io_refusal(e)),
        }
    }
    Ok(())
}

fn part_name(base: &str) -> String {
    format!(".{base}{PART_SUFFIX}")
}

fn state_name(base: &str) -> String {
    format!(".{base}{STATE_SUFFIX}")
}

/// Where a state record is written before it is renamed over the old one (a crash can leave it).
fn state_tmp_name(base: &str) -> String {
    format!(".{base}{STATE_SUFFIX}.tmp")
}

/// Whether a name would collide with the receiver's own work files.
pub(crate) fn is_work_file(base: &str) -> bool {
    base.starts_with('.')
        && (base.ends_with(PART_SUFFIX) || base.ends_with(STATE_SUFFIX) || base.ends_with(".tmp"))
}

/// The state file: magic, size, chunk size, hash, then the chunk set as its cumulative prefix and
/// the 64-bit words from there to the highest member, little-endian.
fn encode_state(offer: &OfferInfo, have: &ChunkSet) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(STATE_MAGIC);
    out.extend_from_slice(&offer.size.to_le_bytes());
    out.extend_from_slice(&offer.chunk_size.to_le_bytes());
    out.extend_from_slice(&offer.tag);
    let cum = have.cumulative();
    out.extend_from_slice(&cum.to_le_bytes());
    let end = have.last().map_or(0, |l| l as u64 + 1);
    let words = (end.saturating_sub(cum as u64)).div_ceil(64);
    out.extend_from_slice(&(words as u32).to_le_bytes());
    for w in 0..words {
        out.extend_from_slice(&have.word_at(cum as u64 + 64 * w).to_le_bytes());
    }
    out
}

fn decode_state(bytes: &[u8], offer: &OfferInfo) -> Option<ChunkSet> {
    let rest = bytes.strip_prefix(STATE_MAGIC.as_slice())?;
    let (size, rest) = rest.split_at_checked(8)?;
    let (chunk_size, rest) = rest.split_at_checked(4)?;
    let (hash, rest) = rest.split_at_checked(HASH_LEN)?;
    if u64::from_le_bytes(size.try_into().ok()?) != offer.size
        || u32::from_le_bytes(chunk_size.try_into().ok()?) != offer.chunk_size
        || hash != offer.tag
    {
        return None;
    }
    let (cum, rest) = rest.split_at_checked(4)?;
    let (words, rest) = rest.split_at_checked(4)?;
    let cum = u32::from_le_bytes(cum.try_into().ok()?);
    let words = u32::from_le_bytes(words.try_into().ok()?) as usize;
    if cum > offer.chunk_count || rest.len() != words * 8 {
        return None;
    }
    let mut set = ChunkSet::with_prefix(cum);
    for (w, word) in rest.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().ok()?);
        for bit in 0..64 {
            if word & (1 << bit) != 0 {
                let index = cum as u64 + 64 * w as u64 + bit;
                if index >= offer.chunk_count as u64 {
                    return None;
                }
                set.insert(index as u32);
            }
        }
    }
    Some(set)
}

impl FsHandle {
    /// Writes the pending chunks with one `pwrite`, records them, hashes what extends the
    /// hashed prefix, and saves the chunk record when it is due.
    fn flush(&mut self) -> io::Result<()> {
        let p = std::mem::take(&mut self.pending);
        if p.count > 0 {
            self.file.write_all_at(&p.data, p.offset)?;
            self.unflushed += p.data.len() as u64;
            if self.unflushed >= WRITEBACK_EVERY {
                start_writeback(&self.file);
                self.unflushed = 0;
            }
            let cs = self.offer.chunk_size as usize;
            for k in 0..p.count {
                let index = p.first + k;
                self.have.insert(index);
                if index == self.hashed {
                    // The common case, chunks in order: hash straight from the buffer.
                    let start = k as usize * cs;
                    let end = (start + cs).min(p.data.len());
                    self.hasher.update(&p.data[start..end]);
                    self.hashed += 1;
                }
            }
            self.unsaved = true;
            if self.have.contains(self.hashed) {
                // A hole was filled: catch up on what arrived after it, a bounded step.
                self.hash_ahead(HASH_STEP)?;
            }
        }
        // Keep the buffer (emptied) for the next run of chunks.
        let mut data = p.data;
        data.clear();
        self.pending.data = data;
        // A stream is never resumed, nor is a bundle: no record of their chunks.
        if self.unsaved
            && !self.stream
            && !self.bundle
            && self.last_save.elapsed() >= STATE_SAVE_INTERVAL
        {
            self.save_state();
        }
        Ok(())
    }

    /// Saves the chunk record, or says why not. A record that cannot be written (the disk is
    /// full: the part file is preallocated, the record is not) does not stop the transfer: the
    /// chunks are on disk, and the record on disk is older, which a resume only takes as fewer
    /// chunks than there are. It is tried again at the next interval.
    fn save_state(&mut self) {
        self.last_save = Instant::now();
        match self.write_state() {
            Ok(()) => {
                self.unsaved = false;
                self.save_failures = 0;
            }
            Err(e) => {
                let tmp = state_tmp_name(&self.base);
                let _ = rustix::fs::unlinkat(&self.dir, tmp.as_str(), AtFlags::empty());
                self.save_failures += 1;
                if self.save_failures.is_power_of_two() {
                    tracing::warn!(name = %self.name, error = %e, failures = self.save_failures,
                        "cannot save the transfer's progress record; receiving goes on, a resume \
                         after a crash would ask again for the chunks since the last record");
                }
            }
        }
    }

    /// Writes the chunk record (atomically: a temporary file renamed over the old one).
    fn write_state(&mut self) -> io::Result<()> {
        self.may_have_state = true;
        let tmp = state_tmp_name(&self.base);
        let fd = rustix::fs::openat2(
            &self.dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
            resolve(),
        )?;
        File::from(fd).write_all(&encode_state(&self.offer, &self.have))?;
        rustix::fs::renameat(
            &self.dir,
            tmp.as_str(),
            &self.dir,
            state_name(&self.base).as_str(),
        )?;
        Ok(())
    }

    fn remove_work_files(&self) {
        if !self.unnamed {
            let _ =
                rustix::fs::unlinkat(&self.dir, part_name(&self.base).as_str(), AtFlags::empty());
        }
        self.remove_state();
    }

    /// Removes the chunk record and its temporary file, if there may be any.
    fn remove_state(&self) {
        if self.may_have_state {
            for n in [state_name(&self.base), state_tmp_name(&self.base)] {
                let _ = rustix::fs::unlinkat(&self.dir, n.as_str(), AtFlags::empty());
            }
        }
    }

    /// Hashes, from the file, the chunks on disk that extend the hashed prefix (at most
    /// `limit` bytes' worth, so a long run after a filled hole does not stall the caller).
    fn hash_ahead(&mut self, limit: u64) -> io::Result<()> {
        let cs = self.offer.chunk_size as u64;
        // Before a stream's end is known, every chunk written is a whole one (the core tells
        // the end before it writes the last chunk).
        let size = if self.offer.stream {
            u64::MAX
        } else {
            self.offer.size
        };
        let mut start = self.hashed as u64 * cs;
        let mut end = start;
        while self.hashed < self.offer.chunk_count
            && self.have.contains(self.hashed)
            && end - start < limit
        {
            self.hashed += 1;
            end = (self.hashed as u64 * cs).min(size);
        }
        let mut buf = vec![0u8; (end - start).min(1 << 20) as usize];
        while start < end {
            let n = ((end - start) as usize).min(buf.len());
            self.file.read_exact_at(&mut buf[..n], start)?;
            self.hasher.update(&buf[..n]);
            start += n as u64;
        }
        Ok(())
    }

    /// Everything written flushed and hashed: the hash if it is `expected`, else the verdict
    /// of a mismatch.
    fn check_hash(
        &mut self,
        expected: &[u8; HASH_LEN],
    ) -> io::Result<Result<[u8; HASH_LEN], HashCheck>> {
        self.flush()?;
        let hash = self.hash_part()?;
        Ok(if &hash == expected {
            Ok(hash)
        } else {
            Err(HashCheck::mismatch(hash))
        })
    }

    /// The whole file's hash (every chunk is on disk).
    fn hash_part(&mut self) -> io::Result<[u8; HASH_LEN]> {
        self.hash_ahead(u64::MAX)?;
        if self.hashed != self.offer.chunk_count {
            return Err(io::Error::other("finishing with chunks missing"));
        }
        Ok(*self.hasher.finalize().as_bytes())
    }
}

impl FsStorage {
    /// [`Storage::open`] once the directory the file goes in is open.
    fn open_in(
        &mut self,
        offer: &OfferInfo,
        dir: OwnedFd,
        base: &str,
    ) -> Result<Opened<FsHandle>, Refusal> {
        let name = offer.name.as_str();
        if is_work_file(base) {
            return Err(Refusal::new(
                AbortReason::BadName,
                format!("{name}: names like .*.part are the receiver's work files"),
            ));
        }
        if offer.directory {
            return self.open_directory(offer, dir, base);
        }
        let mut existing_link = None;
        if offer.symlink {
            if !self.links {
                return Err(Refusal::new(
                    AbortReason::Unsupported,
                    format!("{name}: a symbolic link, and this receiver takes none (--links)"),
                ));
            }
            match rustix::fs::readlinkat(&dir, base, Vec::new()) {
                Ok(t) => existing_link = Some(t.into_bytes()),
                Err(rustix::io::Errno::NOENT) => {}
                Err(rustix::io::Errno::INVAL) => {
                    return Err(Refusal::new(
                        AbortReason::Exists,
                        format!("{name} exists and is not a symbolic link"),
                    ));
                }
                Err(e) => return Err(io_refusal(e)),
            }
        }
        if self.in_use.contains(name) {
            return Err(Refusal::new(
                AbortReason::Exists,
                format!("{name} is being received"),
            ));
        }
        // A bundle's name names nothing kept: only its work files.
        let stat = if offer.bundle {
            Err(rustix::io::Errno::NOENT)
        } else {
            rustix::fs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW)
        };
        match stat {
            // A link's name was looked at above.
            Ok(_) if offer.symlink => {}
            Ok(st) => {
                let is_file = rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::RegularFile;
                if !is_file {
                    return Err(Refusal::new(
                        AbortReason::Exists,
                        format!("{name} exists and is not a regular file"),
                    ));
                }
                if !self.overwrite {
                    // A stream's size is not known: a file under its name is simply there.
                    if offer.stream {
                        return Err(Refusal::new(
                            AbortReason::Exists,
                            format!("{name} exists (the receiver may allow --overwrite)"),
                        ));
                    }
                    if st.st_size as u64 == offer.size {
                        return self.open_existing(offer, dir, base);
                    }
                    return Err(Refusal::new(
                        AbortReason::Exists,
                        format!(
                            "{name} exists, of another size (the receiver may allow --overwrite)"
                        ),
                    ));
                }
            }
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_refusal(e)),
        }

        // A bundle's work file is never resumed (see `abandon`): it needs no name, and without
        // one a receiver that dies leaves nothing.
        if offer.bundle {
            if let Some(fd) = unnamed_file(&dir, 0o600).map_err(io_refusal)? {
                reserve(&fd, offer)?;
                self.in_use.insert(name.to_owned());
                let handle = FsHandle {
                    may_have_state: false,
                    unnamed: true,
                    ..FsHandle::new(dir, name, base, File::from(fd), offer, ChunkSet::default())
                };
                return Ok(Opened {
                    handle,
                    already_have: None,
                });
            }
        }
        let state = read_state(&dir, base);
        let state_present = state.is_ok();
        // A partial copy of the same file (size, chunk size, hash) resumes.
        // A stream never resumes: its sender cannot send its beginning again.
        let already_have = state
            .ok()
            .flatten()
            .and_then(|b| decode_state(&b, offer))
            .filter(|_| !offer.stream);
        let part = part_name(base);
        let open_part = |flags| {
            rustix::fs::openat2(
                &dir,
                part.as_str(),
                flags,
                Mode::from_raw_mode(0o600),
                resolve(),
            )
            .map_err(|e| match e {
                rustix::io::Errno::LOOP => Refusal::new(
                    AbortReason::BadName,
                    format!("{name}: the part file is a symlink"),
                ),
                e => io_refusal(e),
            })
        };
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::CLOEXEC;
        // The common case, no part file yet: made here, so a regular file, and empty. (A name
        // taken by anything, a symlink included, fails with EEXIST and goes the long way.)
        let fresh = match rustix::fs::openat2(
            &dir,
            part.as_str(),
            flags | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
            resolve(),
        ) {
            Ok(fd) => Some(fd),
            Err(rustix::io::Errno::EXIST) => None,
            Err(e) => return Err(io_refusal(e)),
        };
        let is_fresh = fresh.is_some();
        let fd = match fresh {
            Some(fd) => fd,
            None => {
                // Never open anything but a regular file as the part file: opening a device
                // node or a FIFO that happens to carry its name could block or act on the
                // device.
                if let Ok(st) = rustix::fs::statat(&dir, part.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
                    match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                        rustix::fs::FileType::RegularFile => {}
                        rustix::fs::FileType::Symlink => {
                            return Err(Refusal::new(
                                AbortReason::BadName,
                                format!("{name}: the part file is a symlink"),
                            ));
                        }
                        _ => {
                            return Err(Refusal::new(
                                AbortReason::Exists,
                                format!(
                                    "{name}: its part file {part} exists and is not a regular file"
                                ),
                            ));
                        }
                    }
                }
                open_part(flags)?
            }
        };
        // Never truncate before the lock is held: another receiver may be writing this part.
        lock_part(&dir, part.as_str(), &fd, name)?;
        // The part must hold every chunk the record claims, and be no longer than the file: a
        // preallocated part is the file's size, a small one (not preallocated) as long as what
        // was written.
        let holds = |have: &ChunkSet| {
            let len = rustix::fs::fstat(&fd).map(|s| s.st_size as u64).ok();
            let claimed = have.last().map_or(0, |l| {
                ((l as u64 + 1) * offer.chunk_size as u64).min(offer.size)
            });
            len.is_some_and(|len| len <= offer.size && claimed <= len)
        };
        let already_have = match already_have {
            Some(have) if !is_fresh && holds(&have) => Some(have),
            _ => {
                if !is_fresh {
                    rustix::fs::ftruncate(&fd, 0).map_err(io_refusal)?;
                }
                None
            }
        };
        if already_have.is_none() {
            if state_present {
                let _ = rustix::fs::unlinkat(&dir, state_name(base).as_str(), AtFlags::empty());
            }
            if let Err(r) = reserve(&fd, offer) {
                let _ = rustix::fs::unlinkat(&dir, part.as_str(), AtFlags::empty());
                return Err(r);
            }
        }
        self.in_use.insert(name.to_owned());
        let handle = FsHandle {
            existing: false,
            directory: false,
            symlink: offer.symlink,
            existing_link,
            may_have_state: state_present || !is_fresh,
            ..FsHandle::new(
                dir,
                name,
                base,
                File::from(fd),
                offer,
                already_have.clone().unwrap_or_default(),
            )
        };
        Ok(Opened {
            handle,
            already_have,
        })
    }
}

impl FsHandle {
    /// A handle for `offer`'s file `fd`, named `name` (`base` in `dir`), holding `have`; a
    /// plain file (set `existing`, `directory`, `symlink` after, for the others).
    fn new(
        dir: OwnedFd,
        name: &str,
        base: &str,
        file: File,
        offer: &OfferInfo,
        have: ChunkSet,
    ) -> Self {
        FsHandle {
            dir,
            name: name.to_owned(),
            base: base.to_owned(),
            file,
            offer: offer.clone(),
            have,
            unsaved: false,
            last_save: Instant::now(),
            save_failures: 0,
            hasher: StagedHasher::default(),
            hashed: 0,
            pending: Pending::default(),
            unflushed: 0,
            existing: false,
            directory: false,
            symlink: false,
            existing_link: None,
            stream: offer.stream,
            bundle: offer.bundle,
            manifest_chunks: None,
            may_have_state: true,
            unnamed: false,
        }
    }
}

impl FsStorage {
    /// A directory offer: the directory is made if missing (private until its verdict gives it
    /// its mode), a plain directory found under the name is taken as it is.
    fn open_directory(
        &mut self,
        offer: &OfferInfo,
        dir: OwnedFd,
        base: &str,
    ) -> Result<Opened<FsHandle>, Refusal> {
        let name = offer.name.as_str();
        match rustix::fs::mkdirat(&dir, base, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_refusal(e)),
        }
        let fd = rustix::fs::openat2(
            &dir,
            base,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            resolve(),
        )
        .map_err(|e| match e {
            rustix::io::Errno::NOTDIR => Refusal::new(
                AbortReason::Exists,
                format!("{name} exists and is not a directory"),
            ),
            rustix::io::Errno::LOOP | rustix::io::Errno::XDEV => Refusal::new(
                AbortReason::BadName,
                format!("{name} is not a plain directory"),
            ),
            e => io_refusal(e),
        })?;
        Ok(Opened {
            handle: FsHandle {
                existing: false,
                directory: true,
                symlink: false,
                existing_link: None,
                ..FsHandle::new(dir, name, base, File::from(fd), offer, ChunkSet::new())
            },
            already_have: None,
        })
    }

    /// An offer for a file that exists, of the offer's size: taken as a resume that has every
    /// chunk, read-only; its verdict is the hash of what is there.
    fn open_existing(
        &mut self,
        offer: &OfferInfo,
        dir: OwnedFd,
        base: &str,
    ) -> Result<Opened<FsHandle>, Refusal> {
        let name = offer.name.as_str();
        let fd = rustix::fs::openat2(
            &dir,
            base,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
            resolve(),
        )
        .map_err(io_refusal)?;
        let have = ChunkSet::with_prefix(offer.chunk_count);
        self.in_use.insert(name.to_owned());
        Ok(Opened {
            handle: FsHandle {
                existing: true,
                directory: false,
                symlink: false,
                existing_link: None,
                ..FsHandle::new(dir, name, base, File::from(fd), offer, have.clone())
            },
            already_have: Some(have),
        })
    }
}

/// The offer's `mode & 0o777` and, if not negative, its mtime (whole seconds), on a file or
/// directory at its verdict.
fn apply_mode_and_mtime(file: &File, offer: &OfferInfo) -> io::Result<()> {
    file.set_permissions(std::fs::Permissions::from_mode(offer.mode & 0o777))?;
    if let Ok(secs) = u64::try_from(offer.mtime) {
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
    }
    Ok(())
}

/// A symbolic link's verdict: its target (the file received) checked against the hash, kept
/// inside DIR (relative, its `..` never above DIR from where the link is), then the link made;
/// a link already there with the same target verifies as it is.
fn finish_link(h: &mut FsHandle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck> {
    let hash = match h.check_hash(expected)? {
        Ok(hash) => hash,
        Err(mismatch) => return Ok(mismatch),
    };
    let mut target = vec![0u8; h.offer.size as usize];
    h.file.read_exact_at(&mut target, 0)?;
    let depth = h.name.matches('/').count();
    let inside =
        std::str::from_utf8(&target).is_ok_and(|t| crate::cmd::tree::stays_inside(t, depth));
    if !inside {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: the link's target {:?} leads out of the receiver's directory",
                h.name,
                String::from_utf8_lossy(&target)
            ),
        ));
    }
    match &h.existing_link {
        Some(t) if *t == target => {}
        Some(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists, a link to elsewhere", h.name),
            ));
        }
        None => rustix::fs::symlinkat(target.as_slice(), &h.dir, h.base.as_str()).map_err(|e| {
            let kind = if e == rustix::io::Errno::EXIST {
                io::ErrorKind::AlreadyExists
            } else {
                e.kind()
            };
            io::Error::new(kind, format!("making the link {}: {e}", h.name))
        })?,
    }
    rustix::fs::fsync(&h.dir)?;
    Ok(HashCheck {
        verified: true,
        hash,
        members: Vec::new(),
    })
}

/// A directory's size (`st_size`: its entries' bytes on tmpfs, its blocks on ext4 or XFS) up to
/// which a bundle's manifest lists it rather than looking each of its members up: a few
/// thousand entries, read in about the time of a bundle's lookups. Listing a directory of 100 000
/// files for each of its bundles would cost more than the files.
const LIST_UP_TO: u64 = 256 << 10;

/// The largest manifest taken (the core takes bundles of [`MAX_BUNDLE`] at most).
///
/// [`MAX_BUNDLE`]: crate::proto::receiver::MAX_BUNDLE
const MAX_MANIFEST: u64 = 4 << 20;

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A bundle's manifest, read from its part file (whose manifest chunks are all written).
fn read_manifest_bytes(h: &FsHandle) -> io::Result<Vec<u8>> {
    let mut head = [0u8; bundle::HEADER_LEN];
    h.file.read_exact_at(&mut head, 0)?;
    let len = bundle::manifest_len(&head).map_err(|e| invalid_data(format!("{e:?}")))? as u64;
    if len < bundle::HEADER_LEN as u64 || len > h.offer.size {
        return Err(invalid_data(format!(
            "the bundle's manifest claims {len} bytes of {}",
            h.offer.size
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    h.file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// A member's name, checked as an offer's is; `InvalidInput` (`bad name`) if it is not one.
fn member_name<'m>(m: &bundle::Member<'m>) -> io::Result<&'m str> {
    let shown = || String::from_utf8_lossy(m.name).into_owned();
    let name = crate::proto::validate_name(m.name).map_err(|why| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bundle member {:?}: {why}", shown()),
        )
    })?;
    let base = name.rsplit('/').next().unwrap_or(name);
    if is_work_file(base) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bundle member {name}: names like .*.part are the receiver's work files"),
        ));
    }
    Ok(name)
}

/// Whether `fd` is a regular file of `size` bytes whose BLAKE3 is `hash`.
fn holds(fd: &OwnedFd, size: u64, hash: &[u8; HASH_LEN]) -> io::Result<bool> {
    let st = rustix::fs::fstat(fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile
        || st.st_size as u64 != size
    {
        return Ok(false);
    }
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; (size as usize).clamp(1, 1 << 20)];
    let file = File::from(rustix::io::dup(fd)?);
    let mut at = 0u64;
    while at < size {
        let n = ((size - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(hasher.finalize().as_bytes() == hash)
}

impl FsStorage {
    /// [`Storage::read_manifest`] for a bundle: the members already here (a regular file
    /// under the name, of the member's size and hash) are copied into the part file, and every
    /// chunk that then holds only such members' bytes and padding counts as received.
    fn bundle_manifest(&mut self, h: &mut FsHandle) -> io::Result<Option<Vec<u32>>> {
        let cs = h.offer.chunk_size as u64;
        // Cheap until the manifest's chunks are all here: written, or waiting in order to be.
        let p = &h.pending;
        let upto = if p.count > 0 && h.have.cumulative() >= p.first {
            p.first + p.count
        } else {
            h.have.cumulative()
        };
        if upto == 0 || h.manifest_chunks.is_some_and(|n| upto < n) {
            return Ok(None);
        }
        h.flush()?;
        let manifest_chunks = match h.manifest_chunks {
            Some(n) => n,
            None => {
                let mut head = [0u8; bundle::HEADER_LEN];
                h.file.read_exact_at(&mut head, 0)?;
                let len =
                    bundle::manifest_len(&head).map_err(|e| invalid_data(format!("{e:?}")))? as u64;
                if len > MAX_MANIFEST.min(h.offer.size) {
                    return Err(invalid_data(format!(
                        "the bundle's manifest claims {len} bytes (at most {MAX_MANIFEST}, and \
                         within its {} bytes)",
                        h.offer.size
                    )));
                }
                let n = len.div_ceil(cs).min(h.offer.chunk_count as u64) as u32;
                h.manifest_chunks = Some(n);
                n
            }
        };
        if h.have.cumulative() < manifest_chunks {
            return Ok(None);
        }
        let bytes = read_manifest_bytes(h)?;
        let manifest = bundle::Manifest::parse(&bytes, h.offer.size)
            .map_err(|e| invalid_data(format!("the bundle's manifest is malformed ({e:?})")))?;
        // What the receiver will not need to receive: members it holds, and padding (zeros,
        // which the part file reads as where nothing was written).
        let mut known: Vec<(u64, u64)> = Vec::new();
        let mut end = bytes.len() as u64;
        // The names in each members' directory, listed once (a member is looked at only if
        // its name is there: a fresh tree costs a listing per directory, not a lookup per file;
        // in a large directory, a lookup per file).
        let mut listed: Option<(String, Option<HashSet<Vec<u8>>>)> = None;
        let mut names = HashSet::new();
        for m in manifest.members() {
            let name = member_name(&m)?;
            if !names.insert(name) {
                return Err(invalid_data(format!(
                    "the bundle's manifest names {name} twice"
                )));
            }
            // Padding is zero and shorter than a chunk: a gap the receiver would take as
            // received without a byte of it arriving cannot be large.
            if m.offset - end >= cs {
                return Err(invalid_data(format!(
                    "the bundle's manifest leaves {} bytes before {name} (less than a chunk \
                     at most)",
                    m.offset - end
                )));
            }
            known.push((end, m.offset));
            end = m.range().end;
            if m.size == 0 {
                continue;
            }
            let (dir, base) = name.rsplit_once('/').unwrap_or(("", name));
            if listed.as_ref().is_none_or(|(d, _)| d != dir) {
                listed = Some((dir.to_owned(), self.names_in(dir)));
            }
            let maybe_here = match &listed {
                Some((_, Some(names))) => names.contains(base.as_bytes()),
                _ => true,
            };
            if !maybe_here {
                continue;
            }
            let Ok(fd) = rustix::fs::openat2(
                &self.root,
                name,
                OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                Mode::empty(),
                resolve(),
            ) else {
                continue;
            };
            if holds(&fd, m.size, &m.hash)? {
                let mut off_in = 0u64;
                let mut off_out = m.offset;
                let mut left = m.size;
                while left > 0 {
                    let n = rustix::fs::copy_file_range(
                        &fd,
                        Some(&mut off_in),
                        &h.file,
                        Some(&mut off_out),
                        left as usize,
                    )?;
                    if n == 0 {
                        return Err(io::Error::other(format!("{name} shrank while read")));
                    }
                    left -= n as u64;
                }
                known.push((m.offset, m.range().end));
            }
        }
        // The part must reach the content's end for the hash to read it.
        if h.file.metadata()?.len() < h.offer.size {
            h.file.set_len(h.offer.size)?;
        }
        known.retain(|(a, b)| a < b);
        known.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (a, b) in known {
            match merged.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let mut filled = Vec::new();
        for (a, b) in merged {
            // Chunks wholly inside [a, b) (the last chunk ends at the content's end).
            let first = a.div_ceil(cs);
            let mut k = first;
            while k < h.offer.chunk_count as u64 {
                let end = ((k + 1) * cs).min(h.offer.size);
                if end > b {
                    break;
                }
                if !h.have.contains(k as u32) {
                    h.have.insert(k as u32);
                    filled.push(k as u32);
                }
                k += 1;
            }
        }
        if !filled.is_empty() {
            h.unsaved = true;
        }
        Ok(Some(filled))
    }

    /// The names in directory `dir` under DIR (none if it is not there or cannot be read);
    /// `None` for a directory larger than [`LIST_UP_TO`], whose names are looked up one by one.
    fn names_in(&self, dir: &str) -> Option<HashSet<Vec<u8>>> {
        let fd = if dir.is_empty() {
            rustix::io::dup(&self.root)
        } else {
            rustix::fs::openat2(
                &self.root,
                dir,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
                resolve(),
            )
        };
        let Ok(fd) = fd else {
            return Some(HashSet::new());
        };
        if rustix::fs::fstat(&fd).is_ok_and(|st| st.st_size as u64 > LIST_UP_TO) {
            return None;
        }
        let Ok(mut d) = rustix::fs::Dir::read_from(&fd) else {
            return Some(HashSet::new());
        };
        let mut names = HashSet::new();
        while let Some(Ok(e)) = d.read() {
            names.insert(e.file_name().to_bytes().to_vec());
        }
        Some(names)
    }
}

/// The `io::ErrorKind` whose abort is the refusal's reason (see the core's `abort_for`).
fn refusal_kind(r: &Refusal) -> io::ErrorKind {
    match r.reason {
        AbortReason::Exists => io::ErrorKind::AlreadyExists,
        AbortReason::BadName => io::ErrorKind::InvalidInput,
        _ => io::ErrorKind::Other,
    }
}

impl Storage for FsStorage {
    type Handle = FsHandle;

    fn read_manifest(&mut self, h: &mut FsHandle) -> io::Result<Option<Vec<u32>>> {
        if !h.bundle {
            return Ok(Some(Vec::new()));
        }
        self.bundle_manifest(h)
    }

    fn open(&mut self, offer: &OfferInfo) -> Result<Opened<FsHandle>, Refusal> {
        let (dir, base, created) = self.open_parent(offer.name.as_str())?;
        let base = base.to_owned();
        let opened = self.open_in(offer, dir, &base);
        if opened.is_err() {
            // A refused offer leaves nothing behind, not even the directories made for it.
            created.remove();
        }
        opened
    }

    fn write(&mut self, h: &mut FsHandle, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        // A stream's writes are bounded by the core (the size limit) until its end is known.
        if !h.offer.stream && offset + data.len() as u64 > h.offer.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end",
            ));
        }
        let p = &mut h.pending;
        let follows = p.count > 0
            && offset == p.offset + p.data.len() as u64
            && index == p.first + p.count
            && p.data.len() + data.len() <= WRITE_BEHIND;
        if !follows {
            h.flush()?;
            let p = &mut h.pending;
            if p.data.capacity() == 0 {
                p.data.reserve_exact(WRITE_BEHIND);
            }
            p.offset = offset;
            p.first = index;
        }
        let p = &mut h.pending;
        p.data.extend_from_slice(data);
        p.count += 1;
        if p.data.len() >= WRITE_BEHIND || h.last_save.elapsed() >= STATE_SAVE_INTERVAL {
            h.flush()?;
        }
        Ok(())
    }

    fn finish(&mut self, mut h: FsHandle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck> {
        if h.directory {
            let hash = h.hash_part()?;
            let verified = &hash == expected;
            if verified {
                apply_mode_and_mtime(&h.file, &h.offer)?;
            }
            return Ok(HashCheck {
                verified,
                hash,
                members: Vec::new(),
            });
        }
        self.in_use.remove(&h.name);
        if h.symlink {
            let result = finish_link(&mut h, expected);
            h.remove_work_files();
            return result;
        }
        if h.existing {
            let hash = h.hash_part()?;
            if &hash != expected {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists with other contents (the receiver may allow --overwrite)",
                        h.name
                    ),
                ));
            }
            return Ok(HashCheck {
                verified: true,
                hash,
                members: Vec::new(),
            });
        }
        self.placer.finish(h, expected, &self.in_use)
    }

    fn start_finish(
        &mut self,
        h: FsHandle,
        expected: &[u8; HASH_LEN],
        ticket: u64,
    ) -> Option<io::Result<HashCheck>> {
        // A file's or a bundle's verdict goes to the placing thread; a directory's, a link's
        // and one of a file already in place are quick, and so is a lone file's in memory. A
        // bundle's is not, even there: its hundreds of files took the receiving thread 3.5-5 ms
        // a bundle on tmpfs, during which no packet was read and no ack went out.
        if h.directory || h.symlink || h.existing || (self.memory && !h.bundle) {
            return Some(self.finish(h, expected));
        }
        if matches!(self.placing, Placing::NotYet) {
            self.placing = match Finisher::start(self.placer.clone()) {
                Ok(f) => Placing::Thread(f),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start the thread that puts files in \
                        place; the receiving thread does it");
                    Placing::Inline
                }
            };
        }
        let Placing::Thread(finisher) = &mut self.placing else {
            return Some(self.finish(h, expected));
        };
        // Only a bundle's members are checked against the names being received.
        let busy = if h.bundle {
            let mut busy = self.in_use.clone();
            busy.remove(&h.name);
            busy
        } else {
            HashSet::new()
        };
        match finisher.submit(ticket, h, expected, busy) {
            // Its name stays in use until its verdict is taken.
            Ok(()) => None,
            Err(h) => Some(self.finish(*h, expected)),
        }
    }

    fn poll_finished(&mut self) -> Option<(u64, io::Result<HashCheck>)> {
        let Placing::Thread(f) = &mut self.placing else {
            return None;
        };
        let (done, name) = f.poll()?;
        self.in_use.remove(&name);
        Some(done)
    }

    fn wait_finished(&mut self) -> Vec<(u64, io::Result<HashCheck>)> {
        let Placing::Thread(f) = &mut self.placing else {
            return Vec::new();
        };
        let all = f.wait_all();
        all.into_iter()
            .map(|(done, name)| {
                self.in_use.remove(&name);
                done
            })
            .collect()
    }

    fn end_stream(&mut self, h: &mut FsHandle, size: u64, chunk_count: u32) -> io::Result<()> {
        h.flush()?;
        let written = h.file.metadata()?.len();
        if h.have.last().is_some_and(|l| l >= chunk_count) || written > size {
            return Err(io::Error::other("chunks beyond the stream's end"));
        }
        h.file.set_len(size)?;
        h.offer.size = size;
        h.offer.chunk_count = chunk_count;
        h.offer.stream = false;
        Ok(())
    }

    fn abandon(&mut self, mut h: FsHandle, keep_partial: bool) {
        if h.directory {
            return;
        }
        self.in_use.remove(&h.name);
        if h.existing {
            return;
        }
        // A part file that never got a chunk is worth nothing to a resume: leave no trace.
        let nothing = h.have.is_empty() && h.pending.count == 0;
        // Nor does a stream's: it is never resumed. Nor a bundle's: at most a few MiB, sent
        // again whole, and its sender may send its files alone instead (a copy kept would
        // never be claimed).
        if keep_partial && !nothing && !h.stream && !h.bundle {
            if let Err(e) = h.flush() {
                tracing::warn!(name = %h.name, error = %e, "cannot write the last chunks received");
            }
            if h.unsaved {
                h.save_state();
            }
        } else {
            h.remove_work_files();
        }
    }
}

/// Takes the part file's lock without waiting, and makes sure the file locked is still the one
/// under the part name (a receiver that just finished renames its part file to the final name,
/// and that file must not be taken for a new part).
fn lock_part(dir: &impl AsFd, part: &str, fd: &OwnedFd, name: &str) -> Result<(), Refusal> {
    match rustix::fs::flock(fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            return Err(Refusal::new(
                AbortReason::Exists,
                format!("{name} is being received by another receiver sharing this directory"),
            ));
        }
        Err(e) => return Err(io_refusal(e)),
    }
    let locked = rustix::fs::fstat(fd).map_err(io_refusal)?;
    match rustix::fs::statat(dir, part, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if st.st_dev == locked.st_dev && st.st_ino == locked.st_ino => Ok(()),
        _ => Err(Refusal::new(
            AbortReason::Exists,
            format!("{name} was just received by another receiver sharing this directory"),
        )),
    }
}

/// The chunk record of `base`'s part file, if it can be read; `Err` if there is none at all
/// (nothing to remove either).
fn read_state(dir: &impl AsFd, base: &str) -> Result<Option<Vec<u8>>, ()> {
    let fd = match rustix::fs::openat2(
        dir,
        state_name(base).as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
        resolve(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Err(()),
        Err(_) => return Ok(None),
    };
    let mut bytes = Vec::new();
    Ok(File::from(fd)
        .take(16 << 20)
        .read_to_end(&mut bytes)
        .ok()
        .map(|_| bytes))
}

mod place;
#[cfg(test)]
mod tests;
