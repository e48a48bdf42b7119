//! The send driver: one sender core at a time over a chunk socket (raw IP of either family, or
//! UDP with `--udp`). Answers come in through
//! [`Intake`] (the same checks the receive path applies, then the key, then the body), the core's
//! packets go out a batch per `sendmmsg`, and the loop sleeps in `ppoll` until the core's next
//! timer (the pacer's included, to the nanosecond) or an answer.
//!
//! Also here: what the sender needs to know about the path (the route's MTU, the bytes a packet
//! carries besides its chunk) and about its file (opened without blocking, hashed, read by chunk).

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    os::{
        fd::{AsFd, OwnedFd},
        unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_common::wire::{self, AbortReason};

use super::wait::{self, Stop};
use crate::{
    auth::{self, Psk},
    crypto::{
        Credentials, KnownHosts, PublicKey,
        handshake::{HandshakeError, Initiator},
        keys::Known,
        transport::{INNER_AT, OVERHEAD},
    },
    intake::Intake,
    net::{
        batch::BatchSender,
        packet_tx::PacketTx,
        raw::{ChunkSocket, Transport},
    },
    proto::{
        ChunkSource, FileMeta, SendError, Sender, SenderConfig, SenderStats,
        sender::{self as core, SharedPath},
    },
};

/// A datagram socket connected to `to` (nothing is sent): the kernel has looked up the route,
/// and tells its MTU and source address.
fn route_probe(to: IpAddr) -> std::io::Result<socket2::Socket> {
    let domain = if to.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    sock.connect(&SocketAddr::new(to, 9).into())?;
    Ok(sock)
}

/// The MTU of the route to `to`, as the kernel knows it (interface MTU, or a smaller path MTU
/// learnt from ICMP or ICMPv6).
pub fn route_mtu(to: IpAddr) -> std::io::Result<u32> {
    let sock = route_probe(to)?;
    if to.is_ipv6() {
        Ok(rustix::net::sockopt::ipv6_mtu(&sock)?)
    } else {
        Ok(rustix::net::sockopt::ip_mtu(&sock)?)
    }
}

/// The local address the kernel would send from to reach `to`.
pub fn route_source(to: IpAddr) -> std::io::Result<IpAddr> {
    route_probe(to)?
        .local_addr()?
        .as_socket()
        .map(|a| a.ip())
        .ok_or_else(|| std::io::Error::other("no local address"))
}

/// A packet socket for `sock`'s packets to `to` (same source, same TTL or hop limit), or
/// `None` when the socket has no source yet or the packet socket cannot be opened.
fn packet_tx(sock: &ChunkSocket, to: IpAddr, protocol: u8) -> Option<PacketTx> {
    let src = sock.socket().local_addr().ok()?.as_socket()?.ip();
    if src.is_unspecified() {
        return None;
    }
    let ttl = if to.is_ipv6() {
        rustix::net::sockopt::ipv6_unicast_hops(sock.socket()).ok()?
    } else {
        rustix::net::sockopt::ip_ttl(sock.socket()).ok()? as u8
    };
    PacketTx::open(src, to, protocol, ttl)
        .inspect_err(|e| tracing::debug!(error = %e, "no packet socket"))
        .ok()
}

/// How a sender's packets are protected, for their size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protection {
    Clear,
    /// The pre-shared key's authentication trailer (`--no-encryption` with `--psk-file`).
    Tagged,
    /// Sealed under a session (encryption).
    Sealed,
}

impl Protection {
    /// Bytes it adds to a chunk packet.
    pub fn bytes(self) -> u32 {
        match self {
            Protection::Clear => 0,
            Protection::Tagged => auth::TRAILER_LEN as u32,
            Protection::Sealed => OVERHEAD as u32,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Protection::Clear => "",
            Protection::Tagged => ", 24 for the authentication trailer",
            Protection::Sealed => {
                ", 44 for the seal (its header, counter and tag around the chunk packet)"
            }
        }
    }
}

/// Bytes a chunk packet carries besides its chunk: the IP header (without options or extension
/// headers), the UDP header over UDP, the chunk header, and the protection's.
pub fn packet_overhead(protection: Protection, transport: Transport, v6: bool) -> u32 {
    transport.header_len(v6) + wire::HEADER_LEN as u32 + protection.bytes()
}

/// What [`packet_overhead`] is made of, for messages.
pub fn overhead_words(protection: Protection, transport: Transport, v6: bool) -> String {
    let ip = transport.header_words(v6);
    format!("{ip}, 20 for the chunk header{}", protection.words())
}

/// Opens a file to send and describes it for the offer. Opened with `O_NONBLOCK`: a FIFO (or a
/// device) must not wait for a writer; what is not a regular file is refused right after, before
/// anything is read from it. Nothing is read here: the whole-file hash is computed as the file
/// is read for sending ([`FileSource`]), so the first chunk leaves at once, however large the
/// file.
pub fn open_file(path: &Path, name: String) -> Result<(File, FileMeta)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let meta = FileMeta {
        name,
        size: md.len(),
        mode: md.mode() & 0o777,
        mtime: md.mtime(),
        tag: file_tag(&md),
        directory: false,
        symlink: false,
        stream: false,
        bundle: None,
    };
    Ok((file, meta))
}

/// A symbolic link to offer: its target as the file's content (in an anonymous memory file),
/// its mtime and a tag of its target and times.
pub fn open_link(path: &Path, name: String, target: &str) -> Result<(File, FileMeta)> {
    let md = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot read the link {}", path.display()))?;
    let fd = rustix::fs::memfd_create("chunk-link", rustix::fs::MemfdFlags::CLOEXEC)
        .context("memfd_create")?;
    let mut file = File::from(fd);
    std::io::Write::write_all(&mut file, target.as_bytes())?;
    let mut tag = blake3::Hasher::new_derive_key("chunk link tag v1");
    tag.update(target.as_bytes());
    tag.update(&file_tag(&md));
    let meta = FileMeta {
        name,
        size: target.len() as u64,
        mode: 0o777,
        mtime: md.mtime(),
        tag: *tag.finalize().as_bytes(),
        directory: false,
        symlink: true,
        stream: false,
        bundle: None,
    };
    Ok((file, meta))
}

/// Standard input as a stream to offer (docs/PROTOCOL.md, "Streams"): its size is learnt at
/// its end; mode 0644, mtime now, a random tag (a stream never resumes).
pub fn open_stdin(name: String) -> Result<(File, FileMeta)> {
    let fd = rustix::io::dup(std::io::stdin()).context("standard input")?;
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let meta = FileMeta {
        name,
        size: 0,
        mode: 0o644,
        mtime,
        tag: rand::random(),
        directory: false,
        symlink: false,
        stream: true,
        bundle: None,
    };
    Ok((File::from(fd), meta))
}

/// Files up to this size may go in a bundle (docs/PROTOCOL.md, "Bundles"): below it the
/// offer, hash message and verdict of a transfer of their own, with their round trips and the
/// receiver's work per transfer, cost more than the file's bytes.
pub const BUNDLE_MEMBER_MAX: u64 = 64 << 10;
/// A bundle's content at most (manifest, members and their padding): small enough to be read
/// and hashed in the send loop as a small file is, large enough that its own offer, hash and
/// verdict are shared by hundreds of files.
pub const BUNDLE_MAX: u64 = 1 << 20;
/// Members of one bundle at most.
pub const BUNDLE_MAX_MEMBERS: usize = 1024;

/// One file of a bundle, as the sender reports it.
#[derive(Clone, Debug)]
pub struct BundleMember {
    /// Where its bytes start in the bundle's content (a multiple of the chunk size).
    pub offset: u64,
    pub size: u64,
    pub hash: [u8; wire::HASH_LEN],
}

impl BundleMember {
    /// The bundle's chunks that hold its bytes (none for an empty file).
    pub fn chunks(&self, chunk_size: u32) -> std::ops::Range<u32> {
        let cs = chunk_size as u64;
        let first = self.offset / cs;
        let end = (self.offset + self.size).div_ceil(cs).max(first);
        first as u32..end as u32
    }
}

