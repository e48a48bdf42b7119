//! The receiver's file interface, and an in-memory implementation for tests.
//!
//! The receiver core decides *what* happens to a transfer; a [`Storage`] does it to files. The real
//! implementation (outside `proto/`) writes chunks at their offsets into `DIR/.name.part`, keeps a
//! record of which chunks it holds so an interrupted transfer can resume, and on `finish` fsyncs,
//! hashes, and renames or removes. The core never holds file data itself: each chunk goes straight
//! to `write`, so its memory does not grow with the file (the set of received chunks aside).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;

use chunk_common::wire::{AbortReason, HASH_LEN};

use super::chunkset::ChunkSet;

/// An accepted-looking offer, checked by the core (name, size limit, chunk size) and handed to
/// storage for the checks only it can make (space, existing files, a partial copy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferInfo {
    pub src: super::Peer,
    pub transfer_id: u32,
    /// A validated relative name (see [`validate_name`](super::validate_name)).
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub mode: u32,
    pub mtime: i64,
    /// The sender's tag for this version of the file: a partial copy resumes only under the
    /// same tag (and name, size, chunk size). The whole-file hash comes later, in the hash
    /// message, and is what `finish` checks.
    pub tag: [u8; HASH_LEN],
    /// A directory to make (size 0), not a file.
    pub directory: bool,
    /// A symbolic link: its content is the target.
    pub symlink: bool,
    /// A stream: `size` is 0 and `chunk_count` unknown until [`Storage::end_stream`]; nothing
    /// is set aside for it, and no partial copy is resumed.
    pub stream: bool,
    /// A bundle: the content is a manifest and its members (docs/PROTOCOL.md, "Bundles"),
    /// stored under their own names at the verdict; `name` is made from the tag
    /// ([`bundle_name`](super::receiver::bundle_name)) and names nothing that is kept.
    pub bundle: bool,
}

/// Storage's answer to an acceptable offer.
#[derive(Debug)]
pub struct Opened<H> {
    pub handle: H,
    /// Chunks already on disk from an interrupted transfer of the same name, size, chunk size and
    /// tag (resume). The first ack acknowledges them.
    pub already_have: Option<ChunkSet>,
}

/// Why storage will not take a file; it becomes the abort sent to the sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: AbortReason,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: AbortReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What `finish` found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashCheck {
    /// The hash matched and the file is in place under its final name.
    pub verified: bool,
    /// The hash of what was written.
    pub hash: [u8; HASH_LEN],
    /// A bundle's members put in place (name, size); empty for anything else.
    pub members: Vec<(String, u64)>,
}

impl HashCheck {
    /// What was written hashes to `hash`, not the sender's: nothing was kept.
    pub fn mismatch(hash: [u8; HASH_LEN]) -> Self {
        HashCheck {
            verified: false,
            hash,
            members: Vec::new(),
        }
    }
}

/// Where the receiver puts files.
pub trait Storage {
    /// One file being received.
    type Handle;

    /// Prepares to receive `offer`, or refuses it (no space, exists, ...).
    fn open(&mut self, offer: &OfferInfo) -> Result<Opened<Self::Handle>, Refusal>;

