//! How well a model knows the demo world: every question of [`questions_for`] on
//! scenes it was never trained on, scored against the scene's ground truth.

use burn::tensor::backend::Backend;
use image::DynamicImage;

use super::questions::{Query, Question};
use super::scene::{SCENE_SIZE, Scene, Shape};
use crate::error::Result;
use crate::generate::GenerateOptions;
use crate::model::Model;
use crate::task::{
    Detection, DetectionMatch, exact_match, loc_value, mask_iou, parse_detections,
    segmentations_from_text,
};

/// Scenes below this seed are never drawn for training (see
/// [`training_example`](super::training_example)); evaluations use them.
pub const HELD_OUT_SEEDS: u64 = 1 << 32;

/// Scores over a set of scenes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Scenes evaluated.
    pub scenes: usize,
    /// Detection prompts naming a shape only (`detect circle`, `detect circle ; square`).
    pub detection: DetectionMatch,
    /// Detection prompts naming a colour and a shape (`detect red circle`).
    pub colored_detection: DetectionMatch,
    /// Caption prompts answered exactly, and asked.
    pub captions: (usize, usize),
    /// Counting questions answered exactly, and asked.
    pub counts: (usize, usize),
    /// Colour questions answered exactly, and asked.
    pub colors: (usize, usize),
    /// Segmentation prompts (`segment circle`): the boxes, matched as for detection.
    pub segmentation: DetectionMatch,
    /// Sum over the true objects of segmentation prompts of the best mask IoU of a
    /// predicted object with the same label (0 when none), and their number.
    pub mask_iou: (f64, usize),
}

impl Report {
    /// Share of `(right, asked)` (1 when nothing was asked).
    pub fn rate((right, asked): (usize, usize)) -> f64 {
        if asked == 0 {
            1.0
        } else {
            right as f64 / asked as f64
        }
    }

    /// Mean mask IoU of the true objects of segmentation prompts (1 when none).
    pub fn mean_mask_iou(&self) -> f64 {
        match self.mask_iou {
            (_, 0) => 1.0,
            (sum, n) => sum / n as f64,
        }
    }

    /// Spurious predictions over all predictions of a detection score.
    pub fn spurious_rate(m: &DetectionMatch) -> f64 {
        if m.predictions == 0 {
            0.0
        } else {
            m.spurious() as f64 / m.predictions as f64
        }
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let det = |m: &DetectionMatch| {
            format!(
                "recall@0.5 {:.3}  mean IoU {:.3}  spurious {:.3}  ({} targets)",
                m.recall(),
                m.mean_iou(),
                Report::spurious_rate(m),
                m.targets
            )
        };
        writeln!(f, "scenes {}", self.scenes)?;
        writeln!(f, "detect shape        {}", det(&self.detection))?;
        writeln!(f, "detect colour shape {}", det(&self.colored_detection))?;
        writeln!(f, "caption exact       {:.3}", Report::rate(self.captions))?;
        writeln!(f, "count exact         {:.3}", Report::rate(self.counts))?;
        writeln!(f, "colour exact        {:.3}", Report::rate(self.colors))?;
        writeln!(f, "segment boxes       {}", det(&self.segmentation))?;
        write!(
            f,
            "segment mask IoU    {:.3}  ({} objects)",
            self.mean_mask_iou(),
            self.mask_iou.1
        )
    }
}

/// The questions an evaluation asks about `scene`: the caption, every count, the
/// colour of each shape that occurs once, a detection per shape (absent ones included),
/// per object by colour and shape, and of two shapes at once; with `segmentation`, a
/// segmentation per shape the scene has.
pub fn questions_for(scene: &Scene, segmentation: bool) -> Vec<Question> {
    let mut out = vec![Question::Caption, Question::CountAll];
    out.extend(Shape::ALL.map(Question::Count));
    out.extend(
        Shape::ALL
            .map(Question::ColorOf)
            .into_iter()
            .filter(|q| q.answer(scene).is_some()),
    );
    let query = |shape, color| Query { shape, color };
    out.extend(Shape::ALL.map(|s| Question::Detect(vec![query(s, None)])));
    for o in &scene.objects {
        let q = Question::Detect(vec![query(o.shape, Some(o.color))]);
        if !out.contains(&q) {
            out.push(q);
        }
    }
    if let [a, b, ..] = &scene.objects[..]
        && a.shape != b.shape
    {
        out.push(Question::Detect(vec![
            query(a.shape, None),
            query(b.shape, None),
        ]));
    }
    if segmentation {
        for s in Shape::ALL {
            if scene.objects.iter().any(|o| o.shape == s) {
                out.push(Question::Segment(vec![query(s, None)]));
            }
        }
    }
    out
}

