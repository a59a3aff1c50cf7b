//! How fast a sweep talks to one Redis node. At full speed while nobody else uses it; at
//! `--busy-redis-ops-per-sec` while other clients send commands (live chat first), yet never so
//! slowly that the node's keys cannot be read within `--deadline`; and never above
//! `--max-redis-ops-per-sec`.
//!
//! Other clients are seen in `INFO stats`: `total_commands_processed` grows by the sweep's own
//! commands plus everyone else's. Each sample is taken while none of the sweep's own pipelines
//! is in flight (a gate every query passes), so the sweep's count is exact, not estimated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often `INFO stats` is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// The second sample comes sooner: until it, the sweep reads at the busy pace, which an idle
/// Redis should not pay for long.
pub const FIRST_LOOK: Duration = Duration::from_millis(20);
/// Commands per second from other clients that count as live traffic. Replicas (one REPLCONF
/// ACK a second each), Sentinels and exporters send fewer than this.
pub const BUSY_FROM_OTHERS_PER_SEC: f64 = 100.0;
/// Traffic comes in bursts: once seen, the sweep stays at the busy pace this long at least.
pub const HOLD: Duration = Duration::from_secs(1);
/// Commands a sweep sends per key read at most (PTTL, then a read of a due key), for the pace
/// that finishes within the deadline.
const COMMANDS_PER_KEY: u64 = 2;
/// The share of a node's time budget the pace leaves for reading; the rest is margin.
const BUDGET_SHARE: f64 = 0.8;

/// The operator's settings for one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Always at most this many commands per second (0: no cap).
    pub max_ops_per_sec: u32,
    /// While other clients send commands, at most this many (0: never slow down for them).
    pub busy_ops_per_sec: u32,
    /// The time this node's keys must be read in; None: no limit.
    pub budget: Option<Duration>,
}

impl Pacing {
    /// Whether other clients' traffic is watched at all.
    fn adaptive(&self) -> bool {
        self.busy_ops_per_sec > 0
    }
}

/// One node's pace, shared by every handle on the node's connection.
#[derive(Clone, Debug, Default)]
pub struct Pace {
    pacing: Pacing,
    state: Arc<Mutex<State>>,
    /// Queries hold it shared; a sample holds it alone, so no pipeline of the sweep is in flight
    /// while `INFO` is read.
    gate: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Debug, Default)]
struct State {
    /// The throttle's next free instant.
    next: Option<Instant>,
    /// Commands the sweep has sent to this node.
    own: u64,
    last: Option<Sample>,
    /// Samples taken.
    samples: u32,
    /// Other clients were seen: the busy pace holds until then.
    busy_until: Option<Instant>,
    /// Commands per second that read this node's keys within the budget.
    floor: u32,
    /// A handle is taking a sample.
    sampling: bool,
    /// `INFO` was refused (an ACL without it): other clients cannot be seen, so they are assumed.
    blind: bool,
    /// Time spent at the busy pace.
    yielded: Duration,
    /// Whether the first switch to the busy pace was logged.
    told: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// `total_commands_processed`.
    total: u64,
    /// The sweep's own commands up to then.
    own: u64,
}

/// What a sample found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Commands per second from other clients since the last sample.
    pub others_per_sec: f64,
    /// The rate now in force (None: full speed).
    pub rate: Option<u32>,
}

impl Pace {
    pub fn new(pacing: Pacing) -> Pace {
        Pace {
            pacing,
            ..Pace::default()
        }
    }

    pub fn pacing(&self) -> Pacing {
        self.pacing
    }

    /// Commands per second now allowed (None: no limit).
    pub fn rate(&self) -> Option<u32> {
        let s = self.state.lock().expect("pace lock");
        rate(&self.pacing, &s, Instant::now())
    }

    /// Commands per pipeline at most: small while paced, so that no single burst holds Redis
    /// long (2 ms of the budget each).
    pub fn max_pipeline(&self) -> usize {
        match self.rate() {
            None => usize::MAX,
            Some(r) => (r as usize / 500).clamp(10, 1000),
        }
    }

    /// Whether commands are spaced now.
    pub fn paced(&self) -> bool {
        self.rate().is_some()
    }

    /// Time spent at the busy pace so far.
    pub fn yielded(&self) -> Duration {
        self.state.lock().expect("pace lock").yielded
    }

    /// How long to wait before sending `commands`, booking their slot.
    pub fn reserve(&self, commands: usize) -> Duration {
        let mut s = self.state.lock().expect("pace lock");
        let now = Instant::now();
        let Some(r) = rate(&self.pacing, &s, now) else {
            s.next = None;
            return Duration::ZERO;
        };
        let start = s.next.unwrap_or(now).max(now);
        s.next = Some(start + Duration::from_secs(1) / r * commands as u32);
        start - now
    }

