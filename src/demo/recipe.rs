//! How the demo checkpoint starts, before training: its vocabulary, its sizes and its
//! randomly initialised weights, written as an ordinary Hugging Face checkpoint
//! directory (`examples/train_demo.rs` trains it from there).

use std::path::Path;

use serde_json::{Value, json};

use super::scene::{Color, SCENE_SIZE, Shape};
use crate::error::{Error, Result};
use crate::task::{MAX_LOC, MAX_SEG};

/// Every word the demo's prompts and answers use.
fn words() -> Vec<String> {
    let mut words: Vec<String> = [
        "caption", "en", "answer", "how", "many", "shapes", "are", "there", "what", "color", "is",
        "the", "detect", "segment", "a", "and",
    ]
    .iter()
    .map(|w| w.to_string())
    .collect();
    for s in Shape::ALL {
        words.push(s.name().into());
        words.push(s.plural().into());
    }
    words.extend(Color::ALL.iter().map(|c| c.name().to_string()));
    words
}

/// The demo's `tokenizer.json`: Gemma's pipeline (spaces as U+2581, BPE with byte
/// fallback, `<bos>` prepended) over a vocabulary of the demo's words, every single
/// character they and the digits need, and PaliGemma's `<image>`, 1024 `<locDDDD>`
/// and 128 `<segDDD>` tokens.
pub fn tokenizer_json() -> String {
    let mut vocab: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut chars: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789?,;.\n\u{2581}"
        .chars()
        .collect();
    chars.dedup();
    vocab.extend(chars.iter().map(|c| c.to_string()));
    // Each word's pieces are first split as the merges so far split them, then joined
    // left to right by new merges of lower priority, so every word (with and without
    // its leading space) ends up one token and earlier words keep theirs.
    let mut merges: Vec<(String, String)> = Vec::new();
    for word in words() {
        for piece in [word.clone(), format!("\u{2581}{word}")] {
            let mut parts = bpe_split(&piece, &merges).into_iter();
            let Some(mut left) = parts.next() else {
                continue;
            };
            for right in parts {
                let merged = format!("{left}{right}");
                merges.push((left, right));
                if !vocab.contains(&merged) {
                    vocab.push(merged.clone());
                }
                left = merged;
            }
        }
    }
    let base = vocab.len();
    let mut added: Vec<(String, bool)> = vec![("<image>".into(), true)];
    added.extend((0..=MAX_LOC).map(|i| (format!("<loc{i:04}>"), false)));
    added.extend((0..=MAX_SEG).map(|i| (format!("<seg{i:03}>"), false)));
    let specials = ["<pad>", "<eos>", "<bos>", "<unk>"].iter().enumerate();
    let added_json: Vec<Value> = specials
        .map(|(i, t)| added_token(i, t, true))
        .chain(
            added
                .iter()
                .enumerate()
                .map(|(i, (t, special))| added_token(base + i, t, *special)),
        )
        .collect();
    let mut vocab_json = serde_json::Map::new();
    for (i, t) in vocab.iter().enumerate() {
        vocab_json.insert(t.clone(), json!(i));
    }
    for (i, (t, _)) in added.iter().enumerate() {
        vocab_json.insert(t.clone(), json!(base + i));
    }
    let merges: Vec<Value> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_json,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}
            ],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"}
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges
        }
    });
    tokenizer.to_string()
}

/// How BPE with `merges` (earlier = higher priority) splits `piece`.
fn bpe_split(piece: &str, merges: &[(String, String)]) -> Vec<String> {
    let mut parts: Vec<String> = piece.chars().map(String::from).collect();
    loop {
        let best = parts
            .windows(2)
            .enumerate()
            .filter_map(|(i, w)| {
                let rank = merges.iter().position(|(a, b)| *a == w[0] && *b == w[1])?;
                Some((rank, i))
            })
            .min();
        let Some((_, i)) = best else { return parts };
        let right = parts.remove(i + 1);
        parts[i].push_str(&right);
    }
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": special
    })
}

/// The demo model's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSize {
    /// Input resolution (the scenes' own size, so nothing is resized).
    pub image_size: usize,
    /// Patch side: `(image_size / patch_size)^2` image tokens.
    pub patch_size: usize,
    /// Vision width, MLP width, layers and heads.
    pub vision: [usize; 4],
    /// Decoder width, MLP width, layers, query heads, head width.
    pub text: [usize; 5],
}

impl Default for DemoSize {
    fn default() -> Self {
        DemoSize {
            image_size: SCENE_SIZE as usize,
            patch_size: 28,
            vision: [128, 512, 4, 4],
            text: [192, 512, 4, 3, 64],
        }
    }
}

