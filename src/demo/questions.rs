//! What the demo model is asked about a scene, and the one right answer: the prompts
//! and targets it is trained on, and the ground truth it is evaluated against.

use super::scene::{Color, Object, Rng, SCENE_SIZE, Scene, Shape};
use crate::mask_encoder::MaskEncoder;
use crate::task::detection_suffix;

/// A detection query: a shape, optionally qualified by a colour (`circle`, `red circle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Query {
    /// The shape asked for.
    pub shape: Shape,
    /// The colour asked for, if any.
    pub color: Option<Color>,
}

impl Query {
    /// The query as a prompt and an answer label write it.
    pub fn label(&self) -> String {
        match self.color {
            Some(c) => format!("{} {}", c.name(), self.shape.name()),
            None => self.shape.name().to_string(),
        }
    }

    /// Parse `circle` or `red circle`.
    pub fn parse(text: &str) -> Option<Query> {
        let words: Vec<&str> = text.split_whitespace().collect();
        match words[..] {
            [shape] => Some(Query {
                shape: Shape::from_name(shape)?,
                color: None,
            }),
            [color, shape] => Some(Query {
                shape: Shape::from_name(shape)?,
                color: Some(Color::from_name(color)?),
            }),
            _ => None,
        }
    }

    /// Whether the object answers the query.
    pub fn matches(&self, o: &Object) -> bool {
        o.shape == self.shape && self.color.is_none_or(|c| c == o.color)
    }

    /// Whether no object can answer both queries (so a joint answer is unambiguous).
    fn disjoint(&self, other: &Query) -> bool {
        self.shape != other.shape
            || matches!((self.color, other.color), (Some(a), Some(b)) if a != b)
    }
}

/// A question about a scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// `caption en`: the shapes left to right.
    Caption,
    /// `answer en how many shapes are there?`
    CountAll,
    /// `answer en how many {shape}s are there?`
    Count(Shape),
    /// `answer en what color is the {shape}?`, asked when exactly one exists.
    ColorOf(Shape),
    /// `detect a ; b`: the boxes of every object matching a query, left to right, each
    /// labelled with the query it matches. Queries are disjoint.
    Detect(Vec<Query>),
    /// `segment a ; b`: as [`Question::Detect`], each box followed by the sixteen
    /// `<seg>` codes of the object's mask (answered by [`Question::segment_answer`]).
    Segment(Vec<Query>),
}

impl Question {
    /// The prompt, as the model is trained on it.
    pub fn prompt(&self) -> String {
        match self {
            Question::Caption => "caption en".into(),
            Question::CountAll => "answer en how many shapes are there?".into(),
            Question::Count(s) => format!("answer en how many {} are there?", s.plural()),
            Question::ColorOf(s) => format!("answer en what color is the {}?", s.name()),
            Question::Detect(qs) | Question::Segment(qs) => {
                let labels: Vec<String> = qs.iter().map(Query::label).collect();
                let task = if matches!(self, Question::Detect(_)) {
                    "detect"
                } else {
                    "segment"
                };
                format!("{task} {}", labels.join(" ; "))
            }
        }
    }

    /// The right answer for `scene`, or `None` when the question does not apply to it
    /// (the colour of a shape the scene has none or several of) or needs the mask
    /// encoder ([`Question::Segment`], see [`Question::segment_answer`]).
    pub fn answer(&self, scene: &Scene) -> Option<String> {
        let objects = &scene.objects;
        let count = |s: Shape| objects.iter().filter(|o| o.shape == s).count();
        match self {
            Question::Caption => Some(caption(objects)),
            Question::CountAll => Some(objects.len().to_string()),
            Question::Count(s) => Some(count(*s).to_string()),
            Question::ColorOf(s) => match count(*s) {
                1 => objects
                    .iter()
                    .find(|o| o.shape == *s)
                    .map(|o| o.color.name().to_string()),
                _ => None,
            },
            Question::Detect(qs) => {
                let found: Vec<(String, crate::task::BoundingBox)> = objects
                    .iter()
                    .filter_map(|o| {
                        qs.iter()
                            .find(|q| q.matches(o))
                            .map(|q| (q.label(), o.bbox))
                    })
                    .collect();
                detection_suffix(&found, SCENE_SIZE, SCENE_SIZE).ok()
            }
            Question::Segment(_) => None,
        }
    }

