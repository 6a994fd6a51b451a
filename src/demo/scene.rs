//! The synthetic world the demo model knows: seeded scenes of one to three coloured
//! shapes on a plain light background, drawn with anti-aliased edges.
//!
//! The rules (sizes, colours, spacing) are the demo's contract, so that any other
//! renderer following them draws scenes the model understands; see `docs/demo.md`.

use image::{Rgb, RgbImage};

use crate::segmentation::BinaryMask;
use crate::task::BoundingBox;

/// Side of a scene in pixels.
pub const SCENE_SIZE: u32 = 224;
/// Smallest and largest bounding-box side of a shape, in pixels.
pub const SHAPE_SIZES: std::ops::RangeInclusive<u32> = 40..=100;
/// Least gap between the bounding boxes of two shapes, in pixels.
pub const MIN_GAP: u32 = 4;
/// Largest deviation of a shape's fill from its colour's nominal RGB, per channel.
pub const COLOR_JITTER: i32 = 20;

/// A shape's outline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A disc whose diameter is the box side.
    Circle,
    /// An axis-aligned square filling its box.
    Square,
    /// An upright triangle, apex up: the box's width is its base, its height
    /// `round(width * sqrt(3) / 2)`.
    Triangle,
}

impl Shape {
    /// Every shape.
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The shape's name, as prompts and answers write it.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The shape's name with the text after it (`circle` → `circles`).
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }

    /// The shape named `name`, if any.
    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Height of the bounding box of a shape `width` pixels wide.
    pub fn height(self, width: u32) -> u32 {
        match self {
            Shape::Triangle => (f64::from(width) * 3f64.sqrt() / 2.0).round() as u32,
            _ => width,
        }
    }

    /// Whether point `(x, y)` lies inside the shape drawn in box `b`.
    fn contains(self, b: &BoundingBox, x: f64, y: f64) -> bool {
        if x < b.x_min || x >= b.x_max || y < b.y_min || y >= b.y_max {
            return false;
        }
        match self {
            Shape::Square => true,
            Shape::Circle => {
                let r = b.width() / 2.0;
                let (dx, dy) = (x - (b.x_min + r), y - (b.y_min + r));
                dx * dx + dy * dy <= r * r
            }
            Shape::Triangle => {
                // Half the width grows linearly from the apex to the base.
                let half = b.width() / 2.0 * (y - b.y_min) / b.height();
                (x - (b.x_min + b.width() / 2.0)).abs() <= half
            }
        }
    }
}

/// A shape's colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Color {
    /// Nominal (220, 40, 40).
    Red,
    /// Nominal (40, 170, 60).
    Green,
    /// Nominal (40, 80, 220).
    Blue,
    /// Nominal (235, 200, 30).
    Yellow,
}

impl Color {
    /// Every colour.
    pub const ALL: [Color; 4] = [Color::Red, Color::Green, Color::Blue, Color::Yellow];

    /// The colour's name, as prompts and answers write it.
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
        }
    }

    /// The colour named `name`, if any.
    pub fn from_name(name: &str) -> Option<Color> {
        Color::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The nominal fill.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 40, 40],
            Color::Green => [40, 170, 60],
            Color::Blue => [40, 80, 220],
            Color::Yellow => [235, 200, 30],
        }
    }
}

/// One shape of a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// Its outline.
    pub shape: Shape,
    /// Its colour name.
    pub color: Color,
    /// The fill actually drawn (the colour within [`COLOR_JITTER`]).
    pub fill: [u8; 3],
    /// Its bounding box in pixels (integer corners, exclusive maximum).
    pub bbox: BoundingBox,
}

impl Object {
    /// `red circle`.
    pub fn label(&self) -> String {
        format!("{} {}", self.color.name(), self.shape.name())
    }
}

/// A scene: background and shapes, ordered left to right by the x of their box centre
/// (then top to bottom).
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The background colour.
    pub background: [u8; 3],
    /// The shapes, left to right.
    pub objects: Vec<Object>,
}