impl DemoSize {
    fn image_tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }

    /// `config.json` for a vocabulary of `vocab` tokens whose `<image>` is `image_id`.
    fn config_json(&self, vocab: usize, image_id: usize) -> Value {
        let [vh, vi, vl, vn] = self.vision;
        let [th, ti, tl, tn, td] = self.text;
        let tokens = self.image_tokens();
        json!({
            "architectures": ["PaliGemmaForConditionalGeneration"],
            "model_type": "paligemma",
            "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
            "ignore_index": -100,
            "image_token_index": image_id,
            "hidden_size": th,
            "projection_dim": th,
            "torch_dtype": "float32",
            "text_config": {
                "model_type": "gemma",
                "hidden_size": th, "intermediate_size": ti, "num_hidden_layers": tl,
                "num_attention_heads": tn, "num_key_value_heads": 1, "head_dim": td,
                "vocab_size": vocab, "num_image_tokens": tokens,
                "max_position_embeddings": 512,
                "torch_dtype": "float32"
            },
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": vh, "intermediate_size": vi, "num_hidden_layers": vl,
                "num_attention_heads": vn, "patch_size": self.patch_size,
                "image_size": self.image_size, "num_image_tokens": tokens,
                "projection_dim": th, "vision_use_head": false
            }
        })
    }

    /// Every weight of the network, named as the hub names them, with its shape and
    /// initial values: N(0, 0.02) matrices and embeddings, zero biases, LayerNorm gains
    /// of one and Gemma's RMSNorm weights of zero (it scales by `1 + w`); the vision
    /// tower's learned position embeddings start as 2-D sine-cosine ones (as MAE's do),
    /// so that where a patch lies is known from the first step.
    fn initial_weights(
        &self,
        vocab: usize,
        first_loc: usize,
        seed: u64,
    ) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut rng = super::scene::Rng::new(seed);
        let mut normal = move |n: usize| rng.normals(n, 0.02);
        let mut out = Vec::new();
        let mut push =
            |name: String, shape: Vec<usize>, values: Vec<f32>| out.push((name, shape, values));
        let [vh, vi, vl, _] = self.vision;
        let [th, ti, tl, tn, td] = self.text;
        let p = self.patch_size;
        let v = "vision_tower.vision_model";
        push(
            format!("{v}.embeddings.patch_embedding.weight"),
            vec![vh, 3, p, p],
            normal(vh * 3 * p * p),
        );
        push(
            format!("{v}.embeddings.patch_embedding.bias"),
            vec![vh],
            vec![0.0; vh],
        );
        let tokens = self.image_tokens();
        push(
            format!("{v}.embeddings.position_embedding.weight"),
            vec![tokens, vh],
            sincos_2d(tokens, vh),
        );
        for i in 0..vl {
            let l = format!("{v}.encoder.layers.{i}");
            for norm in ["layer_norm1", "layer_norm2"] {
                push(format!("{l}.{norm}.weight"), vec![vh], vec![1.0; vh]);
                push(format!("{l}.{norm}.bias"), vec![vh], vec![0.0; vh]);
            }
            for (name, din, dout) in [
                ("self_attn.q_proj", vh, vh),
                ("self_attn.k_proj", vh, vh),
                ("self_attn.v_proj", vh, vh),
                ("self_attn.out_proj", vh, vh),
                ("mlp.fc1", vh, vi),
                ("mlp.fc2", vi, vh),
            ] {
                push(
                    format!("{l}.{name}.weight"),
                    vec![dout, din],
                    normal(din * dout),
                );
                push(format!("{l}.{name}.bias"), vec![dout], vec![0.0; dout]);
            }
        }
        push(
            format!("{v}.post_layernorm.weight"),
            vec![vh],
            vec![1.0; vh],
        );
        push(format!("{v}.post_layernorm.bias"), vec![vh], vec![0.0; vh]);
        push(
            "multi_modal_projector.linear.weight".into(),
            vec![th, vh],
            normal(th * vh),
        );
        push(
            "multi_modal_projector.linear.bias".into(),
            vec![th],
            vec![0.0; th],
        );
        let t = "language_model.model";
        let mut embed = normal(vocab * th);
        if let Some(rows) = embed.get_mut(first_loc * th..(first_loc + MAX_LOC as usize + 1) * th) {
            rows.copy_from_slice(&loc_embeddings(th));
        }
        push(format!("{t}.embed_tokens.weight"), vec![vocab, th], embed);
        for i in 0..tl {
            let l = format!("{t}.layers.{i}");
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                push(format!("{l}.{norm}.weight"), vec![th], vec![0.0; th]);
            }
            for (name, din, dout) in [
                ("self_attn.q_proj", th, tn * td),
                ("self_attn.k_proj", th, td),
                ("self_attn.v_proj", th, td),
                ("self_attn.o_proj", tn * td, th),
                ("mlp.gate_proj", th, ti),
                ("mlp.up_proj", th, ti),
                ("mlp.down_proj", ti, th),
            ] {
                push(
                    format!("{l}.{name}.weight"),
                    vec![dout, din],
                    normal(din * dout),
                );
            }
        }
        push(format!("{t}.norm.weight"), vec![th], vec![0.0; th]);
        out
    }
}

