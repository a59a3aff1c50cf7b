//! TLS and authentication on real servers: a throwaway CA (openssl), Redis with `--tls-port`,
//! client certificates required and an ACL user; PostgreSQL with `ssl=on`, a password user that
//! may only connect over TLS, and `sslmode=verify-full`. A sweep works over both; a wrong CA or a
//! wrong password fails with exit 3 (Redis) or 4 (PostgreSQL) and one clear line; no password is
//! ever printed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::servers::{PrivatePg, PrivateRedis, free_port};
use common::*;
use serde_json::Value;

const REDIS_PW: &str = "redis-Pw-7f3a9c";
const PG_PW: &str = "pg-Pw-91be42";
const WRONG_PW: &str = "wrong-Pw-5d0e11";

/// A throwaway certificate authority with a server certificate (localhost, 127.0.0.1) and a
/// client certificate, plus an unrelated CA for the wrong-CA cases.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        if Command::new("openssl").arg("version").output().is_err() {
            install_openssl();
        }
        let dir = std::env::temp_dir().join(format!(
            "sweeper-pki-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("wrong-ca");
        pki.leaf(
            "server",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
        pki.leaf(
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment",
        );
        pki
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(&self.dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=sweeper test {name}"),
        ]);
    }

    fn leaf(&self, name: &str, ext: &str) {
        std::fs::write(self.dir.join(format!("{name}.ext")), ext).unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// openssl from Debian's packages, as tests/servers.sh installs the servers (as root).
fn install_openssl() {
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "openssl"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
}

struct Servers {
    pki: Pki,
    redis: PrivateRedis,
    tls_port: u16,
    pg: PrivatePg,
}

fn start() -> Servers {
    let pki = Pki::new();
    let tls_port = free_port();
    let tls_port_s = tls_port.to_string();
    let (cert, key, ca) = (
        pki.path("server.crt"),
        pki.path("server.key"),
        pki.path("ca.crt"),
    );
    let password = format!(">{REDIS_PW}");
    let redis = PrivateRedis::try_start(&[
        "--tls-port",
        &tls_port_s,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "yes",
        "--user",
        "default",
        "off",
        "--user",
        "sweeper",
        "on",
        &password,
        "~*",
        "&*",
        "+@all",
    ])
    .expect("Redis with TLS");

    let mut pg = PrivatePg::start();
    pg.write_private("server.crt", &std::fs::read(&cert).unwrap());
    pg.write_private("server.key", &std::fs::read(&key).unwrap());
    // The sweeper's user may connect over TLS only, with its password; the tests' own admin
    // connections stay trusted.
    let hba = pg.data_dir().join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "hostssl all sweeper 127.0.0.1/32 scram-sha-256\nhost all sweeper 127.0.0.1/32 reject\n{rest}"
        ),
    )
    .unwrap();
    pg.kill();
    pg.options = "-c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key".into();
    pg.up();
    Servers {
        pki,
        redis,
        tls_port,
        pg,
    }
}

impl Servers {
    fn redis_url(&self, password: &str) -> String {
        format!("rediss://sweeper:{password}@127.0.0.1:{}/", self.tls_port)
    }

    fn database_url(&self, env: &TestEnv, password: &str, ca: &str) -> String {
        let db = env.database_url.rsplit('/').next().unwrap();
        format!(
            "postgres://sweeper:{password}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.pg.port,
            self.pki.path(ca)
        )
    }

    /// The binary against these servers over TLS, with the given credentials and CA files.
    fn sweeper(&self, env: &TestEnv, redis_url: &str, database_url: &str, args: &[&str]) -> Output {
        let mut cmd = env.command();
        cmd.env("REDIS_URL", redis_url)
            .env("DATABASE_URL", database_url)
            .env("SWEEPER_REDIS_CERT", self.pki.path("client.crt"))
            .env("SWEEPER_REDIS_KEY", self.pki.path("client.key"))
            .args(args);
        if args.first() == Some(&"run") {
            cmd.args(["--match", &env.pattern()]);
        }
        cmd.output().unwrap()
    }
}

/// Neither password, right or wrong, in anything the binary printed.
fn no_password(out: &Output, what: &str) {
    for stream in [&out.stdout, &out.stderr] {
        let text = String::from_utf8_lossy(stream);
        for pw in [REDIS_PW, PG_PW, WRONG_PW] {
            assert!(!text.contains(pw), "{what}: a password was printed: {text}");
        }
    }
}

fn fails_with(out: &Output, code: i32, what: &str) -> String {
    no_password(out, what);
    assert_eq!(out.status.code(), Some(code), "{what}: {}", stderr(out));
    let line = error_line(out);
    println!("{what}: {line}");
    line
}

