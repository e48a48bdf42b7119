//! Putting received files in place: a file's or a bundle's verdict (hash checked, made
//! durable, then named: a file's part renamed, a bundle's members linked), done by [`Placer`]
//! on the receiver's thread or, through [`Finisher`], on a thread of its own, so that the
//! receiver goes on reading packets meanwhile (a bundle's files took it 3.5–5 ms, during which
//! the ring buffer filled).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::{FileExt, PermissionsExt},
    },
    rc::Rc,
    sync::{Arc, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use chunk_common::{bundle, wire::HASH_LEN};
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

use super::{
    Created, FsHandle, PART_SUFFIX, apply_mode_and_mtime, holds, invalid_data, io_refusal,
    link_unnamed, member_name, part_name, read_manifest_bytes, refusal_kind, resolve, unnamed_file,
};
use crate::proto::{HashCheck, Refusal};
use chunk_common::wire::AbortReason;

/// What putting a file in place needs of the receiver's settings: DIR, and how names are taken.
#[derive(Debug)]
pub(super) struct Placer {
    pub root: OwnedFd,
    pub overwrite: bool,
    /// The process's umask, if known: a bundle's member made with its mode needs no `fchmod`
    /// when the umask takes none of its bits.
    pub umask: Option<u32>,
    /// A bundle's members wait for their names in files with none (`O_TMPFILE`, then
    /// `linkat`): DIR's file system makes them and this process can name them.
    pub unnamed: bool,
    /// Members staged at once, at most (see [`members_open`]).
    pub members_open: usize,
}

/// How many of a bundle's members to stage at once: each holds its file open until it is
/// named, and its directory's when the members are in many. An eighth of the limit on open
/// files, between 32 and 1 024 (a bundle of chunk's, up to 1 024 files, in one group where the
/// process may open 8 192 files; `chunk recv` raises its limit toward that). Each group pays a
/// file-system sync before its names.
pub(super) fn members_open() -> usize {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (lim.current.unwrap_or(u64::MAX) / 8).clamp(32, 1024) as usize
}

impl Placer {
    /// The verdict of a file or a bundle whose chunks are all written: checked against
    /// `expected` and put in place, its work files removed unless it stays to be resumed.
    /// `busy`: names being received now, which a bundle's member must not take.
    pub(super) fn finish(
        &self,
        mut h: FsHandle,
        expected: &[u8; HASH_LEN],
        busy: &HashSet<String>,
    ) -> io::Result<HashCheck> {
        if h.bundle {
            let result = self.finish_bundle(&mut h, expected, busy);
            h.remove_work_files();
            return result;
        }
        self.finish_file(h, expected)
    }

    /// A file's verdict: synced, hashed, given its mode and mtime, renamed into place.
    fn finish_file(&self, mut h: FsHandle, expected: &[u8; HASH_LEN]) -> io::Result<HashCheck> {
        let result = (|| {
            h.flush()?;
            h.file.sync_all()?;
            let hash = h.hash_part()?;
            if &hash != expected {
                return Ok(HashCheck::mismatch(hash));
            }
            apply_mode_and_mtime(&h.file, &h.offer)?;
            let part = part_name(&h.base);
            let flags = if self.overwrite {
                RenameFlags::empty()
            } else {
                RenameFlags::NOREPLACE
            };
            rustix::fs::renameat_with(&h.dir, part.as_str(), &h.dir, h.base.as_str(), flags)
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("renaming into place as {}: {e}", h.name))
                })?;
            h.remove_state();
            rustix::fs::fsync(&h.dir)?;
            Ok(HashCheck {
                verified: true,
                hash,
                members: Vec::new(),
            })
        })();
        // A file that did not verify (or could not be checked) never stays, not even as a part:
        // resuming from chunks that hash wrong would fail again.
        if !matches!(result, Ok(HashCheck { verified: true, .. })) {
            h.remove_work_files();
        }
        result
    }

    /// Opens (creating as needed) the directories of `name` under DIR; returns the innermost,
    /// the last component, and the directories it created (each with its parent), so that a
    /// refused offer can take them away again.
    pub(super) fn open_parent<'n>(
        &self,
        name: &'n str,
    ) -> Result<(OwnedFd, &'n str, Created), Refusal> {
        let (dirs, base) = match name.rsplit_once('/') {
            Some((d, b)) => (Some(d), b),
            None => (None, name),
        };
        let mut created = Created::default();
        let mut dir = rustix::io::dup(&self.root).map_err(io_refusal)?;
        for comp in dirs.into_iter().flat_map(|d| d.split('/')) {
            let open = |dir: &OwnedFd| {
                rustix::fs::openat2(
                    dir,
                    comp,
                    OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                    resolve(),
                )
            };
            // Most files of a tree go into a directory that is there already: open it first,
            // make it only when it is missing.
            let mut made = false;
            let mut next = open(&dir);
            if matches!(next, Err(rustix::io::Errno::NOENT)) {
                made = match rustix::fs::mkdirat(&dir, comp, Mode::from_raw_mode(0o755)) {
                    Ok(()) => true,
                    Err(rustix::io::Errno::EXIST) => false,
                    Err(e) => {
                        created.remove();
                        return Err(io_refusal(e));
                    }
                };
                next = open(&dir);
            }
            let next = next.map_err(|e| match e {
                rustix::io::Errno::LOOP | rustix::io::Errno::XDEV | rustix::io::Errno::NOTDIR => {
                    Refusal::new(
                        AbortReason::BadName,
                        format!("{name}: {comp} is not a plain directory"),
                    )
                }
                e => io_refusal(e),
            });
            if made {
                created
                    .0
                    .push((rustix::io::dup(&dir).map_err(io_refusal)?, comp.to_owned()));
            }
            match next {
                Ok(next) => dir = next,
                Err(refusal) => {
                    created.remove();
                    return Err(refusal);
                }
            }
        }
        Ok((dir, base, created))
    }

    /// A bundle's verdict: its hash checked, then each member put in place as a file's is
    /// (written to a file with no name where the file system makes one, else beside its name,
    /// given its mode and mtime, made durable, then named without replacing), in groups of
    /// [`Placer::members_open`]. A member already there with its content verifies as it is;
    /// one with other content is `exists`. The first member that fails is the error, after the
    /// others have gone in.
    fn finish_bundle(
        &self,
        h: &mut FsHandle,
        expected: &[u8; HASH_LEN],
        busy: &HashSet<String>,
    ) -> io::Result<HashCheck> {
        let t0 = Instant::now();
        let hash = match h.check_hash(expected)? {
            Ok(hash) => hash,
            Err(mismatch) => return Ok(mismatch),
        };
        let bytes = read_manifest_bytes(h)?;
        let manifest = bundle::Manifest::parse(&bytes, h.offer.size)
            .map_err(|e| invalid_data(format!("the bundle's manifest is malformed ({e:?})")))?;
        let mut first_error = None;
        // The content is at most the receiver's size limit; a bundle is small (chunk's are up
        // to 1 MiB): read once, each member written from memory.
        let mut content = vec![0u8; h.offer.size as usize];
        h.file.read_exact_at(&mut content, 0)?;
        // Members of one directory come together: its fd is kept from one to the next.
        let mut dir = None;
        let mut placed = Vec::new();
        let members: Vec<_> = manifest.members().collect();
        // An unnamed member's file stays open until it has its name: so many at once at most.
        for group in members.chunks(self.members_open.max(1)) {
            let mut staged = Vec::with_capacity(group.len());
            for m in group {
                match self.stage_member(h, m, &content, &mut dir, busy) {
                    Ok(s) => staged.push(s),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            // Every member's bytes durable before any of them shows under its name, then the
            // names: one file-system sync per group and one at the end (two for most bundles),
            // where files one by one pay two each.
            let synced = rustix::fs::syncfs(&self.root);
            for s in staged {
                let r = synced
                    .map_err(io::Error::from)
                    .and_then(|()| self.name_member(&s, h.offer.transfer_id));
                match r {
                    Ok(()) => placed.push((s.name, s.size)),
                    Err(e) => {
                        // A named member that did not go in place goes (an unnamed one with
                        // its file).
                        if let Work::Named(part) = &s.work {
                            let _ = rustix::fs::unlinkat(&*s.dir, part.as_str(), AtFlags::empty());
                        }
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        rustix::fs::syncfs(&self.root)?;
        if let Some(e) = first_error {
            return Err(e);
        }
        tracing::debug!(bundle = %h.name, files = placed.len(), took = ?t0.elapsed(),
            "bundle's files in place");
        Ok(HashCheck {
            verified: true,
            hash,
            members: placed,
        })
    }
}

/// A bundle's member written, not yet under its name.
pub(super) struct Staged {
    dir: Rc<OwnedFd>,
    work: Work,
    base: String,
    name: String,
    size: u64,
    hash: [u8; HASH_LEN],
}

/// Where a member's bytes wait for its name.
enum Work {
    /// A file with no name (`O_TMPFILE`): a receiver that dies before the name leaves nothing.
    Unnamed(File),
    /// `.BASE.TID.part`, where the file system makes no unnamed file.
    Named(String),
}

impl Placer {
    /// Checks a bundle's member `m` against its hash and writes it, with its mode and mtime,
    /// where it waits for its name (the directory made if need be).
    pub(super) fn stage_member(
        &self,
        h: &FsHandle,
        m: &bundle::Member<'_>,
        content: &[u8],
        last_dir: &mut Option<(String, Rc<OwnedFd>)>,
        busy: &HashSet<String>,
    ) -> io::Result<Staged> {
        let name = member_name(m)?;
        let (dir_name, base) = name.rsplit_once('/').unwrap_or(("", name));
        let dir = match last_dir {
            Some((d, fd)) if d == dir_name => fd.clone(),
            _ => {
                let (fd, _, _) = self
                    .open_parent(name)
                    .map_err(|r| io::Error::new(refusal_kind(&r), r.message))?;
                let fd = Rc::new(fd);
                *last_dir = Some((dir_name.to_owned(), fd.clone()));
                fd
            }
        };
        if busy.contains(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} is being received"),
            ));
        }
        let bytes = &content[m.offset as usize..m.range().end as usize];
        if blake3::hash(bytes).as_bytes() != &m.hash {
            return Err(invalid_data(format!(
                "the bundle's manifest gives {name} another hash than its bytes'"
            )));
        }
        // Made with its mode when the umask leaves it whole (its content is verified already),
        // else private and given its mode after.
        let mode = m.mode & 0o777;
        let exact = self.umask.is_some_and(|u| mode & u == 0);
        let create_mode = if exact { mode } else { 0o600 };
        let unnamed = if self.unnamed {
            unnamed_file(&*dir, create_mode)
        } else {
            Ok(None)
        };
        let (fd, work) = match unnamed {
            Ok(Some(fd)) => (fd, None),
            Ok(None) => {
                // Its own work name, this transfer's: no other transfer (of this receiver or of
                // another one sharing the directory) writes to it.
                let part = format!(".{base}.{:08x}{PART_SUFFIX}", h.offer.transfer_id);
                let fd = rustix::fs::openat2(
                    &*dir,
                    part.as_str(),
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC,
                    Mode::from_raw_mode(create_mode),
                    resolve(),
                )
                .map_err(|e| {
                    let kind = if e == rustix::io::Errno::EXIST {
                        io::ErrorKind::AlreadyExists
                    } else {
                        e.kind()
                    };
                    io::Error::new(kind, format!("{name}: its part file {part}: {e}"))
                })?;
                (fd, Some(part))
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{name}: a file for it: {e}"),
                ));
            }
        };
        let file = File::from(fd);
        let copied = (|| {
            file.write_all_at(bytes, 0)?;
            if !exact {
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            if let Ok(secs) = u64::try_from(m.mtime) {
                file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))?;
            }
            Ok(())
        })();
        if let Err(e) = copied {
            if let Some(part) = &work {
                let _ = rustix::fs::unlinkat(&*dir, part.as_str(), AtFlags::empty());
            }
            return Err(e);
        }
        Ok(Staged {
            dir,
            work: match work {
                Some(part) => Work::Named(part),
                None => Work::Unnamed(file),
            },
            base: base.to_owned(),
            name: name.to_owned(),
            size: m.size,
            hash: m.hash,
        })
    }

    /// Gives a staged member its name: never replacing anything unless overwriting (and then
    /// only a regular file); a regular file already there with its content verifies as it is.
    fn name_member(&self, s: &Staged, transfer_id: u32) -> io::Result<()> {
        let (dir, base, name) = (&*s.dir, s.base.as_str(), s.name.as_str());
        let placed = match &s.work {
            Work::Unnamed(file) => match link_unnamed(file, dir, base) {
                Err(rustix::io::Errno::EXIST) if self.overwrite => {
                    check_replaceable(dir, base, name)?;
                    return replace_with(file, dir, base, transfer_id)
                        .map_err(|e| io::Error::new(e.kind(), format!("replacing {name}: {e}")));
                }
                linked => linked,
            },
            Work::Named(part) => {
                if self.overwrite {
                    check_replaceable(dir, base, name)?;
                    rustix::fs::renameat(dir, part.as_str(), dir, base)
                } else {
                    rustix::fs::renameat_with(dir, part.as_str(), dir, base, RenameFlags::NOREPLACE)
                }
            }
        };
        match placed {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::EXIST) => {
                // Already here: verified as it is if it is this content.
                let same = rustix::fs::openat2(
                    dir,
                    base,
                    OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NONBLOCK,
                    Mode::empty(),
                    resolve(),
                )
                .ok()
                .map(|fd| holds(&fd, s.size, &s.hash))
                .transpose()?
                .unwrap_or(false);
                if same {
                    if let Work::Named(part) = &s.work {
                        let _ = rustix::fs::unlinkat(dir, part.as_str(), AtFlags::empty());
                    }
                    Ok(())
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!(
                            "{name} exists with other contents (the receiver may allow --overwrite)"
                        ),
                    ))
                }
            }
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!("putting {name} in place: {e}"),
            )),
        }
    }
}

