//! SIGINT and SIGTERM as one flag the sweep checks between pages: it stops reading, writes what
//! it has read, records the run as interrupted, and the binary exits 128 + the signal's number.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::sync::Notify;

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    signal: AtomicI32,
    /// A second signal: the binary exits at once with 128 + it (see [`Shutdown::forced`]).
    forced: AtomicI32,
    /// Wakes whoever waits for the signal (the daemon between sweeps).
    notify: Notify,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Records `signal`; the first one is the one reported.
    pub fn trigger(&self, signal: i32) {
        let _ = self
            .0
            .signal
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Returns once a signal has been received.
    pub async fn wait(&self) {
        loop {
            // Registered before the check, so a signal between the two is not missed.
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.signal().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Returns the signal once a second one has come: the binary then exits at once (it is the
    /// only place the process exits).
    pub async fn forced(&self) -> i32 {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.0.forced.load(Ordering::SeqCst) {
                0 => notified.await,
                s => return s,
            }
        }
    }

    /// A new flag, listening already (see [`Shutdown::listen`]).
    pub fn listening(&self) -> crate::Result<Shutdown> {
        self.listen()
            .map_err(|e| crate::Error::Other(format!("cannot listen for signals: {e}")))?;
        Ok(self.clone())
    }

    /// Listens for SIGINT and SIGTERM in the background. The first asks the sweep to stop; a
    /// second one exits at once (an operator pressing Ctrl-C twice means it).
    pub fn listen(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let got = tokio::select! {
                    _ = int.recv() => SIGINT,
                    _ = term.recv() => SIGTERM,
                };
                if me.signal().is_some() {
                    crate::logs::stderr::line("sweeper: second signal: exiting now");
                    me.0.forced.store(got, Ordering::SeqCst);
                    me.0.notify.notify_waiters();
                    continue;
                }
                tracing::warn!(
                    signal = got,
                    "signal received: stopping after the batch in flight"
                );
                me.trigger(got);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_signal_is_kept() {
        let s = Shutdown::new();
        assert_eq!(s.signal(), None);
        s.clone().trigger(SIGTERM);
        s.trigger(SIGINT);
        assert_eq!(s.signal(), Some(SIGTERM));
    }

    #[tokio::test]
    async fn waiting_ends_with_the_signal() {
        let s = Shutdown::new();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        s.trigger(SIGINT);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        // Already signalled: returns at once.
        s.wait().await;
    }
}
