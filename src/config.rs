//! Model configuration: parsing Hugging Face `config.json` files with the defaults
//! transformers applies, and presets for the released checkpoints.
//!
//! Hub configs written by transformers 4.4x are minimal (a PaliGemma 1 3B-224
//! `text_config` names only eight fields), so every omitted field falls back to the
//! default of the class transformers would instantiate: `SiglipVisionConfig` for the
//! vision tower, `GemmaConfig` or `Gemma2Config` for the decoder.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Which decoder family the checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextArch {
    /// Gemma (PaliGemma 1).
    Gemma,
    /// Gemma 2 (PaliGemma 2): extra norms, soft-capping, sliding-window layers.
    Gemma2,
}

/// SigLIP vision tower settings.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    /// Width of the vision transformer.
    pub hidden_size: usize,
    /// Width of its MLP.
    pub intermediate_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Square input resolution in pixels.
    pub image_size: usize,
    /// Patch size in pixels.
    pub patch_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// Number of patches, i.e. image tokens per image.
    pub fn num_patches(&self) -> usize {
        let side = self.image_size / self.patch_size;
        side * side
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Whether a decoder layer attends to everything before it or only a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// Full (global) attention.
    Full,
    /// Sliding-window attention (Gemma 2 even layers).
    Sliding,
}

/// Gemma / Gemma 2 decoder settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    /// Decoder family.
    pub arch: TextArch,
    /// Rows of the embedding matrix (padded vocabulary, e.g. 257216).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (1 = multi-query).
    pub num_key_value_heads: usize,
    /// Per-head width, independent of `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Longest sequence the model supports.
    pub max_position_embeddings: usize,
    /// Queries are scaled by `query_pre_attn_scalar^-0.5` (Gemma: `head_dim`).
    pub query_pre_attn_scalar: f64,
    /// Attention-logit soft cap (Gemma 2).
    pub attn_logit_softcapping: Option<f64>,
    /// Final-logit soft cap (Gemma 2).
    pub final_logit_softcapping: Option<f64>,
    /// Sliding window length for sliding layers (Gemma 2).
    pub sliding_window: Option<usize>,
    /// Attention kind of each layer.
    pub layer_types: Vec<LayerKind>,
}

impl TextConfig {
    /// Whether layer `i` uses sliding-window attention.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.layer_types.get(layer) == Some(&LayerKind::Sliding) && self.sliding_window.is_some()
    }
}

/// A complete PaliGemma configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Vision tower.
    pub vision: VisionConfig,
    /// Decoder.
    pub text: TextConfig,
    /// Id of the `<image>` placeholder token as the config states it (checked against
    /// the tokenizer at load time).
    pub image_token_index: usize,
}

impl Config {
    /// Number of image tokens the processor inserts.
    pub fn num_image_tokens(&self) -> usize {
        self.vision.num_patches()
    }

    /// Read and resolve `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        parse(&text).map_err(|reason| Error::Config {
            path: Some(path.to_path_buf()),
            reason,
        })
    }

    /// Parse a `config.json` document, applying transformers' defaults.
    pub fn from_json_str(json: &str) -> Result<Self> {
        parse(json).map_err(|reason| Error::Config { path: None, reason })
    }

    /// The configuration of a released checkpoint at `resolution` (224, 448 or 896).
    pub fn preset(release: Release, resolution: usize) -> Option<Self> {
        if ![224, 448, 896].contains(&resolution) {
            return None;
        }
        let vision = VisionConfig {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: resolution,
            patch_size: 14,
            layer_norm_eps: 1e-6,
        };
        let text = match release {
            Release::Pg1_3b => GemmaSize {
                hidden_size: 2048,
                intermediate_size: 16384,
                num_hidden_layers: 18,
                num_attention_heads: 8,
                num_key_value_heads: 1,
                head_dim: 256,
            }
            .gemma(),
            Release::Pg2_3b => GemmaSize {
                hidden_size: 2304,
                intermediate_size: 9216,
                num_hidden_layers: 26,
                num_attention_heads: 8,
                num_key_value_heads: 4,
                head_dim: 256,
            }
            .gemma2(256.0),
            Release::Pg2_10b => GemmaSize {
                hidden_size: 3584,
                intermediate_size: 14336,
                num_hidden_layers: 42,
                num_attention_heads: 16,
                num_key_value_heads: 8,
                head_dim: 256,
            }
            .gemma2(256.0),
            Release::Pg2_28b => GemmaSize {
                hidden_size: 4608,
                intermediate_size: 36864,
                num_hidden_layers: 46,
                num_attention_heads: 32,
                num_key_value_heads: 16,
                head_dim: 128,
            }
            .gemma2(144.0),
        };
        Some(Config {
            vision,
            text,
            image_token_index: 257152,
        })
    }
}