    /// The answer to a [`Question::Segment`] (boxes, the codes `encoder` gives each
    /// object's mask, labels), or `None` for other questions.
    pub fn segment_answer<B: burn::tensor::backend::Backend>(
        &self,
        scene: &Scene,
        encoder: &MaskEncoder<B>,
    ) -> Option<crate::error::Result<String>> {
        let Question::Segment(_) = self else {
            return None;
        };
        // Masks only of the objects the question asks for.
        let matched: Vec<(String, crate::task::BoundingBox, crate::BinaryMask)> = scene
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| Some((self.query_for(o)?.label(), o.bbox, scene.mask(i)?)))
            .collect();
        let objects: Vec<(&str, crate::task::BoundingBox, &crate::BinaryMask)> = matched
            .iter()
            .map(|(l, b, m)| (l.as_str(), *b, m))
            .collect();
        Some(encoder.segmentation_suffix(&objects, SCENE_SIZE, SCENE_SIZE))
    }

    /// The query of a detection or segmentation question that `o` answers.
    pub(crate) fn query_for(&self, o: &Object) -> Option<&Query> {
        match self {
            Question::Detect(qs) | Question::Segment(qs) => qs.iter().find(|q| q.matches(o)),
            _ => None,
        }
    }

    /// The objects a detection question should find, left to right, with their labels.
    pub fn expected_objects<'a>(&self, scene: &'a Scene) -> Vec<(String, &'a Object)> {
        scene
            .objects
            .iter()
            .filter_map(|o| self.query_for(o).map(|q| (q.label(), o)))
            .collect()
    }

    /// A question drawn from the training mix, always one that applies to `scene`.
    /// Without segmentation: captions 20%, counts 20%, colours 10%, one detection query
    /// 40%, two 10%. With it: captions 15%, counts 15%, colours 10%, detection 30% and
    /// 5%, segmentation 20% and 5%.
    pub(crate) fn sample(scene: &Scene, rng: &mut Rng, segmentation: bool) -> Question {
        loop {
            let pair = |rng: &mut Rng| {
                let first = random_query(scene, rng);
                let second = random_query(scene, rng);
                first.disjoint(&second).then(|| vec![first, second])
            };
            let q = if segmentation {
                match rng.below(20) {
                    0..=2 => Question::Caption,
                    3 => Question::CountAll,
                    4 | 5 => Question::Count(random_shape(rng)),
                    6 | 7 => Question::ColorOf(random_shape(rng)),
                    8..=13 => Question::Detect(vec![random_query(scene, rng)]),
                    14 => match pair(rng) {
                        Some(qs) => Question::Detect(qs),
                        None => continue,
                    },
                    15..=18 => Question::Segment(vec![random_query(scene, rng)]),
                    _ => match pair(rng) {
                        Some(qs) => Question::Segment(qs),
                        None => continue,
                    },
                }
            } else {
                match rng.below(20) {
                    0..=3 => Question::Caption,
                    4 | 5 => Question::CountAll,
                    6 | 7 => Question::Count(random_shape(rng)),
                    8 | 9 => Question::ColorOf(random_shape(rng)),
                    10..=17 => Question::Detect(vec![random_query(scene, rng)]),
                    _ => match pair(rng) {
                        Some(qs) => Question::Detect(qs),
                        None => continue,
                    },
                }
            };
            if matches!(q, Question::Segment(_)) || q.answer(scene).is_some() {
                return q;
            }
        }
    }
}

/// `a red circle, a blue square and a yellow triangle`.
fn caption(objects: &[Object]) -> String {
    let parts: Vec<String> = objects.iter().map(|o| format!("a {}", o.label())).collect();
    match parts.as_slice() {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

fn random_shape(rng: &mut Rng) -> Shape {
    Shape::ALL[rng.below(3) as usize]
}

/// A query about an object of the scene nine times out of ten, otherwise about
/// anything (often absent, which teaches the empty answer). Absent objects are kept
/// rare: while box coordinates are still uncertain, each `<loc>` token is less likely
/// than the empty answer's `<eos>`, and greedy decoding never starts a box.
fn random_query(scene: &Scene, rng: &mut Rng) -> Query {
    let colored = rng.below(2) == 0;
    if rng.unit() < 0.9 {
        let o = &scene.objects[rng.below(scene.objects.len() as u32) as usize];
        Query {
            shape: o.shape,
            color: colored.then_some(o.color),
        }
    } else {
        Query {
            shape: random_shape(rng),
            color: colored.then(|| Color::ALL[rng.below(4) as usize]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::parse_detections;

    #[test]
    fn captions_list_shapes_left_to_right() {
        let scene = (0..)
            .map(Scene::generate)
            .find(|s| s.objects.len() == 3)
            .unwrap_or_else(|| unreachable!());
        let text = Question::Caption.answer(&scene).unwrap_or_default();
        let o = &scene.objects;
        let expected = format!(
            "a {}, a {} and a {}",
            o[0].label(),
            o[1].label(),
            o[2].label()
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn detection_targets_parse_back_to_the_boxes() {
        for seed in 0..200 {
            let scene = Scene::generate(seed);
            let mut rng = Rng::new(seed);
            let q = Question::sample(&scene, &mut rng, false);
            let Some(answer) = q.answer(&scene) else {
                panic!("seed {seed}: {q:?} has no answer");
            };
            let expected = q.expected_objects(&scene);
            if !matches!(q, Question::Detect(_)) {
                continue;
            }
            let parsed = parse_detections(&answer, SCENE_SIZE, SCENE_SIZE);
            assert_eq!(parsed.objects.len(), expected.len(), "{answer}");
            for (d, (label, o)) in parsed.objects.iter().zip(&expected) {
                assert_eq!(&d.label, label);
                assert!((d.bbox.x_min - o.bbox.x_min).abs() < 0.5, "{answer}");
                assert!((d.bbox.y_max - o.bbox.y_max).abs() < 0.5, "{answer}");
            }
        }
    }

    #[test]
    fn colour_questions_only_when_one_shape_of_the_kind() {
        let scene = Scene::generate(3);
        for s in Shape::ALL {
            let n = scene.objects.iter().filter(|o| o.shape == s).count();
            assert_eq!(Question::ColorOf(s).answer(&scene).is_some(), n == 1);
        }
    }

    #[test]
    fn queries_parse_their_labels() {
        for q in [
            Query {
                shape: Shape::Circle,
                color: None,
            },
            Query {
                shape: Shape::Triangle,
                color: Some(Color::Yellow),
            },
        ] {
            assert_eq!(Query::parse(&q.label()), Some(q));
        }
        assert_eq!(Query::parse("purple circle"), None);
    }
}
