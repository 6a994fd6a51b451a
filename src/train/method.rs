//! What trains: every parameter, or only the decoder's attention projections (as
//! big_vision's colab fine-tunes); the rest is frozen (no gradient, no update).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, backend::AutodiffBackend};

use super::lora::LoraConfig;
use crate::model::Model;

/// Which parameters a fine-tune updates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Method {
    /// Every parameter: vision tower, projector and decoder.
    #[default]
    Full,
    /// The decoder's `q`, `k`, `v` and `o` projections only.
    Attention,
    /// Low-rank adapters (added by the trainer), everything else frozen.
    Lora(LoraConfig),
}

impl Method {
    /// Whether the parameter at module path `path` trains under this method.
    pub(crate) fn trains(self, path: &[String]) -> bool {
        match self {
            Method::Full => true,
            Method::Attention => {
                matches!(path, [decoder, layers, _, proj, _]
                    if decoder == "decoder" && layers == "layers"
                        && matches!(proj.as_str(), "q" | "k" | "v" | "o"))
            }
            Method::Lora(_) => path.iter().any(|p| p == "lora"),
        }
    }
}

/// Sets `require_grad` by module path: `decide(path)` is `Some(trains)` for the
/// parameters it settles and `None` for those it leaves as they are.
pub(crate) struct SetTrainable<F> {
    decide: F,
    path: Vec<String>,
}

impl<F: Fn(&[String]) -> Option<bool>> SetTrainable<F> {
    pub(crate) fn new(decide: F) -> Self {
        SetTrainable {
            decide,
            path: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend, F: Fn(&[String]) -> Option<bool>> ModuleMapper<B> for SetTrainable<F> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        match (self.decide)(&self.path) {
            Some(trains) => param.set_require_grad(trains),
            None => param,
        }
    }
}

impl<B: AutodiffBackend> Model<B> {
    /// The same model on the inner backend, without autodiff (evaluation, merging and
    /// saving after training: no graph is recorded and no gradient kept).
    pub fn valid(&self) -> Model<B::InnerBackend> {
        self.to_inner()
    }

    /// Mark the parameters `method` trains as requiring gradients and freeze the rest.
    pub fn with_trainable(self, method: Method) -> Self {
        self.map_network(|network| {
            network.map(&mut SetTrainable::new(|path: &[String]| {
                Some(method.trains(path))
            }))
        })
    }
}