/// The released PaliGemma checkpoints' architectures (each at 224, 448 and 896 px).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Release {
    /// PaliGemma 1, 3B (Gemma 2B decoder).
    Pg1_3b,
    /// PaliGemma 2, 3B (Gemma 2 2B decoder).
    Pg2_3b,
    /// PaliGemma 2, 10B (Gemma 2 9B decoder).
    Pg2_10b,
    /// PaliGemma 2, 28B (Gemma 2 27B decoder).
    Pg2_28b,
}

/// The dimensions in which the released decoders differ.
struct GemmaSize {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: usize,
    head_dim: usize,
}

impl GemmaSize {
    /// A Gemma (PaliGemma 1) decoder of this size.
    fn gemma(self) -> TextConfig {
        TextConfig {
            arch: TextArch::Gemma,
            vocab_size: 257216,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 8192,
            query_pre_attn_scalar: self.head_dim as f64,
            attn_logit_softcapping: None,
            final_logit_softcapping: None,
            sliding_window: None,
            layer_types: vec![LayerKind::Full; self.num_hidden_layers],
        }
    }

    /// A Gemma 2 (PaliGemma 2) decoder of this size.
    fn gemma2(self, query_pre_attn_scalar: f64) -> TextConfig {
        let layers = self.num_hidden_layers;
        TextConfig {
            arch: TextArch::Gemma2,
            query_pre_attn_scalar,
            attn_logit_softcapping: Some(50.0),
            final_logit_softcapping: Some(30.0),
            sliding_window: Some(4096),
            layer_types: default_gemma2_layers(layers),
            ..self.gemma()
        }
    }
}

/// Gemma 2 alternates sliding (even index) and full (odd index) layers.
fn default_gemma2_layers(layers: usize) -> Vec<LayerKind> {
    (0..layers)
        .map(|i| {
            if i % 2 == 0 {
                LayerKind::Sliding
            } else {
                LayerKind::Full
            }
        })
        .collect()
}

fn parse(json: &str) -> std::result::Result<Config, String> {
    let raw: RawConfig = serde_json::from_str(json).map_err(|e| e.to_string())?;
    raw.resolve()
}

// ---- raw serde view of config.json -------------------------------------------------

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    text_config: Option<RawText>,
    vision_config: Option<RawVision>,
    image_token_index: Option<usize>,
    image_token_id: Option<usize>,
}

#[derive(Deserialize)]
struct RawVision {
    model_type: Option<String>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_channels: Option<usize>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    layer_norm_eps: Option<f64>,
}

#[derive(Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

#[derive(Deserialize)]
struct RawText {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    max_position_embeddings: Option<usize>,
    query_pre_attn_scalar: Option<f64>,
    // `null` is meaningful here (disables capping), so keep the distinction.
    #[serde(default, deserialize_with = "present")]
    attn_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    final_logit_softcapping: Option<Option<f64>>,
    #[serde(default, deserialize_with = "present")]
    sliding_window: Option<Option<usize>>,
    layer_types: Option<Vec<String>>,
    hidden_activation: Option<String>,
    hidden_act: Option<String>,
}

/// Deserialize a field that may be absent (outer `None`) or `null` (inner `None`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl RawConfig {
    fn resolve(self) -> std::result::Result<Config, String> {
        match self.model_type.as_deref() {
            Some("paligemma") => {}
            Some(other) => {
                return Err(format!(
                    "model_type is \"{other}\", expected \"paligemma\" (this crate runs PaliGemma 1 and 2 only)"
                ));
            }
            None => return Err("no model_type; expected \"paligemma\"".into()),
        }
        let vision = self.vision_config.ok_or("no vision_config")?.resolve()?;
        let text = self.text_config.ok_or("no text_config")?.resolve()?;
        let image_token_index = self
            .image_token_index
            .or(self.image_token_id)
            .unwrap_or(256000);
        Ok(Config {
            vision,
            text,
            image_token_index,
        })
    }
}

fn positive(name: &str, v: usize) -> std::result::Result<usize, String> {
    if v == 0 {
        Err(format!("{name} must be positive"))
    } else {
        Ok(v)
    }
}

/// A norm epsilon: finite and not negative (a negative one makes square roots of
/// negative numbers, NaN everywhere after).
fn non_negative(name: &str, v: f64) -> std::result::Result<f64, String> {
    match v >= 0.0 && v.is_finite() {
        true => Ok(v),
        false => Err(format!(
            "{name} must be a finite number of at least 0, got {v}"
        )),
    }
}

