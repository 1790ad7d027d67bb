//! Repetitions: a figure measured several times in one run is reported as its spread
//! (min / median / max, and every sample), and two sides measured in the same
//! repetitions are compared rep by rep.
//!
//! Why rep by rep: the box is shared (broker, ClickHouse, other work), so the load
//! drifts during a run. The CPU phase alternates the two sides of each comparison
//! inside every repetition, so the ratio of one repetition compares two measurements
//! taken seconds apart under the same conditions; the spread of those ratios says how
//! much the box moved (docs/bench.md "CPU per event, side by side").

use serde::Serialize;

/// min / median / max of a figure's samples, and the samples in measurement order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest sample.
    pub min: f64,
    /// Median (the mean of the middle two for an even count).
    pub median: f64,
    /// Largest sample.
    pub max: f64,
    /// Every sample, one per repetition, in measurement order.
    pub samples: Vec<f64>,
}

impl Spread {
    /// The spread of `samples`; `None` when there are none or one is not finite (a
    /// spread over a failed measurement would hide the failure).
    pub fn of(samples: &[f64]) -> Option<Self> {
        if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[mid]
        } else {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        };
        Some(Self {
            min: sorted[0],
            median,
            max: sorted[sorted.len() - 1],
            samples: samples.to_vec(),
        })
    }
}

/// `ours[i] / theirs[i]` for each repetition `i`: the ratio of two sides measured in the
/// same repetition. `None` when the lengths differ or a denominator is not positive
/// (a baseline that measured no CPU cannot be a ratio's base).
pub fn paired_ratios(ours: &[f64], theirs: &[f64]) -> Option<Vec<f64>> {
    if ours.len() != theirs.len() || theirs.iter().any(|t| t.is_nan() || *t <= 0.0) {
        return None;
    }
    Some(ours.iter().zip(theirs).map(|(o, t)| o / t).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts_keeps_the_samples_in_order() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        assert_eq!(s.samples, vec![3.0, 1.0, 2.0]);
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        let s = Spread::of(&[0.7]).unwrap();
        assert_eq!((s.min, s.median, s.max), (0.7, 0.7, 0.7));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
        assert!(Spread::of(&[1.0, f64::INFINITY]).is_none());
    }

    #[test]
    fn ratios_pair_repetitions_and_their_median_is_not_the_ratio_of_medians() {
        // Rep by rep: 0.9/0.3 = 3, 0.5/0.5 = 1, 0.8/0.4 = 2.
        let ours = [0.9, 0.5, 0.8];
        let theirs = [0.3, 0.5, 0.4];
        let r = paired_ratios(&ours, &theirs).unwrap();
        assert_eq!(r, vec![3.0, 1.0, 2.0]);
        let s = Spread::of(&r).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        // The ratio of the medians (0.8 / 0.4) happens to agree here; with a drifting
        // box it would not, which is why reps are paired:
        let r = paired_ratios(&[1.0, 2.0, 4.0], &[1.0, 4.0, 1.0]).unwrap();
        assert_eq!(Spread::of(&r).unwrap().median, 1.0);
        assert_eq!(
            Spread::of(&[1.0, 2.0, 4.0]).unwrap().median
                / Spread::of(&[1.0, 4.0, 1.0]).unwrap().median,
            2.0
        );
        // Unequal lengths or a baseline without CPU: no ratio.
        assert!(paired_ratios(&[1.0], &[1.0, 2.0]).is_none());
        assert!(paired_ratios(&[1.0, 2.0], &[1.0, 0.0]).is_none());
        assert!(paired_ratios(&[1.0], &[f64::NAN]).is_none());
    }
}
