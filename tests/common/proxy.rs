//! A TCP fault proxy: forwards loopback connections to a target and, on command, adds latency,
//! goes silent (a blackhole: bytes held, nothing closed, as a network partition looks to both
//! ends), resets every connection, refuses new ones, or flips to another target (a DNS name or a
//! virtual IP moving to a new primary). There is no toxiproxy server and no `netem` here; this is
//! the part of both the tests need.
//!
//! It runs on a thread and a runtime of its own, so a test that blocks its own thread (waiting for
//! a child process) never stalls the traffic it forwards.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq)]
struct Mode {
    target: u16,
    latency: Duration,
    /// Bytes are held (not lost: TCP would retransmit them once the partition heals) and new
    /// connections are accepted but never forwarded.
    silent: bool,
    /// New connections are reset at once (a refused or closed port).
    refuse: bool,
    /// Bumped by `reset_all`: connections opened before it are reset.
    generation: u64,
}

/// A running proxy; dropping it stops it and resets what it forwards.
pub struct FaultProxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    stats: Arc<Mutex<Stats>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What went through, for a test to check the fault was really hit.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connections: u64,
    /// Chunks held while silent (each is one read, forwarded when the silence ends).
    pub held: u64,
    pub resets: u64,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:target`.
    pub fn start(target: u16) -> FaultProxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (mode, rx) = watch::channel(Mode {
            target,
            latency: Duration::ZERO,
            silent: false,
            refuse: false,
            generation: 0,
        });
        let stats = Arc::new(Mutex::new(Stats::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread_stats = stats.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(std_listener).unwrap();
                tokio::select! {
                    _ = accept_loop(listener, rx, thread_stats) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task and its sockets.
        });
        FaultProxy {
            port,
            mode,
            stats,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Added before every chunk forwarded, either way.
    pub fn set_latency(&self, latency: Duration) {
        self.mode.send_modify(|m| m.latency = latency);
    }

    /// Goes silent: nothing forwarded, nothing closed, new connections hang. Ends with `heal`.
    pub fn blackhole(&self) {
        self.mode.send_modify(|m| m.silent = true);
    }

    /// Ends a blackhole or a refusal: what was held is delivered, new connections go through.
    pub fn heal(&self) {
        self.mode.send_modify(|m| {
            m.silent = false;
            m.refuse = false;
        });
    }

    /// Resets (RST) every connection open now; new ones go through.
    pub fn reset_all(&self) {
        self.mode.send_modify(|m| m.generation += 1);
    }

    /// Resets every connection and every new one until `heal` (the port looks closed).
    pub fn refuse(&self) {
        self.mode.send_modify(|m| {
            m.refuse = true;
            m.generation += 1;
        });
    }

    /// New connections go to `127.0.0.1:target`; open ones stay where they are (as after a DNS
    /// change: a client notices only when it reconnects). `reset_all` too for a moved VIP.
    pub fn set_target(&self, target: u16) {
        self.mode.send_modify(|m| m.target = target);
    }

    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, mode: watch::Receiver<Mode>, stats: Arc<Mutex<Stats>>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        stats.lock().unwrap().connections += 1;
        tokio::spawn(serve(client, mode.clone(), stats.clone()));
    }
}

/// Waits until the proxy is not silent; false when this connection was reset meanwhile.
async fn wait_until_heard(mode: &mut watch::Receiver<Mode>, generation: u64) -> bool {
    loop {
        {
            let m = mode.borrow_and_update();
            if m.generation != generation {
                return false;
            }
            if !m.silent {
                return true;
            }
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn serve(mut client: TcpStream, mut mode: watch::Receiver<Mode>, stats: Arc<Mutex<Stats>>) {
    let m = mode.borrow_and_update().clone();
    let generation = m.generation;
    if m.refuse {
        reset(&client, &stats);
        return;
    }
    // A silent network: the client's connect succeeded (the proxy accepted it) but nothing more
    // happens until the silence ends.
    if m.silent && !wait_until_heard(&mut mode, generation).await {
        reset(&client, &stats);
        return;
    }
    let target: SocketAddr = ([127, 0, 0, 1], mode.borrow().target).into();
    let Ok(mut server) = TcpStream::connect(target).await else {
        reset(&client, &stats);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, mode.clone(), generation, stats.clone());
        let down = pump(sr, cw, mode.clone(), generation, stats.clone());
        let mut watch_reset = mode.clone();
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            _ = async {
                while watch_reset.borrow_and_update().generation == generation {
                    if watch_reset.changed().await.is_err() { break; }
                }
            } => true,
        }
    };
    if was_reset {
        reset(&client, &stats);
        reset(&server, &stats);
    }
}

/// Closes with RST instead of FIN (SO_LINGER 0), as a middlebox or a crashed host does.
fn reset(s: &TcpStream, stats: &Mutex<Stats>) {
    let _ = s.set_zero_linger();
    stats.lock().unwrap().resets += 1;
}

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut mode: watch::Receiver<Mode>,
    generation: u64,
    stats: Arc<Mutex<Stats>>,
) where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if mode.borrow().silent {
            stats.lock().unwrap().held += 1;
        }
        if !wait_until_heard(&mut mode, generation).await {
            return;
        }
        let latency = mode.borrow().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