impl RawVision {
    fn resolve(self) -> std::result::Result<VisionConfig, String> {
        if let Some(t) = self.model_type.as_deref()
            && t != "siglip_vision_model"
        {
            return Err(format!(
                "vision_config.model_type is \"{t}\", expected \"siglip_vision_model\""
            ));
        }
        // SiglipVisionConfig defaults.
        let c = VisionConfig {
            hidden_size: positive("vision hidden_size", self.hidden_size.unwrap_or(768))?,
            intermediate_size: positive(
                "vision intermediate_size",
                self.intermediate_size.unwrap_or(3072),
            )?,
            num_hidden_layers: self.num_hidden_layers.unwrap_or(12),
            num_attention_heads: positive(
                "vision num_attention_heads",
                self.num_attention_heads.unwrap_or(12),
            )?,
            num_channels: positive("num_channels", self.num_channels.unwrap_or(3))?,
            image_size: positive("image_size", self.image_size.unwrap_or(224))?,
            patch_size: positive("patch_size", self.patch_size.unwrap_or(16))?,
            layer_norm_eps: non_negative("layer_norm_eps", self.layer_norm_eps.unwrap_or(1e-6))?,
        };
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(format!(
                "vision hidden_size {} is not divisible by {} heads",
                c.hidden_size, c.num_attention_heads
            ));
        }
        if !c.image_size.is_multiple_of(c.patch_size) {
            return Err(format!(
                "image_size {} is not a multiple of patch_size {}",
                c.image_size, c.patch_size
            ));
        }
        if c.num_channels != 3 {
            return Err(format!("num_channels is {}, expected 3", c.num_channels));
        }
        Ok(c)
    }
}

