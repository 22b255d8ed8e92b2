//! The pause before reconnecting to an agent (`job watch`, `job start`, `diag --follow`,
//! `top`): exponential from `BASE`, capped at `CAP`, with "equal jitter" so that many
//! controllers cut off by the same agent restart do not all knock again in the same
//! instant. The arithmetic is a pure function of the attempt and a jitter fraction, so
//! that its bounds are tested; it must never return more than `CAP` or less than half the
//! exponential step.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// First pause before reconnecting; the step doubles each attempt up to the cap.
pub const BASE: Duration = Duration::from_millis(250);
/// The longest pause, whatever the attempt.
pub const CAP: Duration = Duration::from_secs(5);

/// The exponential step for `attempt` (1-based; 0 counts as 1): `BASE * 2^(attempt-1)`,
/// never above `CAP`.
pub fn step(attempt: u32) -> Duration {
    let factor = 1u32.checked_shl(attempt.saturating_sub(1)).unwrap_or(u32::MAX);
    BASE.saturating_mul(factor).min(CAP)
}

/// Equal jitter: half the step for certain, plus `jitter` (a fraction in [0, 1], clamped)
/// of the other half. The result lies in [step/2, step], so never above `CAP`, and a
/// reconnect never comes sooner than half the plain exponential pause.
pub fn delay(attempt: u32, jitter: f64) -> Duration {
    let step = step(attempt);
    let half = step / 2;
    // NaN, negatives (and -0.0, which `Duration::mul_f64` would refuse) count as 0.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    let jitter = if !(jitter > 0.0) { 0.0 } else { jitter.min(1.0) };
    // `step - half` rather than `half` again, so that an odd number of nanoseconds still
    // reaches the full step at jitter 1.
    half + (step - half).mul_f64(jitter)
}

/// The pause before reconnect attempt `attempt`, with fresh jitter.
pub fn retry_delay(attempt: u32) -> Duration {
    delay(attempt, random_fraction())
}

/// A fraction in [0, 1) that differs between calls and processes. The standard library's
/// per-instance random hash keys are enough for spreading reconnects; no cryptographic
/// quality is needed and no extra dependency is pulled in for it.
fn random_fraction() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    // The top 53 bits fill an f64 mantissa exactly.
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_step_doubles_from_the_base_then_stops_at_the_cap() {
        assert_eq!(step(0), BASE);
        assert_eq!(step(1), Duration::from_millis(250));
        assert_eq!(step(2), Duration::from_millis(500));
        assert_eq!(step(4), Duration::from_secs(2));
        assert_eq!(step(6), CAP);
        assert_eq!(step(40), CAP);
        assert_eq!(step(u32::MAX), CAP);
    }

    #[test]
    fn the_jittered_delay_spans_exactly_half_the_step_to_the_step() {
        for attempt in [0, 1, 2, 3, 5, 6, 7, 32, 33, u32::MAX] {
            let s = step(attempt);
            assert_eq!(delay(attempt, 0.0), s / 2, "attempt {attempt}: the floor is half the step");
            assert_eq!(delay(attempt, 1.0), s, "attempt {attempt}: the ceiling is the step itself");
            assert_eq!(delay(attempt, 0.5), s / 2 + (s - s / 2) / 2, "attempt {attempt}: the middle");
        }
    }

    #[test]
    fn no_jitter_value_leaves_the_range_or_passes_the_cap() {
        for attempt in 0..70 {
            let s = step(attempt);
            for j in [-1.0, -0.0, 1e-9, 0.25, 0.999_999, 1.0, 1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
                let d = delay(attempt, j);
                assert!(d >= s / 2 && d <= s, "attempt {attempt} jitter {j}: {d:?} outside [{:?}, {s:?}]", s / 2);
                assert!(d <= CAP, "attempt {attempt} jitter {j}: {d:?} above the cap");
            }
        }
    }

    #[test]
    fn the_random_fraction_stays_in_the_unit_interval_and_varies() {
        let draws: Vec<f64> = (0..200).map(|_| random_fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)), "{draws:?}");
        let distinct = draws.iter().map(|f| f.to_bits()).collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 150, "the jitter must vary between calls: {distinct} distinct of 200");
        for _ in 0..200 {
            let d = retry_delay(3);
            assert!(d >= step(3) / 2 && d <= step(3), "{d:?}");
        }
    }
}