/// Ask every question of [`questions_for`] about the scenes of `seeds` (greedy
/// decoding) and score the answers.
pub fn evaluate<B: Backend>(
    model: &Model<B>,
    seeds: impl IntoIterator<Item = u64>,
) -> Result<Report> {
    let options = GenerateOptions::default().max_new_tokens(48);
    let mut report = Report::default();
    for seed in seeds {
        let scene = Scene::generate(seed);
        let image = DynamicImage::ImageRgb8(scene.render());
        let decoder = model.mask_decoder();
        let questions = questions_for(&scene, decoder.is_some());
        let prompts: Vec<String> = questions.iter().map(Question::prompt).collect();
        let inputs: Vec<(&DynamicImage, &str)> =
            prompts.iter().map(|p| (&image, p.as_str())).collect();
        let answers = model.generate_batch(&inputs, &options)?;
        for (q, got) in questions.iter().zip(&answers) {
            if let (Question::Segment(_), Some(decoder)) = (q, decoder) {
                let (predicted, _) =
                    segmentations_from_text(&got.text, SCENE_SIZE, SCENE_SIZE, decoder)?;
                let boxes: Vec<Detection> = predicted
                    .iter()
                    .map(|p| Detection {
                        label: p.label.clone(),
                        bbox: p.bbox,
                        loc: p.loc,
                        seg_codes: Some(p.codes),
                    })
                    .collect();
                let targets = targets(q, &scene);
                report.segmentation = report.segmentation + DetectionMatch::of(&boxes, &targets);
                for (i, o) in scene.objects.iter().enumerate() {
                    let Some(label) = q.query_for(o).map(Query::label) else {
                        continue;
                    };
                    let Some(truth) = scene.mask(i) else { continue };
                    let best = predicted
                        .iter()
                        .filter(|p| p.label == label)
                        .map(|p| mask_iou(&p.mask, &truth))
                        .fold(0.0, f64::max);
                    report.mask_iou.0 += best;
                    report.mask_iou.1 += 1;
                }
                continue;
            }
            let Some(truth) = q.answer(&scene) else {
                continue;
            };
            let right = usize::from(exact_match(&got.text, &truth));
            match q {
                Question::Caption => add(&mut report.captions, right),
                Question::CountAll | Question::Count(_) => add(&mut report.counts, right),
                Question::ColorOf(_) => add(&mut report.colors, right),
                Question::Segment(_) => {}
                Question::Detect(queries) => {
                    let predicted = parse_detections(&got.text, SCENE_SIZE, SCENE_SIZE).objects;
                    let targets = targets(q, &scene);
                    let m = DetectionMatch::of(&predicted, &targets);
                    if queries.iter().any(|q| q.color.is_some()) {
                        report.colored_detection = report.colored_detection + m;
                    } else {
                        report.detection = report.detection + m;
                    }
                }
            }
        }
        report.scenes += 1;
    }
    Ok(report)
}

fn add(score: &mut (usize, usize), right: usize) {
    score.0 += right;
    score.1 += 1;
}

/// The true objects a detection question should find, as detections.
fn targets(q: &Question, scene: &Scene) -> Vec<Detection> {
    q.expected_objects(scene)
        .into_iter()
        .map(|(label, o)| Detection {
            label,
            bbox: o.bbox,
            loc: [
                loc_value(o.bbox.y_min, SCENE_SIZE),
                loc_value(o.bbox.x_min, SCENE_SIZE),
                loc_value(o.bbox.y_max, SCENE_SIZE),
                loc_value(o.bbox.x_max, SCENE_SIZE),
            ],
            seg_codes: None,
        })
        .collect()
}
