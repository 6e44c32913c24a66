//! The few statistics the report takes: rounding, percentiles, the median round.

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// `x` rounded to `digits` decimals, or nothing (`null` in the report) when it is not finite.
pub fn finite(x: f64, digits: i32) -> Option<f64> {
    x.is_finite().then(|| round(x, digits))
}

/// The value at `p` (0 to 1) of sorted values, the nearest rank; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The index of the median of `values` (the lower of the two middle ones for an even count).
pub fn median_index(values: &[f64]) -> usize {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    order[(order.len() - 1) / 2]
}
