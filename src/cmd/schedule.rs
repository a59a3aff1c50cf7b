//! `sweeper check-schedule`, and the same check refusing a `run --schedule` whose threshold the
//! schedule cannot keep.

use std::time::Duration;

use crate::cli::CheckScheduleArgs;
use crate::error::{Error, Result, exit};
use crate::schedule::{self, CronSchedule, ScheduleCheck, Verdict};

/// Two years: every month length, leap days, weekday patterns, and two firings of @yearly.
const YEAR: Duration = Duration::from_secs(2 * 366 * 24 * 3600);

pub fn execute(c: &CheckScheduleArgs) -> Result<u8> {
    let (s, gap) = schedule_gap(&c.schedule)?;
    let check = ScheduleCheck::new(&s, gap, c.threshold.threshold, c.max_runtime);
    super::emit(c.out.output, || check.to_json(), || check.to_text())?;
    Ok(if check.is_safe() {
        exit::OK
    } else {
        exit::OTHER
    })
}

/// A `--schedule` expression, parsed.
pub fn parse(expr: &str) -> Result<CronSchedule> {
    expr.parse()
        .map_err(|e: String| Error::Usage(format!("--schedule {e}")))
}

/// The largest gap of a schedule over a year from now.
fn schedule_gap(expr: &str) -> Result<(CronSchedule, schedule::Gap)> {
    let s = parse(expr)?;
    let gap = s
        .largest_gap(chrono::Utc::now(), YEAR)
        .ok_or_else(|| Error::Usage(format!("--schedule `{expr}` fires less than twice a year")))?;
    Ok((s, gap))
}

/// Refuses a run whose threshold the schedule cannot keep: a key just above the threshold at one
/// sweep must be read by the next, one gap and up to a deadline later.
pub fn refuse_unsafe_threshold(
    expr: &str,
    threshold: Duration,
    deadline: Option<Duration>,
) -> Result<()> {
    let (_, gap) = schedule_gap(expr)?;
    let runtime = deadline.unwrap_or_default();
    if let Verdict::Unsafe { smallest_safe, .. } =
        schedule::verdict(gap.largest, threshold, runtime)
    {
        return Err(Error::Usage(format!(
            "--threshold {} is not above the largest gap of --schedule `{expr}` ({}) plus --deadline ({}): keys could expire between sweeps; use at least {} (see `sweeper check-schedule`)",
            humantime::format_duration(threshold),
            humantime::format_duration(gap.largest),
            humantime::format_duration(runtime),
            humantime::format_duration(smallest_safe)
        )));
    }
    Ok(())
}