impl RawText {
    fn resolve(self) -> std::result::Result<TextConfig, String> {
        let arch = match self.model_type.as_deref() {
            // PaliGemmaConfig's default text model is Gemma.
            None | Some("gemma") => TextArch::Gemma,
            Some("gemma2") => TextArch::Gemma2,
            Some(t) => {
                return Err(format!(
                    "text_config.model_type is \"{t}\", expected \"gemma\" or \"gemma2\""
                ));
            }
        };
        if let Some(act) = self
            .hidden_activation
            .as_deref()
            .or(self.hidden_act.as_deref())
            && !matches!(act, "gelu_pytorch_tanh" | "gelu_fast" | "gelu_new")
        {
            return Err(format!(
                "text activation \"{act}\" is not supported (PaliGemma uses gelu_pytorch_tanh)"
            ));
        }
        if let Some(rope) = &self.rope_parameters
            && let Some(kind) = rope.rope_type.as_deref()
            && kind != "default"
        {
            return Err(format!("rope_type \"{kind}\" is not supported"));
        }
        // GemmaConfig / Gemma2Config defaults.
        let (hidden, mlp, layers, heads, kv) = match arch {
            TextArch::Gemma => (3072, 24576, 28, 16, 16),
            TextArch::Gemma2 => (2304, 9216, 26, 8, 4),
        };
        let head_dim = positive("head_dim", self.head_dim.unwrap_or(256))?;
        if !head_dim.is_multiple_of(2) {
            // Rotary embeddings turn pairs of channels.
            return Err(format!("head_dim must be even, got {head_dim}"));
        }
        let num_hidden_layers = self.num_hidden_layers.unwrap_or(layers);
        let num_attention_heads = positive(
            "num_attention_heads",
            self.num_attention_heads.unwrap_or(heads),
        )?;
        let num_key_value_heads = positive(
            "num_key_value_heads",
            self.num_key_value_heads.unwrap_or(kv),
        )?;
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(format!(
                "{num_attention_heads} attention heads are not a multiple of {num_key_value_heads} key/value heads"
            ));
        }
        let rope_theta = self
            .rope_parameters
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10000.0);
        let gemma2 = arch == TextArch::Gemma2;
        let layer_types = match self.layer_types {
            Some(types) => {
                if types.len() != num_hidden_layers {
                    return Err(format!(
                        "layer_types has {} entries for {num_hidden_layers} layers",
                        types.len()
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "full_attention" => Ok(LayerKind::Full),
                        "sliding_attention" => Ok(LayerKind::Sliding),
                        other => Err(format!("unknown layer type \"{other}\"")),
                    })
                    .collect::<std::result::Result<Vec<_>, _>>()?
            }
            None if gemma2 => default_gemma2_layers(num_hidden_layers),
            None => vec![LayerKind::Full; num_hidden_layers],
        };
        let default_cap = |v: Option<Option<f64>>, d: f64| match v {
            Some(explicit) => explicit,
            None if gemma2 => Some(d),
            None => None,
        };
        let sliding_window = match self.sliding_window {
            Some(explicit) => explicit,
            None if gemma2 => Some(4096),
            None => None,
        };
        if sliding_window == Some(0) {
            return Err("sliding_window must be positive".into());
        }
        let check_cap = |name: &str, v: Option<f64>| match v {
            Some(c) if !(c > 0.0 && c.is_finite()) => Err(format!("{name} must be positive")),
            _ => Ok(v),
        };
        Ok(TextConfig {
            arch,
            vocab_size: positive("vocab_size", self.vocab_size.unwrap_or(257152))?,
            hidden_size: positive("hidden_size", self.hidden_size.unwrap_or(hidden))?,
            intermediate_size: positive(
                "intermediate_size",
                self.intermediate_size.unwrap_or(mlp),
            )?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: non_negative("rms_norm_eps", self.rms_norm_eps.unwrap_or(1e-6))?,
            rope_theta,
            max_position_embeddings: positive(
                "max_position_embeddings",
                self.max_position_embeddings.unwrap_or(8192),
            )?,
            query_pre_attn_scalar: if gemma2 {
                self.query_pre_attn_scalar.unwrap_or(256.0)
            } else {
                head_dim as f64
            },
            attn_logit_softcapping: check_cap(
                "attn_logit_softcapping",
                default_cap(self.attn_logit_softcapping, 50.0),
            )?,
            final_logit_softcapping: check_cap(
                "final_logit_softcapping",
                default_cap(self.final_logit_softcapping, 30.0),
            )?,
            sliding_window: if gemma2 { sliding_window } else { None },
            layer_types,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The text of google/paligemma-3b-mix-224's config.json as published on the hub.
    const HUB_PG1_224: &str = r#"{
      "_name_or_path": "final_hf/paligemma-3b-mix-224",
      "architectures": ["PaliGemmaForConditionalGeneration"],
      "bos_token_id": 2, "eos_token_id": 1, "hidden_size": 2048, "ignore_index": -100,
      "image_token_index": 257152, "model_type": "paligemma", "pad_token_id": 0,
      "projection_dim": 2048,
      "text_config": {"hidden_size": 2048, "intermediate_size": 16384, "model_type": "gemma",
        "num_attention_heads": 8, "num_hidden_layers": 18, "num_image_tokens": 256,
        "num_key_value_heads": 1, "torch_dtype": "float32", "vocab_size": 257216},
      "torch_dtype": "float32", "transformers_version": "4.41.0.dev0",
      "vision_config": {"hidden_size": 1152, "intermediate_size": 4304,
        "model_type": "siglip_vision_model", "num_attention_heads": 16,
        "num_hidden_layers": 27, "num_image_tokens": 256, "patch_size": 14,
        "projection_dim": 2048, "projector_hidden_act": "gelu_fast", "vision_use_head": false}
    }"#;

    #[test]
    fn hub_minimal_config_gets_transformers_defaults() {
        let c = Config::from_json_str(HUB_PG1_224).unwrap();
        assert_eq!(c, Config::preset(Release::Pg1_3b, 224).unwrap());
        assert_eq!(c.num_image_tokens(), 256);
    }

    #[test]
    fn pg2_defaults_and_v5_rope_parameters() {
        let json = r#"{"model_type": "paligemma", "image_token_index": 257152,
          "text_config": {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216,
            "num_attention_heads": 8, "num_hidden_layers": 26, "num_key_value_heads": 4,
            "vocab_size": 257216, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
            "dtype": "bfloat16"},
          "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "image_size": 448,
            "model_type": "siglip_vision_model", "num_attention_heads": 16,
            "num_hidden_layers": 27, "patch_size": 14}}"#;
        let c = Config::from_json_str(json).unwrap();
        assert_eq!(c, Config::preset(Release::Pg2_3b, 448).unwrap());
        assert!(c.text.is_sliding(0) && !c.text.is_sliding(1));
        assert_eq!(c.num_image_tokens(), 1024);
    }

    #[test]
    fn rejects_other_models() {
        let err = Config::from_json_str(r#"{"model_type": "llava"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("llava"), "{err}");
        let err = Config::from_json_str("not json").unwrap_err();
        assert!(matches!(err, Error::Config { path: None, .. }), "{err}");
        let bad_heads =
            HUB_PG1_224.replace("\"num_key_value_heads\": 1", "\"num_key_value_heads\": 3");
        assert!(
            Config::from_json_str(&bad_heads)
                .unwrap_err()
                .to_string()
                .contains("multiple")
        );
    }

    #[test]
    fn null_softcap_disables_it() {
        let json = r#"{"model_type": "paligemma",
          "text_config": {"model_type": "gemma2", "attn_logit_softcapping": null, "sliding_window": null},
          "vision_config": {}}"#;
        let c = Config::from_json_str(json).unwrap();
        assert_eq!(c.text.attn_logit_softcapping, None);
        assert_eq!(c.text.final_logit_softcapping, Some(30.0));
        assert!(!c.text.is_sliding(0));
    }
}
