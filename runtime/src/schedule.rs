//! Learning-rate schedules: a factor that multiplies the base learning rate
//! at each optimiser step (steps are counted from 0).

use std::f64::consts::PI;
use std::fmt;

/// A learning-rate schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Factor 1 at every step.
    Constant,
    /// `gamma^(step / every)` (integer division): multiply by `gamma` every
    /// `every` steps.
    Step { every: usize, gamma: f64 },
    /// Half-cosine from 1 at step 0 down to `min_factor` at step `total`,
    /// then constant `min_factor`.
    Cosine { total: usize, min_factor: f64 },
    /// Linear warmup `(step + 1) / steps` for the first `steps` steps (from
    /// `1/steps` up to 1), then `then` with its step count restarted at 0.
    Warmup { steps: usize, then: Box<Schedule> },
}

/// Invalid schedule parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleError {
    /// `Step { every: 0, .. }`.
    ZeroStepInterval,
    /// A `gamma` or `min_factor` that is negative or not finite.
    InvalidFactor { name: &'static str, value: f64 },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::ZeroStepInterval => {
                write!(f, "step schedule: `every` must be at least 1")
            }
            ScheduleError::InvalidFactor { name, value } => {
                write!(f, "schedule: `{name}` must be finite and >= 0, got {value}")
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

impl Schedule {
    /// Checks the parameters (recursively). [`Schedule::factor`] never
    /// panics even on an invalid schedule, but the result may be meaningless.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        let check = |name, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(ScheduleError::InvalidFactor { name, value })
            }
        };
        match self {
            Schedule::Constant => Ok(()),
            Schedule::Step { every, gamma } => {
                if *every == 0 {
                    return Err(ScheduleError::ZeroStepInterval);
                }
                check("gamma", *gamma)
            }
            Schedule::Cosine { min_factor, .. } => check("min_factor", *min_factor),
            Schedule::Warmup { then, .. } => then.validate(),
        }
    }

    /// The factor multiplying the base learning rate at `step` (0-based).
    pub fn factor(&self, step: usize) -> f64 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Step { every, gamma } => {
                if *every == 0 {
                    return 1.0;
                }
                let k = (step / every).min(i32::MAX as usize) as i32;
                gamma.powi(k)
            }
            Schedule::Cosine { total, min_factor } => {
                if step >= *total {
                    return *min_factor;
                }
                let t = step as f64 / *total as f64;
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (PI * t).cos())
            }
            Schedule::Warmup { steps, then } => {
                if step < *steps {
                    (step + 1) as f64 / *steps as f64
                } else {
                    then.factor(step - steps)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_and_constant() {
        let s = Schedule::Step { every: 10, gamma: 0.5 };
        assert_eq!(s.factor(0), 1.0);
        assert_eq!(s.factor(9), 1.0);
        assert_eq!(s.factor(10), 0.5);
        assert_eq!(s.factor(25), 0.25);
        assert_eq!(Schedule::Constant.factor(1_000_000), 1.0);
    }

    #[test]
    fn cosine_endpoints_and_midpoint() {
        let s = Schedule::Cosine { total: 100, min_factor: 0.1 };
        assert_eq!(s.factor(0), 1.0);
        assert!((s.factor(50) - 0.55).abs() < 1e-12);
        assert_eq!(s.factor(100), 0.1);
        assert_eq!(s.factor(1000), 0.1);
        // Quarter point: 0.1 + 0.9 * 0.5 * (1 + cos(pi/4)).
        let q = 0.1 + 0.45 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
        assert!((s.factor(25) - q).abs() < 1e-12);
    }

    #[test]
    fn warmup_then_cosine() {
        let s = Schedule::Warmup { steps: 4, then: Box::new(Schedule::Cosine { total: 10, min_factor: 0.0 }) };
        assert_eq!(s.factor(0), 0.25);
        assert_eq!(s.factor(1), 0.5);
        assert_eq!(s.factor(2), 0.75);
        assert_eq!(s.factor(3), 1.0);
        assert_eq!(s.factor(4), 1.0); // cosine step 0
        assert!((s.factor(9) - 0.5).abs() < 1e-12); // cosine step 5 of 10
        assert_eq!(s.factor(14), 0.0);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn validation() {
        let bad = Schedule::Warmup { steps: 2, then: Box::new(Schedule::Step { every: 0, gamma: 0.5 }) };
        assert_eq!(bad.validate(), Err(ScheduleError::ZeroStepInterval));
        assert_eq!(bad.factor(5), 1.0);
        let bad = Schedule::Cosine { total: 3, min_factor: -1.0 };
        assert!(bad.validate().is_err());
    }
}
