//! The demo: a synthetic world of coloured shapes ([`Scene`]), the questions asked about
//! it ([`Question`]) and the recipe of the small model trained on it ([`recipe`]).

#[cfg(feature = "demo")]
mod embedded;
mod evaluate;
#[cfg(feature = "train")]
mod mask_vae;
mod questions;
pub mod recipe;
mod scene;

pub use evaluate::{HELD_OUT_SEEDS, Report, evaluate, questions_for};
#[cfg(feature = "train")]
pub use mask_vae::{VaeSize, train_vae};
pub use questions::{Query, Question};
pub use scene::{COLOR_JITTER, Color, MIN_GAP, Object, SCENE_SIZE, SHAPE_SIZES, Scene, Shape};

/// One training example of the demo's mix, fully determined by `index` (and the
/// encoder's weights): the scene of seed [`HELD_OUT_SEEDS`]` + index`, so that no
/// evaluation scene is ever trained on, and a question drawn for it with its answer as
/// the target. With a mask `encoder` the mix includes segmentation (its targets' codes
/// come from the encoder), otherwise not.
#[cfg(feature = "train")]
pub fn training_example<B: burn::tensor::backend::Backend>(
    index: u64,
    encoder: Option<&crate::MaskEncoder<B>>,
) -> crate::Result<crate::train::Example> {
    let seed = HELD_OUT_SEEDS.wrapping_add(index);
    let scene = Scene::generate(seed);
    let mut rng = scene::Rng::new(seed ^ 0x005e_ed0f_9e57_1075);
    let question = Question::sample(&scene, &mut rng, encoder.is_some());
    let answer = match encoder.and_then(|e| question.segment_answer(&scene, e)) {
        Some(segmentation) => segmentation?,
        None => question.answer(&scene).unwrap_or_default(),
    };
    Ok(crate::train::Example::new(
        image::DynamicImage::ImageRgb8(scene.render()),
        question.prompt(),
        answer,
    ))
}