    /// Writes chunk `index`, `data`, at byte `offset` of the file. Called once per chunk that
    /// storage did not already have.
    fn write(
        &mut self,
        handle: &mut Self::Handle,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> io::Result<()>;

    /// A stream's end is known: it is `size` bytes in `chunk_count` chunks (every chunk written
    /// so far lies within them).
    fn end_stream(
        &mut self,
        handle: &mut Self::Handle,
        size: u64,
        chunk_count: u32,
    ) -> io::Result<()>;

    /// A bundle's manifest, once its chunks are all written: checked, and the chunks of the
    /// members this storage already holds under their names (same size, same hash) filled in
    /// from them, which it returns for the core to count as received. `Ok(None)`: not all
    /// here yet. An error ends the transfer (`InvalidData`: the manifest is not one). Storage
    /// that does not look into bundles fills nothing in.
    fn read_manifest(&mut self, _handle: &mut Self::Handle) -> io::Result<Option<Vec<u32>>> {
        Ok(Some(Vec::new()))
    }

    /// Every chunk is written: flush, hash, and move the file to its name if the hash is
    /// `expected`, or remove it if not.
    fn finish(&mut self, handle: Self::Handle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck>;

    /// As [`finish`](Self::finish), for storage that may do the work away from the caller (on
    /// a thread of its own, while the receiver goes on reading packets): `Some` is `finish`'s
    /// result; `None` says the result comes later from [`poll_finished`](Self::poll_finished),
    /// under `ticket`.
    fn start_finish(
        &mut self,
        handle: Self::Handle,
        expected: &[u8; HASH_LEN],
        ticket: u64,
    ) -> Option<io::Result<HashCheck>> {
        let _ = ticket;
        Some(self.finish(handle, expected))
    }

    /// A finish started by [`start_finish`](Self::start_finish) that has ended, with its
    /// ticket; `None` if none has yet. Never waits.
    fn poll_finished(&mut self) -> Option<(u64, io::Result<HashCheck>)> {
        None
    }

    /// Waits for every finish started and not yet polled, and returns them.
    fn wait_finished(&mut self) -> Vec<(u64, io::Result<HashCheck>)> {
        Vec::new()
    }

    /// The transfer ends unfinished (idle, cancelled, error). With `keep_partial`, what was
    /// written stays for a later resume.
    fn abandon(&mut self, handle: Self::Handle, keep_partial: bool);
}

/// A received file in [`MemStorage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemFile {
    pub data: Vec<u8>,
    pub mode: u32,
    pub mtime: i64,
}

#[derive(Clone, Debug)]
struct Partial {
    size: u64,
    chunk_size: u32,
    tag: [u8; HASH_LEN],
    mode: u32,
    mtime: i64,
    data: Vec<u8>,
    have: ChunkSet,
    /// A stream whose end is not known yet: `data` grows as chunks come.
    stream: bool,
}

/// [`Storage`] in memory, hashing with BLAKE3 as the real one does. Partial files survive the
/// receiver that wrote them (as `.part` files survive a crash), so tests can restart receivers.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    files: BTreeMap<String, MemFile>,
    partials: BTreeMap<String, Partial>,
    /// Names being received (a real implementation would hold them open).
    in_use: BTreeSet<String>,
    /// Refuse offers that would take more than this many bytes in all (`no space`).
    pub capacity: Option<u64>,
    /// Replace existing files instead of refusing them (`exists`).
    pub overwrite: bool,
    /// Fail every write (to test the I/O-error path).
    pub fail_writes: bool,
    /// Reach verdicts later, as storage that puts files in place on a thread of its own does:
    /// [`Storage::start_finish`] holds each until [`release_finishes`](Self::release_finishes).
    pub defer_finishes: bool,
    deferred: Vec<(u64, MemHandle, [u8; HASH_LEN])>,
    released: VecDeque<(u64, MemHandle, [u8; HASH_LEN])>,
}

/// [`MemStorage`]'s handle: the partial file's name.
#[derive(Clone, Debug)]
pub struct MemHandle {
    name: String,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets the verdicts held so far (see [`defer_finishes`](Self::defer_finishes)) be
    /// reached: [`Storage::poll_finished`] returns them, in order.
    pub fn release_finishes(&mut self) {
        self.released.extend(self.deferred.drain(..));
    }

    /// A finished, verified file.
    pub fn file(&self, name: &str) -> Option<&MemFile> {
        self.files.get(name)
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &MemFile)> {
        self.files.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Puts a finished file in place (to test `exists`).
    pub fn insert_file(&mut self, name: &str, data: Vec<u8>) {
        let file = MemFile {
            data,
            mode: 0o644,
            mtime: 0,
        };
        self.files.insert(name.to_owned(), file);
    }

    /// Chunks held for an unfinished file.
    pub fn partial_chunks(&self, name: &str) -> Option<u64> {
        self.partials.get(name).map(|p| p.have.len())
    }

    /// What a process restart does: forgets which names were open, keeps the data.
    pub fn crash(&mut self) {
        self.in_use.clear();
    }

    fn used(&self, except: &str) -> u64 {
        let files: u64 = self.files.values().map(|f| f.data.len() as u64).sum();
        let partials: u64 = self
            .partials
            .iter()
            .filter(|(name, _)| *name != except)
            .map(|(_, p)| p.size)
            .sum();
        files + partials
    }
}

impl Storage for MemStorage {
    type Handle = MemHandle;