    /// Whether this handle should take a sample now (it is then the only one taking it, and must
    /// end with [`Pace::observe`] or [`Pace::refused`]).
    pub fn sample_due(&self) -> bool {
        if !self.pacing.adaptive() {
            return false;
        }
        let mut s = self.state.lock().expect("pace lock");
        let every = match s.samples {
            1 => FIRST_LOOK,
            _ => SAMPLE_EVERY,
        };
        let due = !s.sampling && !s.blind && s.last.is_none_or(|l| l.at.elapsed() >= every);
        if due {
            s.sampling = true;
        }
        due
    }

    /// Passed by every query (shared) and by a sample (alone).
    pub fn gate(&self) -> &tokio::sync::RwLock<()> {
        &self.gate
    }

    /// Counts commands sent (call it while holding the gate shared).
    pub fn sent(&self, commands: usize) {
        self.state.lock().expect("pace lock").own += commands as u64;
    }

    /// Records a sample: `total_commands_processed`, the node's key count, and the commands the
    /// sample itself sent (counted after it).
    pub fn observe(&self, total: u64, keys: u64, sample_commands: usize) -> Seen {
        let mut s = self.state.lock().expect("pace lock");
        let seen = observe(&self.pacing, &mut s, Instant::now(), total, keys);
        s.own += sample_commands as u64;
        s.sampling = false;
        seen
    }

    /// The sample could not be taken this time (a dropped connection).
    pub fn abandon(&self) {
        self.state.lock().expect("pace lock").sampling = false;
    }

    /// `INFO` was refused: the busy pace holds for the rest of the run.
    pub fn refused(&self) {
        let mut s = self.state.lock().expect("pace lock");
        s.blind = true;
        s.sampling = false;
    }

    /// Whether this is the first switch to the busy pace (worth a log line; later ones are not).
    pub fn first_yield(&self) -> bool {
        let mut s = self.state.lock().expect("pace lock");
        !std::mem::replace(&mut s.told, true)
    }
}

