//! The trained demo checkpoint, embedded in the library: [`Model::demo`] loads it with
//! no file and no download.

use burn::tensor::backend::Backend;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::mask_encoder::MaskEncoder;
use crate::model::{Model, Origin};
use crate::pretrained::{LoadOptions, Parts};
use crate::segmentation::MaskDecoder;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightStore;

macro_rules! asset {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("../../assets/demo/", $name)).as_slice(),
        )
    };
}

/// The checkpoint directory's files, as `examples/train_demo.rs` saved them.
static FILES: &[(&str, &[u8])] = &[
    asset!("config.json"),
    asset!("tokenizer.json"),
    asset!("tokenizer_config.json"),
    asset!("special_tokens_map.json"),
    asset!("preprocessor_config.json"),
    asset!("model.safetensors"),
    asset!("vae-oid.npz"),
];

fn file(name: &str) -> Result<&'static [u8]> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| Error::Backend(format!("the embedded demo has no {name}")))
}

fn text(name: &str) -> Result<&'static str> {
    std::str::from_utf8(file(name)?).map_err(|e| Error::Config {
        path: None,
        reason: format!("embedded demo {name}: {e}"),
    })
}

impl<B: Backend> MaskEncoder<B> {
    /// The encoder of the demo model's VQ-VAE (for segmentation targets of the demo
    /// world, e.g. to fine-tune [`Model::demo`] further).
    pub fn demo(device: &B::Device) -> Result<Self> {
        Self::from_npz_bytes(file("vae-oid.npz")?, "embedded demo vae-oid.npz", device)
    }
}

impl<B: Backend> Model<B> {
    /// The demo model: a small PaliGemma trained by this crate on synthetic scenes of
    /// coloured shapes ([`demo::Scene`](crate::demo::Scene)), embedded in the library.
    /// It is asked with the same methods and prompts as a released checkpoint; how
    /// well it answers each task so far is in `docs/demo.md` (counts and colours mostly
    /// right, a box for most objects named by colour and shape, captions sometimes,
    /// masks not yet).
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use paligemma::{Model, backend::Cpu, demo::Scene};
    ///
    /// let model = Model::<Cpu>::demo(&Default::default())?;
    /// let scene = Scene::generate(9); // one blue triangle
    /// let image = image::DynamicImage::ImageRgb8(scene.render());
    /// assert_eq!(model.caption(&image, "en")?, "a blue triangle");
    /// assert_eq!(model.answer(&image, "en", "how many shapes are there?")?, "1");
    /// # Ok(()) }
    /// ```
    pub fn demo(device: &B::Device) -> Result<Self> {
        Self::demo_with(device, &LoadOptions::default())
    }

    /// [`Model::demo`] in another dtype or weight format.
    pub fn demo_with(device: &B::Device, options: &LoadOptions) -> Result<Self> {
        options.check_supported::<B>(device)?;
        let parts = Parts {
            config: Config::from_json_str(text("config.json")?)?,
            config_path: None,
            tokenizer: Tokenizer::from_bytes(
                file("tokenizer.json")?,
                Some(text("tokenizer_config.json")?),
                "embedded demo tokenizer",
            )?,
            store: WeightStore::from_static(
                "embedded demo model.safetensors",
                file("model.safetensors")?,
            )?,
            mask_decoder: Some(MaskDecoder::from_npz_bytes(
                file("vae-oid.npz")?,
                "embedded demo vae-oid.npz",
                device,
            )?),
        };
        Self::assemble(parts, Origin::Embedded(FILES), device, options)
    }
}
