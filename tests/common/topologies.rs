//! The topologies people run in front of or around the servers: Debian's PgBouncer in transaction
//! or session mode, and a Redis primary with a replica watched by three sentinels. Each is
//! private to the test that starts it and gone when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::servers::{PrivateRedis, free_port, is_root, output_within, wait_for_port};

/// Installs a Debian package when `bin` is not on the PATH (as tests/servers.sh does for Redis
/// and PostgreSQL).
pub fn ensure_installed(bin: &str, package: &str) {
    if Command::new("which")
        .arg(bin)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return;
    }
    assert!(is_root(), "{bin} is missing: apt-get install {package}");
    let env = [("DEBIAN_FRONTEND", "noninteractive")];
    let _ = output_within(
        Command::new("apt-get").args(["update", "-qq"]).envs(env),
        Duration::from_secs(300),
    );
    let out = output_within(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .envs(env),
        Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "apt-get install {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sweeper-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    Transaction,
    Session,
}

/// Debian's PgBouncer (1.18 on bookworm) in front of one PostgreSQL, configured as operators
/// commonly write it: `ignore_startup_parameters = extra_float_digits` (what JDBC and sqlx send)
/// and no prepared-statement tracking (1.18 has none).
pub struct PrivatePgBouncer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivatePgBouncer {
    /// `pool_size` server connections per database and user; clients beyond it wait, at most
    /// 30 s (`query_wait_timeout`, 120 s by default) before PgBouncer refuses them.
    pub fn start(pg_port: u16, mode: PoolMode, pool_size: u32) -> PrivatePgBouncer {
        PrivatePgBouncer::start_for(pg_port, mode, pool_size, &[])
    }

    /// [`PrivatePgBouncer::start`], letting in `users` besides `postgres` (PgBouncer admits only
    /// the users its auth_file lists, even with `auth_type = trust`).
    pub fn start_for(
        pg_port: u16,
        mode: PoolMode,
        pool_size: u32,
        users: &[&str],
    ) -> PrivatePgBouncer {
        ensure_installed("pgbouncer", "pgbouncer");
        // A free port is free only until another test takes it: started again on another.
        let mut tries = 0;
        loop {
            match PrivatePgBouncer::try_start(pg_port, mode, pool_size, users) {
                Ok(b) => return b,
                Err(e) if tries < 3 => {
                    tries += 1;
                    eprintln!("PgBouncer did not start ({e}): again on another port");
                }
                Err(e) => panic!("PgBouncer did not start: {e}"),
            }
        }
    }

