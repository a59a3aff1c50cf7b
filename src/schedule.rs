//! Schedule safety: a cron expression read with crontab's own meanings, the largest gap between
//! its firings, and whether a key can expire between two sweeps. Pure: the start time is passed in.
//!
//! A key is saved by the first sweep that finds its TTL under the threshold. The worst case is a
//! key whose TTL is just above the threshold at one sweep: it expires `threshold` later, and the
//! next sweep starts `gap` later and reads it at most `max_runtime` after starting. So a schedule
//! is safe when `gap + max_runtime < threshold`, for the largest gap of the schedule.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// A parsed schedule. Standard 5-field crontab (minute hour day-of-month month day-of-week, 0 and
/// 7 are Sunday, 1 is Monday), 6 fields with seconds first, or `@hourly`, `@daily`, ...
#[derive(Debug, Clone)]
pub struct CronSchedule {
    inner: cron::Schedule,
    text: String,
}

impl FromStr for CronSchedule {
    type Err = String;

    fn from_str(expr: &str) -> Result<CronSchedule, String> {
        let text = expr.trim().to_string();
        let expanded = match text.as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let mut fields: Vec<String> = expanded.split_whitespace().map(str::to_string).collect();
        match fields.len() {
            5 => fields.insert(0, "0".into()),
            6 => {}
            n => {
                return Err(format!(
                    "`{text}` has {n} fields: a schedule is 5 crontab fields (minute hour day month weekday) or 6 with seconds first"
                ));
            }
        }
        if fields[3] != "*" && fields[3] != "?" && fields[5] != "*" && fields[5] != "?" {
            // crontab runs when either matches; the cron crate when both do. Refuse rather than
            // guess which one the operator meant.
            return Err(format!(
                "`{text}` restricts both day of month and day of week, which crontab and other tools read differently: restrict one"
            ));
        }
        fields[5] = crate_weekdays(&fields[5]).map_err(|e| format!("`{text}`: {e}"))?;
        let inner = cron::Schedule::from_str(&fields.join(" "))
            .map_err(|e| format!("`{text}` is not a valid schedule: {e}"))?;
        Ok(CronSchedule { inner, text })
    }
}

/// Translates a crontab day-of-week field (0-7, 0 and 7 Sunday, names) into the cron crate's
/// numbering (1-7, 1 Sunday).
fn crate_weekdays(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let day = |s: &str| -> Result<u32, String> {
        const NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        if let Some(i) = NAMES.iter().position(|n| s.eq_ignore_ascii_case(n)) {
            return Ok(i as u32);
        }
        match s.parse::<u32>() {
            Ok(n) if n <= 7 => Ok(n),
            _ => Err(format!("`{s}` is not a day of the week (0-7 or sun-sat)")),
        }
    };
    let mut days = [false; 7];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("bad step in `{part}`"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("bad step in `{part}`"));
        }
        // As cronie reads them: `*` and `N/step` run through 7 (Sunday again).
        let (lo, hi) = match range {
            "*" => (0, 7),
            r => match r.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None if part.contains('/') => (day(r)?, 7),
                None => (day(r)?, day(r)?),
            },
        };
        if lo > hi {
            return Err(format!("`{part}`: the range runs backwards"));
        }
        for d in (lo..=hi).step_by(step as usize) {
            days[(d % 7) as usize] = true;
        }
    }
    if days.iter().all(|d| *d) {
        return Ok("*".into());
    }
    let list: Vec<String> = (0..7)
        .filter(|d| days[*d])
        .map(|d| (d + 1).to_string())
        .collect();
    Ok(list.join(","))
}

/// The largest gap between consecutive firings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub largest: Duration,
    /// The firing that starts the largest gap, and the one that ends it.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Firings looked at.
    pub firings: u64,
}

/// Firings looked at, at most: a schedule firing every second is cut off after about 12 days,
/// whose gaps are all one second anyway.
const MAX_FIRINGS: u64 = 1_000_000;

impl CronSchedule {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The largest gap between consecutive firings from `start` over `span` (a year covers
    /// months of every length, leap days and weekday patterns). None if it fires less than twice.
    pub fn largest_gap(&self, start: DateTime<Utc>, span: Duration) -> Option<Gap> {
        let end = start + chrono::Duration::from_std(span).ok()?;
        let mut firings = self.inner.after(&start);
        let mut prev = firings.next()?;
        let mut best: Option<Gap> = None;
        let mut n = 1;
        for t in firings {
            if t > end || n >= MAX_FIRINGS {
                break;
            }
            n += 1;
            let gap = (t - prev).to_std().unwrap_or_default();
            if best.as_ref().is_none_or(|b| gap > b.largest) {
                best = Some(Gap {
                    largest: gap,
                    from: prev,
                    to: t,
                    firings: 0,
                });
            }
            prev = t;
        }
        best.map(|b| Gap { firings: n, ..b })
    }
}

/// When the next sweep of a daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextSweep {
    /// When to start it.
    pub at: DateTime<Utc>,
    /// The firing it stands for (the next one is looked for after it).
    pub firing: DateTime<Utc>,
    /// Firings that passed while the last sweep ran and are dropped: they all run as this one.
    pub dropped: u64,
}

