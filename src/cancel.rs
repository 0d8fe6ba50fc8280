//! The run's cancellation as a value: [`Cancel`] is a cancellation token
//! that carries its [`CancelReason`], so whatever a cancellation ends (a
//! machine call, a script statement, a sleep) hands the reason on in the
//! error it returns, and the driver maps the run's outcome from it.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Why a run was cancelled; the highest reason wins (a signal outranks the
/// global timeout: CI tells "cancelled" apart by the exit status).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum CancelReason {
    /// The global timeout passed (its seconds).
    GlobalTimeout(u64),
    /// A signal arrived (its name and number).
    Signal(&'static str, i32),
}

impl CancelReason {
    /// The signal's number, when a signal cancelled the run.
    pub fn signal(&self) -> Option<i32> {
        match self {
            CancelReason::Signal(_, n) => Some(*n),
            CancelReason::GlobalTimeout(_) => None,
        }
    }
}

impl std::fmt::Display for CancelReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CancelReason::GlobalTimeout(s) => write!(
                f,
                "the test ran longer than its `global_timeout` of {s} seconds (raise `global_timeout` in the test config if it needs longer)"
            ),
            CancelReason::Signal(s, _) => write!(f, "interrupted by {s}"),
        }
    }
}

/// The run's cancellation token with its reason. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    token: CancellationToken,
    reason: Arc<Mutex<Option<CancelReason>>>,
}

impl Cancel {
    /// Not cancelled yet.
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels the run (idempotent; the highest reason is kept). The reason
    /// is set before the token fires, so whoever wakes up reads it.
    pub fn cancel(&self, new: CancelReason) {
        let mut g = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_none_or(|old| new > *old) {
            *g = Some(new);
        }
        drop(g);
        self.token.cancel();
    }

    /// `Err(reason)` once the run is cancelled.
    pub fn check(&self) -> Result<(), CancelReason> {
        match &*self.reason.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(r) => Err(r.clone()),
            None => Ok(()),
        }
    }

    /// Whether the run is cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Waits until the run is cancelled; returns why.
    pub async fn cancelled(&self) -> CancelReason {
        self.token.cancelled().await;
        match self.check() {
            Err(r) => r,
            Ok(()) => unreachable!("the reason is set before the token fires"),
        }
    }

    /// The plain token, for `select!` arms that only need to wake up.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_outranks_the_global_timeout_whatever_comes_first() {
        let c = Cancel::new();
        assert_eq!(c.check(), Ok(()));
        c.cancel(CancelReason::Signal("SIGTERM", libc::SIGTERM));
        c.cancel(CancelReason::GlobalTimeout(8));
        assert_eq!(
            c.check(),
            Err(CancelReason::Signal("SIGTERM", libc::SIGTERM))
        );
        let c = Cancel::new();
        c.cancel(CancelReason::GlobalTimeout(8));
        c.cancel(CancelReason::Signal("SIGINT", libc::SIGINT));
        assert_eq!(c.check().unwrap_err().signal(), Some(libc::SIGINT));
    }

    #[tokio::test]
    async fn a_waiter_wakes_with_the_reason() {
        let c = Cancel::new();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.cancelled().await }
        });
        c.cancel(CancelReason::GlobalTimeout(3));
        assert_eq!(waiter.await.unwrap(), CancelReason::GlobalTimeout(3));
        assert!(c.is_cancelled());
    }
}
