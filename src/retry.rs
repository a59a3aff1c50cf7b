//! One retry policy for every call to Redis or PostgreSQL: exponential backoff with jitter, only
//! for transient errors ([`Error::is_transient`]), bounded by attempts and by a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub first: Duration,
    pub cap: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
}

impl Default for Backoff {
    /// 0.2s, 0.4s, ... capped at 5s: about 20s over 7 tries, enough to ride out a restart.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            attempts: 7,
        }
    }
}

impl Backoff {
    /// The pause before retry number `n` (from 0): doubling, capped, with jitter in [50%, 100%]
    /// so that many clients do not retry in step.
    pub fn delay(&self, n: u32) -> Duration {
        let full = self.first.saturating_mul(1 << n.min(16)).min(self.cap);
        full.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// The pause before retry number `n` after `err`, or None when `err` must be returned: it is
    /// permanent, the attempts are spent, or the pause would end after `deadline`. The one place
    /// where retrying is decided.
    pub fn pause(
        &self,
        n: u32,
        err: &Error,
        deadline: Option<Instant>,
        what: &str,
    ) -> Option<Duration> {
        if !err.is_transient() || n + 1 >= self.attempts {
            return None;
        }
        let pause = self.delay(n);
        // tokio's clock, so tests can pause time.
        let now = tokio::time::Instant::now().into_std();
        if deadline.is_some_and(|d| now + pause >= d) {
            return None;
        }
        tracing::warn!(error = %err, attempt = n + 1, retry_in_ms = pause.as_millis() as u64, "{what} failed; retrying");
        Some(pause)
    }

    /// Runs `op` until it succeeds or [`Backoff::pause`] says to give up.
    pub async fn retry<T, F, Fut>(
        &self,
        what: &str,
        deadline: Option<Instant>,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut n = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) => match self.pause(n, &e, deadline, what) {
                    Some(pause) => {
                        tokio::time::sleep(pause).await;
                        n += 1;
                    }
                    None => return Err(e),
                },
            }
        }
    }
}

/// Retries `op` on transient errors until `timeout` has passed (how connections are opened).
/// How long an operation that keeps failing is retried from its first failure: enough to ride
/// out a restart or a failover, and bounded however long each try takes (a silent server makes
/// every try last `--operation-timeout`), so the sweep calls the server down while the due keys
/// can still be protected.
pub const RIDE_OUT: Duration = Duration::from_secs(30);

/// When retries started now must end: `deadline`, or [`RIDE_OUT`] from now if that comes first.
pub fn ride_out(deadline: Option<Instant>) -> Option<Instant> {
    // tokio's clock, as in `Backoff::pause`.
    let end = tokio::time::Instant::now().into_std() + RIDE_OUT;
    Some(deadline.map_or(end, |d| d.min(end)))
}

/// The retries of one operation (a batch write, a Redis pipeline, a step of the run's record):
/// [`Backoff`]'s pauses for transient errors, for at most [`RIDE_OUT`] after the first failure
/// and never past the deadline, and one retry only after a silence ([`Error::is_silence`]): a
/// fresh connection that gets no answer either is a partition, and waiting on it longer would
/// only delay protecting the due keys and the exit. A failover's quick refusals (a standby, a
/// server shutting down or starting) are retried for the whole ride-out.
#[derive(Debug)]
pub struct Retries {
    backoff: Backoff,
    deadline: Option<Instant>,
    n: u32,
    give_up: Option<Instant>,
    silent: bool,
}

impl Retries {
    pub fn new(deadline: Option<Instant>) -> Retries {
        Retries {
            backoff: Backoff {
                attempts: u32::MAX,
                ..Backoff::default()
            },
            deadline,
            n: 0,
            give_up: deadline,
            silent: false,
        }
    }

    /// The pause before the next try after `err`, or None when `err` must be returned.
    pub fn pause(&mut self, err: &Error, what: &str) -> Option<Duration> {
        if self.n == 0 {
            self.give_up = ride_out(self.deadline);
        }
        if err.is_silence() && err.is_transient() {
            if self.silent {
                tracing::warn!(error = %err, "{what}: no answer on a fresh connection either; giving up");
                return None;
            }
            self.silent = true;
        }
        let pause = self.backoff.pause(self.n, err, self.give_up, what)?;
        self.n += 1;
        Some(pause)
    }

    /// Whether a try failed before.
    pub fn retried(&self) -> bool {
        self.n > 0
    }
}

/// Runs `op` until it succeeds or [`Retries::pause`] says to give up.
pub async fn again<T, F, Fut>(what: &str, deadline: Option<Instant>, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut retries = Retries::new(deadline);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => match retries.pause(&e, what) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(e),
            },
        }
    }
}

pub async fn within<T, F, Fut>(what: &str, timeout: Duration, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let backoff = Backoff {
        attempts: u32::MAX,
        ..Backoff::default()
    };
    backoff
        .retry(what, Some(Instant::now() + timeout), op)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn transient() -> Error {
        Error::Postgres {
            context: "test",
            source: sqlx::Error::PoolTimedOut,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_with_jitter() {
        let b = Backoff::default();
        for n in 0..10 {
            let full = Duration::from_millis(200 * (1 << n)).min(Duration::from_secs(5));
            let d = b.delay(n);
            assert!(d >= full / 2 && d <= full, "retry {n}: {d:?} vs {full:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_are_retried_and_permanent_ones_are_not() {
        let b = Backoff::default();
        let calls = AtomicU32::new(0);
        let r = b
            .retry("op", None, || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = b
            .retry("op", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(Error::Usage("bad".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a permanent error is not retried"
        );

        calls.store(0, Ordering::SeqCst);
        let r: Result<()> = b
            .retry("op", None, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(transient())
            })
            .await;
        assert!(r.is_err());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            b.attempts,
            "attempts are bounded"
        );
    }

    fn silence() -> Error {
        Error::Postgres {
            context: "test",
            source: sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
        }
    }

    fn standby() -> Error {
        Error::Postgres {
            context: "test",
            source: sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_silence_ends_the_retries_and_refusals_ride_out() {
        let mut r = Retries::new(None);
        assert!(
            r.pause(&silence(), "op").is_some(),
            "one retry after a silence"
        );
        assert!(r.pause(&standby(), "op").is_some());
        assert!(
            r.pause(&silence(), "op").is_none(),
            "a second silence ends it"
        );

        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let r: Result<()> = again("op", None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(standby())
        })
        .await;
        assert!(r.is_err());
        let took = start.elapsed();
        assert!(
            took >= RIDE_OUT - Duration::from_secs(5) && took <= RIDE_OUT,
            "refusals are retried for the ride-out, not a number of tries: {took:?}, {} calls",
            calls.load(Ordering::SeqCst)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_pause_ends_past_the_deadline() {
        let start = tokio::time::Instant::now();
        let r: Result<()> = within("connect", Duration::from_secs(3), || async {
            Err(transient())
        })
        .await;
        assert!(r.is_err());
        assert!(
            start.elapsed() <= Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "it did retry: {:?}",
            start.elapsed()
        );
    }
}
