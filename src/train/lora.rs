//! LoRA fine-tuning as PEFT does it: adapters of rank `r` on the decoder's projections
//! (by default q, k, v, o, gate, up and down), `B` zero at the start, saved as a PEFT
//! adapter directory (`adapter_config.json` + `adapter_model.safetensors` with PEFT's
//! key names) that `PeftModel.from_pretrained(base, dir)` loads, or merged into the
//! weights.

use std::path::Path;

use burn::tensor::backend::Backend;

use super::names::peft_key;
use super::save::{Entry, write_safetensors};
use crate::error::{Error, Result};
use crate::lora::Lora;
use crate::model::Model;
use crate::precision::Dtype;
use crate::weights::WeightStore;

/// Which decoder projections get adapters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraTargets {
    /// Attention query projection.
    pub q: bool,
    /// Attention key projection.
    pub k: bool,
    /// Attention value projection.
    pub v: bool,
    /// Attention output projection.
    pub o: bool,
    /// MLP gate projection.
    pub gate: bool,
    /// MLP up projection.
    pub up: bool,
    /// MLP down projection.
    pub down: bool,
}

impl Default for LoraTargets {
    /// All seven, as the transformers + peft recipes for PaliGemma target.
    fn default() -> Self {
        LoraTargets {
            q: true,
            k: true,
            v: true,
            o: true,
            gate: true,
            up: true,
            down: true,
        }
    }
}

impl LoraTargets {
    fn contains(&self, name: &str) -> bool {
        match name {
            "q" => self.q,
            "k" => self.k,
            "v" => self.v,
            "o" => self.o,
            "gate" => self.gate,
            "up" => self.up,
            "down" => self.down,
            _ => false,
        }
    }
}

/// LoRA settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of every adapter.
    pub rank: usize,
    /// `alpha`: adapters scale their output by `alpha / r`.
    pub alpha: f32,
    /// Where adapters go.
    pub targets: LoraTargets,
    /// Seed of the `A` initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    /// r = 8, alpha = 16 on all seven projections.
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: LoraTargets::default(),
            seed: 0,
        }
    }
}

impl<B: Backend> Model<B> {
    /// Add fresh adapters (`B` = 0: the model computes what it did) to the projections
    /// `config` targets.
    pub fn with_lora(self, config: &LoraConfig) -> Result<Self> {
        if config.rank == 0 || !(config.alpha.is_finite() && config.alpha > 0.0) {
            return Err(Error::Options(format!(
                "LoRA needs a positive rank and alpha, got r = {} and alpha = {}",
                config.rank, config.alpha
            )));
        }
        let device = self.device().clone();
        let mut count = 0u64;
        self.try_map_network(|net| {
            net.try_map_decoder(|decoder| {
                decoder.try_map_projections(|_, name, linear| {
                    if !config.targets.contains(name) {
                        return Ok(linear);
                    }
                    count += 1;
                    let [out, inp] = linear.dims();
                    let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(count);
                    let lora = Lora::new(inp, out, config.rank, config.alpha, seed, &device);
                    linear.with_lora(lora)
                })
            })
        })
    }

    /// Load a PEFT LoRA adapter directory (`adapter_config.json` and
    /// `adapter_model.safetensors`) onto the decoder's projections.
    pub fn with_lora_adapter(self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let bad = |reason: String| Error::Config {
            path: Some(config_path.clone()),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if json["peft_type"].as_str() != Some("LORA") {
            return Err(bad("peft_type is not \"LORA\"".into()));
        }
        for unsupported in ["use_dora", "use_rslora"] {
            if json[unsupported].as_bool() == Some(true) {
                return Err(bad(format!("{unsupported} adapters are not supported")));
            }
        }
        let rank = json["r"].as_u64().ok_or_else(|| bad("no \"r\"".into()))? as usize;
        let alpha = json["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad("no \"lora_alpha\"".into()))? as f32;
        let store = WeightStore::open_files(&[dir.join("adapter_model.safetensors")])?;
        let arch = self.config().text.arch;
        let device = self.device().clone();
        self.try_map_network(|net| {
            net.try_map_decoder(|decoder| {
                decoder.try_map_projections(|layer, name, linear| {
                    let key_a = peft_key(layer, name, arch, "A")?;
                    if store.find(&key_a).is_err() {
                        return Ok(linear);
                    }
                    let [out, inp] = linear.dims();
                    let a = store.tensor_f32::<B, 2>(&key_a, [rank, inp], &device)?;
                    let key_b = peft_key(layer, name, arch, "B")?;
                    let b = store.tensor_f32::<B, 2>(&key_b, [out, rank], &device)?;
                    linear.with_lora(Lora::from_weights(a, b, alpha))
                })
            })
        })
    }

    /// Whether any projection has an adapter.
    pub fn has_lora(&self) -> bool {
        self.decoder()
            .projections()
            .iter()
            .any(|(_, _, l)| l.lora().is_some())
    }

    /// The adapters folded into the weights: a plain model computing the same function.
    pub fn merge_lora(self) -> Result<Self> {
        self.try_map_network(|net| {
            net.try_map_decoder(|decoder| decoder.try_map_projections(|_, _, l| Ok(l.merged())))
        })
    }

    /// Write the adapters as a PEFT adapter directory `dir` (created; must not exist).
    pub fn save_lora_adapter(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let arch = self.config().text.arch;
        let mut entries = Vec::new();
        let mut targets = Vec::new();
        let (mut rank, mut scale_alpha) = (0, 0.0f64);
        for (layer, name, linear) in self.decoder().projections() {
            let Some(lora) = linear.lora() else {
                continue;
            };
            let (a, b) = lora.weights();
            rank = lora.rank();
            scale_alpha = lora.scale() * rank as f64;
            if !targets.contains(&name) {
                targets.push(name);
            }
            for (which, t) in [("A", a), ("B", b)] {
                entries.push(Entry {
                    name: peft_key(layer, name, arch, which)?,
                    shape: t.dims().to_vec(),
                    values: t.flatten::<1>(0, 1),
                });
            }
        }
        if entries.is_empty() {
            return Err(Error::Options(
                "the model has no LoRA adapters to save".into(),
            ));
        }
        if dir.exists() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists"),
            ));
        }
        let modules: Vec<String> = targets.iter().map(|n| format!("{n}_proj")).collect();
        let config = serde_json::json!({
            "peft_type": "LORA",
            "r": rank,
            "lora_alpha": scale_alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "use_rslora": false,
            "use_dora": false,
            "modules_to_save": null,
            "task_type": null,
            "base_model_name_or_path": self.source().map(|s| s.origin.describe()),
            // A pattern, not a list of names: a list would also match the vision
            // tower's q/k/v projections.
            "target_modules": format!(".*language_model.*\\.({})", modules.join("|")),
        });
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let written = (|| {
            let path = dir.join("adapter_config.json");
            let text = serde_json::to_string_pretty(&config)
                .map_err(|e| Error::Backend(format!("adapter config: {e}")))?;
            std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
            write_safetensors(&dir.join("adapter_model.safetensors"), entries, Dtype::F32)
        })();
        if written.is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
        written
    }
}
