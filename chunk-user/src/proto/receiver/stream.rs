//! What a receiver knows of a stream's end (docs/PROTOCOL.md, "Streams"). A stream's offer
//! carries no size: the end comes from the last chunk (the one without `MORE_CHUNKS`: its index
//! plus one is the count, its end the size) and from the hash message (its sequence number is
//! the count). Each packet is checked against what the others already said; a contradiction is
//! malformed. Once both count and size are known the transfer is an ordinary file of that size.

/// The end of a stream, as far as it is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct StreamEnd {
    count: Option<u32>,
    size: Option<u64>,
}

/// Why a stream's packet is not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StreamError {
    /// It contradicts the end known so far, or its length is not a chunk's: dropped.
    Malformed,
    /// It reaches beyond the receiver's size limit: the transfer ends (`too large`).
    TooLarge,
}

impl StreamEnd {
    /// The count and size, once both are known.
    pub(super) fn known(&self) -> Option<(u32, u64)> {
        Some((self.count?, self.size?))
    }

    /// Checks data chunk `index` of `len` bytes (`more`: it has `MORE_CHUNKS`; `highest`: the
    /// highest index received so far) against the end known so far and the size limit, and
    /// learns the end from the last chunk. A whole chunk at the count's last index is the last
    /// even with `MORE_CHUNKS` (its sender learnt only after it went that the input had ended
    /// there).
    pub(super) fn on_chunk(
        &mut self,
        chunk_size: u32,
        (index, more, len): (u32, bool, usize),
        highest: Option<u32>,
        max_size: u64,
    ) -> Result<(), StreamError> {
        let cs = chunk_size as u64;
        let end = index as u64 * cs + len as u64;
        if len == 0 || len as u64 > cs || (more && len as u64 != cs) {
            return Err(StreamError::Malformed);
        }
        if end > max_size {
            return Err(StreamError::TooLarge);
        }
        match (more, self.count) {
            (true, Some(count)) if index + 1 > count => Err(StreamError::Malformed),
            // The last one, whole, sent before its sender knew it was the last.
            (true, Some(count)) if index + 1 == count => {
                if self.size.is_some_and(|s| s != end) {
                    return Err(StreamError::Malformed);
                }
                self.size = Some(end);
                Ok(())
            }
            (true, _) => Ok(()),
            // The last chunk: it says the count and the size, or repeats them.
            (false, Some(count)) if index + 1 != count => Err(StreamError::Malformed),
            (false, _) if self.size.is_some_and(|s| s != end) => Err(StreamError::Malformed),
            (false, _) if highest.is_some_and(|h| h > index) => Err(StreamError::Malformed),
            (false, _) => {
                self.count = Some(index + 1);
                self.size = Some(end);
                Ok(())
            }
        }
    }