/// A file that may go in a bundle, read whole: its metadata as opened and its bytes. `None` if
/// it is not a regular file of at most [`BUNDLE_MEMBER_MAX`] bytes, cannot be opened or read
/// (then it goes alone, where it gets its own message), or shrank while read.
pub fn read_small(path: &Path, name: String) -> Option<(FileMeta, Vec<u8>)> {
    let (file, meta) = open_file(path, name).ok()?;
    if meta.size > BUNDLE_MEMBER_MAX {
        return None;
    }
    let mut bytes = vec![0u8; meta.size as usize];
    // Its size as opened; one that grew since is sent as it was (its tag changed: a later send
    // sends it again).
    file.read_exact_at(&mut bytes, 0).ok()?;
    Some((meta, bytes))
}

/// Small files, read with [`read_small`], in one bundle to offer (an anonymous memory file):
/// the manifest (each file's name, size, mode, mtime and BLAKE3), then each
/// file's bytes from the next multiple of `chunk_size`, so that no chunk holds two files and a
/// receiver that already has one acknowledges its chunks as a whole. Its tag is made from the
/// files' names and tags, so the same files bundled again resume the bundle's partial copy.
pub fn open_bundle(
    files: Vec<(FileMeta, Vec<u8>)>,
    chunk_size: u32,
) -> Result<(File, FileMeta, Vec<BundleMember>)> {
    use chunk_common::bundle;
    let names: usize = files.iter().map(|(m, _)| m.name.len()).sum();
    let manifest_len = bundle::manifest_size(files.len(), names);
    let mut manifest = vec![0u8; manifest_len as usize];
    bundle::emit_header(
        files.len() as u32,
        manifest.len() - bundle::HEADER_LEN,
        &mut manifest,
    );
    let mut content = Vec::with_capacity(BUNDLE_MAX as usize);
    let mut members = Vec::with_capacity(files.len());
    let mut tag = blake3::Hasher::new_derive_key("chunk bundle tag v1");
    let mut at = bundle::HEADER_LEN;
    let mut end = manifest_len;
    for (meta, bytes) in files {
        let offset = bundle::next_offset(end, chunk_size);
        let start = (offset - manifest_len) as usize;
        let size = meta.size;
        debug_assert_eq!(bytes.len() as u64, size, "read_small reads the size opened");
        content.resize(start, 0);
        content.extend_from_slice(&bytes);
        let hash = *blake3::hash(&content[start..]).as_bytes();
        let entry = bundle::Member {
            offset,
            size,
            mtime: meta.mtime,
            mode: meta.mode,
            hash,
            name: meta.name.as_bytes(),
        };
        entry.emit(&mut manifest[at..]);
        at += entry.entry_len();
        tag.update(&(meta.name.len() as u64).to_le_bytes());
        tag.update(meta.name.as_bytes());
        tag.update(&meta.tag);
        members.push(BundleMember { offset, size, hash });
        end = offset + size;
    }
    let fd = rustix::fs::memfd_create("chunk-bundle", rustix::fs::MemfdFlags::CLOEXEC)
        .context("memfd_create")?;
    let mut file = File::from(fd);
    std::io::Write::write_all(&mut file, &manifest)?;
    std::io::Write::write_all(&mut file, &content)?;
    let meta = FileMeta {
        name: format!("bundle of {} files", members.len()),
        size: end,
        mode: 0o600,
        mtime: 0,
        tag: *tag.finalize().as_bytes(),
        directory: false,
        symlink: false,
        stream: false,
        bundle: Some(manifest_len),
    };
    Ok((file, meta, members))
}

/// Opens a directory to offer (its mode and mtime; nothing is read from it).
pub fn open_dir(path: &Path, name: String) -> Result<(File, FileMeta)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_dir() {
        bail!("{} is not a directory", path.display());
    }
    let meta = FileMeta {
        name,
        size: 0,
        mode: md.mode() & 0o777,
        mtime: md.mtime(),
        tag: file_tag(&md),
        directory: true,
        symlink: false,
        stream: false,
        bundle: None,
    };
    Ok((file, meta))
}

/// The offer's tag for this version of the file: BLAKE3 (keyed by purpose) of its device and
/// inode, size, and modification and status-change times to the nanosecond. Any write changes
/// the status-change time, so a file that changed since an interrupted transfer gets a new tag
/// and the receiver does not resume from the old copy. A tag is only a claim: the verdict rests
/// on the hash of what the receiver holds.
pub fn file_tag(md: &std::fs::Metadata) -> [u8; wire::HASH_LEN] {
    let mut h = blake3::Hasher::new_derive_key("chunk file tag v1");
    for v in [
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime() as u64,
        md.mtime_nsec() as u64,
        md.ctime() as u64,
        md.ctime_nsec() as u64,
    ] {
        h.update(&v.to_le_bytes());
    }
    *h.finalize().as_bytes()
}

/// How a file's reader wakes the send loop: only while the loop waits for it to reach the end
/// (the hash of a file the receiver already has), not for every block of a normal send, which
/// the loop takes as it sends (a wake-up per MiB would be a VM exit each, for nothing).
#[derive(Clone)]
struct Wake {
    fd: std::sync::Arc<OwnedFd>,
    wanted: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Wake {
    fn signal(&self) {
        if self.wanted.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
        }
    }
}

/// Reads `buf.len()` bytes at `offset`, or fewer at the end of the file; returns the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes the reader reads from the file at once, ahead of the chunks being sent.
const READ_AHEAD: usize = 1 << 20;
/// Blocks the reader may be ahead of the sender.
const BLOCKS_AHEAD: usize = 4;

/// A block of the file as the reader hands it over; the last one carries the file's hash.
struct Block {
    at: u64,
    data: Vec<u8>,
    hash: Option<[u8; wire::HASH_LEN]>,
}

/// Reads the file from start to end in blocks of whole chunks, hashes each block, and hands it
/// to the sender through a bounded channel: reading and hashing run on their own thread (the
/// other core), the sending loop only copies chunks out of memory. Ends when the file does or
/// when the sender hangs up. The file must be exactly `size` bytes: shorter or longer is an
/// error, since the offer promised `size`.
///
/// Blocks the sender is done with come back through `spent` and are read into again: a fresh
/// zeroed megabyte per block was 2.5 % of a transfer's samples (`memset`).
fn spawn_reader(
    file: File,
    size: u64,
    block_len: usize,
    wake: Option<Wake>,
) -> (
    std::sync::mpsc::Receiver<std::io::Result<Block>>,
    std::sync::mpsc::Sender<Vec<u8>>,
) {
    let (tx, rx) = std::sync::mpsc::sync_channel(BLOCKS_AHEAD);
    let (spent_tx, spent) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::Builder::new()
        .name("chunk-reader".into())
        .spawn(move || {
            let mut hasher = blake3::Hasher::new();
            let mut at = 0u64;
            loop {
                let want = (size - at).min(block_len as u64) as usize;
                let data = spent.try_recv().unwrap_or_default();
                let block = read_block(&file, &mut hasher, data, at, want, size);
                let last = block.as_ref().map_or(true, |b| b.hash.is_some());
                let gone = tx.send(block).is_err();
                if let Some(wake) = &wake {
                    wake.signal();
                }
                if gone || last {
                    return;
                }
                at += want as u64;
            }
        })
        .expect("spawning the reader thread");
    (rx, spent_tx)
}

/// Reads the `want` bytes at `at` into `data` and hashes them; at the end of the file, checks
/// that it is exactly `size` bytes and puts the hash in the block.
fn read_block(
    file: &File,
    hasher: &mut blake3::Hasher,
    mut data: Vec<u8>,
    at: u64,
    want: usize,
    size: u64,
) -> std::io::Result<Block> {
    data.resize(want, 0);
    let n = read_full_at(file, &mut data, at)?;
    if n < want {
        return Err(std::io::Error::other(format!(
            "the file shrank while it was being sent: {} bytes, not {size}",
            at + n as u64
        )));
    }
    hasher.update(&data);
    let end = at + want as u64;
    if end < size {
        return Ok(Block {
            at,
            data,
            hash: None,
        });
    }
    if read_full_at(file, &mut [0u8; 1], end).is_ok_and(|n| n > 0) {
        return Err(std::io::Error::other(format!(
            "the file grew while it was being sent (beyond {size} bytes)"
        )));
    }
    let hash = Some(*hasher.finalize().as_bytes());
    Ok(Block { at, data, hash })
}

/// Files up to this size are read and hashed at once, in the sending loop: a thread of their
/// own would cost more than the read (trees of thousands of small files).
const READ_INLINE: u64 = 256 << 10;