impl Scene {
    /// The scene of `seed`: the same seed gives the same scene on every machine.
    pub fn generate(seed: u64) -> Scene {
        let mut rng = Rng::new(seed);
        let background = [0; 3].map(|_| 200 + rng.below(56) as u8);
        let wanted = 1 + rng.below(3) as usize;
        let mut objects: Vec<Object> = Vec::with_capacity(wanted);
        let mut tries = 0;
        while objects.len() < wanted && tries < 1000 {
            tries += 1;
            let shape = Shape::ALL[rng.below(3) as usize];
            let color = Color::ALL[rng.below(4) as usize];
            let width =
                SHAPE_SIZES.start() + rng.below(SHAPE_SIZES.end() - SHAPE_SIZES.start() + 1);
            let height = shape.height(width);
            let x = rng.below(SCENE_SIZE - width + 1);
            let y = rng.below(SCENE_SIZE - height + 1);
            let bbox = BoundingBox {
                x_min: f64::from(x),
                y_min: f64::from(y),
                x_max: f64::from(x + width),
                y_max: f64::from(y + height),
            };
            if objects.iter().any(|o| !apart(&o.bbox, &bbox)) {
                continue;
            }
            let jitter = |v: u8, rng: &mut Rng| {
                let d = rng.below(2 * COLOR_JITTER as u32 + 1) as i32 - COLOR_JITTER;
                (i32::from(v) + d).clamp(0, 255) as u8
            };
            let fill = color.rgb().map(|v| jitter(v, &mut rng));
            objects.push(Object {
                shape,
                color,
                fill,
                bbox,
            });
        }
        objects.sort_by(|a, b| {
            let key = |o: &Object| (o.bbox.x_min + o.bbox.x_max, o.bbox.y_min + o.bbox.y_max);
            key(a)
                .partial_cmp(&key(b))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        Scene {
            background,
            objects,
        }
    }

    /// Draw the scene: each pixel's colour is the background blended with the shape
    /// covering it, weighted by the share of 4 x 4 sample points inside the shape.
    pub fn render(&self) -> RgbImage {
        const SAMPLES: u32 = 4;
        let mut img = RgbImage::from_pixel(SCENE_SIZE, SCENE_SIZE, Rgb(self.background));
        for o in &self.objects {
            let b = &o.bbox;
            for y in b.y_min as u32..b.y_max as u32 {
                for x in b.x_min as u32..b.x_max as u32 {
                    let mut inside = 0;
                    for sy in 0..SAMPLES {
                        for sx in 0..SAMPLES {
                            let px = f64::from(x) + (f64::from(sx) + 0.5) / f64::from(SAMPLES);
                            let py = f64::from(y) + (f64::from(sy) + 0.5) / f64::from(SAMPLES);
                            inside += u32::from(o.shape.contains(b, px, py));
                        }
                    }
                    if inside == 0 {
                        continue;
                    }
                    let a = f64::from(inside) / f64::from(SAMPLES * SAMPLES);
                    let p = img.get_pixel_mut(x, y);
                    for (c, &f) in p.0.iter_mut().zip(&o.fill) {
                        *c = (f64::from(*c) * (1.0 - a) + f64::from(f) * a).round() as u8;
                    }
                }
            }
        }
        img
    }

    /// The pixels of object `index` (pixel centres inside its outline), or `None` for an
    /// index past the last object.
    pub fn mask(&self, index: usize) -> Option<BinaryMask> {
        let o = self.objects.get(index)?;
        let n = SCENE_SIZE as usize;
        let mut data = vec![false; n * n];
        for (i, d) in data.iter_mut().enumerate() {
            let (x, y) = ((i % n) as f64 + 0.5, (i / n) as f64 + 0.5);
            *d = o.shape.contains(&o.bbox, x, y);
        }
        Some(BinaryMask {
            width: SCENE_SIZE,
            height: SCENE_SIZE,
            data,
        })
    }
}

/// Whether two boxes are at least [`MIN_GAP`] pixels apart along some axis.
fn apart(a: &BoundingBox, b: &BoundingBox) -> bool {
    let gap = f64::from(MIN_GAP);
    a.x_max + gap <= b.x_min
        || b.x_max + gap <= a.x_min
        || a.y_max + gap <= b.y_min
        || b.y_max + gap <= a.y_min
}

/// SplitMix64: a tiny, portable generator, so that a seed means the same scene (and
/// the same training stream) everywhere.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is below 2^-32 for the small `n` used.
    pub(crate) fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n.max(1))) as u32
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `n` draws from N(0, std^2) (Box-Muller: one normal sample from two uniform ones).
    pub(crate) fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let (u, v) = (self.unit().max(1e-12), self.unit());
                (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_follow_the_rules() {
        for seed in 0..300 {
            let scene = Scene::generate(seed);
            assert!((1..=3).contains(&scene.objects.len()), "seed {seed}");
            assert!(scene.background.iter().all(|&c| c >= 200));
            for (i, o) in scene.objects.iter().enumerate() {
                let b = &o.bbox;
                assert!(b.x_min >= 0.0 && b.y_min >= 0.0);
                assert!(b.x_max <= f64::from(SCENE_SIZE) && b.y_max <= f64::from(SCENE_SIZE));
                assert!(SHAPE_SIZES.contains(&(b.width() as u32)));
                for (f, n) in o.fill.iter().zip(o.color.rgb()) {
                    assert!((i32::from(*f) - i32::from(n)).abs() <= COLOR_JITTER);
                }
                for other in &scene.objects[i + 1..] {
                    assert!(apart(b, &other.bbox), "seed {seed}");
                    assert!(b.x_min + b.x_max <= other.bbox.x_min + other.bbox.x_max);
                }
            }
        }
    }

    #[test]
    fn rendering_fills_the_mask_with_the_shape_colour() {
        let scene = Scene::generate(7);
        let img = scene.render();
        for (i, o) in scene.objects.iter().enumerate() {
            let mask = scene.mask(i).unwrap_or_else(|| panic!("object {i}"));
            let area = mask.data.iter().filter(|&&m| m).count() as f64;
            let expected = match o.shape {
                Shape::Square => o.bbox.width() * o.bbox.height(),
                Shape::Circle => std::f64::consts::PI * (o.bbox.width() / 2.0).powi(2),
                Shape::Triangle => o.bbox.width() * o.bbox.height() / 2.0,
            };
            assert!(
                (area / expected - 1.0).abs() < 0.05,
                "{o:?}: {area} vs {expected}"
            );
            let cx = ((o.bbox.x_min + o.bbox.x_max) / 2.0) as u32;
            let cy = ((o.bbox.y_min + o.bbox.y_max) / 2.0 + o.bbox.height() * 0.2) as u32;
            assert_eq!(img.get_pixel(cx, cy).0, o.fill);
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_scene() {
        assert_eq!(Scene::generate(42), Scene::generate(42));
        assert_ne!(Scene::generate(42), Scene::generate(43));
    }
}
