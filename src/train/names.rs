//! The checkpoint name of every parameter: the network's module paths (its field
//! names, as burn's visitors report them) mapped to the tensor names of a Hugging Face
//! checkpoint, for gradients by name and for saving.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::AutodiffBackend};

use crate::config::TextArch;
use crate::error::{Error, Result};
use crate::model::Model;

/// The hub-layout name of the parameter at `path` (e.g. `["decoder", "layers", "3",
/// "q", "weight"]`; PEFT's key for a LoRA matrix), or `None` for a path that is not a
/// checkpoint tensor.
pub(crate) fn checkpoint_name(path: &[String], arch: TextArch) -> Option<String> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    let norm = |field: &str| match field {
        "gamma" => Some("weight"),
        "beta" => Some("bias"),
        _ => None,
    };
    Some(match p.as_slice() {
        ["vision", "patch_embed", w] => {
            format!("vision_tower.vision_model.embeddings.patch_embedding.{w}")
        }
        ["vision", "positions"] => {
            "vision_tower.vision_model.embeddings.position_embedding.weight".into()
        }
        ["vision", "post_ln", f] => {
            format!("vision_tower.vision_model.post_layernorm.{}", norm(f)?)
        }
        ["vision", "layers", i, layer, f] => {
            let pre = format!("vision_tower.vision_model.encoder.layers.{i}");
            match *layer {
                "ln1" => format!("{pre}.layer_norm1.{}", norm(f)?),
                "ln2" => format!("{pre}.layer_norm2.{}", norm(f)?),
                "q" | "k" | "v" => format!("{pre}.self_attn.{layer}_proj.{f}"),
                "out" => format!("{pre}.self_attn.out_proj.{f}"),
                "fc1" | "fc2" => format!("{pre}.mlp.{layer}.{f}"),
                _ => return None,
            }
        }
        ["projector", f] => format!("multi_modal_projector.linear.{f}"),
        ["decoder", "embed", "weight"] => "language_model.model.embed_tokens.weight".into(),
        ["decoder", "norm", "weight"] => "language_model.model.norm.weight".into(),
        ["decoder", "layers", i, proj, "lora", m] => {
            let which = if *m == "a" { "A" } else { "B" };
            return peft_key(i.parse().ok()?, proj, arch, which).ok();
        }
        ["decoder", "layers", i, layer, f] => {
            let pre = format!("language_model.model.layers.{i}");
            let gemma2 = arch == TextArch::Gemma2;
            match *layer {
                "input_norm" => format!("{pre}.input_layernorm.{f}"),
                "q" | "k" | "v" | "o" => format!("{pre}.self_attn.{layer}_proj.{f}"),
                "post_attn_norm" => format!("{pre}.post_attention_layernorm.{f}"),
                // Gemma names its pre-MLP norm `post_attention_layernorm`.
                "pre_mlp_norm" if gemma2 => format!("{pre}.pre_feedforward_layernorm.{f}"),
                "pre_mlp_norm" => format!("{pre}.post_attention_layernorm.{f}"),
                "post_mlp_norm" => format!("{pre}.post_feedforward_layernorm.{f}"),
                "gate" | "up" | "down" => format!("{pre}.mlp.{layer}_proj.{f}"),
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// PEFT's key for the adapter matrix `which` ("A" or "B") of projection `proj` of
/// decoder layer `layer`, e.g.
/// `base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight`.
pub(crate) fn peft_key(layer: usize, proj: &str, arch: TextArch, which: &str) -> Result<String> {
    let path = ["decoder", "layers", &layer.to_string(), proj, "weight"].map(String::from);
    let module = checkpoint_name(&path, arch)
        .and_then(|n| {
            n.strip_prefix("language_model.model.")?
                .strip_suffix(".weight")
                .map(str::to_string)
        })
        .ok_or_else(|| Error::Backend(format!("no checkpoint name for projection {proj}")))?;
    Ok(format!(
        "base_model.model.model.language_model.{module}.lora_{which}.weight"
    ))
}

/// A tensor with its checkpoint name, on the host in f32.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    /// Hub-layout name, e.g. `language_model.model.layers.0.self_attn.q_proj.weight`.
    pub name: String,
    /// The parameter's shape in this crate (the patch embedding is `[hidden, 3 * p * p]`
    /// here, `[hidden, 3, p, p]` in the checkpoint; the values are in the same order).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Collects the gradient of every parameter that has one, by checkpoint name.
struct Gradients<'a, B: AutodiffBackend> {
    arch: TextArch,
    grads: &'a B::Gradients,
    path: Vec<String>,
    out: Vec<NamedTensor>,
    error: Option<Error>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let path = &self.path;
        let tensor = param.val();
        let Some(name) = checkpoint_name(path, self.arch) else {
            self.error.get_or_insert(Error::Backend(format!(
                "parameter {} has no checkpoint name",
                path.join(".")
            )));
            return;
        };
        let Some(grad) = tensor.grad(self.grads) else {
            return;
        };
        match grad.into_data().convert::<f32>().into_vec::<f32>() {
            Ok(values) => self.out.push(NamedTensor {
                name,
                shape: tensor.dims().to_vec(),
                values,
            }),
            Err(e) => {
                self.error
                    .get_or_insert(Error::Backend(format!("reading {name}: {e:?}")));
            }
        }
    }
}

impl<B: AutodiffBackend> Model<B> {
    /// The gradient of every parameter that has one in `grads` (from
    /// `loss.value.backward()`), by checkpoint name.
    pub fn named_gradients(&self, grads: &B::Gradients) -> Result<Vec<NamedTensor>> {
        let mut visitor = Gradients {
            arch: self.config().text.arch,
            grads,
            path: Vec::new(),
            out: Vec::new(),
            error: None,
        };
        self.network().visit(&mut visitor);
        match visitor.error {
            Some(e) => Err(e),
            None => Ok(visitor.out),
        }
    }
}
