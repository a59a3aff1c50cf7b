//! A Redis Stack server (RediSearch, RedisJSON) for the tests whose layouts need its modules.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::servers::free_port;

/// A Redis Stack server of the test's own (stopped on drop), or the one the setup names
/// (`redis_url`, e.g. from LANGGRAPH_REDIS_URL).
pub struct Stack {
    child: Option<Child>,
    pub url: String,
}

impl Stack {
    /// `h` is what the setup script printed: the server, its modules and library path, or a
    /// `redis_url` to use instead.
    pub fn start(h: &HashMap<String, String>) -> Stack {
        if let Some(url) = h.get("redis_url") {
            return Stack {
                child: None,
                url: url.clone(),
            };
        }
        let port = free_port();
        let mut cmd = Command::new(&h["redis_server"]);
        cmd.env("LD_LIBRARY_PATH", &h["ld_library_path"])
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        for m in h["redis_modules"].split(':') {
            cmd.args(["--loadmodule", m]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Redis Stack server");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "Redis Stack did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Stack {
            child: Some(child),
            url: format!("redis://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
