//! stderr written by a thread of its own, through a queue bounded in bytes ([`Queue`]). Logging
//! in place on the runtime's one worker, a stalled stderr once stopped its timers, the deadline
//! and the shield that keeps due keys alive. Lines that find the queue full are dropped and
//! counted, and once the queue has drained one warning says how many were lost. Errors are
//! never dropped: the last line of a failed run is its error.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::fmt::MakeWriter;

use super::queue::Queue;

/// Bytes of log lines waiting for stderr before more are dropped: some hundreds of lines, as
/// many again as a pipe holds, for a reader that falls behind for a moment.
pub const QUEUE_BYTES: usize = 64 * 1024;

/// How long the end of the process waits for the queue to reach stderr: a reader that is only
/// slow gets the last lines, one that never reads does not hold the process.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(3);

static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// Called on the writing thread once the queue has drained.
fn report_dropped(dropped: u64) {
    // Through the subscriber, so in the log format asked; the queue has room.
    tracing::warn!(
        dropped,
        "{dropped} log lines dropped: stderr was not read for a while (the sweep went on)"
    );
}

/// The tracing writer onto the queue.
#[derive(Clone)]
pub struct Stderr(Arc<Queue>);

/// One event's lines; an error's are kept even when the queue is full.
pub struct Line {
    queue: Arc<Queue>,
    keep: bool,
}

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.queue.push(buf, self.keep);
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
            queue: self.0.clone(),
            keep: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line {
        Line {
            queue: self.0.clone(),
            keep: *meta.level() == Level::ERROR,
        }
    }
}

/// Flushes the queue when dropped: hold it to the end of `main`.
#[must_use = "the last lines reach stderr when this is dropped"]
pub struct Flush;

impl Drop for Flush {
    fn drop(&mut self) {
        if let Some(queue) = QUEUE.get() {
            // Nowhere left to tell of lines not written.
            let _ = queue.flush(Some(FLUSH_WITHIN));
        }
    }
}

/// Starts the writing thread (once per process) and gives the writer for the subscriber, and
/// the guard that flushes at the end.
pub fn start() -> std::io::Result<(Stderr, Flush)> {
    if let Some(queue) = QUEUE.get() {
        return Ok((Stderr(queue.clone()), Flush));
    }
    let queue = Queue::start(
        "stderr",
        std::io::stderr(),
        Some(QUEUE_BYTES),
        report_dropped,
    )?;
    let queue = QUEUE.get_or_init(|| queue);
    Ok((Stderr(queue.clone()), Flush))
}

/// Waits, at most `within`, for the lines logged so far to reach stderr: what is printed on
/// stdout next then comes after them where both streams go to one reader (an orchestrator
/// taking the last line of the output for the summary).
pub fn drain(within: Duration) {
    if let Some(queue) = QUEUE.get() {
        let _ = queue.flush(Some(within));
    }
}

/// A line of the binary's own (`sweeper: error: ...`), never dropped, after the log lines
/// before it; straight to stderr when logging has not started.
pub fn line(text: &str) {
    match QUEUE.get() {
        Some(queue) => queue.push(format!("{text}\n").as_bytes(), true),
        None => eprintln!("{text}"),
    }
}
