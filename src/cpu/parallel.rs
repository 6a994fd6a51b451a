//! How finely the kernels' parallel loops split their work.

/// The least work (multiply-adds, or values moved) worth a task of its own: handing a
/// task to another thread, waking it and waiting for it costs microseconds, more than
/// the whole product takes in a small model's decode step.
const MIN_TASK_WORK: usize = 1 << 17;

/// Items per task, each item being `work` units, so that no task has less than
/// [`MIN_TASK_WORK`] (rayon's `with_min_len`: a loop smaller than that runs on the
/// calling thread and wakes no other). Items are computed alike however they are
/// grouped, so results do not depend on it.
pub(super) fn min_items(work: usize) -> usize {
    MIN_TASK_WORK.div_ceil(work.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_items_group_and_large_ones_stand_alone() {
        assert_eq!(min_items(1), MIN_TASK_WORK);
        assert_eq!(min_items(0), MIN_TASK_WORK);
        assert_eq!(min_items(MIN_TASK_WORK / 4), 4);
        assert_eq!(min_items(MIN_TASK_WORK), 1);
        assert_eq!(min_items(10 * MIN_TASK_WORK), 1);
    }
}