impl CronSchedule {
    /// The sweep after the one of firing `last`, as of `now`: the next firing, or when the last
    /// sweep ran over one or more firings, now, once (a burst of catch-up sweeps would only
    /// re-read the same keys). None when the schedule never fires again.
    pub fn next_sweep(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Option<NextSweep> {
        let mut firings = self.inner.after(&last);
        let first = firings.next()?;
        if first > now {
            return Some(NextSweep {
                at: first,
                firing: first,
                dropped: 0,
            });
        }
        let (mut firing, mut dropped) = (first, 0);
        for t in firings.take(MAX_FIRINGS as usize) {
            if t > now {
                break;
            }
            firing = t;
            dropped += 1;
        }
        Some(NextSweep {
            at: now,
            firing,
            dropped,
        })
    }
}

/// Whether a sweep on a schedule with largest gap `gap`, each running up to `max_runtime`, saves
/// every key before it expires with `threshold`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is read at least `margin` before it expires.
    Safe { margin: Duration },
    /// A key whose TTL is just above the threshold at the sweep starting the gap expires before
    /// the next sweep reads it; a threshold of `smallest_safe` or more is safe.
    Unsafe {
        short_by: Duration,
        smallest_safe: Duration,
    },
}

pub fn verdict(gap: Duration, threshold: Duration, max_runtime: Duration) -> Verdict {
    let needed = gap + max_runtime;
    if needed < threshold {
        Verdict::Safe {
            margin: threshold - needed,
        }
    } else {
        // Strictly more than gap + runtime, rounded up to the next whole second.
        let smallest_safe = Duration::from_secs(needed.as_secs() + 1);
        Verdict::Unsafe {
            short_by: needed - threshold,
            smallest_safe,
        }
    }
}

/// What `sweeper check-schedule` reports: a schedule's largest gap and its verdict.
pub struct ScheduleCheck {
    pub schedule: String,
    pub gap: Gap,
    pub threshold: Duration,
    pub max_runtime: Duration,
    pub verdict: Verdict,
}

impl ScheduleCheck {
    pub fn new(
        s: &CronSchedule,
        gap: Gap,
        threshold: Duration,
        max_runtime: Duration,
    ) -> ScheduleCheck {
        let verdict = verdict(gap.largest, threshold, max_runtime);
        ScheduleCheck {
            schedule: s.text().to_string(),
            gap,
            threshold,
            max_runtime,
            verdict,
        }
    }

    pub fn is_safe(&self) -> bool {
        matches!(self.verdict, Verdict::Safe { .. })
    }

    pub fn to_json(&self) -> String {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut v = serde_json::json!({
            "schedule": self.schedule, "safe": self.is_safe(), "largest_gap_ms": ms(self.gap.largest),
            "gap_from": self.gap.from.to_rfc3339(), "gap_to": self.gap.to.to_rfc3339(),
            "threshold_ms": ms(self.threshold), "max_runtime_ms": ms(self.max_runtime),
        });
        match self.verdict {
            Verdict::Safe { margin } => v["margin_ms"] = ms(margin).into(),
            Verdict::Unsafe {
                short_by,
                smallest_safe,
            } => {
                v["short_by_ms"] = ms(short_by).into();
                v["smallest_safe_threshold_ms"] = ms(smallest_safe).into();
            }
        }
        v.to_string()
    }

