//! The warnings a sweep gives about one key (expired before it was read, rejected, erased and
//! read again): each kind is logged for the first [`SHOWN`] keys of a run, as examples, then
//! only counted, and one line at the end of the run says how many more there were. One warning
//! per key flooded the logs: a sweep under Redis evictions wrote 385 of them, 63 KB, at once. The
//! summary's counters count every key whatever was logged.

use std::sync::atomic::{AtomicU64, Ordering};

/// Keys of a kind logged one by one in a run: enough for an operator to look at.
pub const SHOWN: u64 = 10;

/// A kind of per-key warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A due key gone before its value was read (`expired_before_read`).
    Expired,
    /// A checkpoint or thread set aside in `sweep_rejects` (`rejected`).
    Rejected,
    /// A conversation `forget` erased, read again and not saved (`erased`).
    Erased,
}

const KINDS: [Kind; 3] = [Kind::Expired, Kind::Rejected, Kind::Erased];

/// How many keys of each kind a run has met so far, and how many of them were logged.
pub struct Seen {
    met: [AtomicU64; 3],
    logged: [AtomicU64; 3],
}

/// The run of this process: a process runs one sweep at a time (`daemon` one after the other),
/// and the warnings come from every stage of it, so the count is kept where they all reach it.
static RUN: Seen = Seen::new();

impl Seen {
    pub const fn new() -> Seen {
        Seen {
            met: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            logged: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts `n` keys of `kind`; true when the warning about them is to be logged: while fewer
    /// than [`SHOWN`] keys of the kind came before them.
    pub fn show(&self, kind: Kind, n: u64) -> bool {
        let i = kind as usize;
        let shown = self.met[i].fetch_add(n, Ordering::Relaxed) < SHOWN;
        if shown {
            self.logged[i].fetch_add(n, Ordering::Relaxed);
        }
        shown
    }

    /// The keys of each kind not logged since the last [`Seen::take`], and a new count.
    pub fn take(&self) -> Vec<(Kind, u64)> {
        let take = |k: Kind| {
            let i = k as usize;
            let met = self.met[i].swap(0, Ordering::Relaxed);
            met.saturating_sub(self.logged[i].swap(0, Ordering::Relaxed))
        };
        KINDS
            .iter()
            .map(|&k| (k, take(k)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

impl Default for Seen {
    fn default() -> Seen {
        Seen::new()
    }
}

/// Whether the warning about this one key of `kind` is logged (see [`Seen::show`]).
pub fn show(kind: Kind) -> bool {
    RUN.show(kind, 1)
}

/// Whether the warning about `n` keys of `kind` at once is logged.
pub fn show_many(kind: Kind, n: u64) -> bool {
    RUN.show(kind, n)
}

/// A run starts: nothing warned of yet (what an earlier run left is dropped).
pub fn start_run() {
    RUN.take();
}

/// A run ends: one line per kind with how many keys were not logged one by one.
pub fn log_rest() {
    for (kind, more) in RUN.take() {
        match kind {
            Kind::Expired => tracing::warn!(
                more,
                "{more} more keys expired before they could be read than were logged: the summary's expired_before_read counts every one"
            ),
            Kind::Rejected => tracing::warn!(
                more,
                "{more} more checkpoints rejected than were logged: the summary's rejected counts every one, sweep_rejects holds them"
            ),
            Kind::Erased => tracing::info!(
                more,
                "{more} more erased conversations read again than were logged: the summary's erased counts every one"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_keys_of_each_kind_are_shown_and_the_rest_counted_until_the_next_run() {
        let seen = Seen::new();
        let shown = (0..25).filter(|_| seen.show(Kind::Expired, 1)).count();
        assert_eq!(shown as u64, SHOWN);
        assert!(
            seen.show(Kind::Rejected, 3),
            "another kind has its own examples"
        );
        assert!(seen.show(Kind::Erased, 9));
        assert!(
            seen.show(Kind::Erased, 4),
            "a batch is shown while fewer came before it"
        );
        assert!(!seen.show(Kind::Erased, 6));
        assert_eq!(seen.take(), vec![(Kind::Expired, 15), (Kind::Erased, 6)]);
        assert!(seen.take().is_empty());
        assert!(
            seen.show(Kind::Expired, 1),
            "a new run shows examples again"
        );
    }
}
