//! TCP for the benchmark: a file over one connection, with the congestion control set on the
//! sender's socket (`TCP_CONGESTION`), which `nc` cannot do and this kernel's namespaces cannot
//! change by sysctl. The sender and the receiver are threads of the bench inside the two
//! namespaces; each measures its own CPU time (`RUSAGE_THREAD`). Used by the WAN cases
//! (tcp-cubic, tcp-bbr) and the LAN ones (`--tools tcp-cubic,tcp-bbr`).

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use chunk_tests::Netns;

/// How one TCP transfer went.
pub struct TcpOutcome {
    /// From the sender's start until the receiver read the end of the stream (or gave up).
    pub seconds: f64,
    /// Cut off: the bytes that had arrived.
    pub partial_bytes: Option<u64>,
    /// The sender namespace's `TcpRetransSegs` after the transfer (since it was made).
    pub retransmissions: Option<u64>,
    /// CPU seconds (user + system) of the sending and the receiving thread.
    pub send_cpu: f64,
    pub recv_cpu: f64,
}

/// User + system CPU seconds of the calling thread.
fn thread_cpu() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Sets the namespace's TCP buffer limits so that autotuning may grow a socket's buffers to
/// 64 MiB, more than twice the largest bandwidth-delay product the cases make (200 Mbit/s ×
/// 600 ms = 15 MB, as much again in the queue): TCP is limited by its congestion control,
/// never by its window.
pub fn tcp_buffers(ns: &Netns) -> Result<Restore<'_>> {
    let mut old = Vec::new();
    for (key, v) in [
        ("net.ipv4.tcp_rmem", "4096 131072 67108864"),
        ("net.ipv4.tcp_wmem", "4096 65536 67108864"),
    ] {
        let was = ns.exec("sysctl", &["-n", key])?;
        old.push((key, was.split_whitespace().collect::<Vec<_>>().join(" ")));
        ns.exec("sysctl", &["-qw", &format!("{key}={v}")])?;
    }
    Ok(Restore { ns, old })
}

/// The namespace's TCP buffer limits as they were, put back on drop: the LAN cases' namespaces
/// outlive one run, and nc must not run with the buffers another tool asked for.
pub struct Restore<'a> {
    ns: &'a Netns,
    old: Vec<(&'static str, String)>,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for (key, was) in &self.old {
            let _ = self.ns.exec("sysctl", &["-qw", &format!("{key}={was}")]);
        }
    }
}

const TCP_PORT: u16 = 5001;

/// Sends `file` from `sender` to `to` in `receiver`, written to `dest`, with TCP `cc` (set on
/// the sender's socket, so the namespace's default does not matter); done when the receiver has
/// read the end of the stream. Cut off after `cut_off` and then measured by the bytes that
/// arrived. `started` is called as the sender starts (the clock's zero).
#[allow(clippy::too_many_arguments)]
pub fn transfer(
    sender: &Netns,
    receiver: &Netns,
    to: Ipv4Addr,
    cc: &str,
    file: &Path,
    dest: &Path,
    cut_off: Duration,
    started: &mut dyn FnMut(),
) -> Result<TcpOutcome> {
    let _sender_buffers = tcp_buffers(sender)?;
    let _receiver_buffers = tcp_buffers(receiver)?;
    // Set when the sender gives up, so that the receiver stops waiting for it.
    let abort = std::sync::atomic::AtomicBool::new(false);
    let aborted = || abort.load(std::sync::atomic::Ordering::Relaxed);
    let listener = receiver.enter(|| {
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, TCP_PORT))
            .context("TCP listener")
    })??;
    let to = SocketAddr::V4(SocketAddrV4::new(to, TCP_PORT));
    started();
    let t0 = Instant::now();
    let deadline = t0 + cut_off;
    let (received, sent) = std::thread::scope(|s| {
        let rx = s.spawn(|| -> Result<(u64, Duration, f64)> {
            let cpu0 = thread_cpu();
            listener.set_nonblocking(true)?;
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if aborted() {
                            bail!("the TCP sender gave up");
                        }
                        if Instant::now() > deadline {
                            bail!("no TCP connection in {} s", cut_off.as_secs());
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(dest)?);
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        out.write_all(&buf[..n])?;
                        got += n as u64;
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if Instant::now() > deadline + Duration::from_secs(1) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => return Err(e.into()),
                }
            }
            let at = t0.elapsed();
            out.flush()?;
            Ok((got, at, thread_cpu() - cpu0))
        });
        let tx = s.spawn(|| -> Result<(bool, f64)> {
            sender.enter(|| -> Result<(bool, f64)> {
                use socket2::{Domain, Protocol, Socket, Type};
                let cpu0 = thread_cpu();
                let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
                sock.set_tcp_congestion(cc.as_bytes())
                    .with_context(|| format!("TCP_CONGESTION {cc}"))?;
                sock.connect_timeout(&to.into(), cut_off)?;
                sock.set_write_timeout(Some(Duration::from_millis(200)))?;
                let mut conn: std::net::TcpStream = sock.into();
                let mut f = std::fs::File::open(file)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    let mut at = 0;
                    while at < n {
                        if Instant::now() > deadline {
                            // Cut off: the receiver keeps what arrived.
                            return Ok((false, thread_cpu() - cpu0));
                        }
                        match conn.write(&buf[at..n]) {
                            Ok(k) => at += k,
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                                ) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
                conn.shutdown(std::net::Shutdown::Write)?;
                // Wait for the receiver to close: it has read everything.
                conn.set_read_timeout(Some(Duration::from_millis(200)))?;
                let mut one = [0u8; 1];
                while Instant::now() < deadline + Duration::from_secs(1) {
                    match conn.read(&mut one) {
                        Ok(_) => break,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                Ok((true, thread_cpu() - cpu0))
            })?
        });
        let sent = tx
            .join()
            .map_err(|_| anyhow::anyhow!("TCP sender panicked"));
        if !matches!(sent, Ok(Ok(_))) {
            abort.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let received = rx
            .join()
            .map_err(|_| anyhow::anyhow!("TCP receiver panicked"));
        (received, sent)
    });
    // The sender's error first: it explains a receiver that saw no connection.
    let (whole, send_cpu) = sent??;
    let (got, at, recv_cpu) = received??;
    let size = std::fs::metadata(file)?.len();
    let partial_bytes = if !whole || got < size {
        if got == 0 {
            bail!("TCP moved nothing in {} s", cut_off.as_secs());
        }
        Some(got)
    } else {
        None
    };
    Ok(TcpOutcome {
        seconds: at.as_secs_f64(),
        partial_bytes,
        retransmissions: super::tools::nc::tcp_retransmissions(sender),
        send_cpu,
        recv_cpu,
    })
}
