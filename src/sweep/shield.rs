//! Keys waiting on a slow write, kept from running out: which keys of a batch being written (or
//! waiting for a writer) are about to expire, and when a write is slow enough to shield them.
//!
//! A silent PostgreSQL is only told from a slow one when a batch has waited `handoff` for a
//! writer (a tenth of `--operation-timeout`); until then the keys of the batches already read
//! sit, and those whose TTL ran out meanwhile were lost where a healthy run saves them in
//! milliseconds (with the defaults, 23-36 more than a healthy run beside it in
//! tests/partitions.rs). So once a write has lasted well past this run's usual write, each of
//! these keys has its TTL raised just before it would run out: uncounted, as the write may
//! still go through. A healthy run's writes seldom last that long, and then only keys about to
//! run out are raised; nothing counted changes. Pure: the writers do the raising.

use std::time::Duration;

use tokio::time::Instant;

/// How long before a key runs out it is shielded: a round trip to Redis on a busy runtime
/// (and the way back of the reply its TTL came in), with room to spare. Keys running out within this much more are shielded with it, so that a
/// batch's keys go in a few commands, not one each.
pub(super) const AHEAD: Duration = Duration::from_millis(250);

/// A write is slow when it lasts this many times the run's usual write (or the floor below).
const SLOWER: u32 = 4;

/// A write is never called slow sooner: PostgreSQL's own hiccups (a checkpoint, a lock) last
/// this long.
const FLOOR: Duration = Duration::from_millis(200);

/// The keys of one batch with a TTL, soonest to run out first, and how many are shielded.
#[derive(Debug, Default)]
pub(super) struct Exposed {
    /// When the batch was handed to its writer (or began waiting for one).
    pub since: Option<Instant>,
    keys: Vec<(Instant, Vec<u8>)>,
    shielded: usize,
}

impl Exposed {
    pub fn new(mut keys: Vec<(std::time::Instant, Vec<u8>)>, since: Instant) -> Exposed {
        keys.sort_unstable_by_key(|k| k.0);
        Exposed {
            since: Some(since),
            keys: keys
                .into_iter()
                .map(|(at, k)| (Instant::from_std(at), k))
                .collect(),
            shielded: 0,
        }
    }

    /// When the next key not yet shielded runs out.
    pub fn next(&self) -> Option<Instant> {
        self.keys.get(self.shielded).map(|k| k.0)
    }

    /// The keys to shield now: those not yet shielded that run out within `AHEAD` of the
    /// next wake-up, marked shielded.
    pub fn take_due(&mut self, now: Instant) -> Vec<Vec<u8>> {
        self.take_by(now + AHEAD * 2)
    }

    /// Every key counts as shielded: the writers raised them all.
    pub fn clear(&mut self) {
        self.shielded = self.keys.len();
    }

    /// The same keys, handed to a writer at `since`.
    pub fn handed(mut self, since: Instant) -> Exposed {
        self.since = Some(since);
        self
    }

    /// The keys not yet shielded that run out by `by`, marked shielded.
    pub fn take_by(&mut self, by: Instant) -> Vec<Vec<u8>> {
        let from = self.shielded;
        while self.keys.get(self.shielded).is_some_and(|k| k.0 <= by) {
            self.shielded += 1;
        }
        self.keys[from..self.shielded]
            .iter()
            .map(|k| k.1.clone())
            .collect()
    }
}

/// The run's usual write, and when a write has lasted long enough to shield its keys.
#[derive(Debug, Default)]
pub(super) struct WriteTimes {
    /// A moving average of the writes that went through.
    usual: Option<Duration>,
}

impl WriteTimes {
    pub fn record(&mut self, took: Duration) {
        self.usual = Some(match self.usual {
            None => took,
            Some(u) => (u * 3 + took) / 4,
        });
    }

    /// How long a write lasts before its keys are shielded: `SLOWER` times the usual, at least
    /// `FLOOR`, at most `handoff` (when the stall is called and all its keys shielded anyway);
    /// `handoff` before any write went through (the first is often the slowest).
    pub fn slow(&self, handoff: Duration) -> Duration {
        self.usual
            .map_or(handoff, |u| (u * SLOWER).max(FLOOR))
            .min(handoff)
    }
}

/// When the writers must next shield keys, given the oldest write under way (None: no write is
/// slow or can become so) and the batches exposed: once that write has lasted `slow`, each key
/// `AHEAD` of running out.
pub(super) fn wake<'a>(
    oldest: Option<Instant>,
    slow: Duration,
    exposed: impl Iterator<Item = &'a Exposed>,
) -> Option<Instant> {
    let slow_from = oldest? + slow;
    let next = exposed.filter_map(Exposed::next).min()?;
    Some(slow_from.max(next.checked_sub(AHEAD).unwrap_or(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_write_is_slow_past_four_usual_ones_between_the_floor_and_the_handoff() {
        let mut t = WriteTimes::default();
        assert_eq!(t.slow(ms(1500)), ms(1500), "nothing known yet");
        t.record(ms(100));
        assert_eq!(t.slow(ms(1500)), ms(400));
        t.record(ms(20));
        assert_eq!(t.slow(ms(1500)), ms(320), "80 ms usual now");
        let mut fast = WriteTimes::default();
        fast.record(ms(5));
        assert_eq!(fast.slow(ms(1500)), FLOOR);
        let mut long = WriteTimes::default();
        long.record(ms(900));
        assert_eq!(long.slow(ms(1500)), ms(1500));
    }

    #[test]
    fn keys_are_shielded_soonest_first_once_the_write_is_slow_and_each_just_before_it_runs_out() {
        let now = std::time::Instant::now();
        let start = Instant::from_std(now);
        let mut e = Exposed::new(
            vec![
                (now + ms(5000), b"late".to_vec()),
                (now + ms(100), b"soon".to_vec()),
                (now + ms(1000), b"mid".to_vec()),
            ],
            start,
        );
        // The write is slow from 400 ms: the key running out at 100 ms is shielded then.
        assert_eq!(
            wake(Some(start), ms(400), [&e].into_iter()),
            Some(start + ms(400))
        );
        assert_eq!(e.take_by(start + ms(400) + AHEAD), vec![b"soon".to_vec()]);
        // The next, AHEAD of its end.
        assert_eq!(
            wake(Some(start), ms(400), [&e].into_iter()),
            Some(start + ms(1000) - AHEAD)
        );
        assert_eq!(e.take_by(start + ms(1000)), vec![b"mid".to_vec()]);
        assert_eq!(e.take_by(start + ms(1000)), Vec::<Vec<u8>>::new());
        assert_eq!(e.next(), Some(start + ms(5000)));
        assert_eq!(
            wake(None, ms(400), [&e].into_iter()),
            None,
            "no write under way"
        );
        e.take_by(start + ms(5000));
        assert_eq!(
            wake(Some(start), ms(400), [&e].into_iter()),
            None,
            "all shielded"
        );
    }
}
