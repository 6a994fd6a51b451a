//! A mid-size random PaliGemma checkpoint (SigLIP 384 wide x 6 layers at 224 px, Gemma
//! 512 wide x 6 layers, MQA) with the tiny fixture's tokenizer: big enough that weight
//! reads matter, small enough to write in a second. Shared by `benches/model.rs` and
//! `examples/server_load.rs` (included with `#[path]`).
#![allow(dead_code)]

use std::path::Path;

use safetensors::{Dtype as StDtype, tensor::TensorView};

pub const IMAGE: usize = 224;
const PATCH: usize = 14;
const V_HIDDEN: usize = 384;
const V_INTER: usize = 1536;
const V_LAYERS: usize = 6;
const V_HEADS: usize = 6;
const T_HIDDEN: usize = 512;
const T_INTER: usize = 2048;
const T_LAYERS: usize = 6;
const T_HEADS: usize = 8;
const HEAD_DIM: usize = 64;
/// The fixture tokenizer's vocabulary (its `<image>` is 1625).
const VOCAB: usize = 1664;

/// Hub-layout tensor names and shapes of the mid-size model.
fn specs() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let v = "vision_tower.vision_model";
    let patches = (IMAGE / PATCH) * (IMAGE / PATCH);
    out.push((
        format!("{v}.embeddings.patch_embedding.weight"),
        vec![V_HIDDEN, 3, PATCH, PATCH],
    ));
    out.push((
        format!("{v}.embeddings.patch_embedding.bias"),
        vec![V_HIDDEN],
    ));
    out.push((
        format!("{v}.embeddings.position_embedding.weight"),
        vec![patches, V_HIDDEN],
    ));
    for i in 0..V_LAYERS {
        let l = format!("{v}.encoder.layers.{i}");
        for norm in ["layer_norm1", "layer_norm2"] {
            out.push((format!("{l}.{norm}.weight"), vec![V_HIDDEN]));
            out.push((format!("{l}.{norm}.bias"), vec![V_HIDDEN]));
        }
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            out.push((
                format!("{l}.self_attn.{p}.weight"),
                vec![V_HIDDEN, V_HIDDEN],
            ));
            out.push((format!("{l}.self_attn.{p}.bias"), vec![V_HIDDEN]));
        }
        out.push((format!("{l}.mlp.fc1.weight"), vec![V_INTER, V_HIDDEN]));
        out.push((format!("{l}.mlp.fc1.bias"), vec![V_INTER]));
        out.push((format!("{l}.mlp.fc2.weight"), vec![V_HIDDEN, V_INTER]));
        out.push((format!("{l}.mlp.fc2.bias"), vec![V_HIDDEN]));
    }
    out.push((format!("{v}.post_layernorm.weight"), vec![V_HIDDEN]));
    out.push((format!("{v}.post_layernorm.bias"), vec![V_HIDDEN]));
    out.push((
        "multi_modal_projector.linear.weight".into(),
        vec![T_HIDDEN, V_HIDDEN],
    ));
    out.push(("multi_modal_projector.linear.bias".into(), vec![T_HIDDEN]));
    let t = "language_model.model";
    out.push((format!("{t}.embed_tokens.weight"), vec![VOCAB, T_HIDDEN]));
    for i in 0..T_LAYERS {
        let l = format!("{t}.layers.{i}");
        out.push((format!("{l}.input_layernorm.weight"), vec![T_HIDDEN]));
        out.push((
            format!("{l}.post_attention_layernorm.weight"),
            vec![T_HIDDEN],
        ));
        let q = T_HEADS * HEAD_DIM;
        out.push((format!("{l}.self_attn.q_proj.weight"), vec![q, T_HIDDEN]));
        out.push((
            format!("{l}.self_attn.k_proj.weight"),
            vec![HEAD_DIM, T_HIDDEN],
        ));
        out.push((
            format!("{l}.self_attn.v_proj.weight"),
            vec![HEAD_DIM, T_HIDDEN],
        ));
        out.push((format!("{l}.self_attn.o_proj.weight"), vec![T_HIDDEN, q]));
        out.push((format!("{l}.mlp.gate_proj.weight"), vec![T_INTER, T_HIDDEN]));
        out.push((format!("{l}.mlp.up_proj.weight"), vec![T_INTER, T_HIDDEN]));
        out.push((format!("{l}.mlp.down_proj.weight"), vec![T_HIDDEN, T_INTER]));
    }
    out.push((format!("{t}.norm.weight"), vec![T_HIDDEN]));
    out
}

/// Write config, tokenizer and random weights for the mid-size model into `dir`.
pub fn write_checkpoint(dir: &Path) {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pg1-tiny");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny.join(file), dir.join(file)).expect("copy tokenizer");
    }
    let tokens = (IMAGE / PATCH) * (IMAGE / PATCH);
    let config = serde_json::json!({
        "architectures": ["PaliGemmaForConditionalGeneration"],
        "model_type": "paligemma", "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
        "image_token_index": 1625, "hidden_size": T_HIDDEN, "projection_dim": T_HIDDEN,
        "text_config": {
            "model_type": "gemma", "hidden_size": T_HIDDEN, "intermediate_size": T_INTER,
            "num_attention_heads": T_HEADS, "num_hidden_layers": T_LAYERS,
            "num_key_value_heads": 1, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
            "num_image_tokens": tokens
        },
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": V_HIDDEN,
            "intermediate_size": V_INTER, "num_attention_heads": V_HEADS,
            "num_hidden_layers": V_LAYERS, "patch_size": PATCH, "image_size": IMAGE,
            "num_image_tokens": tokens, "projection_dim": T_HIDDEN
        }
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config");
    // A fixed xorshift stream, values in [-0.05, 0.05): small enough that 6 layers stay
    // in range in every dtype.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let buffers: Vec<(String, Vec<usize>, Vec<u8>)> = specs()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1;
                    v.to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(StDtype::F32, shape.clone(), bytes).expect("view");
            (name.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors"))
        .expect("write weights");
}
