//! TLS and authentication on real servers: a throwaway CA (openssl), Redis with `--tls-port`,
//! client certificates required and an ACL user; PostgreSQL with `ssl=on`, a password user that
//! may only connect over TLS, and `sslmode=verify-full`. A sweep works over both; a wrong CA or a
//! wrong password fails with exit 3 (Redis) or 4 (PostgreSQL) and one clear line; no password is
//! ever printed. A Redis Cluster speaking TLS to its clients and on its bus is swept from one
//! `rediss://` seed.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::pki::Pki;
use common::servers::{PrivateCluster, PrivatePg, PrivateRedis, free_port, output_within};
use common::*;
use serde_json::Value;

const REDIS_PW: &str = "redis-Pw-7f3a9c";
const PG_PW: &str = "pg-Pw-91be42";
const WRONG_PW: &str = "wrong-Pw-5d0e11";

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

/// A cluster on TLS for its clients and its bus (`tls-cluster yes`): from one `rediss://` seed
/// the sweeper learns the primaries' TLS ports (`CLUSTER SLOTS` over TLS gives those) and sweeps
/// them all, whole and by shard (the slot reads too go over TLS).
#[tokio::test]
async fn sweeps_a_cluster_over_tls() {
    let pki = Pki::new();
    let tls_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster =
        PrivateCluster::start_with(3, |i| pki.cluster_node_args(tls_ports[i], "server", true));
    let env = TestEnv::with_cluster("tls_cluster", &cluster).await;
    let ids: Vec<String> = (0..600).map(|i| format!("c{i:03}")).collect();
    seed_cluster(&cluster, &env, &ids[..300], 120_000).await;
    seed_cluster(&cluster, &env, &ids[300..], 3_600_000).await;

    let sweep = |env: &TestEnv, args: &[&str]| {
        let mut cmd = env.command();
        cmd.env("REDIS_URL", format!("rediss://127.0.0.1:{}/", tls_ports[1]))
            .env("SWEEPER_REDIS_CLUSTER", "true")
            .env("SWEEPER_REDIS_CA", pki.path("ca.crt"))
            .env("SWEEPER_REDIS_CERT", pki.path("client.crt"))
            .env("SWEEPER_REDIS_KEY", pki.path("client.key"))
            .args(["run", "--output", "json", "--match", &env.pattern()])
            .args(args);
        let out = output_within(&mut cmd, Duration::from_secs(60));
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let s = sweep(&env, &[]);
    assert_eq!(
        (s["scanned"].as_u64(), s["persisted"].as_u64()),
        (Some(600), Some(300)),
        "{s}"
    );
    assert_eq!(env.count("SELECT count(*) FROM conversations").await, 300);

    let mut sharded = TestEnv::with_cluster("tls_cluster_shards", &cluster).await;
    sharded.prefix = env.prefix.clone();
    let persisted: u64 = (0..3)
        .map(|i| {
            sweep(&sharded, &["--shard", &format!("{i}/3")])["persisted"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(persisted, 300);
    assert_eq!(
        sharded.count("SELECT count(*) FROM conversations").await,
        300
    );
}
