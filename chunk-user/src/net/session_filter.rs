//! Which sessions a receive path lets sealed packets through for: the session layer opens and
//! closes sessions from inside the receive loop, and the receive path, in the kernel (the XDP
//! program's `SESSIONS` map) or in userspace (the socket path), drops a sealed packet of any
//! other session as `unknown_session` (`chunk_common::classify::session`).
//!
//! A session id may be allowed more than once (each holder, say a transfer and a rekey in
//! flight, allows and forgets it on its own); it stays open until the last one forgets it.

use std::{cell::RefCell, collections::HashMap, io, rc::Rc};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};

/// Which session ids the receive path lets sealed packets through for (reference counted).
///
/// A cheap handle on shared state: clones see and change the same set, so the driver can hold
/// one while the receive path it came from is borrowed (inside `RxSource::read_batch`'s
/// callback, say).
#[derive(Clone, Default)]
pub struct SessionFilter(Rc<RefCell<Inner>>);

#[derive(Default)]
struct Inner {
    /// Every allowed session id and how many holders it has (never 0: removed instead). What
    /// [`SessionFilter::allows`] reads, without a system call.
    counts: HashMap<u32, u32>,
    /// The XDP program's map, which the kernel consults; none for the socket path.
    kernel: Option<BpfHashMap<MapData, u32, u32>>,
}

impl SessionFilter {
    /// A filter kept in userspace only (the socket path, which checks it itself).
    pub fn userspace() -> Self {
        Self::default()
    }

    /// A filter that keeps the XDP program's session map (`chunk_common::xdp::MAP_SESSIONS`)
    /// in step with its own counts.
    pub fn kernel(map: BpfHashMap<MapData, u32, u32>) -> Self {
        SessionFilter(Rc::new(RefCell::new(Inner {
            counts: HashMap::new(),
            kernel: Some(map),
        })))
    }

    /// Lets sealed packets of session `sid` through (once more, if they already are). Fails
    /// when the kernel's map is full (`chunk_common::xdp::SESSIONS_MAX_ENTRIES`) or refuses;
    /// the count is then unchanged.
    pub fn allow(&self, sid: u32) -> io::Result<()> {
        let mut inner = self.0.borrow_mut();
        let count = inner.counts.get(&sid).copied().unwrap_or(0);
        let count = count
            .checked_add(1)
            .ok_or_else(|| io::Error::other(format!("session {sid:#010x} allowed 2^32 times")))?;
        if let Some(map) = &mut inner.kernel {
            map.insert(sid, count, 0).map_err(to_io)?;
        }
        inner.counts.insert(sid, count);
        Ok(())
    }

    /// Takes back one [`allow`](Self::allow) of `sid`; the last one closes it to sealed
    /// packets. Forgetting a session that is not allowed does nothing.
    pub fn forget(&self, sid: u32) -> io::Result<()> {
        let mut inner = self.0.borrow_mut();
        let Some(&count) = inner.counts.get(&sid) else {
            return Ok(());
        };
        let left = count - 1;
        if let Some(map) = &mut inner.kernel {
            let r = if left == 0 {
                map.remove(&sid)
            } else {
                map.insert(sid, left, 0)
            };
            r.map_err(to_io)?;
        }
        if left == 0 {
            inner.counts.remove(&sid);
        } else {
            inner.counts.insert(sid, left);
        }
        Ok(())
    }

    /// Whether sealed packets of `sid` get through.
    pub fn allows(&self, sid: u32) -> bool {
        self.0.borrow().counts.contains_key(&sid)
    }

    /// How many holders `sid` has (0: not allowed).
    pub fn count(&self, sid: u32) -> u32 {
        self.0.borrow().counts.get(&sid).copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for SessionFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.0.borrow();
        f.debug_struct("SessionFilter")
            .field("sessions", &inner.counts.len())
            .field("kernel", &inner.kernel.is_some())
            .finish()
    }
}

/// A map operation's failure as the `io::Error` the system call returned, when there was one.
fn to_io(e: MapError) -> io::Error {
    match e {
        MapError::SyscallError(s) => s.io_error,
        MapError::IoError(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stays_open_until_its_last_holder_forgets_it() {
        let f = SessionFilter::userspace();
        assert!(!f.allows(7));
        f.allow(7).unwrap();
        f.allow(7).unwrap();
        assert_eq!(f.count(7), 2);
        f.forget(7).unwrap();
        assert!(f.allows(7));
        f.forget(7).unwrap();
        assert!(!f.allows(7));
        assert_eq!(f.count(7), 0);
        // Once more than allowed: nothing to take back.
        f.forget(7).unwrap();
        assert_eq!(f.count(7), 0);
        f.allow(7).unwrap();
        assert_eq!(f.count(7), 1);
    }

    #[test]
    fn clones_share_one_set_and_ids_are_apart() {
        let f = SessionFilter::userspace();
        let g = f.clone();
        f.allow(1).unwrap();
        g.allow(0xffff_ffff).unwrap();
        assert!(g.allows(1) && f.allows(0xffff_ffff));
        assert!(!f.allows(2) && !f.allows(0));
        g.forget(1).unwrap();
        assert!(!f.allows(1));
        assert!(f.allows(0xffff_ffff));
    }
}
