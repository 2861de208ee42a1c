//! Read and reply buffers kept per thread while connections are between
//! messages.
//!
//! A connection between messages holds no buffer, so that idle connections
//! cost little. But "between messages" is also every turn of a connection's
//! start (negotiation, CONNECT, HELO) and its end: without this pool each of
//! those turns would free its buffers and allocate new ones a round trip
//! later. A buffer given back here is kept for the next connection of the
//! same thread that needs one. The pool is bounded in count and in the size
//! of what it keeps, so what it holds does not grow with the number of
//! connections.

use std::cell::RefCell;

use bytes::BytesMut;

/// At most this many buffers are kept per thread.
const KEEP: usize = 64;
/// Buffers larger than this are freed rather than kept.
const KEEP_AT_MOST: usize = 16 * 1024;
/// The capacity of a buffer made when the pool is empty.
const NEW_CAPACITY: usize = 512;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer: a kept one, or a new one of [`NEW_CAPACITY`].
pub(crate) fn take() -> BytesMut {
    POOL.try_with(|pool| pool.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(NEW_CAPACITY))
}

/// Gives a buffer back; its contents are dropped. It is kept only if the
/// pool has room, it is not too large, and at least [`NEW_CAPACITY`] bytes
/// of it are free for reuse (none of it is still referred to by a frame or
/// a value handed out from it, or enough of it is left after them).
pub(crate) fn give(mut buf: BytesMut) {
    if buf.capacity() == 0 || buf.capacity() > KEEP_AT_MOST {
        return;
    }
    buf.clear();
    if !buf.try_reclaim(NEW_CAPACITY) {
        return;
    }
    let _ = POOL.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEEP {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept() -> usize {
        POOL.with(|pool| pool.borrow().len())
    }

    fn empty_pool() {
        POOL.with(|pool| pool.borrow_mut().clear());
    }

    #[test]
    fn a_buffer_given_back_is_taken_again() {
        empty_pool();
        let mut buf = take();
        assert_eq!(buf.capacity(), NEW_CAPACITY);
        buf.extend_from_slice(b"frame");
        let at = buf.as_ptr();
        give(buf);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at);
        // The pool is empty again.
        assert_ne!(take().as_ptr(), at);
    }

    #[test]
    fn a_buffer_still_referred_to_is_kept_only_with_room_to_spare() {
        empty_pool();
        let mut buf = BytesMut::with_capacity(NEW_CAPACITY);
        buf.extend_from_slice(&[1; 100]);
        let frame = buf.split_to(100).freeze();
        // 412 bytes are left after the frame: not enough to keep it.
        give(buf);
        assert_eq!(kept(), 0);
        drop(frame);

        let mut big = BytesMut::with_capacity(4 * NEW_CAPACITY);
        big.extend_from_slice(&[2; 100]);
        let frame = big.split_to(100).freeze();
        let rest = big.as_ptr();
        give(big);
        // Kept: what is left after the frame is reused, the frame untouched.
        let mut again = take();
        assert_eq!(again.as_ptr(), rest);
        again.extend_from_slice(&[3; 200]);
        assert_eq!(frame.as_ref(), &[2; 100][..]);
    }

    #[test]
    fn large_buffers_and_those_beyond_the_count_are_freed() {
        empty_pool();
        give(BytesMut::with_capacity(KEEP_AT_MOST + 1));
        assert_eq!(kept(), 0);
        for _ in 0..KEEP + 10 {
            give(BytesMut::with_capacity(NEW_CAPACITY));
        }
        assert_eq!(kept(), KEEP);
    }
}
