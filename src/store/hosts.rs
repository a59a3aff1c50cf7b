//! libpq's multi-host URL, which sqlx does not take: `postgres://u:p@a:5432,b:5433/db?
//! target_session_attrs=read-write`. The hosts are tried in order and the first that accepts a
//! connection (and, with `read-write` or `primary`, takes writes) is the one the sweep uses: a
//! failover that promoted the second host is followed without changing the URL.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::error::{Error, Result};
use crate::redact::redact_url;

/// The hosts of a URL, each as a URL of its own, and whether the one used must take writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosts {
    pub urls: Vec<String>,
    pub read_write: bool,
}

impl Hosts {
    pub fn parse(url: &str) -> Result<Hosts> {
        let bad = |why: String| {
            Error::Usage(format!("invalid --database-url {}: {why}", redact_url(url)))
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("it must start with postgres:// or postgresql://".into()));
        };
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(bad("it must start with postgres:// or postgresql://".into()));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (format!("{u}@"), h),
            None => (String::new(), authority),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let mut read_write = false;
        let mut kept = Vec::new();
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("target_session_attrs", v)) => {
                    read_write = match v {
                        "any" => false,
                        "read-write" | "primary" => true,
                        other => {
                            return Err(bad(format!(
                                "target_session_attrs={other}: a sweep writes, so only read-write, primary or any"
                            )));
                        }
                    }
                }
                _ if !pair.is_empty() => kept.push(pair),
                _ => {}
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let urls: Vec<String> = hosts
            .split(',')
            .map(|h| format!("{scheme}://{userinfo}{h}{path}{query}"))
            .collect();
        if hosts.split(',').any(|h| h.is_empty() || h.starts_with(':')) && urls.len() > 1 {
            return Err(bad("an empty host in the host list".into()));
        }
        Ok(Hosts { urls, read_write })
    }
}

impl Hosts {
    /// The options of the first host that accepts a connection within `timeout` and, when the
    /// URL asks for it, takes writes. Err is the last host's failure (transient when a host is
    /// read-only or down: a failover in progress ends).
    pub async fn pick(&self, timeout: Duration) -> Result<PgConnectOptions> {
        let parse = |u: &String| {
            u.parse::<PgConnectOptions>()
                .map_err(|e| Error::Usage(format!("invalid --database-url {}: {e}", redact_url(u))))
        };
        if self.urls.len() == 1 && !self.read_write {
            return parse(&self.urls[0]);
        }
        let mut last = None;
        for url in &self.urls {
            let opts = parse(url)?;
            match self.usable(&opts, timeout).await {
                Ok(()) => return Ok(opts),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one host"))
    }

    async fn usable(&self, opts: &PgConnectOptions, timeout: Duration) -> Result<()> {
        let lost = |why: String| Error::Postgres {
            context: "connect",
            source: sqlx::Error::Io(std::io::Error::other(why)),
        };
        let at = format!("{}:{}", opts.get_host(), opts.get_port());
        let probe = opts.clone().extra_float_digits(None);
        let connect = PgConnection::connect_with(&probe);
        let mut c = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| lost(format!("{at} did not answer within {timeout:?}")))?
            .map_err(|e| Error::postgres("connect")(at_host(opts, e)))?;
        if !self.read_write {
            let _ = c.close().await;
            return Ok(());
        }
        // libpq's test for read-write; a simple query, so no statement is prepared.
        let read_only: String = c
            .fetch_one("SHOW transaction_read_only")
            .await
            .and_then(|row| row.try_get(0))
            .map_err(Error::postgres("connect"))?;
        let _ = c.close().await;
        match read_only.as_str() {
            "off" => Ok(()),
            _ => Err(lost(format!(
                "{at} is read-only, and target_session_attrs=read-write asks for a host that takes writes"
            ))),
        }
    }
}

/// Why no connection to `opts` can be had, in one connection attempt of its own: the pool says
/// only "pool timed out while waiting for an open connection" when every attempt it made failed.
pub async fn why_not(opts: &PgConnectOptions, timeout: Duration) -> Error {
    let at = format!("{}:{}", opts.get_host(), opts.get_port());
    match tokio::time::timeout(timeout, PgConnection::connect_with(opts)).await {
        Ok(Err(e)) => Error::postgres("connect")(at_host(opts, e)),
        Ok(Ok(c)) => {
            let _ = c.close().await;
            Error::postgres("connect")(sqlx::Error::PoolTimedOut)
        }
        Err(_) => Error::postgres("connect")(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{at} did not answer within {timeout:?} (--connect-timeout)"),
        ))),
    }
}

/// A network error that names the host it happened with (kept an I/O error of the same kind,
/// so it is retried as before).
fn at_host(opts: &PgConnectOptions, e: sqlx::Error) -> sqlx::Error {
    match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(
            io.kind(),
            format!("{}:{}: {io}", opts.get_host(), opts.get_port()),
        )),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_is_one_url_and_the_attribute_is_taken_out() {
        let h = Hosts::parse("postgres://u:p@db:5432/app?sslmode=require").unwrap();
        assert_eq!(h.urls, ["postgres://u:p@db:5432/app?sslmode=require"]);
        assert!(!h.read_write);
        let h = Hosts::parse("postgresql://db/app?target_session_attrs=read-write").unwrap();
        assert_eq!(h.urls, ["postgresql://db/app"]);
        assert!(h.read_write);
    }

    #[test]
    fn several_hosts_become_one_url_each_in_order() {
        let h = Hosts::parse(
            "postgres://u:p%40x@a:5432,b:5433,[::1]:5434/app?target_session_attrs=primary&sslmode=verify-full",
        )
        .unwrap();
        assert_eq!(
            h.urls,
            [
                "postgres://u:p%40x@a:5432/app?sslmode=verify-full",
                "postgres://u:p%40x@b:5433/app?sslmode=verify-full",
                "postgres://u:p%40x@[::1]:5434/app?sslmode=verify-full",
            ]
        );
        assert!(h.read_write);
    }

    #[test]
    fn refuses_what_a_sweep_cannot_use_in_one_line() {
        for bad in [
            "mysql://a/b",
            "postgres://a,,b/db",
            "postgres://a,b/db?target_session_attrs=read-only",
        ] {
            let e = Hosts::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with("invalid --database-url"), "{e}");
        }
    }
}
