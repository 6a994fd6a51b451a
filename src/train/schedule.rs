//! Learning-rate schedules as transformers' `get_*_schedule_with_warmup` define them:
//! a linear warmup from 0, then constant, linear decay to 0, or a half cosine to 0.

/// The shape of the learning rate over training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// The peak rate after warmup.
    #[default]
    Constant,
    /// Down linearly to 0 at the last step.
    Linear,
    /// Down along a half cosine to 0 at the last step.
    Cosine,
}

impl Schedule {
    /// The rate of (0-based) step `step` of `total`, `warmup` of them warming up, for a
    /// peak rate `peak`. Step 0 of a warmup has rate 0, as transformers' schedules do.
    ///
    /// ```
    /// use paligemma::train::Schedule;
    /// assert_eq!(Schedule::Cosine.rate(1e-3, 0, 10, 2), 0.0);
    /// assert_eq!(Schedule::Cosine.rate(1e-3, 2, 10, 2), 1e-3);
    /// assert!(Schedule::Cosine.rate(1e-3, 9, 10, 2) < 1e-4);
    /// assert_eq!(Schedule::Constant.rate(1e-3, 7, 10, 2), 1e-3);
    /// ```
    pub fn rate(self, peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
        if step < warmup {
            return peak * step as f64 / warmup.max(1) as f64;
        }
        let progress = (step - warmup) as f64 / total.saturating_sub(warmup).max(1) as f64;
        match self {
            Schedule::Constant => peak,
            Schedule::Linear => peak * (1.0 - progress).max(0.0),
            Schedule::Cosine => {
                peak * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()).max(0.0)
            }
        }
    }
}
