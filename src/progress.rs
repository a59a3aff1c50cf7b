//! A spinner on stderr with the counts so far, for people watching `run` or `inspect` in a
//! terminal. Only when stderr is a terminal: never in logs, job output or CI.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A handle the scan loops update; a hidden one does nothing.
#[derive(Debug, Clone, Default)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A spinner when stderr is a terminal, else a hidden handle.
    pub fn on_terminal() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::default();
        }
        let bar = ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress(Some(bar))
    }

    /// Keys scanned so far, and how many of them are due.
    pub fn update(&self, scanned: u64, due: u64) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!("{scanned} keys scanned, {due} due"));
        }
    }

    /// Stops the spinner, drawing the final counts once more above the summary (redraws are
    /// rate-limited, so the last update may not have been shown yet).
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish();
        }
    }
}
