//! Redis Sentinel: `redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/db]` (and
//! `rediss+sentinel://`, TLS to the sentinels and the nodes alike). The sentinels are asked for
//! the primary of SERVICE, which must say it is one (`ROLE`); the sweep then reads and protects
//! there, and asks again when that node refuses writes (READONLY: it was demoted), resets or
//! refuses connections (it died and another was promoted).
//!
//! Hand-written rather than the redis crate's `sentinel` feature: two commands, and the node
//! connection must keep this crate's TLS settings (CA, client certificate) and deadlines.

use std::time::Duration;

use redis::Value;

use crate::error::{Error, Result};
use crate::redact::redact_url;
use crate::redis::tls::RedisTls;

/// A parsed sentinel URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    pub tls: bool,
    /// `user:pass@`, as written (still percent-encoded), for the sentinels and the nodes.
    userinfo: String,
}

/// Whether `url` names sentinels rather than a node.
pub fn is_sentinel_url(url: &str) -> bool {
    url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://")
}

impl SentinelUrl {
    pub fn parse(url: &str) -> Result<SentinelUrl> {
        let bad = |why: &str| {
            Error::Usage(format!(
                "invalid --redis-url {}: {why} (the form is redis+sentinel://[user:pass@]host:port[,host:port...]/SERVICE[/db])",
                redact_url(url)
            ))
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("rediss+sentinel://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("redis+sentinel://") {
            (false, r)
        } else {
            return Err(bad("not a sentinel URL"));
        };
        let (authority, path) = rest.split_once('/').ok_or_else(|| bad("no service name"))?;
        // The password may hold '@' only percent-encoded; the last '@' ends the user info.
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (u.to_string(), h),
            None => (String::new(), authority),
        };
        let mut sentinels = Vec::new();
        for h in hosts.split(',').filter(|h| !h.is_empty()) {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                    let port = port
                        .parse()
                        .map_err(|_| bad("a sentinel's port is not a number"))?;
                    (host.to_string(), port)
                }
                _ => (h.to_string(), 26379),
            };
            if host.is_empty() {
                return Err(bad("a sentinel without a host"));
            }
            sentinels.push((host, port));
        }
        if sentinels.is_empty() {
            return Err(bad("no sentinel"));
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        let mut parts = path.split('/').filter(|p| !p.is_empty());
        let service = parts
            .next()
            .ok_or_else(|| bad("no service name"))?
            .to_string();
        let db = match parts.next() {
            Some(d) => d.parse().map_err(|_| bad("the database is not a number"))?,
            None => 0,
        };
        if parts.next().is_some() {
            return Err(bad("more than SERVICE/db after the hosts"));
        }
        Ok(SentinelUrl {
            sentinels,
            service,
            db,
            tls,
            userinfo,
        })
    }

    fn url(&self, host: &str, port: u16, db: i64) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let at = if self.userinfo.is_empty() { "" } else { "@" };
        format!("{scheme}://{}{at}{host}:{port}/{db}", self.userinfo)
    }

    /// The URL of sentinel `i` (with the user info: a sentinel may require it, `requirepass`).
    pub fn sentinel(&self, i: usize) -> String {
        let (host, port) = &self.sentinels[i];
        self.url(host, *port, 0)
    }

    /// The node URL of the primary at `host:port`.
    pub fn node(&self, host: &str, port: u16) -> String {
        self.url(host, port, self.db)
    }

    /// Asks the sentinels in turn for the primary of the service and checks that it says it is
    /// one; returns its node URL. Err, a Redis error, when none answers with a primary.
    pub async fn primary(&self, tls: &RedisTls, timeout: Duration) -> Result<String> {
        let mut last = None;
        for i in 0..self.sentinels.len() {
            match self.ask(i, tls, timeout).await {
                Ok(url) => return Ok(url),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one sentinel"))
    }

    async fn ask(&self, i: usize, tls: &RedisTls, timeout: Duration) -> Result<String> {
        let sentinel = self.sentinel(i);
        let shown = redact_url(&sentinel);
        let failed = |source| Error::Redis {
            url: shown.clone(),
            source,
        };
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut conn = tls
            .client(&sentinel, timeout)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(failed)?;
        let addr: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.service)
            .query_async(&mut conn)
            .await
            .map_err(failed)?;
        let Some((host, port)) = addr else {
            return Err(Error::Usage(format!(
                "Redis Sentinel at {shown} knows no service {:?}: check the name after the hosts in --redis-url",
                self.service
            )));
        };
        let port: u16 = port
            .parse()
            .map_err(|_| Error::Other(format!("Redis Sentinel at {shown} named port {port:?}")))?;
        let node = self.node(&host, port);
        let node_shown = redact_url(&node);
        // A sentinel may name a primary that was just demoted: it must say it is one.
        let mut n = tls
            .client(&node, timeout)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| Error::Redis {
                url: node_shown.clone(),
                source,
            })?;
        let role: Value = redis::cmd("ROLE")
            .query_async(&mut n)
            .await
            .map_err(|source| Error::Redis {
                url: node_shown.clone(),
                source,
            })?;
        match role {
            Value::Array(items) if matches!(items.first(), Some(Value::BulkString(r)) if r == b"master") => {
                Ok(node)
            }
            _ => Err(Error::Redis {
                url: node_shown,
                source: redis::RedisError::from((
                    redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                    "the node the sentinels named is not a primary (yet)",
                )),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hosts_service_db_tls_and_user_info() {
        let u = SentinelUrl::parse("redis+sentinel://a:26379,b:26380/mymaster").unwrap();
        assert_eq!(u.sentinels, [("a".into(), 26379), ("b".into(), 26380)]);
        assert_eq!((u.service.as_str(), u.db, u.tls), ("mymaster", 0, false));
        assert_eq!(u.node("10.0.0.1", 6379), "redis://10.0.0.1:6379/0");

        let u = SentinelUrl::parse("rediss+sentinel://me:p%40ss@s1/svc/3").unwrap();
        assert_eq!(u.sentinels, [("s1".into(), 26379)]);
        assert_eq!((u.db, u.tls), (3, true));
        assert_eq!(u.sentinel(0), "rediss://me:p%40ss@s1:26379/0");
        assert_eq!(u.node("h", 1), "rediss://me:p%40ss@h:1/3");
    }

    #[test]
    fn refuses_what_is_not_the_form_in_one_line() {
        for bad in [
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+sentinel:///svc",
            "redis+sentinel://a:x/svc",
            "redis+sentinel://a:1/svc/notanumber",
            "redis://a:1/svc",
        ] {
            let e = SentinelUrl::parse(bad).unwrap_err().to_string();
            assert!(e.contains("redis+sentinel://[user:pass@]"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn tells_sentinel_urls_apart() {
        assert!(is_sentinel_url("redis+sentinel://a/s"));
        assert!(is_sentinel_url("rediss+sentinel://a/s"));
        assert!(!is_sentinel_url("redis://a/"));
    }
}
