//! Text written to a stream (stderr, stdout) by a thread of its own, through a queue: the thread
//! that writes only queues, so a reader that stops reading (a full pipe blocks write(2)) never
//! stalls it. A queue with a bound drops what does not fit (except what is to be kept) and
//! counts it; one without keeps everything.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    chunks: VecDeque<Vec<u8>>,
    bytes: usize,
    dropped: u64,
    /// A chunk is being written: taken off the queue, not yet on the stream.
    writing: bool,
    /// Why the first write that failed did (the stream closed).
    failed: Option<String>,
}

/// A queue and the thread writing it out.
pub struct Queue {
    state: Mutex<State>,
    /// A chunk was queued.
    queued: Condvar,
    /// The queue is empty and nothing is being written.
    drained: Condvar,
    /// Bytes queued past which chunks not kept are dropped; None: none is.
    bound: Option<usize>,
}

impl Queue {
    /// A queue whose thread `name` writes to `out`; `dropped` is called on that thread, the queue
    /// empty, with how many chunks were dropped since the last call.
    pub fn start(
        name: &str,
        out: impl Write + Send + 'static,
        bound: Option<usize>,
        dropped: fn(u64),
    ) -> std::io::Result<Arc<Queue>> {
        let queue = Arc::new(Queue::new(bound));
        let writer = queue.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer.write_out(out, dropped))?;
        Ok(queue)
    }

    fn new(bound: Option<usize>) -> Queue {
        Queue {
            state: Mutex::default(),
            queued: Condvar::new(),
            drained: Condvar::new(),
            bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic never holds the lock over anything but plain counts: go on with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `chunk`; when the queue is full, drops it unless `keep` (and even then past four
    /// times the bound: a flood of errors does not grow the queue without end either).
    pub fn push(&self, chunk: &[u8], keep: bool) {
        let mut q = self.lock();
        let limit = self.bound.map(|b| if keep { 4 * b } else { b });
        if limit.is_some_and(|l| q.bytes + chunk.len() > l) {
            q.dropped += 1;
            return;
        }
        q.bytes += chunk.len();
        q.chunks.push_back(chunk.to_vec());
        self.queued.notify_one();
    }

    /// The writing thread: one chunk at a time, the lock not held while writing.
    fn write_out(&self, mut out: impl Write, report: fn(u64)) {
        let mut q = self.lock();
        loop {
            if let Some(chunk) = q.chunks.pop_front() {
                q.bytes -= chunk.len();
                q.writing = true;
                drop(q);
                // Each chunk is tried, as in place: a write refused once may go through later.
                let result = out.write_all(&chunk).and_then(|_| out.flush());
                q = self.lock();
                if let Err(e) = result {
                    q.failed.get_or_insert(e.to_string());
                }
            } else if q.dropped > 0 {
                let dropped = std::mem::take(&mut q.dropped);
                q.writing = true;
                drop(q);
                report(dropped);
                q = self.lock();
            } else {
                q.writing = false;
                self.drained.notify_all();
                q = self.queued.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Waits until everything queued is written, for at most `within` (None: for as long as it
    /// takes). Err: not all of it was, or a write failed (why).
    pub fn flush(&self, within: Option<Duration>) -> Result<(), String> {
        let until = within.map(|w| Instant::now() + w);
        let mut q = self.lock();
        while !q.chunks.is_empty() || q.writing || q.dropped > 0 {
            q = match until {
                None => self.drained.wait(q).unwrap_or_else(|e| e.into_inner()),
                Some(until) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(format!("not written within {within:?}"));
                    }
                    let waited = self.drained.wait_timeout(q, left);
                    waited.unwrap_or_else(|e| e.into_inner()).0
                }
            };
        }
        q.failed.clone().map_or(Ok(()), Err)
    }

    /// The first write that failed, if one did.
    pub fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A stream nobody reads until the gate opens.
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

    static REPORTED: AtomicU64 = AtomicU64::new(0);

    #[test]
    fn a_stalled_stream_drops_and_counts_but_never_what_is_kept_and_never_blocks_the_writer() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(Vec::new()));
        let out = Gate(gate.clone(), written.clone());
        let report = |n| {
            REPORTED.fetch_add(n, Ordering::SeqCst);
        };
        let queue = Queue::start("test", out, Some(64 * 1024), report).unwrap();
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        let started = Instant::now();
        for _ in 0..192 {
            queue.push(&line, false);
        }
        queue.push(b"the error\n", true);
        for _ in 0..256 {
            queue.push(&line, true);
        }
        assert!(started.elapsed() < Duration::from_secs(1), "pushing waited");
        assert!(queue.flush(Some(Duration::from_millis(50))).is_err());
        // One line is taken by the blocked writer, the queue holds 64 of them, then the error,
        // then kept lines up to four times the bound (191 more, the error's bytes counted).
        let dropped = queue.lock().dropped;
        assert!((126 + 65..=128 + 65).contains(&dropped), "{dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        queue.flush(Some(Duration::from_secs(10))).unwrap();
        let written = String::from_utf8_lossy(&written.lock().unwrap()).into_owned();
        assert!(
            written.contains("x\nthe error\nx"),
            "the error after the lines before it"
        );
        assert_eq!(REPORTED.load(Ordering::SeqCst), dropped);
    }

    #[test]
    fn an_unbounded_queue_keeps_everything_and_tells_of_a_failed_write() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let queue = Queue::start("test", Vec::new(), None, |_| ()).unwrap();
        for _ in 0..1000 {
            queue.push(&[b'x'; 1024], false);
        }
        queue.flush(None).unwrap();
        let closed = Queue::start("test", Closed, None, |_| ()).unwrap();
        closed.push(b"summary\n", true);
        assert!(closed.flush(None).unwrap_err().contains("pipe"));
        assert!(closed.failed().is_some());
    }
}
