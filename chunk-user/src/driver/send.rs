//! The send driver: one sender core at a time over a raw socket. Answers come in through
//! [`Intake`] (the same checks the receive path applies, then the key, then the body), the core's
//! packets go out a batch per `sendmmsg`, and the loop sleeps in `ppoll` until the core's next
//! timer (the pacer's included, to the nanosecond) or an answer.
//!
//! Also here: what the sender needs to know about the path (the route's MTU, the bytes a packet
//! carries besides its chunk) and about its file (opened without blocking, hashed, read by chunk).

use std::{
    fs::File,
    io::Read,
    net::Ipv4Addr,
    os::{
        fd::AsFd,
        unix::fs::{FileExt, MetadataExt, OpenOptionsExt},
    },
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_common::wire;

use super::wait::{self, Stop};
use crate::{
    auth::{self, Psk},
    intake::Intake,
    net::{batch::BatchSender, raw::RawSocket},
    proto::{ChunkSource, FileMeta, SendError, Sender, SenderConfig, SenderStats},
};

/// The MTU of the route to `to`, as the kernel knows it (interface MTU, or a smaller path MTU
/// learnt from ICMP).
pub fn route_mtu(to: Ipv4Addr) -> std::io::Result<u32> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    sock.connect(&std::net::SocketAddrV4::new(to, 9).into())?;
    let mtu = rustix::net::sockopt::ip_mtu(&sock)?;
    Ok(mtu)
}

/// Bytes a chunk packet carries besides its chunk: the IPv4 header (without options), the chunk
/// header, and with a key the authentication trailer.
pub fn packet_overhead(keyed: bool) -> u32 {
    let trailer = if keyed { auth::TRAILER_LEN as u32 } else { 0 };
    20 + wire::HEADER_LEN as u32 + trailer
}

/// What [`packet_overhead`] is made of, for messages.
pub fn overhead_words(keyed: bool) -> &'static str {
    if keyed {
        "20 for IPv4, 20 for the chunk header, 24 for the authentication trailer"
    } else {
        "20 for IPv4, 20 for the chunk header"
    }
}

