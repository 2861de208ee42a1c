//! The server's shutdown as its sessions see it.
//!
//! Two steps: *draining* (idle sessions close, a message in flight may
//! finish) and *cut* (every session ends now). A session waits for the cut
//! in every wake-up of its task, so the check must be cheap: a session
//! registers its waker once per step, and every other wake-up costs one
//! atomic load (a cancellation token's future takes two locks per poll).

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Poll, Waker};

use tokio::sync::Notify;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const CUT: u8 = 2;

/// Shared by the accept loop and its sessions.
#[derive(Debug)]
pub(crate) struct Shutdown {
    step: AtomicU8,
    notify: Notify,
}

impl Shutdown {
    pub(crate) const fn new() -> Self {
        Self {
            step: AtomicU8::new(RUNNING),
            notify: Notify::const_new(),
        }
    }

    /// Idle sessions close; sessions in a message finish it first.
    pub(crate) fn start_draining(&self) {
        self.raise(DRAINING);
    }

    /// Every session ends now.
    pub(crate) fn cut_sessions(&self) {
        self.raise(CUT);
    }

    fn raise(&self, to: u8) {
        // The step is visible before anyone is woken to look at it.
        self.step.fetch_max(to, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn step(&self) -> u8 {
        self.step.load(Ordering::SeqCst)
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.step() >= DRAINING
    }

    /// Resolves when the sessions are cut. Every step wakes the task that
    /// polls it (a draining session looks at [`Shutdown::is_draining`] on
    /// that wake-up).
    pub(crate) async fn until_cut(&self) {
        loop {
            let seen = self.step();
            if seen >= CUT {
                return;
            }
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // The waker `notified` holds; it is polled again only for a
            // different waker, so a wake-up for anything else costs one load.
            let mut holds: Option<Waker> = None;
            std::future::poll_fn(|cx| {
                if !holds.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    if notified.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    holds = Some(cx.waker().clone());
                }
                // A step raised between reading `seen` and registering did
                // not wake `notified`: it shows here.
                if self.step() == seen {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use super::Shutdown;

    #[tokio::test]
    async fn draining_wakes_the_waiter_without_ending_it_and_the_cut_ends_it() {
        let shutdown = Arc::new(Shutdown::new());
        let s = Arc::clone(&shutdown);
        let (woken_tx, mut woken_rx) = tokio::sync::mpsc::unbounded_channel();
        // Counts the polls of `until_cut` as a session's select would.
        let waiter = tokio::spawn(async move {
            let cut = s.until_cut();
            tokio::pin!(cut);
            std::future::poll_fn(|cx| {
                let _ = woken_tx.send(s.is_draining());
                cut.as_mut().poll(cx)
            })
            .await;
        });
        assert_eq!(woken_rx.recv().await, Some(false));
        shutdown.start_draining();
        // Woken once for draining, seeing it, and still waiting.
        assert_eq!(woken_rx.recv().await, Some(true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        shutdown.cut_sessions();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the cut ends the wait")
            .unwrap();
    }

    #[tokio::test]
    async fn a_cut_before_the_wait_begins_ends_it_at_once() {
        let shutdown = Shutdown::new();
        shutdown.cut_sessions();
        assert!(shutdown.is_draining());
        tokio::time::timeout(Duration::from_secs(5), shutdown.until_cut())
            .await
            .expect("already cut");
    }
}