    fn try_start(
        pg_port: u16,
        mode: PoolMode,
        pool_size: u32,
        users: &[&str],
    ) -> Result<PrivatePgBouncer, String> {
        let dir = temp_dir("pgbouncer");
        let port = free_port();
        let mode = match mode {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        };
        let d = dir.display();
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {d}/users.txt\nadmin_users = postgres\n\
             pool_mode = {mode}\ndefault_pool_size = {pool_size}\nmax_client_conn = 500\n\
             ignore_startup_parameters = extra_float_digits\nquery_wait_timeout = 30\n\
             logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n"
        );
        std::fs::write(dir.join("pgbouncer.ini"), ini).unwrap();
        let listed: String = std::iter::once("postgres")
            .chain(users.iter().copied())
            .map(|u| format!("\"{u}\" \"\"\n"))
            .collect();
        std::fs::write(dir.join("users.txt"), listed).unwrap();
        // PgBouncer refuses to run as root.
        let mut cmd = if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", "pgbouncer"]);
            c
        } else {
            Command::new("pgbouncer")
        };
        let child = cmd
            .arg(dir.join("pgbouncer.ini"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pgbouncer");
        let mut b = PrivatePgBouncer {
            port,
            dir,
            child: Some(child),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = b.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
                let log = b.log();
                let last: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(format!("{exited:?}: {}", last.join(" | ")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(b)
    }

    /// `database_url` (a direct URL to the PostgreSQL behind) with the port of the pooler.
    pub fn url_for(&self, database_url: &str) -> String {
        let mut u = url::Url::parse(database_url).unwrap();
        u.set_port(Some(self.port)).unwrap();
        u.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PrivatePgBouncer {
    fn drop(&mut self) {
        // runuser forks: the pid in the pidfile is PgBouncer's own.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pgbouncer.pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `redis-server --sentinel`.
struct SentinelProc {
    port: u16,
    child: Child,
}

/// A primary, one replica and three sentinels (quorum 2) on loopback, watching service
/// `sweeper`; a node is called down after one second.
pub struct SentinelSet {
    /// The two data nodes; which is the primary changes with failovers (`primary_port`).
    pub nodes: Vec<PrivateRedis>,
    sentinels: Vec<SentinelProc>,
    dir: PathBuf,
    pub service: &'static str,
}

pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = output_within(
        Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args),
        Duration::from_secs(10),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let primary = PrivateRedis::start();
        let pport = primary.port.to_string();
        let replica = PrivateRedis::try_start(&["--replicaof", "127.0.0.1", &pport]).unwrap();
        wait_until("the replica in sync", Duration::from_secs(30), || {
            redis_cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
        });
        let dir = temp_dir("sentinel");
        let service = "sweeper";
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let conf = dir.join(format!("sentinel-{i}.conf"));
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d}/sentinel-{i}.log\n\
                         sentinel monitor {service} 127.0.0.1 {pport} 2\n\
                         sentinel down-after-milliseconds {service} 1000\n\
                         sentinel failover-timeout {service} 10000\n",
                        d = dir.display()
                    ),
                )
                .unwrap();
                let child = Command::new("redis-server")
                    .arg(&conf)
                    .arg("--sentinel")
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server --sentinel");
                wait_for_port(port, true, "Redis Sentinel");
                SentinelProc { port, child }
            })
            .collect();
        let set = SentinelSet {
            nodes: vec![primary, replica],
            sentinels,
            dir,
            service,
        };
        set.wait_settled(None);
        set
    }

    /// `redis+sentinel://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C/sweeper`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{}", hosts.join(","), self.service)
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's port, as the first sentinel says.
    pub fn primary_port(&self) -> u16 {
        let out = redis_cli(
            self.sentinels[0].port,
            &["sentinel", "get-master-addr-by-name", self.service],
        );
        out.lines()
            .nth(1)
            .unwrap_or("0")
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Waits until every sentinel names the same primary (not `old`), that node says it is the
    /// primary, and the sentinels know a replica and each other: a failover can then happen.
    pub fn wait_settled(&self, old: Option<u16>) {
        wait_until("the sentinels settled", Duration::from_secs(60), || {
            let p = self.primary_port();
            let agreed = self.sentinels.iter().all(|s| {
                redis_cli(
                    s.port,
                    &["sentinel", "get-master-addr-by-name", self.service],
                )
                .lines()
                .nth(1)
                .is_some_and(|l| l.trim() == p.to_string())
            });
            let info = redis_cli(
                self.sentinels[0].port,
                &["sentinel", "master", self.service],
            );
            agreed
                && Some(p) != old
                && redis_cli(p, &["role"]).starts_with("master")
                && info.contains("num-other-sentinels\n2")
                && info.contains("num-slaves\n1")
        });
    }

    /// `SENTINEL FAILOVER`: the replica becomes the primary; returns its port.
    pub fn failover(&self) -> u16 {
        let old = self.primary_port();
        let out = redis_cli(
            self.sentinels[0].port,
            &["sentinel", "failover", self.service],
        );
        assert!(out.contains("OK"), "SENTINEL FAILOVER: {out}");
        self.wait_new_primary(old)
    }

    /// Waits until the sentinels have promoted a primary other than `old`; returns its port.
    pub fn wait_new_primary(&self, old: u16) -> u16 {
        wait_until("a new primary", Duration::from_secs(60), || {
            let p = self.primary_port();
            p != old && p != 0 && redis_cli(p, &["role"]).starts_with("master")
        });
        self.primary_port()
    }

    /// SIGKILLs the primary (with its keys); returns its index in `nodes`.
    pub fn kill_primary(&mut self) -> usize {
        let p = self.primary_port();
        let i = self.nodes.iter().position(|n| n.port == p).unwrap();
        self.nodes[i].kill();
        i
    }

    pub fn sentinel_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("sentinel-{i}.log"))).unwrap_or_default()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for s in &mut self.sentinels {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