    pub fn to_text(&self) -> String {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let at = |t: DateTime<Utc>, plus: Duration| {
            (t + chrono::Duration::from_std(plus).unwrap_or_default()).to_rfc3339()
        };
        let (s, g) = (&self.schedule, &self.gap);
        match self.verdict {
            Verdict::Safe { margin } => format!(
                "safe: `{s}` fires at most {} apart (e.g. {} to {}); a key just above the {} threshold at one sweep is read by the next within {} (gap + max runtime {}), {} before it expires\n",
                fmt(g.largest),
                g.from.to_rfc3339(),
                g.to.to_rfc3339(),
                fmt(self.threshold),
                fmt(g.largest + self.max_runtime),
                fmt(self.max_runtime),
                fmt(margin)
            ),
            Verdict::Unsafe { smallest_safe, .. } => format!(
                "UNSAFE: `{s}` fires {} apart from {} to {}: a key whose TTL is just above {} at the sweep of {} expires at {}, before the sweep of {} has read it (it may run until {}). Smallest safe --threshold: {}\n",
                fmt(g.largest),
                g.from.to_rfc3339(),
                g.to.to_rfc3339(),
                fmt(self.threshold),
                g.from.to_rfc3339(),
                at(g.from, self.threshold),
                g.to.to_rfc3339(),
                at(g.to, self.max_runtime),
                fmt(smallest_safe)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Datelike, TimeZone, Weekday};

    use super::*;

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
    }

    #[test]
    fn a_daemon_sweeps_on_the_next_firing_and_once_for_firings_it_ran_over() {
        let s: CronSchedule = "*/5 * * * *".parse().unwrap();
        let at = |m: u32, sec: u32| Utc.with_ymd_and_hms(2026, 1, 1, 0, m, sec).unwrap();
        // On time: the sweep of 00:00 ended at 00:01:30; the next is 00:05.
        let n = s.next_sweep(at(0, 0), at(1, 30)).unwrap();
        assert_eq!((n.at, n.firing, n.dropped), (at(5, 0), at(5, 0), 0));
        // Ran over one firing (ended 00:07): once, now, standing for 00:05.
        let n = s.next_sweep(at(0, 0), at(7, 0)).unwrap();
        assert_eq!((n.at, n.firing, n.dropped), (at(7, 0), at(5, 0), 0));
        // Ran over three (ended 00:17): still once, standing for 00:15; two dropped.
        let n = s.next_sweep(at(0, 0), at(17, 0)).unwrap();
        assert_eq!((n.at, n.firing, n.dropped), (at(17, 0), at(15, 0), 2));
        // The one after that catch-up sweep is the next regular firing.
        let n = s.next_sweep(n.firing, at(18, 0)).unwrap();
        assert_eq!(n.at, at(20, 0));
        // A firing exactly at `now` is due now.
        let n = s.next_sweep(at(0, 0), at(5, 0)).unwrap();
        assert_eq!((n.at, n.dropped), (at(5, 0), 0));
    }

    fn gap(expr: &str) -> Gap {
        expr.parse::<CronSchedule>()
            .unwrap()
            .largest_gap(start(), YEAR)
            .unwrap()
    }

    #[test]
    fn every_five_minutes_has_a_five_minute_gap() {
        let g = gap("*/5 * * * *");
        assert_eq!(g.largest, Duration::from_secs(300));
        assert!(g.firings > 100_000, "a year of firings: {}", g.firings);
    }

    #[test]
    fn irregular_schedules_find_their_largest_gap() {
        // At 0, 5, ..., 55 past the hour except between 2 and 6 in the morning.
        assert_eq!(
            gap("*/5 0-1,6-23 * * *").largest,
            Duration::from_secs(4 * 3600 + 300)
        );
        // Twice an hour, unevenly.
        assert_eq!(gap("0,10 * * * *").largest, Duration::from_secs(50 * 60));
        // Monthly: the longest month (31 days).
        assert_eq!(gap("@monthly").largest, Duration::from_secs(31 * 24 * 3600));
        // With seconds (over a day: a year of them is a million firings).
        let s: CronSchedule = "*/30 * * * * *".parse().unwrap();
        let day = s.largest_gap(start(), Duration::from_secs(86_400)).unwrap();
        assert_eq!(day.largest, Duration::from_secs(30));
    }

    #[test]
    fn weekdays_mean_what_crontab_means() {
        let s: CronSchedule = "0 9 * * 1".parse().unwrap();
        let first = s.inner.after(&start()).next().unwrap();
        assert_eq!(first.weekday(), Weekday::Mon, "1 is Monday");
        for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * sun"] {
            let s: CronSchedule = sunday.parse().unwrap();
            assert_eq!(
                s.inner.after(&start()).next().unwrap().weekday(),
                Weekday::Sun,
                "{sunday}"
            );
        }
        // Monday to Friday: the weekend is the largest gap (Friday 9:00 to Monday 9:00).
        assert_eq!(
            gap("0 9 * * 1-5").largest,
            Duration::from_secs(3 * 24 * 3600)
        );
        // Friday to Sunday, written across the 7.
        let s: CronSchedule = "0 9 * * 5-7".parse().unwrap();
        let days: Vec<Weekday> = s
            .inner
            .after(&start())
            .take(3)
            .map(|t| t.weekday())
            .collect();
        assert!(
            days.contains(&Weekday::Fri)
                && days.contains(&Weekday::Sat)
                && days.contains(&Weekday::Sun),
            "{days:?}"
        );
        assert_eq!(
            crate_weekdays("*/2").unwrap(),
            "1,3,5,7",
            "Sun, Tue, Thu, Sat"
        );
    }

    #[test]
    fn bad_schedules_are_refused_with_a_reason() {
        for bad in [
            "* * * *",
            "*/5 * * * * * * *",
            "0 9 * * 8",
            "0 9 1 * 1",
            "61 * * * *",
            "0 9 * * 5-2",
        ] {
            let e = bad.parse::<CronSchedule>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn the_verdict_compares_threshold_with_gap_plus_runtime() {
        let m = |x: u64| Duration::from_secs(60 * x);
        assert_eq!(verdict(m(5), m(10), m(2)), Verdict::Safe { margin: m(3) });
        assert_eq!(verdict(m(5), m(10), m(4)), Verdict::Safe { margin: m(1) });
        assert_eq!(
            verdict(m(5), m(10), m(5)),
            Verdict::Unsafe {
                short_by: Duration::ZERO,
                smallest_safe: m(10) + Duration::from_secs(1)
            }
        );
        assert_eq!(
            verdict(m(10), m(10), m(2)),
            Verdict::Unsafe {
                short_by: m(2),
                smallest_safe: m(12) + Duration::from_secs(1)
            }
        );
    }
}