/// Position embeddings `[tokens, dim]` of a square grid of `tokens` patches in raster
/// order: the first half of the channels encode the row, the second the column, each
/// as sines and cosines of geometrically spaced frequencies.
fn sincos_2d(tokens: usize, dim: usize) -> Vec<f32> {
    let side = (tokens as f64).sqrt().round() as usize;
    let quarter = dim / 4;
    let mut out = vec![0f32; tokens * dim];
    for (t, row) in out.chunks_mut(dim).enumerate() {
        for (axis, coordinate) in [t / side.max(1), t % side.max(1)].into_iter().enumerate() {
            for k in 0..quarter {
                let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
                let angle = coordinate as f64 * omega;
                row[axis * 2 * quarter + k] = angle.sin() as f32;
                row[axis * 2 * quarter + quarter + k] = angle.cos() as f32;
            }
        }
    }
    out
}

/// Embeddings `[1024, dim]` of `<loc0000>`..`<loc1023>`: sines and cosines of the
/// coordinate at geometrically spaced periods (from 4 to 4096 steps), with the RMS of
/// the N(0, 0.02) rows. Neighbouring coordinates start similar, so what is learned for
/// one box edge carries over to the positions next to it instead of every one of the
/// 1024 tokens being learned alone.
fn loc_embeddings(dim: usize) -> Vec<f32> {
    let half = dim / 2;
    let scale = 0.02 * std::f64::consts::SQRT_2;
    let mut out = vec![0f32; (MAX_LOC as usize + 1) * dim];
    for (d, row) in out.chunks_mut(dim).enumerate() {
        for k in 0..half {
            let period = 4.0 * 1024f64.powf(k as f64 / (half.max(2) - 1) as f64);
            let angle = std::f64::consts::TAU * d as f64 / period;
            row[k] = (scale * angle.sin()) as f32;
            row[half + k] = (scale * angle.cos()) as f32;
        }
    }
    out
}

/// Write the untrained demo checkpoint into `dir` (created if needed): config,
/// tokenizer, processor files and weights drawn from `seed`.
pub fn write_initial_checkpoint(dir: &Path, size: &DemoSize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tokenizer = tokenizer_json();
    let parsed: Value = serde_json::from_str(&tokenizer)
        .map_err(|e| Error::Tokenizer(format!("demo tokenizer: {e}")))?;
    let image_id = parsed["model"]["vocab"]["<image>"]
        .as_u64()
        .ok_or_else(|| Error::Tokenizer("demo tokenizer has no <image>".into()))?
        as usize;
    let count = parsed["model"]["vocab"].as_object().map_or(0, |v| v.len());
    // Rows rounded up to a multiple of 64, as the released checkpoints pad theirs.
    let vocab = count.div_ceil(64) * 64;
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    };
    write("tokenizer.json", tokenizer)?;
    write("config.json", pretty(&size.config_json(vocab, image_id)))?;
    write(
        "tokenizer_config.json",
        pretty(&json!({
            "add_bos_token": true, "add_eos_token": false,
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
            "clean_up_tokenization_spaces": false, "padding_side": "right",
            "processor_class": "PaliGemmaProcessor", "tokenizer_class": "GemmaTokenizer"
        })),
    )?;
    write(
        "special_tokens_map.json",
        pretty(&json!({
            "additional_special_tokens": ["<image>"],
            "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"
        })),
    )?;
    write(
        "preprocessor_config.json",
        pretty(&json!({
            "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
            "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
            "image_processor_type": "SiglipImageProcessor",
            "image_seq_length": size.image_tokens(),
            "processor_class": "PaliGemmaProcessor", "resample": 3,
            "rescale_factor": 1.0 / 255.0,
            "size": {"height": size.image_size, "width": size.image_size}
        })),
    )?;
    let first_loc = parsed["model"]["vocab"]["<loc0000>"]
        .as_u64()
        .ok_or_else(|| Error::Tokenizer("demo tokenizer has no <loc0000>".into()))?
        as usize;
    let weights = size.initial_weights(vocab, first_loc, seed);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = weights
        .into_iter()
        .map(|(name, shape, values)| {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Backend(format!("demo weights: {e}")))?;
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path).map_err(|e| Error::WeightFile {
        path: path.clone(),
        reason: e.to_string(),
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}