/// Chunks read from the file. First copies come in index order out of the reader's blocks
/// ([`spawn_reader`]: one thread reads and hashes the file once, ahead of the sender); a chunk
/// behind them (a retransmission) is read on its own with `pread`.
struct FileSource {
    file: File,
    chunk_size: u64,
    blocks: Option<std::sync::mpsc::Receiver<std::io::Result<Block>>>,
    /// Where blocks served go back to the reader, to be read into again.
    spent: std::sync::mpsc::Sender<Vec<u8>>,
    /// The block being served, and the file offset of its first byte.
    block: Vec<u8>,
    block_at: u64,
    /// Where the next block from the reader starts.
    next_at: u64,
    /// The file's hash, once the last block has come (until the driver takes it).
    hash: Option<[u8; wire::HASH_LEN]>,
    /// How the reader wakes the loop, once asked to ([`poll_hash`](Self::poll_hash)).
    wake: Option<Wake>,
}

impl FileSource {
    /// A source of `file`'s chunks; its reader (for a file over [`READ_INLINE`]) signals `wake`
    /// as blocks come.
    fn new(
        file: File,
        size: u64,
        chunk_size: u32,
        wake: Option<std::sync::Arc<OwnedFd>>,
    ) -> std::io::Result<Self> {
        let wake = wake.map(|fd| Wake {
            fd,
            wanted: Default::default(),
        });
        if size <= READ_INLINE {
            let mut hasher = blake3::Hasher::new();
            let block = read_block(&file, &mut hasher, Vec::new(), 0, size as usize, size)?;
            let (spent, _) = std::sync::mpsc::channel();
            return Ok(FileSource {
                file,
                chunk_size: chunk_size as u64,
                blocks: None,
                spent,
                next_at: size,
                block_at: 0,
                block: block.data,
                hash: block.hash,
                wake: None,
            });
        }
        let per_block = (READ_AHEAD as u64 / chunk_size as u64).max(1);
        let (blocks, spent) = spawn_reader(
            file.try_clone()?,
            size,
            (per_block * chunk_size as u64) as usize,
            wake.clone(),
        );
        Ok(FileSource {
            file,
            chunk_size: chunk_size as u64,
            blocks: Some(blocks),
            spent,
            block: Vec::new(),
            block_at: 0,
            next_at: 0,
            hash: None,
            wake,
        })
    }

    /// The next block from the reader (it blocks while the reader is behind); `None` when the
    /// reader is done.
    fn next_block(&mut self) -> std::io::Result<bool> {
        let Some(rx) = &self.blocks else {
            return Ok(false);
        };
        let Ok(block) = rx.recv() else {
            self.blocks = None;
            return Ok(false);
        };
        self.take_block(block?);
        Ok(true)
    }

    /// What the reader has read since, without waiting for it (the driver's loop, which serves
    /// other transfers meanwhile, is woken when more comes); the hash once it has reached the
    /// end. For a file whose chunks the receiver already has all of: only its hash is missing.
    fn poll_hash(&mut self) -> std::io::Result<Option<[u8; wire::HASH_LEN]>> {
        if let Some(w) = &self.wake {
            w.wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        while self.hash.is_none() {
            let Some(rx) = &self.blocks else {
                return Err(std::io::Error::other("the file's reader stopped early"));
            };
            match rx.try_recv() {
                Ok(block) => self.take_block(block?),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(None),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => self.blocks = None,
            }
        }
        Ok(self.take_hash())
    }

    fn take_block(&mut self, block: Block) {
        if block.hash.is_some() {
            self.hash = block.hash;
            self.blocks = None;
        }
        self.next_at = block.at + block.data.len() as u64;
        self.block_at = block.at;
        let done = std::mem::replace(&mut self.block, block.data);
        // The reader may have finished; then the block is simply dropped.
        let _ = self.spent.send(done);
    }

    /// The file's hash, once (when the reader has reached the end).
    fn take_hash(&mut self) -> Option<[u8; wire::HASH_LEN]> {
        self.hash.take()
    }

    /// Reads the rest of the file, waiting for the reader, and returns its hash (tests; the
    /// driver polls: [`poll_hash`](Self::poll_hash)).
    #[cfg(test)]
    fn finish_hash(&mut self) -> std::io::Result<[u8; wire::HASH_LEN]> {
        while self.hash.is_none() {
            if !self.next_block()? {
                return Err(std::io::Error::other("the file's reader stopped early"));
            }
        }
        Ok(self.take_hash().expect("just checked"))
    }
}

impl ChunkSource for FileSource {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = index as u64 * self.chunk_size;
        let end = offset + buf.len() as u64;
        loop {
            let block_end = self.block_at + self.block.len() as u64;
            if offset >= self.block_at && end <= block_end {
                let at = (offset - self.block_at) as usize;
                buf.copy_from_slice(&self.block[at..at + buf.len()]);
                return Ok(buf.len());
            }
            // Behind the reader: a retransmission. Blocks are whole chunks, so a chunk not in
            // the current block is wholly behind it or wholly ahead.
            if offset < self.next_at || !self.next_block()? {
                return read_full_at(&self.file, buf, offset);
            }
        }
    }
}

/// Files larger than this (and streams) are large: at most [`MAX_LARGE`] of them are sent at
/// once, beside any number of small ones up to `--parallel`.
const LARGE_FILE: u64 = 8 << 20;
const MAX_LARGE: usize = 2;
/// Large files opened and waiting at most (past it, nothing more is opened until one starts).
const MAX_PARKED: usize = 8;

fn is_large(meta: &FileMeta) -> bool {
    meta.stream || meta.size > LARGE_FILE
}

/// The first wait for room at a receiver that refused a transfer for want of it with none of
/// ours under way, and the longest (it doubles in between).
const HOLD_FIRST: Duration = Duration::from_millis(250);
const HOLD_MAX: Duration = Duration::from_secs(2);

/// Most bytes of a stream the sender holds (read, not yet acknowledged from the start): a
/// retransmission must still find its chunk. Past it the sender stops reading its input until
/// acks free some (a window of 64 MiB, at 100 ms of round trip, is about 5 Gbit/s).
const STREAM_HELD: u64 = 64 << 20;

/// One block of a stream as its reader hands it over: the last one says so, with the hash.
struct StreamBlock {
    data: Vec<u8>,
    hash: Option<[u8; wire::HASH_LEN]>,
}

/// Reads `input` (a pipe, a terminal: anything read in order, once) in blocks of `block_len`
/// bytes, hashing them, and hands each to the sender with a wake-up on `wake`. A full block
/// goes only once the next read shows whether more follows, so the last block is known to be
/// the last when it goes.
fn spawn_stream_reader(
    mut input: File,
    block_len: usize,
    wake: std::sync::Arc<OwnedFd>,
) -> std::sync::mpsc::Receiver<std::io::Result<StreamBlock>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(BLOCKS_AHEAD);
    std::thread::Builder::new()
        .name("chunk-stdin".into())
        .spawn(move || {
            let mut hasher = blake3::Hasher::new();
            // Reads up to a block (less only at the end of the input) and hashes it.
            let mut fill = |block: &mut Vec<u8>, hasher: &mut blake3::Hasher| {
                let mut chunk = std::io::Read::take(&mut input, block_len as u64);
                let r = std::io::Read::read_to_end(&mut chunk, block);
                hasher.update(block);
                r.err()
            };
            let mut held = Vec::with_capacity(block_len);
            let mut failed = fill(&mut held, &mut hasher);
            loop {
                let block = if let Some(e) = failed.take() {
                    Err(e)
                } else if held.len() < block_len {
                    Ok(StreamBlock {
                        data: std::mem::take(&mut held),
                        hash: Some(*hasher.finalize().as_bytes()),
                    })
                } else {
                    let mut next = Vec::with_capacity(block_len);
                    failed = fill(&mut next, &mut hasher);
                    let more = failed.is_some() || !next.is_empty();
                    let data = std::mem::replace(&mut held, next);
                    let hash = (!more).then(|| *hasher.finalize().as_bytes());
                    Ok(StreamBlock { data, hash })
                };
                let last = block.as_ref().map_or(true, |b| b.hash.is_some());
                let gone = tx.send(block).is_err();
                let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                if gone || last {
                    return;
                }
            }
        })
        .expect("spawning the stdin reader thread");
    rx
}

