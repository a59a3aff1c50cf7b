//! Which pooled connections to trust after a fault. A connection that went silent, was lost,
//! or reached a standby or a server shutting down (a failover) is not reused, nor is any other
//! opened before it: they all point at the same dead network or old primary. Each is closed when
//! released or before it is handed out again, without waiting on it, and the pool opens fresh
//! ones (which reach the new primary). Left in, a silent connection's check on release waited
//! forever and held its place in the pool: every later acquire timed out.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnectionMetadata;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::error::Error;

#[derive(Debug, Default)]
pub(super) struct Faults {
    /// When the last fault was seen.
    last: Mutex<Option<Instant>>,
}

impl Faults {
    /// Notes `e` when it spoils connections: every connection open now is dropped.
    pub(super) fn saw(&self, e: &Error) {
        if e.spoils_connection() {
            *self.last.lock().expect("not poisoned") = Some(Instant::now());
        }
    }

    /// Whether the connection `meta` describes was open at the last fault.
    fn spoiled(&self, meta: &PoolConnectionMetadata) -> bool {
        let Some(fault) = *self.last.lock().expect("not poisoned") else {
            return false;
        };
        Instant::now()
            .checked_sub(meta.age)
            .is_none_or(|opened| opened <= fault)
    }

    /// `opts` with the checks on release and before acquire. sqlx's own check before acquire
    /// (a ping with no bound) is replaced by one bounded by `operation`.
    pub(super) fn guard(
        self: &Arc<Self>,
        opts: PgPoolOptions,
        operation: Duration,
    ) -> PgPoolOptions {
        let (on_release, on_acquire) = (self.clone(), self.clone());
        opts.test_before_acquire(false)
            .after_release(move |_, meta| {
                // Closed (Terminate sent, nothing awaited) rather than pinged by sqlx.
                let keep = !on_release.spoiled(&meta);
                Box::pin(async move { Ok(keep) })
            })
            .before_acquire(move |conn: &mut PgConnection, meta| {
                let faults = on_acquire.clone();
                Box::pin(async move {
                    if faults.spoiled(&meta) {
                        return Ok(false);
                    }
                    match tokio::time::timeout(operation, conn.ping()).await {
                        Ok(r) => r.map(|()| true),
                        Err(_) => {
                            *faults.last.lock().expect("not poisoned") = Some(Instant::now());
                            Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()))
                        }
                    }
                })
            })
    }
}