    fn open(&mut self, offer: &OfferInfo) -> Result<Opened<MemHandle>, Refusal> {
        let name = &offer.name;
        if self.files.contains_key(name) && !self.overwrite {
            return Err(Refusal::new(AbortReason::Exists, format!("{name} exists")));
        }
        if self.in_use.contains(name) {
            return Err(Refusal::new(
                AbortReason::Exists,
                format!("{name} is being received"),
            ));
        }
        if let Some(cap) = self.capacity {
            // A stream's size is not known: only its writes can meet the capacity.
            if self.used(name).saturating_add(offer.size) > cap {
                return Err(Refusal::new(AbortReason::NoSpace, "storage full"));
            }
        }
        let same = !offer.stream
            && self.partials.get(name).is_some_and(|p| {
                p.size == offer.size && p.chunk_size == offer.chunk_size && p.tag == offer.tag
            });
        let already_have = if same {
            self.partials.get(name).map(|p| p.have.clone())
        } else {
            let size = usize::try_from(offer.size)
                .map_err(|_| Refusal::new(AbortReason::NoSpace, "too large for memory"))?;
            let partial = Partial {
                size: offer.size,
                chunk_size: offer.chunk_size,
                tag: offer.tag,
                mode: offer.mode,
                mtime: offer.mtime,
                data: vec![0; size],
                have: ChunkSet::new(),
                stream: offer.stream,
            };
            self.partials.insert(name.clone(), partial);
            None
        };
        self.in_use.insert(name.clone());
        Ok(Opened {
            handle: MemHandle { name: name.clone() },
            already_have,
        })
    }

    fn write(&mut self, h: &mut MemHandle, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.fail_writes {
            return Err(io::Error::other("injected write failure"));
        }
        let start = offset as usize;
        let end = start + data.len();
        let (capacity, used) = (self.capacity, self.used(&h.name));
        let p = self
            .partials
            .get_mut(&h.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "partial file vanished"))?;
        if p.stream && end > p.data.len() {
            // A stream grows as it arrives, and may meet the capacity.
            if capacity.is_some_and(|cap| used + end as u64 > cap) {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            p.data.resize(end, 0);
        }
        if end > p.data.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write past the end",
            ));
        }
        p.data[start..end].copy_from_slice(data);
        p.have.insert(index);
        Ok(())
    }

    fn start_finish(
        &mut self,
        h: MemHandle,
        expected: &[u8; HASH_LEN],
        ticket: u64,
    ) -> Option<io::Result<HashCheck>> {
        if self.defer_finishes {
            self.deferred.push((ticket, h, *expected));
            return None;
        }
        Some(self.finish(h, expected))
    }

    fn poll_finished(&mut self) -> Option<(u64, io::Result<HashCheck>)> {
        let (ticket, h, expected) = self.released.pop_front()?;
        Some((ticket, self.finish(h, &expected)))
    }

    fn wait_finished(&mut self) -> Vec<(u64, io::Result<HashCheck>)> {
        self.release_finishes();
        std::iter::from_fn(|| self.poll_finished()).collect()
    }

    fn end_stream(&mut self, h: &mut MemHandle, size: u64, chunk_count: u32) -> io::Result<()> {
        let p = self
            .partials
            .get_mut(&h.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "partial file vanished"))?;
        if p.have.last().is_some_and(|l| l >= chunk_count) || (p.data.len() as u64) > size {
            return Err(io::Error::other("chunks beyond the stream's end"));
        }
        p.data.resize(size as usize, 0);
        p.size = size;
        p.stream = false;
        Ok(())
    }

    fn finish(&mut self, h: MemHandle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck> {
        self.in_use.remove(&h.name);
        let p = self
            .partials
            .remove(&h.name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "partial file vanished"))?;
        let hash = *blake3::hash(&p.data).as_bytes();
        let verified = &hash == expected;
        if verified {
            let file = MemFile {
                data: p.data,
                mode: p.mode,
                mtime: p.mtime,
            };
            self.files.insert(h.name, file);
        }
        Ok(HashCheck {
            verified,
            hash,
            members: Vec::new(),
        })
    }

    fn abandon(&mut self, h: MemHandle, keep_partial: bool) {
        self.in_use.remove(&h.name);
        if !keep_partial {
            self.partials.remove(&h.name);
        }
    }
}
