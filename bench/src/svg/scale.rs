//! Axis scales of the charts: linear with round ticks (1, 2 or 5 times a power of ten per
//! step), or logarithmic (ticks at 1, 2 and 5 of each decade) when the data spans a wide
//! range, so a 4 ms baseline and a 5 s outlier are both readable on one axis.

/// Above this ratio of the largest to the smallest positive value, a latency axis is
/// logarithmic.
pub const LOG_RATIO: f64 = 30.0;

/// A "nice" number at or above `value` (1, 2 or 5 times a power of ten).
pub fn nice_ceiling(value: f64) -> f64 {
    if !(value.is_finite() && value > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * magnitude).find(|v| *v >= value * (1.0 - 1e-9)).unwrap_or(10.0 * magnitude)
}

/// A "nice" number at or below `value`.
fn nice_floor(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    [5.0, 2.0, 1.0].iter().map(|m| m * magnitude).find(|v| *v <= value * (1.0 + 1e-9)).unwrap_or(magnitude)
}

/// Maps data values to a fraction (0 at the axis start, 1 at its end) and gives the ticks.
#[derive(Clone, Debug, PartialEq)]
pub enum Scale {
    /// From 0 to `max`, a tick every `step`.
    Linear { max: f64, step: f64 },
    /// From `min` to `max` (both positive), ticks at 1, 2 and 5 of each decade.
    Log { min: f64, max: f64 },
}

impl Scale {
    /// The scale that fits `values` (non-positive and non-finite ones are ignored):
    /// logarithmic when they span more than `log_ratio` (e.g. [`LOG_RATIO`]), else linear
    /// from zero with about `target_ticks` round steps.
    pub fn fit(values: impl IntoIterator<Item = f64>, target_ticks: usize, log_ratio: f64) -> Scale {
        let (mut low, mut high) = (f64::INFINITY, 0.0f64);
        for v in values.into_iter().filter(|v| v.is_finite() && *v > 0.0) {
            low = low.min(v);
            high = high.max(v);
        }
        if high <= 0.0 {
            return Scale::Linear { max: 1.0, step: 0.25 };
        }
        if high / low > log_ratio {
            return Scale::Log { min: nice_floor(low), max: nice_ceiling(high) };
        }
        Scale::linear(high, target_ticks)
    }

    /// A linear scale from zero to at least `high`, with about `target_ticks` round steps.
    pub fn linear(high: f64, target_ticks: usize) -> Scale {
        let step = nice_ceiling(high / target_ticks.max(1) as f64);
        let max = (high / step - 1e-9).ceil().max(1.0) * step;
        Scale::Linear { max, step }
    }

    /// Where `value` falls, from 0 to 1 (clamped).
    pub fn fraction(&self, value: f64) -> f64 {
        let f = match self {
            Scale::Linear { max, .. } => value / max,
            Scale::Log { min, max } => {
                if value <= 0.0 {
                    0.0
                } else {
                    (value / min).log10() / (max / min).log10()
                }
            }
        };
        f.clamp(0.0, 1.0)
    }

    /// The tick values, ascending.
    pub fn ticks(&self) -> Vec<f64> {
        match *self {
            Scale::Linear { max, step } => {
                let n = (max / step).round() as usize;
                (0..=n).map(|i| i as f64 * step).collect()
            }
            Scale::Log { min, max } => {
                let mut ticks = Vec::new();
                let mut decade = 10f64.powf(min.log10().floor());
                while decade <= max * (1.0 + 1e-9) {
                    for m in [1.0, 2.0, 5.0] {
                        let v = m * decade;
                        if v >= min * (1.0 - 1e-9) && v <= max * (1.0 + 1e-9) {
                            ticks.push(v);
                        }
                    }
                    decade *= 10.0;
                }
                ticks
            }
        }
    }

    pub fn is_log(&self) -> bool {
        matches!(self, Scale::Log { .. })
    }
}

/// A tick label: as few digits as the value needs.
pub fn format_value(value: f64) -> String {
    if value == 0.0 || value >= 100.0 || (value.fract() == 0.0 && value >= 1.0) {
        format!("{value:.0}")
    } else if value >= 1.0 {
        format!("{value:.1}")
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A duration in milliseconds as a person reads it: `850 µs`, `4.2 ms`, `5.3 s`.
pub fn format_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1e3)
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1_000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(1.3), 2.0);
        assert_eq!(nice_ceiling(3.0), 5.0);
        assert_eq!(nice_ceiling(5.1), 10.0);
        assert_eq!(nice_ceiling(12_000.0), 20_000.0);
    }

    #[test]
    fn narrow_data_gets_round_linear_ticks() {
        let scale = Scale::fit([1.0, 3.3, 2.2], 4, LOG_RATIO);
        assert_eq!(scale, Scale::Linear { max: 4.0, step: 1.0 });
        assert_eq!(scale.ticks(), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(scale.fraction(2.0), 0.5);
        assert_eq!(Scale::fit([2450.0], 4, LOG_RATIO).ticks(), vec![0.0, 1000.0, 2000.0, 3000.0]);
        assert_eq!(Scale::fit([], 4, LOG_RATIO), Scale::Linear { max: 1.0, step: 0.25 });
    }

    #[test]
    fn wide_data_gets_a_log_axis_with_1_2_5_ticks() {
        let scale = Scale::fit([4.0, 9.2, 5255.0], 4, LOG_RATIO);
        assert_eq!(scale, Scale::Log { min: 2.0, max: 10_000.0 });
        assert_eq!(scale.ticks(), vec![2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10_000.0]);
        assert!((scale.fraction(100.0) - (50f64).log10() / 5000f64.log10()).abs() < 1e-12);
        assert_eq!(scale.fraction(0.0), 0.0);
        assert_eq!(scale.fraction(1e9), 1.0);
    }

    #[test]
    fn labels_are_short() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.05), "0.05");
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(2.5), "2.5");
        assert_eq!(format_value(5000.0), "5000");
        assert_eq!(format_ms(0.85), "850 µs");
        assert_eq!(format_ms(212.3), "212 ms");
        assert_eq!(format_ms(5_250.0), "5.25 s");
    }
}
