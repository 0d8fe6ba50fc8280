//! [`Summary`]: median, min, max and p99 of a set of samples.

use serde::Serialize;

/// Figures of one measured quantity, all in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub n: usize,
    /// Median (mean of the two middle samples for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// 99th percentile (nearest rank); only for large sample sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
}

impl Summary {
    /// Summarizes `samples` (ms). `None` when there are none or one is not finite.
    pub fn of(samples: &[f64], with_p99: bool) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Summary {
            n,
            median,
            min: v[0],
            max: v[n - 1],
            p99: with_p99.then(|| percentile(&v, 99.0)),
        })
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Puts the summary of `samples` into `figures` as `name` (nothing when
/// there are none).
pub fn put_into(
    figures: &mut std::collections::BTreeMap<String, Summary>,
    name: &str,
    samples: &[f64],
    p99: bool,
) {
    if let Some(s) = Summary::of(samples, p99) {
        figures.insert(name.to_owned(), s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_even_and_p99() {
        let s = Summary::of(&[3.0, 1.0, 2.0], false).unwrap();
        assert_eq!((s.median, s.min, s.max, s.p99), (2.0, 1.0, 3.0, None));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0], true).unwrap();
        assert_eq!(s.median, 2.5);
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(Summary::of(&v, true).unwrap().p99, Some(198.0));
    }

    #[test]
    fn empty_or_nan_gives_none() {
        assert!(Summary::of(&[], false).is_none());
        assert!(Summary::of(&[1.0, f64::NAN], false).is_none());
    }
}
