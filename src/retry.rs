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

/// How long an operation that keeps failing is retried from its first failure: enough to ride
/// out a restart, and bounded however long each try takes (a silent server makes every try
/// last `--operation-timeout`), so the sweep calls the server down while the due keys can
/// still be protected.
pub const RIDE_OUT: Duration = Duration::from_secs(30);

/// How long a failover's refusals ([`Error::is_failover`]) are retried when the run has no
/// `--deadline`: AWS documents one to two minutes for an RDS Multi-AZ failover, the slowest of
/// the common ones (Patroni's defaults promote within its 30 s TTL), and a standby that stays
/// one longer than that is a failover that went wrong, for an operator to look at.
pub const FAILOVER: Duration = Duration::from_secs(120);

/// The retries of one operation (a batch write, a Redis pipeline, a step of the run's record):
/// [`Backoff`]'s pauses for transient errors, never past the deadline. A failover's refusals
/// (a standby, a server shutting down or starting) are retried until the deadline, or for
/// [`FAILOVER`] without one: they end when the failover does, which can take minutes. Other
/// transient errors are retried for at most the ride-out ([`RIDE_OUT`]) after the first of
/// them, and only once after a silence ([`Error::is_silence`]): a fresh connection that gets
/// no answer either is a partition, and waiting on it longer would only delay protecting the
/// due keys and the exit.
#[derive(Debug)]
pub struct Retries {
    backoff: Backoff,
    deadline: Option<Instant>,
    ride_out: Duration,
    n: u32,
    /// When the retries of errors other than a failover's end, counted from the first of them
    /// since the last failover refusal (a failover often ends in a reset or two).
    give_up: Option<Instant>,
    /// When a failover's refusals stop being retried, counted from the first of them.
    failover_ends: Option<Instant>,
    last_failover: bool,
    silent: bool,
}

impl Retries {
    pub fn new(deadline: Option<Instant>) -> Retries {
        Retries::riding_out(deadline, RIDE_OUT)
    }

    /// Retries whose errors other than a failover's are ridden out for `ride_out` at most.
    pub fn riding_out(deadline: Option<Instant>, ride_out: Duration) -> Retries {
        Retries {
            backoff: Backoff {
                attempts: u32::MAX,
                ..Backoff::default()
            },
            deadline,
            ride_out,
            n: 0,
            give_up: None,
            failover_ends: None,
            last_failover: false,
            silent: false,
        }
    }

    /// The pause before the next try after `err`, or None when `err` must be returned.
    pub fn pause(&mut self, err: &Error, what: &str) -> Option<Duration> {
        // tokio's clock, as in `Backoff::pause`.
        let now = tokio::time::Instant::now().into_std();
        let failover = err.is_failover();
        let until = if failover {
            *self
                .failover_ends
                .get_or_insert_with(|| self.deadline.unwrap_or(now + FAILOVER))
        } else {
            if self.n == 0 || self.last_failover {
                let end = now + self.ride_out;
                self.give_up = Some(self.deadline.map_or(end, |d| d.min(end)));
            }
            self.give_up.expect("set at the first failure")
        };
        self.last_failover = failover;
        if err.is_silence() && err.is_transient() {
            if self.silent {
                tracing::warn!(error = %err, "{what}: no answer on a fresh connection either; giving up");
                return None;
            }
            self.silent = true;
        }
        let pause = self.backoff.pause(self.n, err, Some(until), what)?;
        self.n += 1;
        Some(pause)
    }

    /// Whether a try failed before.
    pub fn retried(&self) -> bool {
        self.n > 0
    }
}

/// Runs `op` until it succeeds or [`Retries::pause`] says to give up.
pub async fn again<T, F, Fut>(what: &str, deadline: Option<Instant>, op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    again_with(Retries::new(deadline), what, op).await
}

/// Runs `op` until it succeeds or `retries` says to give up.
pub async fn again_with<T, F, Fut>(mut retries: Retries, what: &str, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
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

/// Retries `op` on transient errors until `timeout` has passed (how connections are opened).
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

    fn read_only() -> Error {
        Error::Redis {
            url: "redis://test/".into(),
            source: redis::RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "You can't write against a read only replica.",
            )),
        }
    }

    type Fails = fn() -> Error;

    /// How long `again` retries `errors` (the last repeated) before it gives up.
    async fn retried_for(deadline: Option<Duration>, errors: &[Fails]) -> Duration {
        let start = tokio::time::Instant::now();
        let calls = AtomicU32::new(0);
        let deadline = deadline.map(|d| start.into_std() + d);
        let r: Result<()> = again("op", deadline, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) as usize;
            Err(errors[n.min(errors.len() - 1)]())
        })
        .await;
        assert!(r.is_err());
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_failover_is_retried_until_the_deadline_or_its_own_bound() {
        let (read_only, refused): (Fails, Fails) = (read_only, standby);
        assert!(read_only().is_failover() && read_only().is_transient());
        let took = retried_for(Some(Duration::from_secs(200)), &[read_only]).await;
        assert!(
            took >= Duration::from_secs(195) && took <= Duration::from_secs(200),
            "a standby is retried until the deadline, not the ride-out: {took:?}"
        );
        let took = retried_for(None, &[read_only]).await;
        assert!(
            took >= FAILOVER - Duration::from_secs(5) && took <= FAILOVER,
            "without a deadline, for its own bound: {took:?}"
        );
        let took = retried_for(Some(Duration::from_secs(10)), &[read_only]).await;
        assert!(
            took <= Duration::from_secs(10),
            "never past the deadline: {took:?}"
        );
        // A failover that ends in refused connections: those get a ride-out of their own, after
        // the 20 refusals' pauses (40.6-81.2 s).
        let mut errors = vec![read_only; 20];
        errors.push(refused);
        let took = retried_for(Some(Duration::from_secs(600)), &errors).await;
        assert!(
            took >= Duration::from_secs(65) && took <= Duration::from_secs(82) + RIDE_OUT,
            "{took:?}"
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
