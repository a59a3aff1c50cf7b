//! Whether PostgreSQL takes the sweep's writes, as the writers see it and the reader acts on it:
//! while writing is stuck or down, the reader protects due keys instead of reading them. Under a
//! pace, reading a value and then protecting it when no writer takes it costs two commands per
//! key where a healthy sweep spends one: the scan fell behind its controls and more keys
//! expired unread.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

const WRITING: u8 = 0;
const STUCK: u8 = 1;
const DOWN: u8 = 2;

/// Shared by the writers (who set it) and the reader (who reads it).
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<AtomicU8>);

impl Health {
    /// PostgreSQL failed for good: the rest of the sweep protects.
    pub fn down() -> Health {
        Health(Arc::new(AtomicU8::new(DOWN)))
    }

    pub fn set_down(&self) {
        self.0.store(DOWN, Ordering::SeqCst);
    }

    /// Writes wait on a retry, or no writer took a batch in time: protect until one does.
    pub fn set_stuck(&self, stuck: bool) {
        let (from, to) = if stuck {
            (WRITING, STUCK)
        } else {
            (STUCK, WRITING)
        };
        let _ = self
            .0
            .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn is_down(&self) -> bool {
        self.0.load(Ordering::SeqCst) == DOWN
    }

    /// Down, or stuck for now.
    pub fn is_failing(&self) -> bool {
        self.0.load(Ordering::SeqCst) != WRITING
    }
}