/// A stream's chunks: the blocks read so far that are not yet acknowledged from the start,
/// held for retransmissions.
struct StreamSource {
    chunk_size: u64,
    /// The input and the eventfd, until the reader starts with them: only once the offer is
    /// accepted, so that a stream refused (and offered again later) has read nothing.
    unread: Option<(File, std::sync::Arc<OwnedFd>)>,
    blocks: Option<std::sync::mpsc::Receiver<std::io::Result<StreamBlock>>>,
    /// Blocks held, each with the stream offset of its first byte.
    held: std::collections::VecDeque<(u64, Vec<u8>)>,
    held_bytes: u64,
    /// Bytes read so far.
    available: u64,
    /// The hash, once the input has ended (until the driver takes it).
    hash: Option<[u8; wire::HASH_LEN]>,
    ended: bool,
}

impl StreamSource {
    fn new(input: File, chunk_size: u32, wake: std::sync::Arc<OwnedFd>) -> Self {
        StreamSource {
            chunk_size: chunk_size as u64,
            unread: Some((input, wake)),
            blocks: None,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
            available: 0,
            hash: None,
            ended: false,
        }
    }

    /// Lets go of the blocks below `acked` chunks (acknowledged from the start), and takes what
    /// the reader has read since, as far as [`STREAM_HELD`] allows (the first call starts the
    /// reader). Whether anything came.
    fn pull(&mut self, acked: u64) -> std::io::Result<bool> {
        let acked_bytes = acked * self.chunk_size;
        while let Some((at, data)) = self.held.front() {
            if at + data.len() as u64 > acked_bytes {
                break;
            }
            self.held_bytes -= data.len() as u64;
            self.held.pop_front();
        }
        if let Some((input, wake)) = self.unread.take() {
            let per_block = (READ_AHEAD as u64 / self.chunk_size).max(1);
            let block_len = (per_block * self.chunk_size) as usize;
            self.blocks = Some(spawn_stream_reader(input, block_len, wake));
        }
        let Some(blocks) = &self.blocks else {
            return Ok(false);
        };
        let mut came = false;
        while !self.ended && self.held_bytes < STREAM_HELD {
            let block = match blocks.try_recv() {
                Ok(b) => b?,
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    return Err(std::io::Error::other("the input's reader stopped early"));
                }
            };
            came = true;
            let len = block.data.len() as u64;
            if len > 0 {
                self.held.push_back((self.available, block.data));
                self.held_bytes += len;
                self.available += len;
            }
            if let Some(h) = block.hash {
                self.hash = Some(h);
                self.ended = true;
            }
        }
        Ok(came)
    }
}

impl ChunkSource for StreamSource {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = index as u64 * self.chunk_size;
        // Blocks are whole chunks: a chunk lies in one block.
        let at = self.held.partition_point(|(at, _)| *at <= offset);
        let Some((start, data)) = at.checked_sub(1).and_then(|i| self.held.get(i)) else {
            return Err(std::io::Error::other(format!(
                "chunk {index} of the stream is no longer held"
            )));
        };
        let from = (offset - start) as usize;
        let n = buf.len().min(data.len().saturating_sub(from));
        buf[..n].copy_from_slice(&data[from..from + n]);
        Ok(n)
    }
}

/// Where a transfer's chunks come from.
enum Source {
    File(FileSource),
    Stream(StreamSource),
}

impl ChunkSource for Source {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Source::File(f) => f.read_chunk(index, buf),
            Source::Stream(s) => s.read_chunk(index, buf),
        }
    }
}

/// How long after the number of transfers at once was lowered (a receiver refused one for want
/// of room) a success may raise it by one again.
const LIMIT_PROBE_AFTER: Duration = Duration::from_secs(2);

/// Silence from the receiver after which an encrypting sender opens a new session (at least 4
/// smoothed round trips).
const REHANDSHAKE_AFTER: Duration = Duration::from_secs(5);

/// The receiver's key is not the one expected (pinned, or remembered).
#[derive(Debug)]
pub struct KeyMismatch(String);

impl std::fmt::Display for KeyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyMismatch {}

/// What the send driver needs.
pub struct SendConfig {
    pub to: IpAddr,
    /// Straight over IP (with chunk's protocol number), or in UDP to the receiver's port.
    pub transport: Transport,
    pub core: SenderConfig,
    /// The pre-shared key: authenticates clear packets when there is no encryption.
    pub key: Option<Psk>,
    /// Encryption: a session opened by a handshake before the first file.
    pub encryption: Option<Encryption>,
    /// What an earlier run measured of the path to the receiver (the path cache), to start
    /// from once the first offer's round trip confirms it ([`core::Path::resume`]).
    pub resume: Option<crate::proto::PathEstimate>,
    /// Straight over IP, send through a packet socket where the route allows
    /// ([`crate::net::packet_tx`]).
    pub packet_socket: bool,
}

/// What the sender's handshake brings and checks.
#[derive(Clone, Debug)]
pub struct Encryption {
    pub creds: Credentials,
    /// The receiver's key as given (`--receiver-key`), else what the known-hosts file says.
    pub pin: Option<PublicKey>,
    pub known_hosts: Option<KnownHosts>,
    /// The receiver as the user named it (`--to`, and `:PORT` in UDP): its known-hosts entry.
    pub host: String,
}

impl SendConfig {
    pub fn protection(&self) -> Protection {
        match (&self.encryption, &self.key) {
            (Some(_), _) => Protection::Sealed,
            (None, Some(_)) => Protection::Tagged,
            (None, None) => Protection::Clear,
        }
    }

    /// The receiver as a peer (how its answers are named).
    fn peer(&self) -> crate::proto::Peer {
        match self.transport {
            Transport::Ip(_) => crate::proto::Peer::ip(self.to),
            Transport::Udp(port) => crate::proto::Peer::udp(SocketAddr::new(self.to, port)),
        }
    }
}

/// The socket, its send batch and the intake of answers, kept across files.
pub struct SendDriver {
    cfg: SendConfig,
    /// Where packets go: the receiver's address, and its UDP port over UDP.
    dst: SocketAddr,
    tx: BatchSender,
    intake: Intake,
    /// The session's id, once the handshake is done.
    session: Option<u32>,
    /// The next file's transfer id: a random first one, then counting up, so that the files of
    /// one run never share an id. Random ids for each of 10 000 files would collide about once
    /// in a hundred runs (a receiver keeps a finished transfer's id for its verdict's 60 s, and
    /// refuses another file under it).
    next_tid: u32,
    /// An eventfd a stream's reader signals when input has come (the loop waits on it too).
    wake: std::sync::Arc<OwnedFd>,
    /// The path of the last [`send_files`](Self::send_files): what it measured.
    path: Option<SharedPath>,
}

/// Where [`SendDriver::send_files`] takes its files from and gives their results to.
pub trait Jobs {
    /// The next file to send, if one may start beside the transfers under way (`busy`: their
    /// files' names).
    fn next(&mut self, busy: &[&str]) -> NextJob;
    /// The receiver had no room for file `key` beside the others under way: it is to be
    /// offered again, after them.
    fn again(&mut self, key: usize);
    /// File `key` is over: the core's figures and outcome, or why it could not start.
    fn finished(&mut self, key: usize, result: Result<(SenderStats, Result<(), SendError>)>);
    /// The transfers under way, about every 100 ms (and each once more as it ends).
    fn progress(&mut self, _under_way: &[&Sender]) {}
}

/// What [`Jobs::next`] says.
pub enum NextJob {
    /// Send this file (`key` names it in the results).
    Start {
        key: usize,
        file: File,
        meta: FileMeta,
    },
    /// Nothing may start until a transfer under way ends.
    Wait,
    /// No file is left.
    Done,
}

/// A transfer under way: its core and where its chunks come from.
struct Active {
    key: usize,
    sender: Sender,
    source: Source,
    /// When it last sent a packet (see `queue_from`).
    last_sent: Instant,
}

/// A transfer behind others still gets a packet this often (see `SendDriver::queue_from`): it
/// is never silent long enough for its sender's `--timeout` or the receiver's idle timer.
const KEEP_ALIVE: Duration = Duration::from_millis(100);

