//! stderr written by a thread of its own, through a queue bounded in bytes. A log line is only
//! queued on the thread that logs it, so a reader that stops reading (a full pipe blocks
//! write(2)) never stalls the runtime: logging in place on the runtime's one worker, a stalled
//! stderr once stopped its timers, the deadline and the shield that keeps due keys alive. Lines
//! that find the queue full are dropped and counted, and once the queue has drained one warning
//! says how many were lost. Errors are never dropped: the last line of a failed run is its error.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines waiting for stderr before more are dropped: some hundreds of lines, as
/// many again as a pipe holds, for a reader that falls behind for a moment.
pub const QUEUE_BYTES: usize = 64 * 1024;

/// How long the end of the process waits for the queue to reach stderr: a reader that is only
/// slow gets the last lines, one that never reads does not hold the process.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Queue {
    lines: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
    /// A line is being written: taken off the queue, not yet on stderr.
    writing: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// A line was queued.
    queued: Condvar,
    /// The queue is empty and nothing is being written.
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic never holds the lock over anything but plain counts: go on with them.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: &[u8], keep: bool) {
        let mut q = self.lock();
        if !keep && q.bytes + line.len() > QUEUE_BYTES {
            q.dropped += 1;
            return;
        }
        q.bytes += line.len();
        q.lines.push_back(line.to_vec());
        self.queued.notify_one();
    }

    /// The writing thread: one line at a time, the lock not held while writing.
    fn write_all(&self, mut out: impl Write) {
        let mut q = self.lock();
        loop {
            if let Some(line) = q.lines.pop_front() {
                q.bytes -= line.len();
                q.writing = true;
                drop(q);
                // Nowhere to tell of a failed write to stderr: the line is lost.
                let _ = out.write_all(&line);
            } else if q.dropped > 0 {
                let dropped = std::mem::take(&mut q.dropped);
                q.writing = true;
                drop(q);
                // Through the subscriber, so in the log format asked; the queue has room.
                tracing::warn!(
                    dropped,
                    "{dropped} log lines dropped: stderr was not read for a while (the sweep went on)"
                );
            } else {
                q.writing = false;
                self.drained.notify_all();
                q = self.queued.wait(q).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            q = self.lock();
        }
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();

/// The tracing writer onto the queue (see the module's comment).
#[derive(Clone)]
pub struct Stderr(Arc<Shared>);

/// One event's lines; an error's are kept even when the queue is full.
pub struct Line {
    shared: Arc<Shared>,
    keep: bool,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf, self.keep);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            shared: self.0.clone(),
            keep: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            shared: self.0.clone(),
            keep: *meta.level() == Level::ERROR,
        }
    }
}

/// Flushes the queue when dropped: hold it to the end of `main`.
#[must_use = "the last lines reach stderr when this is dropped"]
pub struct Flush;

impl Drop for Flush {
    fn drop(&mut self) {
        flush(FLUSH_WITHIN);
    }
}

/// Starts the writing thread (once per process) and gives the writer for the subscriber, and
/// the guard that flushes at the end.
pub fn start() -> std::io::Result<(Stderr, Flush)> {
    if let Some(shared) = SHARED.get() {
        return Ok((Stderr(shared.clone()), Flush));
    }
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    std::thread::Builder::new()
        .name("stderr".into())
        .spawn(move || writer.write_all(std::io::stderr()))?;
    let shared = SHARED.get_or_init(|| shared);
    Ok((Stderr(shared.clone()), Flush))
}

/// A line of the binary's own (`sweeper: error: ...`), never dropped, after the log lines
/// before it; straight to stderr when logging has not started.
pub fn line(text: &str) {
    match SHARED.get() {
        Some(shared) => shared.push(format!("{text}\n").as_bytes(), true),
        None => eprintln!("{text}"),
    }
}

/// Waits until every queued line is on stderr, for at most `within`; true when they all are.
pub fn flush(within: Duration) -> bool {
    let Some(shared) = SHARED.get() else {
        return true;
    };
    let until = Instant::now() + within;
    let mut q = shared.lock();
    while !q.lines.is_empty() || q.writing || q.dropped > 0 {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        q = shared
            .drained
            .wait_timeout(q, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stderr nobody reads until the gate opens.
    struct Gate(Arc<(Mutex<bool>, Condvar)>, Arc<Mutex<Vec<u8>>>);

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, opened) = &*self.0;
            let mut o = open.lock().unwrap();
            while !*o {
                o = opened.wait(o).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_stderr_drops_and_counts_lines_but_never_an_error_and_never_blocks() {
        let shared = Arc::new(Shared::default());
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Gate(gate.clone(), written.clone());
        let writer = shared.clone();
        std::thread::spawn(move || writer.write_all(out));
        let line = vec![b'x'; 1023];
        let started = Instant::now();
        for _ in 0..3 * QUEUE_BYTES / 1024 {
            shared.push(&line, false);
        }
        shared.push(b"the error\n", true);
        assert!(started.elapsed() < Duration::from_secs(1), "logging waited");
        let dropped = shared.lock().dropped;
        // One line is taken by the blocked writer, the queue holds QUEUE_BYTES.
        assert!(dropped >= 2 * QUEUE_BYTES as u64 / 1024 - 2, "{dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let until = Instant::now() + Duration::from_secs(10);
        while !String::from_utf8_lossy(&written.lock().unwrap()).ends_with("the error\n") {
            assert!(Instant::now() < until, "the error line never came");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
