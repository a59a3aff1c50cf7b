//! Private Redis and PostgreSQL servers of one test, for fault tests that stop and restart them
//! (the shared servers of `tests/servers.sh` must stay up for the tests running beside them).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Runs `cmd` to its end, or kills it after `limit` and panics: a test can never hang on a child.
pub fn output_within(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let start = Instant::now();
    let out = super::finish(child, limit);
    // finish() killed it: no exit code, and the limit passed.
    if out.status.code().is_none() && start.elapsed() >= limit {
        panic!(
            "{cmd:?} still running after {limit:?}, killed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

pub fn wait_for_port(port: u16, up: bool, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() == up {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{what} on port {port} did not go {}",
        if up { "up" } else { "down" }
    );
}

/// A PostgreSQL cluster of its own, on a free port, in a temp dir.
pub struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    root: bool,
    /// Extra server options (`-c ssl=on ...`), for the next `up`.
    pub options: String,
}

impl PrivatePg {
    /// Debian's server (`SWEEPER_TEST_PG_BIN`, set by tests/servers.sh).
    pub fn start() -> PrivatePg {
        PrivatePg::start_bin(&PrivatePg::debian_bin())
    }

    /// The server of another install: `bin` holds `initdb`, `pg_ctl` and `postgres` (with `../lib`
    /// and `../share` beside it). As root the install is copied into the cluster's own directory
    /// first: the `postgres` user that runs it may not enter root's cache.
    pub fn start_bin(bin: &Path) -> PrivatePg {
        let mut pg = PrivatePg::empty(bin.to_path_buf());
        if pg.root && bin != PrivatePg::debian_bin() {
            let copy = pg.dir.join("install");
            let ok = Command::new("cp")
                .arg("-a")
                .arg(bin.parent().unwrap())
                .arg(&copy)
                .status()
                .unwrap();
            assert!(ok.success(), "copy {}", bin.display());
            pg.bin = copy.join("bin");
        }
        let data = pg.dir.join("data");
        let out = pg
            .pg_tool("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.up();
        pg
    }

    /// A streaming standby of `primary`, made as operators make one (`pg_basebackup -R`: the copy
    /// plus `standby.signal` and `primary_conninfo`), started read-only on a port of its own.
    pub fn standby_of(primary: &PrivatePg) -> PrivatePg {
        let pg = PrivatePg::empty(primary.bin.clone());
        let out = pg
            .pg_tool("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "--checkpoint=fast",
                "-D",
            ])
            .arg(pg.data_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.up();
        pg
    }

    /// Ends recovery: the standby becomes a primary that takes writes.
    pub fn promote(&self) {
        let out = self
            .pg_tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "promote"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn debian_bin() -> PathBuf {
        PathBuf::from(
            std::env::var("SWEEPER_TEST_PG_BIN")
                .expect("SWEEPER_TEST_PG_BIN: run through `make test`"),
        )
    }

    /// A directory and a port, no cluster yet.
    fn empty(bin: PathBuf) -> PrivatePg {
        let dir =
            std::env::temp_dir().join(format!("sweeper-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = is_root();
        if root {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .unwrap();
            assert!(ok.success());
        }
        PrivatePg {
            dir,
            bin,
            port: free_port(),
            root,
            options: String::new(),
        }
    }

    fn pg_tool(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        if self.root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts (or starts again) the server.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off {}",
            self.port,
            self.dir.display(),
            self.options
        );
        let out = self
            .pg_tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_port(self.port, true, "PostgreSQL");
    }

    /// Stops the server at once, as a crash would (`-m immediate`: no checkpoint, connections cut).
    pub fn kill(&self) {
        let _ = self
            .pg_tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_for_port(self.port, false, "PostgreSQL");
    }

    /// Stops the server cleanly (`-m fast`): connections are cut, and a standby connected to it
    /// gets every WAL record first, as in a planned failover.
    pub fn stop(&self) {
        let _ = self
            .pg_tool("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        wait_for_port(self.port, false, "PostgreSQL");
    }

    /// The data directory (configuration files, and certificates the server reads).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Writes a file into the data directory, owned by the server's user with mode 0600 (as
    /// PostgreSQL wants its private key).
    pub fn write_private(&self, name: &str, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.data_dir().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if self.root {
            let ok = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&path)
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis server of its own, on a free port, with no persistence.
pub struct PrivateRedis {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra `redis-server` arguments (modules, TLS, ACL), kept for restarts.
    args: Vec<String>,
    /// The server binary: `redis-server` from the PATH unless another version is wanted.
    bin: PathBuf,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        PrivateRedis::try_start(&[]).unwrap()
    }

    /// A server started with extra arguments; Err with its log when it does not come up (a
    /// module that cannot load, say).
    pub fn try_start(args: &[&str]) -> Result<PrivateRedis, String> {
        PrivateRedis::try_start_bin(Path::new("redis-server"), args)
    }

    /// A server of another version (the binary at `bin`), with extra arguments. A free port is
    /// free only until someone else takes it (tests running at once start servers too): one
    /// taken meanwhile is traded for another.
    pub fn try_start_bin(bin: &Path, args: &[&str]) -> Result<PrivateRedis, String> {
        let mut tries = 0;
        loop {
            let port = free_port();
            let dir =
                std::env::temp_dir().join(format!("sweeper-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = PrivateRedis {
                port,
                dir,
                child: None,
                args: args.iter().map(|a| a.to_string()).collect(),
                bin: bin.to_path_buf(),
            };
            match r.try_up() {
                Ok(()) => return Ok(r),
                Err(e) if e.contains("Address already in use") && tries < 5 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn up(&mut self) {
        self.try_up().unwrap()
    }

    /// Starts the server and waits until its log says it listens: a port that answers may be
    /// another test's server that took it first (this one then exits, its port in use).
    fn try_up(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let _ = std::fs::write(&log, "");
        let mut child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(&self.args)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        let start = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Ready to accept connections")
        {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                let last: Vec<&str> = log.lines().rev().take(3).collect();
                return Err(format!(
                    "redis-server exited ({status}): {}",
                    last.join(" | ")
                ));
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                return Err(format!("Redis on port {} did not come up", self.port));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: the server and every key in it are gone.
    pub fn kill(&mut self) {
        // Only a server this started is waited for: the port of one that never came up may be
        // another's.
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            wait_for_port(self.port, false, "Redis");
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(Path::new(&self.dir));
    }
}

/// One cluster node with the extra arguments `extra`.
fn start_node(extra: &[String]) -> Result<PrivateRedis, String> {
    // The cluster bus gets a port of its own (the default, port + 10000, may be taken or out of
    // range).
    let bus = free_port().to_string();
    let mut all: Vec<&str> = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--cluster-port",
        &bus,
        "--appendonly",
        "yes",
    ];
    all.extend(extra.iter().map(String::as_str));
    PrivateRedis::try_start(&all)
}

/// A Redis Cluster of `n` primaries (no replicas) on loopback, each node a [`PrivateRedis`] with
/// an append-only file, so a node killed and started again comes back with its keys.
pub struct PrivateCluster {
    pub nodes: Vec<PrivateRedis>,
}

impl PrivateCluster {
    pub fn start(n: usize) -> PrivateCluster {
        PrivateCluster::start_with(n, |_| Vec::new())
    }

    /// A cluster whose node `i` gets the extra `redis-server` arguments `args(i)` (TLS, say).
    /// Every node keeps its plain port, which the harness uses (`redis-cli`, seeding).
    pub fn start_with(n: usize, args: impl Fn(usize) -> Vec<String>) -> PrivateCluster {
        let nodes: Vec<PrivateRedis> = (0..n)
            .map(|i| {
                // A free port is free only until someone else takes it: tests running at once
                // start servers too. A node whose port was taken meanwhile is started again.
                let mut tries = 0;
                loop {
                    match start_node(&args(i)) {
                        Err(e) if e.contains("Address already in use") && tries < 5 => tries += 1,
                        started => break started.expect("a cluster node"),
                    }
                }
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|r| format!("127.0.0.1:{}", r.port))
            .collect();
        // `--cluster create` waits for the nodes to meet on the bus, forever if they cannot.
        let out = output_within(
            Command::new("redis-cli")
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "0", "--cluster-yes"]),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = PrivateCluster { nodes };
        c.wait_ok();
        c
    }

    /// Waits until every node says `cluster_state:ok`.
    pub fn wait_ok(&self) {
        let start = Instant::now();
        loop {
            let ok = self.nodes.iter().all(|r| {
                let out = output_within(
                    Command::new("redis-cli").args(["-p", &r.port.to_string(), "cluster", "info"]),
                    Duration::from_secs(10),
                );
                String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
            });
            if ok {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the cluster did not become ok"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every node's URL, comma-separated (seeds for `--redis-cluster`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(|r| r.url()).collect();
        urls.join(",")
    }
}