#[tokio::test]
async fn sweeps_over_tls_with_acl_users_and_fails_clearly_on_a_wrong_ca_or_password() {
    let s = start();
    let plain = format!("redis://sweeper:{REDIS_PW}@127.0.0.1:{}/", s.redis.port);
    let env = TestEnv::on("tls", &plain, &s.pg.admin_url()).await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE sweeper LOGIN SUPERUSER PASSWORD '{PG_PW}'"
    )))
    .execute(&env.pg)
    .await
    .unwrap();
    env.seed(20, 120_000).await;
    let redis_ok = s.redis_url(REDIS_PW);
    let pg_ok = s.database_url(&env, PG_PW, "ca.crt");
    let ca = ["--redis-ca", &s.pki.path("ca.crt")];

    // Over TLS both ways: migrate, then a sweep (with debug logs in JSON, where a URL would show).
    let out = s.sweeper(&env, &redis_ok, &pg_ok, &[&["migrate"], &ca[..]].concat());
    no_password(&out, "migrate");
    assert!(out.status.success(), "migrate over TLS: {}", stderr(&out));
    let out = s.sweeper(
        &env,
        &redis_ok,
        &pg_ok,
        &[
            &["run", "--output", "json", "-v", "--log-format", "json"],
            &ca[..],
        ]
        .concat(),
    );
    no_password(&out, "sweep");
    assert!(out.status.success(), "sweep over TLS: {}", stderr(&out));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["persisted"], 20, "{summary}");
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 20);

    // PostgreSQL takes the sweeper's user over TLS only: the certificate is what lets it in.
    let plain_pg = pg_ok.replace("sslmode=verify-full", "sslmode=disable");
    let out = s.sweeper(&env, &redis_ok, &plain_pg, &[&["run"], &ca[..]].concat());
    let line = fails_with(&out, 4, "PostgreSQL without TLS");
    assert!(line.contains("PostgreSQL"), "{line}");

    // A CA that did not sign the server's certificate.
    let wrong_ca = ["--redis-ca", &s.pki.path("wrong-ca.crt")];
    let out = s.sweeper(&env, &redis_ok, &pg_ok, &[&["run"], &wrong_ca[..]].concat());
    let line = fails_with(&out, 3, "Redis, wrong CA");
    assert!(
        line.contains("Redis at rediss://sweeper:***@127.0.0.1"),
        "{line}"
    );
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert!(
        !stderr(&out).contains("retrying"),
        "no retry can fix a CA: {}",
        stderr(&out)
    );
    let pg_wrong_ca = s.database_url(&env, PG_PW, "wrong-ca.crt");
    let out = s.sweeper(&env, &redis_ok, &pg_wrong_ca, &[&["run"], &ca[..]].concat());
    let line = fails_with(&out, 4, "PostgreSQL, wrong CA");
    assert!(line.to_lowercase().contains("certificate"), "{line}");

    // Wrong passwords.
    let out = s.sweeper(
        &env,
        &s.redis_url(WRONG_PW),
        &pg_ok,
        &[&["run"], &ca[..]].concat(),
    );
    let line = fails_with(&out, 3, "Redis, wrong password");
    assert!(
        line.contains("WRONGPASS") || line.contains("auth"),
        "{line}"
    );
    let pg_wrong_pw = s.database_url(&env, WRONG_PW, "ca.crt");
    let out = s.sweeper(&env, &redis_ok, &pg_wrong_pw, &[&["run"], &ca[..]].concat());
    let line = fails_with(&out, 4, "PostgreSQL, wrong password");
    assert!(line.contains("password authentication failed"), "{line}");

    // The server requires a client certificate.
    let mut cmd = env.command();
    let out = cmd
        .env("REDIS_URL", &redis_ok)
        .env("DATABASE_URL", &pg_ok)
        .args(["run", "--match", &env.pattern()])
        .args(ca)
        .output()
        .unwrap();
    fails_with(&out, 3, "Redis, no client certificate");

    // --redis-insecure skips verification, and says so loudly.
    let out = s.sweeper(
        &env,
        &redis_ok,
        &pg_ok,
        &[
            "run",
            "--redis-insecure",
            "--redis-ca",
            &s.pki.path("wrong-ca.crt"),
        ],
    );
    no_password(&out, "insecure");
    assert!(out.status.success(), "insecure: {}", stderr(&out));
    assert!(stderr(&out).contains("INSECURE"), "{}", stderr(&out));

    // TLS options need a rediss:// URL.
    let out = s.sweeper(&env, &plain, &pg_ok, &[&["run"], &ca[..]].concat());
    let line = fails_with(&out, 2, "--redis-ca with redis://");
    assert!(line.contains("rediss://"), "{line}");
    drop(env);
    assert!(Path::new(&s.pki.path("ca.crt")).exists());
}