/// Replaces the regular file `base` in `dir` with the unnamed `file`: linked under a side name
/// no offer may take (`.BASE.TID.tmp`, see `is_work_file`), then renamed over it, so that a
/// crash in between leaves that name behind, never a half-written file under `base`. A side
/// name already taken fails the member: nothing is unlinked that this did not make.
fn replace_with(
    file: &File,
    dir: &OwnedFd,
    base: &str,
    transfer_id: u32,
) -> rustix::io::Result<()> {
    let side = format!(".{base}.{transfer_id:08x}.tmp");
    link_unnamed(file, dir, &side)?;
    let r = rustix::fs::renameat(dir, side.as_str(), dir, base);
    if r.is_err() {
        let _ = rustix::fs::unlinkat(dir, side.as_str(), AtFlags::empty());
    }
    r
}

/// Overwriting replaces a regular file, never anything else (as for a file alone).
fn check_replaceable(dir: &OwnedFd, base: &str, name: &str) -> io::Result<()> {
    match rustix::fs::statat(dir, base, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st)
            if rustix::fs::FileType::from_raw_mode(st.st_mode)
                != rustix::fs::FileType::RegularFile =>
        {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{name} exists and is not a regular file"),
            ))
        }
        _ => Ok(()),
    }
}

/// At most this many verdicts wait for the placing thread; beyond, the receiver's thread does
/// its own: what waits is bounded (a handle holds an fd and buffers), and so is the work a
/// receiver owes its senders.
const MAX_WAITING: usize = 16;

