//! SIGINT and SIGTERM as one flag the sweep checks between pages: it stops reading, writes what
//! it has read, records the run as interrupted, and the binary exits 128 + the signal's number.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

#[derive(Debug, Clone, Default)]
pub struct Shutdown(Arc<AtomicI32>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Records `signal`; the first one is the one reported.
    pub fn trigger(&self, signal: i32) {
        let _ = self
            .0
            .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// The signal received, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
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
                    eprintln!("sweeper: second signal: exiting now");
                    std::process::exit(128 + got);
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
}
