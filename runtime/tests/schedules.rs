//! Schedules as written in a `train` block (units: epochs) become per-step
//! learning-rate factors.

use nnc_compiler::elaborate::ScheduleSpec;
use nnc_runtime::train::schedule_of;

#[test]
fn epochs_become_steps() {
    // 10 steps per epoch, 5 epochs.
    let step = schedule_of(&ScheduleSpec::Step { every: 2, gamma: 0.5 }, 10, 50);
    assert_eq!(step.factor(0), 1.0);
    assert_eq!(step.factor(19), 1.0);
    assert_eq!(step.factor(20), 0.5);
    assert_eq!(step.factor(40), 0.25);

    let cosine = schedule_of(&ScheduleSpec::Cosine { min_factor: 0.0 }, 10, 50);
    assert_eq!(cosine.factor(0), 1.0);
    assert!((cosine.factor(25) - 0.5).abs() < 1e-12);
    assert!(cosine.factor(50).abs() < 1e-12);

    // One epoch of linear warmup (1/10, 2/10, …), then cosine over the remaining 40 steps.
    let warm = schedule_of(&ScheduleSpec::Warmup { epochs: 1.0, then: Box::new(ScheduleSpec::Cosine { min_factor: 0.0 }) }, 10, 50);
    assert!((warm.factor(0) - 0.1).abs() < 1e-12);
    assert!((warm.factor(9) - 1.0).abs() < 1e-12);
    assert!((warm.factor(10) - 1.0).abs() < 1e-12);
    assert!((warm.factor(30) - 0.5).abs() < 1e-12);
}