    /// Checks the hash message's count against the end known so far (and `highest`, the
    /// highest chunk index received, if any) and learns the count from it; the size too when it
    /// follows (an empty stream; or its last chunk already here, whole, sent with
    /// `MORE_CHUNKS`: see [`on_chunk`](Self::on_chunk)).
    pub(super) fn on_hash(
        &mut self,
        count: u32,
        highest: Option<u32>,
        chunk_size: u32,
    ) -> Result<(), StreamError> {
        if self.count.is_some_and(|c| c != count) || highest.is_some_and(|h| h >= count) {
            return Err(StreamError::Malformed);
        }
        self.count = Some(count);
        if count == 0 {
            self.size = Some(0);
        } else if self.size.is_none() && highest == Some(count - 1) {
            // Had it been short it would have said the size; so it is whole.
            self.size = Some(count as u64 * chunk_size as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: u32 = 100;
    const MAX: u64 = 1 << 20;

    #[test]
    fn the_last_chunk_and_the_hash_agree_in_either_order() {
        let mut a = StreamEnd::default();
        assert_eq!(a.on_chunk(CS, (0, true, 100), None, MAX), Ok(()));
        assert_eq!(a.known(), None);
        assert_eq!(a.on_chunk(CS, (2, false, 7), None, MAX), Ok(()));
        assert_eq!(a.known(), Some((3, 207)));
        assert_eq!(a.on_hash(3, Some(2), CS), Ok(()));
        // A repeat of the last chunk is the same end.
        assert_eq!(a.on_chunk(CS, (2, false, 7), None, MAX), Ok(()));

        let mut b = StreamEnd::default();
        assert_eq!(b.on_hash(3, Some(0), CS), Ok(()));
        assert_eq!(b.known(), None, "the size waits for the last chunk");
        assert_eq!(b.on_chunk(CS, (2, false, 7), None, MAX), Ok(()));
        assert_eq!(b.known(), Some((3, 207)));
    }

    #[test]
    fn an_empty_stream_ends_at_its_hash() {
        let mut e = StreamEnd::default();
        assert_eq!(e.on_hash(0, None, CS), Ok(()));
        assert_eq!(e.known(), Some((0, 0)));
        assert_eq!(
            e.on_chunk(CS, (0, false, 1), None, MAX),
            Err(StreamError::Malformed)
        );
    }

    #[test]
    fn what_contradicts_the_end_is_malformed() {
        let mut e = StreamEnd::default();
        // Not a chunk's length.
        assert_eq!(
            e.on_chunk(CS, (0, true, 99), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(
            e.on_chunk(CS, (0, false, 0), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(
            e.on_chunk(CS, (0, false, 101), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(e.on_chunk(CS, (4, false, 50), None, MAX), Ok(()));
        // Beyond the end, another last chunk, a count that disagrees.
        assert_eq!(
            e.on_chunk(CS, (4, true, 100), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(
            e.on_chunk(CS, (7, true, 100), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(
            e.on_chunk(CS, (4, false, 60), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(
            e.on_chunk(CS, (3, false, 50), None, MAX),
            Err(StreamError::Malformed)
        );
        assert_eq!(e.on_hash(4, None, CS), Err(StreamError::Malformed));
        assert_eq!(e.on_chunk(CS, (3, true, 100), None, MAX), Ok(()));
        // A hash whose count leaves out a chunk already received.
        let mut h = StreamEnd::default();
        assert_eq!(h.on_hash(2, Some(5), CS), Err(StreamError::Malformed));
        assert_eq!(h.known(), None);
    }

    /// A sender that sent the last chunk (whole) before it knew it was the last: the hash's
    /// count says so, in either order.
    #[test]
    fn a_whole_last_chunk_with_more_chunks_ends_the_stream_at_the_count() {
        let mut a = StreamEnd::default();
        assert_eq!(a.on_chunk(CS, (2, true, 100), Some(1), MAX), Ok(()));
        assert_eq!(a.on_hash(3, Some(2), CS), Ok(()));
        assert_eq!(a.known(), Some((3, 300)));
        let mut b = StreamEnd::default();
        assert_eq!(b.on_hash(3, Some(1), CS), Ok(()));
        assert_eq!(b.known(), None);
        assert_eq!(b.on_chunk(CS, (2, true, 100), Some(1), MAX), Ok(()));
        assert_eq!(b.known(), Some((3, 300)));
        // A last chunk below one already received is not the last.
        let mut c = StreamEnd::default();
        assert_eq!(
            c.on_chunk(CS, (1, false, 10), Some(4), MAX),
            Err(StreamError::Malformed)
        );
    }

    #[test]
    fn a_stream_beyond_the_size_limit_is_too_large() {
        let mut e = StreamEnd::default();
        assert_eq!(e.on_chunk(CS, (9, true, 100), None, 1000), Ok(()));
        assert_eq!(
            e.on_chunk(CS, (10, true, 100), None, 1000),
            Err(StreamError::TooLarge)
        );
        assert_eq!(
            e.on_chunk(CS, (10, false, 1), None, 1000),
            Err(StreamError::TooLarge)
        );
    }
}
