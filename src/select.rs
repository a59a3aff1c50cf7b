//! Which keys are due, from their TTL alone. Pure: no Redis here.

use std::time::Duration;

/// What a key's PTTL says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// TTL left is under the threshold: the conversation is ending, save it now.
    Due { ttl_ms: u64 },
    /// Still active: the user may talk again, the next sweep will look again.
    NotDue,
    /// The key has no TTL (PTTL -1): it never expires, so it is never due.
    NoTtl,
    /// The key was gone when its TTL was read (PTTL -2).
    Gone,
}

/// Whether a key without TTL is due under `--save-idle`: Redis says (OBJECT IDLETIME, seconds)
/// nobody touched it for `save_idle` or longer. None (no idle time: an LFU maxmemory-policy, or
/// the key gone) is never due.
pub fn idle_due(idle_secs: Option<u64>, save_idle: Duration) -> bool {
    idle_secs.is_some_and(|s| u128::from(s) * 1000 >= save_idle.as_millis())
}

/// Classifies a PTTL reply. A key is due when its PTTL is in `[0, threshold)`.
pub fn classify(pttl: i64, threshold: Duration) -> Ttl {
    match pttl {
        -1 => Ttl::NoTtl,
        p if p < 0 => Ttl::Gone,
        p if (p as u128) < threshold.as_millis() => Ttl::Due { ttl_ms: p as u64 },
        _ => Ttl::NotDue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_MIN: Duration = Duration::from_secs(600);

    #[test]
    fn due_is_the_half_open_range_from_zero_to_threshold() {
        assert_eq!(classify(0, TEN_MIN), Ttl::Due { ttl_ms: 0 });
        assert_eq!(classify(1, TEN_MIN), Ttl::Due { ttl_ms: 1 });
        assert_eq!(classify(599_999, TEN_MIN), Ttl::Due { ttl_ms: 599_999 });
        assert_eq!(classify(600_000, TEN_MIN), Ttl::NotDue);
        assert_eq!(classify(3_600_000, TEN_MIN), Ttl::NotDue);
    }

    #[test]
    fn no_ttl_is_never_due_and_missing_keys_are_gone() {
        assert_eq!(classify(-1, TEN_MIN), Ttl::NoTtl);
        assert!(idle_due(Some(600), TEN_MIN));
        assert!(!idle_due(Some(599), TEN_MIN));
        assert!(
            !idle_due(None, Duration::from_secs(1)),
            "no idle time (LFU): never due"
        );
        assert_eq!(classify(-2, TEN_MIN), Ttl::Gone);
        assert_eq!(classify(-1, Duration::from_secs(u64::MAX / 2)), Ttl::NoTtl);
    }
}
