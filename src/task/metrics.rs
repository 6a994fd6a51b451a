//! Task metrics for evaluating a fine-tune: box IoU with recall at IoU 0.5 for
//! detection, mask IoU for segmentation, exact match for short answers.

use super::objects::{BoundingBox, Detection};
use crate::segmentation::BinaryMask;

/// Intersection over union of two boxes (0 when either is empty).
///
/// ```
/// use paligemma::task::{BoundingBox, box_iou};
/// let a = BoundingBox { x_min: 0.0, y_min: 0.0, x_max: 10.0, y_max: 10.0 };
/// let b = BoundingBox { x_min: 5.0, y_min: 0.0, x_max: 15.0, y_max: 10.0 };
/// assert!((box_iou(&a, &b) - 50.0 / 150.0).abs() < 1e-12);
/// ```
pub fn box_iou(a: &BoundingBox, b: &BoundingBox) -> f64 {
    let w = (a.x_max.min(b.x_max) - a.x_min.max(b.x_min)).max(0.0);
    let h = (a.y_max.min(b.y_max) - a.y_min.max(b.y_min)).max(0.0);
    let inter = w * h;
    let union =
        a.width().max(0.0) * a.height().max(0.0) + b.width().max(0.0) * b.height().max(0.0) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Intersection over union of two masks of the same size (0 when both are empty or
/// the sizes differ).
pub fn mask_iou(a: &BinaryMask, b: &BinaryMask) -> f64 {
    if (a.width, a.height) != (b.width, b.height) {
        return 0.0;
    }
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.data.iter().zip(&b.data) {
        inter += usize::from(x && y);
        union += usize::from(x || y);
    }
    if union > 0 {
        inter as f64 / union as f64
    } else {
        0.0
    }
}

/// How predicted boxes match target boxes of one image; `+` sums images.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DetectionMatch {
    /// Target objects.
    pub targets: usize,
    /// Predicted objects.
    pub predictions: usize,
    /// Targets matched by a prediction of the same label with IoU at least 0.5.
    pub matched: usize,
    /// Sum of the IoUs of the matched pairs.
    pub iou_sum: f64,
}

impl DetectionMatch {
    /// Greedy one-to-one matching, highest IoU first, labels compared exactly.
    ///
    /// ```
    /// use paligemma::task::{DetectionMatch, parse_detections};
    /// let target = parse_detections("<loc0100><loc0100><loc0500><loc0500> cat", 100, 100).objects;
    /// let pred = parse_detections("<loc0110><loc0100><loc0500><loc0500> cat ; <loc0600><loc0600><loc0700><loc0700> cat", 100, 100).objects;
    /// let m = DetectionMatch::of(&pred, &target);
    /// assert_eq!((m.matched, m.predictions, m.targets), (1, 2, 1));
    /// assert_eq!(m.spurious(), 1);
    /// ```
    pub fn of(predictions: &[Detection], targets: &[Detection]) -> Self {
        let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
        for (i, p) in predictions.iter().enumerate() {
            for (j, t) in targets.iter().enumerate() {
                let iou = box_iou(&p.bbox, &t.bbox);
                if p.label == t.label && iou >= 0.5 {
                    pairs.push((iou, i, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut used_p, mut used_t) = (vec![false; predictions.len()], vec![false; targets.len()]);
        let mut out = DetectionMatch {
            targets: targets.len(),
            predictions: predictions.len(),
            ..Default::default()
        };
        for (iou, i, j) in pairs {
            if !used_p[i] && !used_t[j] {
                used_p[i] = true;
                used_t[j] = true;
                out.matched += 1;
                out.iou_sum += iou;
            }
        }
        out
    }

    /// Predictions that matched no target.
    pub fn spurious(&self) -> usize {
        self.predictions - self.matched
    }

    /// Matched targets over all targets (1 when there are none).
    pub fn recall(&self) -> f64 {
        if self.targets == 0 {
            1.0
        } else {
            self.matched as f64 / self.targets as f64
        }
    }

    /// Mean IoU of the matched pairs (0 when none matched).
    pub fn mean_iou(&self) -> f64 {
        if self.matched == 0 {
            0.0
        } else {
            self.iou_sum / self.matched as f64
        }
    }
}

impl std::ops::Add for DetectionMatch {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        DetectionMatch {
            targets: self.targets + other.targets,
            predictions: self.predictions + other.predictions,
            matched: self.matched + other.matched,
            iou_sum: self.iou_sum + other.iou_sum,
        }
    }
}

/// Whether an answer equals the target after trimming and lower-casing (VQA-style
/// exact match for short answers).
pub fn exact_match(prediction: &str, target: &str) -> bool {
    prediction.trim().to_lowercase() == target.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_iou_and_exact_match() {
        let mask = |bits: &[bool]| BinaryMask {
            width: 2,
            height: 2,
            data: bits.to_vec(),
        };
        let a = mask(&[true, true, false, false]);
        let b = mask(&[true, false, true, false]);
        assert!((mask_iou(&a, &b) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(mask_iou(&a, &a), 1.0);
        assert_eq!(mask_iou(&mask(&[false; 4]), &mask(&[false; 4])), 0.0);
        assert!(exact_match(" Two ", "two") && !exact_match("2", "two"));
    }
}