/// The rate in force at `now` (None: no limit).
fn rate(p: &Pacing, s: &State, now: Instant) -> Option<u32> {
    let busy = p.adaptive() && (s.blind || s.busy_until.is_some_and(|u| now < u));
    let paced = busy.then(|| p.busy_ops_per_sec.max(s.floor));
    let cap = (p.max_ops_per_sec > 0).then_some(p.max_ops_per_sec);
    match (paced, cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn observe(p: &Pacing, s: &mut State, now: Instant, total: u64, keys: u64) -> Seen {
    s.floor = floor_rate(keys, p.budget);
    let others_per_sec = match s.last {
        // The first sample only sets the baseline; until the next one the sweep assumes company,
        // so it never starts with a burst on a busy primary.
        None => {
            s.busy_until = Some(now + FIRST_LOOK);
            0.0
        }
        Some(last) => {
            if s.busy_until.is_some_and(|u| u > last.at) {
                s.yielded += now - last.at;
            }
            let others = total.saturating_sub(last.total) as f64 - (s.own - last.own) as f64;
            let secs = (now - last.at).as_secs_f64().max(1e-3);
            let per_sec = others.max(0.0) / secs;
            if per_sec >= BUSY_FROM_OTHERS_PER_SEC {
                s.busy_until = Some(now + HOLD);
            }
            per_sec
        }
    };
    s.samples += 1;
    s.last = Some(Sample {
        at: now,
        total,
        own: s.own,
    });
    Seen {
        others_per_sec,
        rate: rate(p, s, now),
    }
}

/// Commands per second that read `keys` keys within `budget` (0: no budget).
pub fn floor_rate(keys: u64, budget: Option<Duration>) -> u32 {
    let Some(budget) = budget.filter(|b| !b.is_zero()) else {
        return 0;
    };
    let per_sec = (keys * COMMANDS_PER_KEY) as f64 / (budget.as_secs_f64() * BUDGET_SHARE);
    per_sec.ceil().min(u32::MAX as f64) as u32
}

/// `total_commands_processed` from an `INFO stats` reply, and the key count of database `db`
/// from an `INFO keyspace` reply.
pub fn parse_info(stats: &str, keyspace: &str, db: i64) -> Option<(u64, u64)> {
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_string)
    };
    let total = field(stats, "total_commands_processed")?.parse().ok()?;
    // `db0:keys=12,expires=12,avg_ttl=0`; an empty database has no line.
    let keys = field(keyspace, &format!("db{db}"))
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix("keys="))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0);
    Some((total, keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> Pacing {
        Pacing {
            max_ops_per_sec: 0,
            busy_ops_per_sec: 20_000,
            budget: Some(Duration::from_secs(240)),
        }
    }

    #[test]
    fn full_speed_alone_busy_pace_with_company_and_back() {
        let p = adaptive();
        let mut s = State::default();
        let t0 = Instant::now();
        // Baseline: assumed busy until the next sample.
        observe(&p, &mut s, t0, 1_000, 100);
        assert_eq!(rate(&p, &s, t0), Some(20_000));
        // 5000 commands by the first look, all the sweep's own: alone, full speed.
        s.own += 5_000;
        let t1 = t0 + FIRST_LOOK;
        let seen = observe(&p, &mut s, t1, 6_000, 100);
        assert_eq!(seen.others_per_sec, 0.0);
        assert_eq!(seen.rate, None);
        // 30 more commands than the sweep sent: 300 a second from others.
        s.own += 5_000;
        let t2 = t1 + SAMPLE_EVERY;
        let seen = observe(&p, &mut s, t2, 11_030, 100);
        assert!((seen.others_per_sec - 300.0).abs() < 1e-6, "{seen:?}");
        assert_eq!(seen.rate, Some(20_000));
        // Quiet again: the busy pace holds for HOLD, then full speed.
        s.own += 1_000;
        let t3 = t2 + SAMPLE_EVERY;
        assert_eq!(observe(&p, &mut s, t3, 12_030, 100).rate, Some(20_000));
        assert_eq!(rate(&p, &s, t2 + HOLD), None);
        assert_eq!(s.yielded, FIRST_LOOK + SAMPLE_EVERY);
    }

    #[test]
    fn a_few_commands_from_replicas_are_not_company() {
        let p = adaptive();
        let mut s = State::default();
        let t0 = Instant::now();
        observe(&p, &mut s, t0, 0, 0);
        // 9 commands in 100 ms from others: 90 a second, under the threshold.
        let t1 = t0 + SAMPLE_EVERY;
        assert_eq!(observe(&p, &mut s, t1, 9, 0).rate, None);
    }

    #[test]
    fn the_deadline_sets_a_floor_and_the_cap_a_ceiling() {
        // 10M keys in 240 s: 20M commands in 192 s.
        assert_eq!(
            floor_rate(10_000_000, Some(Duration::from_secs(240))),
            104_167
        );
        assert_eq!(floor_rate(10_000_000, None), 0);
        assert_eq!(floor_rate(10, Some(Duration::ZERO)), 0);
        let p = adaptive();
        let mut s = State::default();
        let t0 = Instant::now();
        observe(&p, &mut s, t0, 0, 10_000_000);
        assert_eq!(rate(&p, &s, t0), Some(104_167));
        let capped = Pacing {
            max_ops_per_sec: 50_000,
            ..p
        };
        assert_eq!(rate(&capped, &s, t0), Some(50_000));
        // The cap holds at full speed too; without --busy-redis-ops-per-sec, nothing is watched.
        assert_eq!(rate(&capped, &State::default(), t0), Some(50_000));
        let fixed = Pacing {
            busy_ops_per_sec: 0,
            ..capped
        };
        assert_eq!(rate(&fixed, &s, t0), Some(50_000));
        assert!(!Pace::new(fixed).sample_due());
    }

    #[test]
    fn a_node_that_refuses_info_is_swept_at_the_busy_pace() {
        let pace = Pace::new(adaptive());
        assert!(pace.sample_due());
        // One sampler at a time.
        assert!(!pace.sample_due());
        pace.refused();
        assert_eq!(pace.rate(), Some(20_000));
        assert!(!pace.sample_due());
        assert_eq!(pace.max_pipeline(), 40);
    }

    #[test]
    fn the_throttle_spaces_pipelines() {
        let pace = Pace::new(Pacing {
            max_ops_per_sec: 1_000,
            ..Pacing::default()
        });
        assert_eq!(pace.reserve(100), Duration::ZERO);
        let wait = pace.reserve(100);
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(Pace::new(Pacing::default()).reserve(1_000), Duration::ZERO);
    }

    #[test]
    fn info_replies_are_parsed() {
        let stats = "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:4242\r\n";
        let keyspace = "# Keyspace\r\ndb0:keys=12,expires=10,avg_ttl=0\r\ndb3:keys=7,expires=0\r\n";
        assert_eq!(parse_info(stats, keyspace, 0), Some((4242, 12)));
        assert_eq!(parse_info(stats, keyspace, 3), Some((4242, 7)));
        assert_eq!(parse_info(stats, "# Keyspace\r\n", 0), Some((4242, 0)));
        assert_eq!(parse_info("# Stats\r\n", keyspace, 0), None);
    }
}