impl SendDriver {
    pub fn new(cfg: SendConfig) -> Result<Self> {
        let dst = SocketAddr::new(cfg.to, cfg.transport.port());
        let sock = ChunkSocket::open(cfg.to.is_ipv6(), cfg.transport, None).context(
            match cfg.transport {
                Transport::Ip(_) => {
                    "opening a raw IP socket (chunk send needs root or CAP_NET_RAW)"
                }
                Transport::Udp(_) => "opening a UDP socket",
            },
        )?;
        match cfg.transport {
            // Connected: the kernel picks the source port once (answers come back to it, through
            // a NAT too) and queues only the receiver's datagrams on the socket.
            Transport::Udp(_) => sock
                .socket()
                .connect(&dst.into())
                .with_context(|| format!("no route to {dst}"))?,
            // Bound to the source the route picks, once: an unbound raw socket has its source
            // chosen for every packet, which over IPv6 is the source-address selection of RFC
            // 6724 (`ipv6_get_saddr_eval`, 2 % of a transfer's samples here).
            Transport::Ip(_) => {
                if let Ok(src) = route_source(cfg.to) {
                    sock.socket()
                        .bind(&SocketAddr::new(src, 0).into())
                        .with_context(|| format!("binding the raw socket to {src}"))?;
                }
            }
        }
        // Best effort: the defaults work, only less smoothly at high rates.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(sock.socket(), 4 << 20);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(sock.socket(), 4 << 20);
        let packet_tx = match cfg.transport {
            Transport::Ip(protocol) if cfg.packet_socket => packet_tx(&sock, cfg.to, protocol),
            _ => None,
        };
        let mut tx = BatchSender::new(sock, wire::HEADER_LEN + cfg.core.chunk_size as usize);
        if let Some(p) = packet_tx {
            tx.use_packet_socket(p);
        }
        let intake = Intake::new(cfg.key.clone());
        Ok(SendDriver {
            cfg,
            dst,
            tx,
            intake,
            session: None,
            next_tid: rand::random(),
            wake: std::sync::Arc::new(
                rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )
                .context("eventfd")?,
            ),
            path: None,
        })
    }

    /// The path the last [`send_files`](Self::send_files) ran on: what it measured of it
    /// ([`core::Path::estimate`]) and what became of the estimate it started from.
    pub fn path(&self) -> Option<std::cell::Ref<'_, core::Path>> {
        self.path.as_ref().map(|p| p.borrow())
    }

    /// Reads what waits on the socket: the next chunk packet from the receiver that passes the
    /// receive path's checks, copied to the start of `buf`; its length.
    fn next_checked(&self, buf: &mut [u8]) -> Result<Option<usize>> {
        loop {
            let Some((n, from)) = self.tx.socket().recv_nonblocking(buf)? else {
                return Ok(None);
            };
            let to = self.cfg.to;
            let checked = if self.tx.socket().delivers_ip_header() {
                let Transport::Ip(protocol) = self.cfg.transport else {
                    unreachable!("only raw IPv4 sockets deliver the IP header")
                };
                Intake::check_ip(&mut buf[..n], protocol, |src| IpAddr::from(src) == to)
                    .map(|(r, _)| r)
            } else {
                let from_receiver = from.ip().to_canonical() == to
                    && (self.cfg.transport.port() == 0 || from.port() == self.dst.port());
                Intake::check_bare(&mut buf[..n], from_receiver).map(|_| 0..n)
            };
            if let Ok(r) = checked {
                buf.copy_within(r.clone(), 0);
                return Ok(Some(r.len()));
            }
        }
    }

    /// Opens the encrypted session (docs/PROTOCOL.md, "Encryption"), when there is encryption:
    /// the handshake, sent again at growing intervals until answered or the timeout; the
    /// receiver's key checked against the pinned one (or remembered, on first contact).
    pub fn connect(&mut self, stop: &Stop) -> Result<()> {
        if self.cfg.encryption.is_none() || self.session.is_some() {
            return Ok(());
        }
        self.handshake(stop, Instant::now() + self.cfg.core.timeout)
    }

    /// One handshake, until `deadline`; on success the new session replaces any old one.
    fn handshake(&mut self, stop: &Stop, deadline: Instant) -> Result<()> {
        let Some(enc) = self.cfg.encryption.clone() else {
            return Ok(());
        };
        let to = self.cfg.to;
        let peer = self.cfg.peer();
        let mut sid: u32 = rand::random();
        let mut init = Initiator::start(&enc.creds, sid, auth::now_ms())
            .map_err(|e| anyhow::anyhow!("starting the handshake: {e}"))?;
        let start = Instant::now();
        let mut attempt = start;
        let mut gap = Duration::from_millis(250);
        let mut next_send = start;
        let mut keys = None;
        let mut remote = None;
        let mut rbuf = vec![0u8; 65536];
        let mut out = vec![0u8; 65536];
        loop {
            if stop.requested().is_some() {
                bail!("interrupted during the handshake with {to}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no answer to the encryption handshake from {to} in {:.0} s: is `chunk recv` \
                     running there with --key (or --psk-file, the same file as this side's), and \
                     does chunk traffic reach it?",
                    now.duration_since(start).as_secs_f64()
                );
            }
            // The receiver forgets a handshake after 10 s, and a suite-1 message 1's clock is
            // stale after 30: a handshake unanswered for 10 s starts again, new session id,
            // fresh clock.
            if now.duration_since(attempt) >= crate::crypto::session::HANDSHAKE_TIMEOUT {
                sid = rand::random();
                init = Initiator::start(&enc.creds, sid, auth::now_ms())
                    .map_err(|e| anyhow::anyhow!("starting the handshake: {e}"))?;
                (attempt, keys, remote) = (now, None, None);
                gap = Duration::from_millis(250);
                next_send = now;
            }
            if now >= next_send {
                self.tx
                    .socket()
                    .send_to(init.packet(), self.dst)
                    .with_context(|| format!("sending the handshake to {to}"))?;
                next_send = now + gap;
                gap = (gap * 2).min(Duration::from_secs(2));
            }
            let fds = [self.tx.socket().socket().as_fd()];
            wait::until(&fds, Some(next_send.min(deadline)))?;
            while let Some(n) = self.next_checked(&mut rbuf)? {
                let p = &rbuf[..n];
                match p[wire::field::MSG_TYPE] {
                    wire::envelope::HANDSHAKE if keys.is_none() => {
                        let r = match init.read_reply(p) {
                            Ok(r) => r,
                            Err(HandshakeError::WrongSuite(s)) => {
                                tracing::debug!(suite = s, "handshake answer of another suite");
                                continue;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "handshake answer dropped");
                                continue;
                            }
                        };
                        if let Some(r) = r {
                            check_receiver_key(&enc, &enc.host, &r)?;
                        }
                        remote = r;
                        let k = init
                            .finish()
                            .map_err(|e| anyhow::anyhow!("finishing the handshake: {e}"))?;
                        if !init.needs_confirmation() {
                            self.open_session(peer, k, &enc, remote)?;
                            return Ok(());
                        }
                        keys = Some(k);
                        // Message 3 at once, then again until the receiver confirms.
                        gap = Duration::from_millis(250);
                        next_send = Instant::now();
                    }
                    wire::envelope::SEALED if keys.is_some() => {
                        let k = keys.as_mut().expect("checked");
                        if wire::Packet::new_unchecked(p).transfer_id() != sid {
                            continue;
                        }
                        let Ok(m) = k.opener.open(p, &mut out) else {
                            continue;
                        };
                        if m == 0 {
                            let k = keys.take().expect("checked");
                            self.open_session(peer, k, &enc, remote)?;
                            return Ok(());
                        }
                        if let Ok(wire::Repr {
                            message: wire::Message::Abort(a),
                            ..
                        }) = wire::Repr::parse_checksum_already_checked(&out[..m])
                        {
                            bail!(
                                "{to} refused this sender ({}): {}",
                                a.reason.as_str(),
                                String::from_utf8_lossy(a.message)
                            );
                        }
                    }
                    t if t == wire::MessageType::Abort as u8 => {
                        // A receiver without keys, or of another suite, says so in clear; once
                        // message 2 has shown who the receiver is, a clear abort is a forgery.
                        if wire::Packet::new_unchecked(p).transfer_id() != sid || keys.is_some() {
                            continue;
                        }
                        if let Ok(wire::Repr {
                            message: wire::Message::Abort(a),
                            ..
                        }) = wire::Repr::parse_checksum_already_checked(p)
                        {
                            bail!(
                                "{to} cannot open an encrypted session ({}): {}",
                                a.reason.as_str(),
                                String::from_utf8_lossy(a.message)
                            );
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn open_session(
        &mut self,
        peer: crate::proto::Peer,
        keys: crate::crypto::handshake::SessionKeys,
        enc: &Encryption,
        remote: Option<PublicKey>,
    ) -> Result<()> {
        let sid = keys.sealer.sid();
        self.intake
            .sessions_mut()
            .insert(peer, keys, Instant::now());
        self.session = Some(sid);
        if let (Some(kh), Some(r), None) = (&enc.known_hosts, remote, enc.pin) {
            let host = &enc.host;
            if kh.lookup(host)? == Known::Unknown {
                kh.remember(host, &r)?;
                eprintln!(
                    "chunk send: first contact with {host}: its key {r} is now remembered in {}",
                    kh.path().display()
                );
            }
        }
        tracing::debug!(%peer, sid, "encrypted session open");
        Ok(())
    }

    pub fn config(&self) -> &SendConfig {
        &self.cfg
    }

    /// Sends the files `jobs` hands over, up to `parallel` at once on one shared path (one
    /// congestion controller, pacer and window for all of them: [`core::Path`]), each until the
    /// receiver's verdict, and reports each to `jobs`. A stop request cancels every transfer
    /// under way (an abort goes out for each). When the receiver refuses a file for want of
    /// room (`too many transfers`) while others are under way, the file is offered again later
    /// and fewer go at once from then on. `Err` only for failures that end every transfer: the
    /// socket, or the receiver's key changing.
    /// Packets handed to the kernel so far, and the messages they took (fewer over UDP, where
    /// runs of equal datagrams go out as one segmentation-offload message).
    pub fn packets_sent(&self) -> (u64, u64, u64) {
        (
            self.tx.packets_sent,
            self.tx.messages_sent,
            self.tx.link_packets,
        )
    }

    pub fn send_files(&mut self, jobs: &mut dyn Jobs, parallel: usize, stop: &Stop) -> Result<()> {
        let start = Instant::now();
        let path = core::Path::shared(&self.cfg.core, start);
        if let Some(estimate) = self.cfg.resume {
            path.borrow_mut().resume(estimate);
        }
        self.path = Some(path.clone());
        let peer = self.cfg.peer();
        if self.cfg.encryption.is_some() && self.session.is_none() {
            bail!("no encrypted session: connect first");
        }
        let mut active: Vec<Active> = Vec::new();
        let parallel = parallel.max(1);
        // Transfers at once: `parallel`, or fewer after the receiver refused one for want of
        // room beside ours; then raised again by one at a time, each a while after the last
        // change, as transfers succeed (the room may have been taken by other senders for a
        // while, not by a limit of the receiver's).
        let mut limit = parallel;
        let mut limit_changed = start;
        let mut told_limit: Option<usize> = None;
        let mut cancelled = false;
        // Large files that wait for a large one under way to end (opened, in order).
        let mut parked: std::collections::VecDeque<(usize, File, FileMeta)> = Default::default();
        // The receiver had no room for us at all: nothing starts before `hold_until`, and the
        // wait doubles while it lasts (the receiver frees slots as transfers end or go silent:
        // ours of a killed run, say). Since when it lasts.
        let mut hold_until: Option<Instant> = None;
        let mut hold = HOLD_FIRST;
        let mut refused_since: Option<Instant> = None;
        let mut rbuf = vec![0u8; 65536];
        let mut last_draw = start;
        let mut heard = start;
        let mut next_rehandshake = start;
        loop {
            let now = Instant::now();
            if !cancelled && stop.requested().is_some() {
                cancelled = true;
                active.iter_mut().for_each(|a| a.sender.cancel());
                // Not started: skipped, as the files after them are; no more waiting for room.
                parked.clear();
                hold_until = None;
            }
            // New transfers, while there is room for them. Asked afresh each round: a file that
            // ended may have gone back to `jobs` (offered again, or sent again whole).
            let mut no_more = false;
            if hold_until.is_some_and(|t| now >= t) {
                hold_until = None;
            }
            while !no_more && !cancelled && hold_until.is_none() && active.len() < limit {
                // A large file waits for a large one under way to end: large files finish one
                // after another (and are read and written one or two at a time), while small
                // ones fill the other slots.
                let large = active.iter().filter(|a| is_large(a.sender.meta())).count();
                if large < MAX_LARGE
                    && let Some((key, file, meta)) = parked.pop_front()
                {
                    match self.start(key, file, meta, &path, now) {
                        Ok(a) => active.push(a),
                        Err(e) => jobs.finished(key, Err(e)),
                    }
                    continue;
                }
                if parked.len() >= MAX_PARKED {
                    break;
                }
                // What waits counts as under way: a directory waits for it too.
                let busy: Vec<&str> = active
                    .iter()
                    .map(|a| a.sender.meta().name.as_str())
                    .chain(parked.iter().map(|(_, _, m)| m.name.as_str()))
                    .collect();
                match jobs.next(&busy) {
                    NextJob::Wait => break,
                    NextJob::Done => no_more = true,
                    NextJob::Start { key, file, meta } if is_large(&meta) && large >= MAX_LARGE => {
                        parked.push_back((key, file, meta));
                    }
                    NextJob::Start { key, file, meta } => {
                        match self.start(key, file, meta, &path, now) {
                            Ok(a) => active.push(a),
                            Err(e) => jobs.finished(key, Err(e)),
                        }
                    }
                }
            }
            if active.is_empty()
                && (no_more || cancelled)
                && hold_until.is_none()
                && parked.is_empty()
            {
                return Ok(());
            }
            // Everything the receiver said, to the transfer it is about.
            while let Some((n, from)) = self.tx.socket().recv_nonblocking(&mut rbuf)? {
                if let Ok(repr) = self.open_answer(&mut rbuf[..n], from, peer) {
                    if let Some(a) = active
                        .iter_mut()
                        .find(|a| a.sender.transfer_id() == repr.transfer_id)
                    {
                        heard = now;
                        a.sender.handle_packet(&repr, now);
                        self.tx.heard(now, path.borrow().srtt().unwrap_or_default());
                    }
                }
            }
            // Encrypted, a receiver that restarted has lost the session: its kernel drops our
            // sealed packets unanswered. After a silence that no live receiver leaves, a new
            // handshake (the transfers then go on as after any receiver restart: `unknown
            // transfer`, a new offer, a resume).
            if self.session.is_some() && !active.is_empty() && !cancelled {
                let quiet = now.saturating_duration_since(heard);
                let srtt = path.borrow().srtt().unwrap_or_default();
                if quiet >= REHANDSHAKE_AFTER && now >= next_rehandshake && quiet >= srtt * 4 {
                    tracing::info!(
                        quiet_s = format!("{:.1}", quiet.as_secs_f64()),
                        "no answer: opening a new session (has the receiver restarted?)"
                    );
                    match self.handshake(stop, heard + self.cfg.core.timeout) {
                        Ok(()) => {
                            let sid = self.session.expect("just opened");
                            for a in &active {
                                self.intake
                                    .sessions_mut()
                                    .bind(peer, a.sender.transfer_id(), sid);
                            }
                            heard = Instant::now();
                        }
                        // Another key: an impostor, or a replaced key. Stop loudly.
                        Err(e) if e.is::<KeyMismatch>() => {
                            self.abandon(&mut active, now);
                            return Err(e);
                        }
                        // The cores give up on their own, at their timeout.
                        Err(e) => tracing::warn!(error = %e, "no new session"),
                    }
                    next_rehandshake = Instant::now() + REHANDSHAKE_AFTER.max(srtt * 4);
                    continue;
                }
            }
            for a in active.iter_mut() {
                let sender = &mut a.sender;
                if sender.poll_timeout().is_some_and(|t| t <= now) {
                    sender.handle_timeout(now);
                }
                match &mut a.source {
                    // The hash, as soon as the reader has reached the end of the file; or at
                    // once when only the hash is missing (everything else was already at the
                    // receiver).
                    Source::File(source) => {
                        if sender.needs_hash() {
                            match source.poll_hash() {
                                Ok(Some(h)) => sender.set_hash(h),
                                Ok(None) => {}
                                Err(e) => {
                                    sender.fail_io(format!("reading the file to hash it: {e}"))
                                }
                            }
                        }
                        if let Some(h) = source.take_hash() {
                            sender.set_hash(h);
                        }
                    }
                    // What the input has brought, and at its end the hash; nothing is read
                    // before the offer is accepted.
                    Source::Stream(_) if !sender.accepted() => {}
                    Source::Stream(source) => match source.pull(sender.acked_prefix()) {
                        Ok(_) => {
                            sender.extend_stream(source.available, source.ended, now);
                            if let Some(h) = source.hash.take() {
                                sender.set_hash(h);
                            }
                        }
                        Err(e) => sender.fail_io(format!("reading the input: {e}")),
                    },
                }
            }
            // Everything the cores want sent now, a batch at a time.
            let batch_full = self.queue_from(&mut active, now);
            if let Err(e) = self.tx.flush() {
                // Tell the receiver, so that it closes the transfers now rather than at its idle
                // timeout (a part file that got no chunk is removed). An abort is small enough
                // for any path.
                self.tx.discard();
                self.abandon(&mut active, now);
                return Err(self.explain_send_error(e));
            }
            if now.duration_since(last_draw) >= Duration::from_millis(100) {
                last_draw = now;
                jobs.progress(&active.iter().map(|a| &a.sender).collect::<Vec<_>>());
            }
            // The transfers that are over: a final abort may still be due (queued above, as
            // `poll_transmit` gives it before saying `None`).
            let mut i = 0;
            let mut ended = false;
            while i < active.len() {
                let Some(outcome) = active[i].sender.outcome() else {
                    i += 1;
                    continue;
                };
                ended = true;
                // Kept in the order they started (see `queue_from`).
                let a = active.remove(i);
                let others = active.len();
                if let Err(SendError::Refused(AbortReason::TooManyTransfers, ref why)) = outcome
                    && !cancelled
                {
                    if others > 0 {
                        if others < limit {
                            limit = others;
                            limit_changed = now;
                        }
                        // Said once per figure: a probe above it that is refused again is not
                        // news.
                        if told_limit.replace(limit) != Some(limit) {
                            eprintln!(
                                "chunk send: the receiver takes {limit} files at once from this \
                                 sender ({why}): sending {limit} at a time"
                            );
                        }
                        jobs.again(a.key);
                        continue;
                    }
                    // No room at all: wait for some, up to the timeout.
                    let since = *refused_since.get_or_insert(now);
                    if now.saturating_duration_since(since) < self.cfg.core.timeout {
                        if hold == HOLD_FIRST {
                            eprintln!(
                                "chunk send: the receiver has no room for another transfer \
                                 ({why}); waiting for one"
                            );
                        }
                        hold_until = Some(now + hold);
                        hold = (hold * 2).min(HOLD_MAX);
                        jobs.again(a.key);
                        continue;
                    }
                } else {
                    // Any other end: the receiver had made room for this transfer.
                    refused_since = None;
                    hold = HOLD_FIRST;
                    if outcome.is_ok()
                        && limit < parallel
                        && now.saturating_duration_since(limit_changed) >= LIMIT_PROBE_AFTER
                    {
                        limit += 1;
                        limit_changed = now;
                    }
                }
                jobs.progress(&[&a.sender]);
                jobs.finished(a.key, Ok((a.sender.stats(), outcome)));
            }
            // A transfer that ended makes room for the next at once.
            if !batch_full && !ended {
                let deadline = active
                    .iter()
                    .filter_map(|a| a.sender.poll_timeout())
                    .chain(hold_until)
                    .min();
                let fds = [self.tx.socket().socket().as_fd(), self.wake.as_fd()];
                let ready = wait::ready_until(&fds, deadline)?;
                // Input came for a stream (or a hash the loop waits for): the next round takes
                // it. Read only when signalled: a system call less per round otherwise.
                if ready & 0b10 != 0 {
                    let _ = rustix::io::read(&*self.wake, &mut [0u8; 8]);
                }
            }
        }
    }

    /// A transfer of `meta` on `path`, with its reader started.
    fn start(
        &mut self,
        key: usize,
        file: File,
        meta: FileMeta,
        path: &SharedPath,
        now: Instant,
    ) -> Result<Active> {
        let tid = self.next_tid;
        self.next_tid = self.next_tid.wrapping_add(1);
        let size = meta.size;
        let mut sender = Sender::on_path(tid, meta, self.cfg.core.clone(), path, now)?;
        self.tx
            .ensure_packet_len(sender.max_packet_len() + OVERHEAD + auth::TRAILER_LEN);
        if let Some(sid) = self.session {
            self.intake.sessions_mut().bind(self.cfg.peer(), tid, sid);
            // Every packet of it is sealed (`queue_from`): no checksum for the seal to zero.
            sender.set_sealed(true);
        }
        let source = if sender.meta().stream {
            Source::Stream(StreamSource::new(
                file,
                self.cfg.core.chunk_size,
                self.wake.clone(),
            ))
        } else {
            let wake = Some(self.wake.clone());
            Source::File(FileSource::new(file, size, self.cfg.core.chunk_size, wake)?)
        };
        Ok(Active {
            key,
            sender,
            source,
            last_sent: Instant::now(),
        })
    }

    /// Checks and opens one answer from the receiver.
    fn open_answer<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        from: SocketAddr,
        peer: crate::proto::Peer,
    ) -> Result<wire::Repr<'a>, crate::intake::Rejected> {
        let to = self.cfg.to;
        if self.tx.socket().delivers_ip_header() {
            let Transport::Ip(protocol) = self.cfg.transport else {
                unreachable!("only raw IPv4 sockets deliver the IP header")
            };
            self.intake
                .open_ip(buf, protocol, |src| IpAddr::from(src) == to, auth::now_ms())
        } else {
            // Answers come from the address (and UDP port) the packets went to.
            let from_receiver = from.ip().to_canonical() == to
                && (self.cfg.transport.port() == 0 || from.port() == self.dst.port());
            self.intake
                .open_bare(buf, peer, from_receiver, auth::now_ms())
        }
    }

    /// Cancels every transfer and sends their aborts, best effort: the loop is ending.
    fn abandon(&mut self, active: &mut [Active], now: Instant) {
        for a in active.iter_mut() {
            a.sender.cancel();
        }
        self.queue_from(active, now);
        let _ = self.tx.flush();
    }

    /// Queues what the cores have to send now, sealed or tagged; returns whether the batch
    /// filled up. The transfers go in the order they started: the first takes every packet the
    /// path's pacer and window let out, the next what it leaves (a transfer waiting for an
    /// answer, or with all its chunks out, sends nothing). Shared evenly, the bundles of a tree
    /// all ended at once and then waited together, the link idle, while the receiver put their
    /// files in place one bundle after another; one after another, a bundle is put in place
    /// while the next travels, and lone files finish sooner too. Each transfer still gets a
    /// packet every [`KEEP_ALIVE`]: one behind a large file is never silent long enough to time
    /// out.
    fn queue_from(&mut self, active: &mut [Active], now: Instant) -> bool {
        // First whoever has sent nothing for a while (tried at each call until a packet goes).
        for a in active.iter_mut() {
            if now.saturating_duration_since(a.last_sent) >= KEEP_ALIVE
                && self.queue_one(a, now) == Some(true)
            {
                return true;
            }
        }
        for a in active.iter_mut() {
            loop {
                match self.queue_one(a, now) {
                    Some(true) => return true,
                    Some(false) => {}
                    None => break,
                }
            }
        }
        false
    }

    /// Queues `a`'s next packet, if it has one now (`None` if not); `Some(true)`: the batch is
    /// full.
    fn queue_one(&mut self, a: &mut Active, now: Instant) -> Option<bool> {
        // A sealed packet is built in place around the chunk packet.
        let at = if self.session.is_some() { INNER_AT } else { 0 };
        let Some(buf) = self.tx.next_buf() else {
            return Some(true);
        };
        let len = a.sender.poll_transmit(now, &mut a.source, &mut buf[at..])?;
        a.last_sent = now;
        // Every transfer of a sender with a session is bound to it: a packet that finds none
        // is not sent (and never in clear).
        match self.intake.seal_out(self.cfg.peer(), buf, at, len) {
            Some(range) if range.start == 0 => self.tx.commit(range.end, self.dst),
            _ => tracing::error!(
                "a packet without its session was not sent: a bug, please report it"
            ),
        }
        Some(self.tx.is_full())
    }

    fn explain_send_error(&self, e: std::io::Error) -> anyhow::Error {
        let to = self.cfg.to;
        if e.raw_os_error() != Some(libc::EMSGSIZE) {
            return anyhow::Error::new(e).context(format!("sending to {to}"));
        }
        let (prot, transport, v6) = (self.cfg.protection(), self.cfg.transport, to.is_ipv6());
        let overhead = packet_overhead(prot, transport, v6);
        let packet = self.cfg.core.chunk_size + overhead;
        let words = overhead_words(prot, transport, v6);
        let limit = match route_mtu(to) {
            Ok(mtu) => format!(
                "at most {} on this path (its MTU of {mtu} minus {words})",
                mtu.saturating_sub(overhead),
            ),
            Err(_) => format!("the path MTU minus {words}"),
        };
        anyhow::anyhow!(
            "chunk packets of {packet} bytes do not fit the path MTU to {to}: use a smaller \
             --chunk-size ({limit})"
        )
    }
}

/// Checks the receiver's key from the handshake against the pinned one, or the known-hosts
/// file's.
fn check_receiver_key(enc: &Encryption, host: &str, key: &PublicKey) -> Result<()> {
    if let Some(pin) = &enc.pin {
        if pin != key {
            return Err(KeyMismatch(format!(
                "the receiver at {host} has the key {key}, not the one given with --receiver-key \
                 ({pin}): someone may be intercepting, or the receiver's key was changed. \
                 Nothing was sent."
            ))
            .into());
        }
        return Ok(());
    }
    if let Some(kh) = &enc.known_hosts
        && let Known::Key(known, line) = kh.lookup(host)?
        && &known != key
    {
        return Err(KeyMismatch(format!(
            "THE RECEIVER'S KEY HAS CHANGED: {host} answered with the key {key}, but {} (line \
             {line}) remembers {known} for it. Someone may be intercepting (a man in the \
             middle), or its key was replaced. Nothing was sent. If the change is expected, \
             remove line {line} of that file, or give the new key with --receiver-key.",
            kh.path().display()
        ))
        .into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TWO: [(&str, &[u8]); 2] = [("a.txt", b"hello"), ("b/c.txt", b"world\n")];

    /// Writes the two small files of the example (mode 0644, mtime 1700000000).
    fn write_two(dir: &Path) {
        for (name, data) in TWO {
            let path = dir.join(name.replace('/', "-"));
            std::fs::write(&path, data).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
                .unwrap();
        }
    }

    /// The two files as `chunk send` opens them.
    fn two_files(dir: &Path) -> Vec<(FileMeta, Vec<u8>)> {
        TWO.iter()
            .map(|(name, _)| {
                read_small(&dir.join(name.replace('/', "-")), (*name).to_owned()).unwrap()
            })
            .collect()
    }

    /// The bundle docs/PROTOCOL.md shows ("Bundles") is the one the sender builds of the same
    /// two files: the manifest byte for byte, each file at the next multiple of the chunk size,
    /// zeros between.
    #[test]
    fn the_bundle_example_is_what_the_sender_builds() {
        let tmp = tempfile::tempdir().unwrap();
        write_two(tmp.path());
        let (file, meta, members) = open_bundle(two_files(tmp.path()), 1400).unwrap();
        let mut content = vec![0u8; meta.size as usize];
        file.read_exact_at(&mut content, 0).unwrap();
        let manifest = crate::doc_fixture("bundle-manifest").expect("in PROTOCOL.md");
        assert_eq!(meta.bundle, Some(manifest.len() as u64));
        assert_eq!(&content[..manifest.len()], manifest.as_slice());
        assert_eq!(meta.size, 2806);
        assert_eq!(content.len(), 2806);
        assert_eq!(&content[1400..1405], b"hello");
        assert_eq!(&content[2800..], b"world\n");
        assert!(content[manifest.len()..1400].iter().all(|&b| b == 0));
        assert!(content[1405..2800].iter().all(|&b| b == 0));
        assert_eq!(members[0].chunks(1400), 1..2);
        assert_eq!(members[1].chunks(1400), 2..3);
        let m = chunk_common::bundle::Manifest::parse(&content, meta.size).unwrap();
        let hashes: Vec<_> = m.members().map(|m| m.hash).collect();
        assert_eq!(hashes[0], *blake3::hash(b"hello").as_bytes());
        assert_eq!(hashes[1], *blake3::hash(b"world\n").as_bytes());
        // Bundled again, the same files make the same tag (a resume finds its copy); another
        // version of one of them another.
        let (_, again, _) = open_bundle(two_files(tmp.path()), 1400).unwrap();
        assert_eq!(again.tag, meta.tag);
        std::fs::write(tmp.path().join("a.txt"), b"HELLO").unwrap();
        let (_, changed, _) = open_bundle(two_files(tmp.path()), 1400).unwrap();
        assert_ne!(changed.tag, meta.tag);
    }

    /// Whatever order chunks are asked in (in order, retransmissions behind, jumps ahead, the
    /// short last one), each comes back with the file's bytes at its offset, and the hash the
    /// reader hands over is the whole file's.
    #[test]
    fn the_reader_serves_every_chunk_exact_and_hashes_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let chunk = 1400u32;
        let count = data.len().div_ceil(chunk as usize) as u32;
        let mut src =
            FileSource::new(File::open(&path).unwrap(), data.len() as u64, chunk, None).unwrap();
        let order = (0..count)
            .chain([3, 0, count - 1, 700, 1500, 2, count - 1])
            .chain((0..count).rev());
        let mut hash = None;
        for index in order {
            let len = wire::chunk_len(data.len() as u64, chunk, index);
            let mut buf = vec![0u8; len];
            assert_eq!(
                src.read_chunk(index, &mut buf).unwrap(),
                len,
                "chunk {index}"
            );
            let start = index as usize * chunk as usize;
            assert_eq!(buf, data[start..start + len], "chunk {index}");
            hash = hash.or(src.take_hash());
        }
        assert_eq!(hash, Some(*blake3::hash(&data).as_bytes()));
    }

    /// A resume that skips chunks, or sends none at all, still gets the whole file's hash.
    #[test]
    fn the_hash_comes_whatever_was_read() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        for len in [0usize, 1, 1400, 5_000_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13 % 251) as u8).collect();
            std::fs::write(&path, &data).unwrap();
            let mut src =
                FileSource::new(File::open(&path).unwrap(), len as u64, 1400, None).unwrap();
            if len > 2_000_000 {
                // One chunk near the end: the blocks before it are skipped, not lost.
                let mut buf = vec![0u8; 1400];
                src.read_chunk(3000, &mut buf).unwrap();
                assert_eq!(buf, data[3000 * 1400..3001 * 1400]);
            }
            assert_eq!(
                src.finish_hash().unwrap(),
                *blake3::hash(&data).as_bytes(),
                "{len} bytes"
            );
        }
    }

    /// The driver's way to the hash of a file the receiver already has whole: polled, never
    /// waiting, each block's arrival signalled on the eventfd, until the hash comes.
    #[test]
    fn the_hash_is_polled_without_waiting() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let wake = std::sync::Arc::new(
            rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap(),
        );
        let mut src = FileSource::new(
            File::open(&path).unwrap(),
            data.len() as u64,
            1400,
            Some(wake.clone()),
        )
        .unwrap();
        let hash = loop {
            if let Some(h) = src.poll_hash().unwrap() {
                break h;
            }
            // Blocks until the reader has sent another block.
            rustix::io::read(&*wake, &mut [0u8; 8]).unwrap();
        };
        assert_eq!(hash, *blake3::hash(&data).as_bytes());
    }

    /// A file that is not the size the offer said fails the read, never hashes as if whole.
    #[test]
    fn a_file_that_changed_size_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        // Small files are read at once (the error comes when the source is made), larger ones
        // by the reader thread (it comes with the hash).
        for len in [10_000u64, 3 * READ_INLINE] {
            std::fs::write(&path, vec![7u8; len as usize]).unwrap();
            for claimed in [2 * len, len / 2] {
                let source = FileSource::new(File::open(&path).unwrap(), claimed, 1400, None);
                assert!(
                    source.and_then(|mut s| s.finish_hash()).is_err(),
                    "{len} bytes offered as {claimed}"
                );
            }
        }
    }
}