/// Opens a file to send and describes it for the offer (hashing it whole first). Opened with
/// `O_NONBLOCK`: a FIFO (or a device) must not wait for a writer; what is not a regular file is
/// refused right after, before anything is read from it.
pub fn open_file(path: &Path, name: String) -> Result<(File, FileMeta)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let md = file.metadata()?;
    if !md.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut hasher = blake3::Hasher::new();
    // Large reads hashed on every core: the whole file is hashed before the offer goes out,
    // so this is time the transfer waits for.
    let mut buf = vec![0u8; 8 << 20];
    let mut size = 0u64;
    loop {
        let n = read_full(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        if n >= 1 << 20 {
            hasher.update_rayon(&buf[..n]);
        } else {
            hasher.update(&buf[..n]);
        }
        size += n as u64;
    }
    if size != md.len() {
        bail!("{} changed while it was being hashed", path.display());
    }
    let meta = FileMeta {
        name,
        size,
        mode: md.mode() & 0o777,
        mtime: md.mtime(),
        hash: *hasher.finalize().as_bytes(),
    };
    Ok((file, meta))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Bytes the sender reads from its file at once, ahead of the chunks it sends.
const READ_AHEAD: usize = 1 << 20;

/// Chunks read from the file. Chunks go out mostly in index order, so the file is read ahead in
/// [`READ_AHEAD`] blocks (one `pread` for some 700 chunks of 1400 bytes, where it was one per
/// chunk); a chunk outside the block (a retransmission of an older one) is read on its own.
struct FileSource {
    file: File,
    chunk_size: u64,
    /// The block read ahead, and the file offset of its first byte.
    block: Vec<u8>,
    block_at: u64,
}

impl FileSource {
    fn new(file: File, chunk_size: u32) -> Self {
        FileSource {
            file,
            chunk_size: chunk_size as u64,
            block: Vec::new(),
            block_at: 0,
        }
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }
}

impl ChunkSource for FileSource {
    fn read_chunk(&mut self, index: u32, buf: &mut [u8]) -> std::io::Result<usize> {
        let offset = index as u64 * self.chunk_size;
        let end = offset + buf.len() as u64;
        let block_end = self.block_at + self.block.len() as u64;
        if offset >= self.block_at && end <= block_end {
            let at = (offset - self.block_at) as usize;
            buf.copy_from_slice(&self.block[at..at + buf.len()]);
            return Ok(buf.len());
        }
        if offset < self.block_at || buf.len() > READ_AHEAD {
            // Behind the block: a retransmission; read just this chunk.
            return self.read_at(buf, offset);
        }
        // Ahead: the next block starts at this chunk (whole chunks, so none straddles two).
        let per_block = (READ_AHEAD as u64 / self.chunk_size).max(1);
        let mut block = std::mem::take(&mut self.block);
        block.resize((per_block * self.chunk_size) as usize, 0);
        let n = self.read_at(&mut block, offset)?;
        block.truncate(n);
        self.block = block;
        self.block_at = offset;
        let n = buf.len().min(self.block.len());
        buf[..n].copy_from_slice(&self.block[..n]);
        Ok(n)
    }
}

/// What the send driver needs.
pub struct SendConfig {
    pub to: Ipv4Addr,
    pub protocol: u8,
    pub core: SenderConfig,
    pub key: Option<Psk>,
}

/// The raw socket, its send batch and the intake of answers, kept across files.
pub struct SendDriver {
    cfg: SendConfig,
    tx: BatchSender,
    intake: Intake,
}

impl SendDriver {
    pub fn new(cfg: SendConfig) -> Result<Self> {
        let sock = RawSocket::new(cfg.protocol)
            .context("opening a raw IP socket (chunk send needs root or CAP_NET_RAW)")?;
        // Best effort: the defaults work, only less smoothly at high rates.
        let _ = rustix::net::sockopt::set_socket_send_buffer_size(sock.socket(), 4 << 20);
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(sock.socket(), 4 << 20);
        let tx = BatchSender::new(sock, wire::HEADER_LEN + cfg.core.chunk_size as usize);
        let intake = Intake::new(cfg.key.clone());
        Ok(SendDriver { cfg, tx, intake })
    }

    pub fn config(&self) -> &SendConfig {
        &self.cfg
    }

    /// Sends one file and waits for the receiver's verdict. `on_progress` is called about every
    /// 100 ms and at the end. A stop request cancels the transfer (an abort goes out). Returns
    /// the core's figures and its outcome; `Err` only for local I/O failures.
    pub fn send_file(
        &mut self,
        file: File,
        meta: FileMeta,
        stop: &Stop,
        on_progress: &mut dyn FnMut(&Sender),
    ) -> Result<(SenderStats, Result<(), SendError>)> {
        let to = self.cfg.to;
        let start = Instant::now();
        let tid: u32 = rand::random();
        let mut sender = Sender::new(tid, meta, self.cfg.core.clone(), start)?;
        self.tx
            .ensure_packet_len(sender.max_packet_len() + auth::TRAILER_LEN);
        let mut source = FileSource::new(file, self.cfg.core.chunk_size);
        let mut rbuf = vec![0u8; 65536];
        let mut last_draw = start;
        let mut cancelled = false;
        loop {
            let now = Instant::now();
            if !cancelled && stop.requested().is_some() {
                cancelled = true;
                sender.cancel();
            }
            // Everything the receiver said.
            while let Some(n) = self.tx.socket().recv_nonblocking(&mut rbuf)? {
                let protocol = self.cfg.protocol;
                if let Ok(repr) = self.intake.open_ip(
                    &mut rbuf[..n],
                    protocol,
                    |src| src == to.octets(),
                    auth::now_ms(),
                ) {
                    sender.handle_packet(&repr, now);
                }
            }
            if sender.poll_timeout().is_some_and(|t| t <= now) {
                sender.handle_timeout(now);
            }
            // Everything the core wants sent now, a batch at a time.
            let batch_full = self.queue_from(&mut sender, now, &mut source);
            if let Err(e) = self.tx.flush() {
                // Tell the receiver, so that it closes the transfer now rather than at its idle
                // timeout (a part file that got no chunk is removed). The abort is small enough
                // for any path.
                self.tx.discard();
                sender.cancel();
                self.queue_from(&mut sender, now, &mut source);
                let _ = self.tx.flush();
                return Err(self.explain_send_error(e));
            }
            if now.duration_since(last_draw) >= Duration::from_millis(100) {
                last_draw = now;
                on_progress(&sender);
            }
            if let Some(outcome) = sender.outcome() {
                // A final abort may still be due.
                self.queue_from(&mut sender, now, &mut source);
                let _ = self.tx.flush();
                on_progress(&sender);
                return Ok((sender.stats(), outcome));
            }
            if !batch_full {
                let fds = [self.tx.socket().socket().as_fd()];
                wait::until(&fds, sender.poll_timeout())?;
            }
        }
    }

    /// Queues what the core has to send now, sealed; returns whether the batch filled up.
    fn queue_from(&mut self, sender: &mut Sender, now: Instant, source: &mut FileSource) -> bool {
        while let Some(buf) = self.tx.next_buf() {
            let Some(n) = sender.poll_transmit(now, source, buf) else {
                return false;
            };
            let n = match self.intake.key() {
                Some(k) => k
                    .seal(buf, n, auth::now_ms())
                    .expect("packet buffers have room for the trailer"),
                None => n,
            };
            self.tx.commit(n, self.cfg.to);
            if self.tx.is_full() {
                return true;
            }
        }
        true
    }

    fn explain_send_error(&self, e: std::io::Error) -> anyhow::Error {
        let to = self.cfg.to;
        if e.raw_os_error() != Some(libc::EMSGSIZE) {
            return anyhow::Error::new(e).context(format!("sending to {to}"));
        }
        let keyed = self.cfg.key.is_some();
        let packet = self.cfg.core.chunk_size + packet_overhead(keyed);
        let limit = match route_mtu(to) {
            Ok(mtu) => format!(
                "at most {} on this path (its MTU of {mtu} minus {})",
                mtu.saturating_sub(packet_overhead(keyed)),
                overhead_words(keyed)
            ),
            Err(_) => format!("the path MTU minus {}", overhead_words(keyed)),
        };
        anyhow::anyhow!(
            "chunk packets of {packet} bytes do not fit the path MTU to {to}: use a smaller \
             --chunk-size ({limit})"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever order chunks are asked in (in order, retransmissions behind, jumps ahead, the
    /// short last one), each comes back with the file's bytes at its offset.
    #[test]
    fn read_ahead_serves_every_chunk_exact() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..3_000_017u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let chunk = 1400u32;
        let count = data.len().div_ceil(chunk as usize) as u32;
        let mut src = FileSource::new(File::open(&path).unwrap(), chunk);
        let order = (0..count)
            .chain([3, 0, count - 1, 700, 1500, 2, count - 1])
            .chain((0..count).rev());
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
        }
    }
}