struct Job {
    ticket: u64,
    handle: FsHandle,
    expected: [u8; HASH_LEN],
    busy: HashSet<String>,
}

/// A verdict reached on the placing thread, under its ticket.
pub(super) type Done = (u64, io::Result<HashCheck>);

/// The placing thread: verdicts handed to it in order, results back in order, each counted on
/// an eventfd the receiver's loop waits on. A result is taken only once the eventfd has counted
/// it (it is sent before it is counted), so the eventfd is readable exactly while results wait.
pub(super) struct Finisher {
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<Done>,
    wake: Arc<OwnedFd>,
    /// Results counted by the eventfd and not yet taken.
    counted: u64,
    /// The names of the verdicts handed over and not yet taken back.
    names: HashMap<u64, String>,
    thread: Option<JoinHandle<()>>,
}

impl Finisher {
    pub(super) fn start(placer: Arc<Placer>) -> io::Result<Self> {
        use rustix::event::{EventfdFlags, eventfd};
        let wake = Arc::new(eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?);
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel::<Done>();
        let counter = wake.clone();
        let thread = std::thread::Builder::new()
            .name("chunk-place".into())
            .spawn(move || {
                for job in job_rx {
                    let Job {
                        ticket,
                        handle,
                        expected,
                        busy,
                    } = job;
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        placer.finish(handle, &expected, &busy)
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("putting the file in place failed")));
                    if done_tx.send((ticket, result)).is_err() {
                        break;
                    }
                    let _ = rustix::io::write(&*counter, &1u64.to_ne_bytes());
                }
            })?;
        Ok(Finisher {
            jobs: Some(jobs),
            done,
            wake,
            counted: 0,
            names: HashMap::new(),
            thread: Some(thread),
        })
    }

    /// Verdicts handed over and not yet taken back.
    pub(super) fn in_flight(&self) -> usize {
        self.names.len()
    }

    /// Readable while a verdict waits to be taken.
    pub(super) fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Hands a verdict to the thread, or gives the handle back (too many waiting already).
    pub(super) fn submit(
        &mut self,
        ticket: u64,
        handle: FsHandle,
        expected: &[u8; HASH_LEN],
        busy: HashSet<String>,
    ) -> Result<(), Box<FsHandle>> {
        let Some(jobs) = &self.jobs else {
            return Err(Box::new(handle));
        };
        if self.names.len() >= MAX_WAITING {
            return Err(Box::new(handle));
        }
        let name = handle.name.clone();
        let job = Job {
            ticket,
            handle,
            expected: *expected,
            busy,
        };
        match jobs.send(job) {
            Ok(()) => {
                self.names.insert(ticket, name);
                Ok(())
            }
            Err(mpsc::SendError(job)) => Err(Box::new(job.handle)),
        }
    }

    /// A verdict reached, and the name it was for; never waits. While verdicts are under way
    /// this reads the eventfd (a system call) when none is counted: once per turn of the receive
    /// loop, not per packet.
    pub(super) fn poll(&mut self) -> Option<(Done, String)> {
        if self.names.is_empty() {
            return None;
        }
        if self.counted == 0 {
            let mut b = [0u8; 8];
            match rustix::io::read(&*self.wake, &mut b) {
                Ok(8) => self.counted = u64::from_ne_bytes(b),
                _ => return None,
            }
        }
        self.take()
    }

    /// Every verdict handed over and not yet taken, waited for.
    pub(super) fn wait_all(&mut self) -> Vec<(Done, String)> {
        let mut all = Vec::new();
        while !self.names.is_empty() {
            if self.counted == 0 {
                let fds = [self.wake.as_fd()];
                let deadline = Instant::now() + Duration::from_secs(1);
                if crate::driver::wait::until(&fds, Some(deadline)).is_err() {
                    break;
                }
                let mut b = [0u8; 8];
                if let Ok(8) = rustix::io::read(&*self.wake, &mut b) {
                    self.counted = u64::from_ne_bytes(b);
                }
                if self.counted == 0 {
                    if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                        break;
                    }
                    continue;
                }
            }
            match self.take() {
                Some(d) => all.push(d),
                None => break,
            }
        }
        all
    }

    fn take(&mut self) -> Option<(Done, String)> {
        // Counted, so already sent.
        let done = self.done.recv().ok()?;
        self.counted -= 1;
        let name = self.names.remove(&done.0).unwrap_or_default();
        Some((done, name))
    }
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // The thread ends once it has done what it was handed.
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
