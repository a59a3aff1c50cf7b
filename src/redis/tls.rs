//! TLS to Redis: `rediss://` URLs with the CA, client certificate and key of `--redis-ca`,
//! `--redis-cert`, `--redis-key`, and `--redis-insecure` for development. Files are read and
//! checked here, before any connection, so a bad path is a usage error and not a Redis failure.
//! (PostgreSQL's TLS is all in its URL: `sslmode=verify-full&sslrootcert=/path/ca.crt`.)
//!
//! Both go through rustls: no OpenSSL is linked. Every Redis client is made here, so here too
//! is the TCP side of every connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::io::tcp::{TcpSettings, socket2};
use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::error::{Error, Result};
use crate::redact::redact_url;

/// How to reach a `rediss://` Redis.
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// PEM CA certificate(s) to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) and key, for servers that require client certificates.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Accept any server certificate: encrypted but not authenticated.
    pub insecure: bool,
}

impl RedisTls {
    fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.insecure
    }

    /// A client for `url` with these settings (none of them with a `redis://` URL), whose
    /// connections give up on a silent peer after about `deadline` ([`tcp`]).
    pub fn client(&self, url: &str, deadline: Duration) -> Result<redis::Client> {
        let shown = redact_url(url);
        let bad = |e: redis::RedisError| Error::Usage(format!("invalid --redis-url {shown}: {e}"));
        let info = url
            .into_connection_info()
            .map_err(bad)?
            .set_tcp_settings(tcp(deadline));
        let ConnectionAddr::TcpTls { host, port, .. } = info.addr().clone() else {
            if self.any() {
                return Err(Error::Usage(format!(
                    "--redis-ca, --redis-cert, --redis-key and --redis-insecure need a rediss:// URL, not {shown}"
                )));
            }
            return redis::Client::open(info).map_err(bad);
        };
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::Usage(
                "--redis-cert and --redis-key go together: a client certificate needs its key"
                    .into(),
            ));
        }
        let info = if self.insecure {
            // Said on every run: an operator must not mistake this for a verified connection.
            tracing::warn!(
                redis = %shown,
                "INSECURE: --redis-insecure accepts any certificate from Redis; the connection is encrypted but anyone on the path can impersonate the server. For development only"
            );
            info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params: None,
            })
        } else {
            info
        };
        if self.ca.is_none() && self.cert.is_none() {
            // The system's trust store.
            return redis::Client::open(info).map_err(bad);
        }
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read_pem(cert, "--redis-cert")?,
                client_key: read_pem(key, "--redis-key")?,
            }),
            _ => None,
        };
        let root_cert = match &self.ca {
            Some(ca) => Some(read_pem(ca, "--redis-ca")?),
            None => None,
        };
        redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .map_err(|e| Error::Usage(format!("TLS settings for {shown}: {e}")))
    }
}

/// The TCP settings of every connection to Redis (nodes and sentinels). `--operation-timeout`
/// bounds a pipeline the client waits on; the kernel is told the same deadline, so a connection
/// whose peer went silent is closed rather than kept for the next command: `TCP_USER_TIMEOUT`
/// for bytes sent and not acknowledged, keepalive probes for a connection left idle (between a
/// daemon's runs, a sentinel's or a cluster node's connection not used for a while).
/// `TCP_NODELAY`: a pipeline is one write, sent at once.
fn tcp(deadline: Duration) -> TcpSettings {
    // Keepalive counts whole seconds, from 1.
    let idle = deadline.max(Duration::from_secs(1));
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval((idle / 3).max(Duration::from_secs(1)))
        .with_retries(3);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(deadline);
    tcp
}

/// A PEM file's bytes; a missing file or one with no PEM block is a usage error.
fn read_pem(path: &Path, flag: &str) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::Usage(format!("{flag} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::Usage(format!(
            "{flag} {}: not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(15);

    #[test]
    fn every_connection_is_told_the_operation_deadline() {
        let t = tcp(Duration::from_millis(300));
        assert!(t.nodelay());
        assert!(t.keepalive().is_some());
        #[cfg(target_os = "linux")]
        assert_eq!(t.user_timeout(), Some(Duration::from_millis(300)));
        let c = RedisTls::default()
            .client("rediss://127.0.0.1:6379/", Duration::from_secs(15))
            .unwrap();
        assert!(c.get_connection_info().tcp_settings().keepalive().is_some());
    }

    #[test]
    fn tls_options_need_a_tls_url_and_readable_files() {
        let none = RedisTls::default();
        assert!(none.client("redis://127.0.0.1:6379/", S).is_ok());
        assert!(none.client("rediss://127.0.0.1:6379/", S).is_ok());
        let insecure = RedisTls {
            insecure: true,
            ..RedisTls::default()
        };
        assert!(matches!(
            insecure.client("redis://127.0.0.1:6379/", S),
            Err(Error::Usage(m)) if m.contains("rediss://")
        ));
        let c = insecure.client("rediss://127.0.0.1:6379/", S).unwrap();
        assert!(matches!(
            c.get_connection_info().addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        let missing = RedisTls {
            ca: Some("/nonexistent/ca.crt".into()),
            ..RedisTls::default()
        };
        assert!(matches!(
            missing.client("rediss://127.0.0.1:6379/", S),
            Err(Error::Usage(m)) if m.starts_with("--redis-ca /nonexistent/ca.crt")
        ));
        let half = RedisTls {
            cert: Some("/x.crt".into()),
            ..RedisTls::default()
        };
        assert!(half.client("rediss://127.0.0.1:6379/", S).is_err());
        let bad = none
            .client("rediss://:hunter2@[bad", S)
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
    }
}
