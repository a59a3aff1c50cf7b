//! stdout (summaries, tables) written by a thread of its own, through a queue that drops
//! nothing ([`Queue`]): a stdout nobody reads holds no sweep (written in place, the daemon's
//! next sweep waited on it), only the end of the process, which waits for it all as before.

use std::sync::{Arc, OnceLock};

use super::queue::Queue;

static QUEUE: OnceLock<Arc<Queue>> = OnceLock::new();

/// Queues `text` for stdout (starting the writing thread the first time). Err: an earlier write
/// failed (stdout closed), with why.
pub fn print(text: &str) -> Result<(), String> {
    let queue = match QUEUE.get() {
        Some(queue) => queue,
        None => {
            let queue = Queue::start("stdout", std::io::stdout(), None, |_| ())
                .map_err(|e| format!("cannot start the thread writing it: {e}"))?;
            QUEUE.get_or_init(|| queue)
        }
    };
    if let Some(why) = queue.failed() {
        return Err(why);
    }
    // After the log lines before it: the summary is the output's last line (a stderr nobody
    // reads holds it half a second at most).
    super::stderr::drain(std::time::Duration::from_millis(500));
    queue.push(text.as_bytes(), true);
    Ok(())
}

/// Waits until everything printed is on stdout, for at most `within`; None: for as long as it
/// takes, the output of the process is not dropped. Err: a write failed, with why.
pub fn finish(within: Option<std::time::Duration>) -> Result<(), String> {
    QUEUE.get().map_or(Ok(()), |queue| queue.flush(within))
}
