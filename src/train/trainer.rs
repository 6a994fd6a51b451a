//! Optimisation: the gradients of a batch loss applied by SGD or AdamW with torch's
//! semantics, in f32, to the parameters the [`Method`] trains.

use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{
    AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer as _, Sgd, SgdConfig,
    adaptor::OptimizerAdaptor, decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::tensor::{
    Tensor,
    backend::{AutodiffBackend, Backend},
};

use super::batch::Batch;
use super::features::FeatureCache;
use super::loss::Reduction;
use super::method::{Method, SetTrainable};
use super::save::temporary_sibling;
use super::state;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::paligemma::PaliGemma;

/// The optimiser, with torch's update rules (burn's own defaults differ, so every
/// value is explicit here).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// `p -= lr * d` with `d = g + weight_decay * p`; with momentum, a buffer that starts
    /// as the first `d` and then follows `b = momentum * b + d`, `d = b` (`torch.optim.SGD`).
    Sgd {
        /// Momentum factor (0: none).
        momentum: f64,
        /// L2 penalty added to the gradient.
        weight_decay: f32,
    },
    /// Adam with bias correction and decoupled weight decay `p *= 1 - lr * wd`
    /// (`torch.optim.AdamW`).
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Added to `sqrt(v_hat)`.
        epsilon: f32,
        /// Decoupled weight decay.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// Plain SGD, no momentum or decay (big_vision's colab).
    pub fn sgd() -> Self {
        Optimizer::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
        }
    }

    /// AdamW with torch's defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn adamw() -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
        }
    }
}

enum State<B: AutodiffBackend> {
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, PaliGemma<B>, B>),
    AdamW(OptimizerAdaptor<AdamW, PaliGemma<B>, B>),
}

/// Fine-tunes a model: one call of [`Trainer::step`] per optimiser step.
///
/// ```
/// # fn main() -> paligemma::Result<()> {
/// use burn::backend::Autodiff;
/// use paligemma::{Model, backend::Cpu};
/// use paligemma::train::{Example, Method, Optimizer, Trainer};
///
/// let model = Model::<Autodiff<Cpu>>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
/// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
/// let batch = model.training_batch(&[Example::new(image, "caption en", "a photo")])?;
/// let mut trainer = Trainer::new(model, Method::Attention, Optimizer::adamw())?;
/// let first = trainer.step(&batch, 1e-3)?;
/// for _ in 0..4 {
///     trainer.step(&batch, 1e-3)?;
/// }
/// assert!(trainer.step(&batch, 1e-3)? < first);
/// # Ok(()) }
/// ```
pub struct Trainer<B: AutodiffBackend> {
    model: Option<Model<B>>,
    optimizer: State<B>,
    reduction: Reduction,
    clip_norm: Option<f32>,
    /// With the vision tower frozen: its features per image, computed once.
    features: Option<FeatureCache<B>>,
}

/// Bytes of image features a trainer with a frozen vision tower keeps by default.
const FEATURE_BUDGET: usize = 1 << 30;

impl<B: AutodiffBackend> Trainer<B> {
    /// Train the parameters `method` selects with `optimizer`, on transformers' loss.
    /// With [`Method::Lora`], fresh adapters are added first unless the model already
    /// has some (loaded with `Model::with_lora_adapter`), which then train.
    pub fn new(model: Model<B>, method: Method, optimizer: Optimizer) -> Result<Self> {
        let model = match method {
            Method::Lora(config) if !model.has_lora() => model.with_lora(&config)?,
            _ => model,
        };
        let state = match optimizer {
            Optimizer::Sgd {
                momentum,
                weight_decay,
            } => {
                let config = SgdConfig::new()
                    .with_momentum((momentum != 0.0).then_some(MomentumConfig {
                        momentum,
                        dampening: 0.0,
                        nesterov: false,
                    }))
                    .with_weight_decay((weight_decay != 0.0).then_some(WeightDecayConfig {
                        penalty: weight_decay,
                    }));
                State::Sgd(config.init())
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                epsilon,
                weight_decay,
            } => State::AdamW(
                AdamWConfig::new()
                    .with_beta_1(beta1)
                    .with_beta_2(beta2)
                    .with_epsilon(epsilon)
                    .with_weight_decay(weight_decay)
                    .init(),
            ),
        };
        Ok(Trainer {
            model: Some(model.with_trainable(method)),
            optimizer: state,
            reduction: Reduction::Tokens,
            clip_norm: None,
            features: None,
        })
    }

    /// Scale the gradients down to a global L2 norm of at most `max_norm` before each
    /// update, as `torch.nn.utils.clip_grad_norm_` does (factor `max_norm / (norm + 1e-6)`).
    pub fn with_clip_norm(mut self, max_norm: f32) -> Self {
        self.clip_norm = Some(max_norm);
        self
    }

    /// Freeze the vision tower and the projector (they keep their weights). Their
    /// features are then computed once per image, outside the autodiff graph, and
    /// kept for later steps over the same image (up to 1 GiB of them; see
    /// [`Trainer::with_feature_budget`]).
    pub fn with_frozen_vision(mut self) -> Result<Self> {
        let model = self.model.take().ok_or_else(lost)?;
        let vision = |path: &[String]| {
            let top = path.first().map(String::as_str);
            matches!(top, Some("vision" | "projector")).then_some(false)
        };
        self.model = Some(model.map_network(|n| n.map(&mut SetTrainable::new(vision))));
        self.features = Some(FeatureCache::new(FEATURE_BUDGET));
        Ok(self)
    }

    /// With a frozen vision tower, keep at most `bytes` of image features (f32,
    /// `image tokens x hidden` per image: 2 MiB for a 3B model at 224 px); 0 keeps
    /// none, and every step runs the tower again. No effect otherwise.
    pub fn with_feature_budget(mut self, bytes: usize) -> Self {
        if self.features.is_some() {
            self.features = Some(FeatureCache::new(bytes));
        }
        self
    }

    /// Images whose frozen-tower features are kept (0 unless the vision tower is
    /// frozen).
    pub fn cached_images(&self) -> usize {
        self.features.as_ref().map_or(0, FeatureCache::len)
    }

    /// Average the loss per example instead of per token (big_vision's colab).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// Write the optimiser's state (AdamW's moments and step count, SGD's momentum
    /// buffers) to the file `path`, keyed by parameter name, so that a later process
    /// that loads the model saved at the same step continues the run exactly
    /// ([`Trainer::load_optimizer_state`]). The file is written beside `path` and
    /// renamed into place: it is never left half-written.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use burn::backend::Autodiff;
    /// use paligemma::{Model, backend::Cpu};
    /// use paligemma::train::{Example, Method, Optimizer, Trainer};
    ///
    /// let device = Default::default();
    /// let model = Model::<Autodiff<Cpu>>::from_pretrained("tests/fixtures/pg1-tiny", &device)?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let batch = model.training_batch(&[Example::new(image, "caption en", "a photo")])?;
    /// let mut trainer = Trainer::new(model, Method::Attention, Optimizer::adamw())?;
    /// trainer.step(&batch, 1e-3)?;
    ///
    /// let dir = tempfile::tempdir()?;
    /// trainer.model()?.save_pretrained(dir.path().join("step-1"), None)?;
    /// trainer.save_optimizer_state(dir.path().join("step-1.optimizer"))?;
    ///
    /// // Later, in another process: the same model and optimiser, one step on.
    /// let model = Model::<Autodiff<Cpu>>::from_pretrained(dir.path().join("step-1"), &device)?;
    /// let mut resumed = Trainer::new(model, Method::Attention, Optimizer::adamw())?
    ///     .load_optimizer_state(dir.path().join("step-1.optimizer"))?;
    /// resumed.step(&batch, 1e-3)?;
    /// # Ok(()) }
    /// ```
    pub fn save_optimizer_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let model = self.model()?;
        let names = state::parameter_names(model.network(), model.config().text.arch)?;
        let bytes = match &self.optimizer {
            State::Sgd(o) => state::encode(o, "sgd", &names)?,
            State::AdamW(o) => state::encode(o, "adamw", &names)?,
        };
        let tmp = temporary_sibling(path)?;
        let written = std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(path, e));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Continue from an optimiser state written by [`Trainer::save_optimizer_state`]:
    /// each saved entry goes to the parameter of the same name. Refused (with the
    /// file named) when the state is of the other optimiser, or names a parameter
    /// this model lacks or has in another shape (a different LoRA rank, say).
    /// Parameters the file has no entry for start fresh.
    pub fn load_optimizer_state(mut self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let model = self.model()?;
        let names = state::parameter_names(model.network(), model.config().text.arch)?;
        let device = model.device().clone();
        self.optimizer = match self.optimizer {
            State::Sgd(o) => State::Sgd(state::decode(o, "sgd", &names, bytes, path, &device)?),
            State::AdamW(o) => {
                State::AdamW(state::decode(o, "adamw", &names, bytes, path, &device)?)
            }
        };
        Ok(self)
    }

    /// The model as trained so far.
    pub fn model(&self) -> Result<&Model<B>> {
        self.model.as_ref().ok_or_else(lost)
    }

    /// The trained model.
    pub fn into_model(self) -> Result<Model<B>> {
        self.model.ok_or_else(lost)
    }

    /// One optimiser step on `batch` at learning rate `lr`; returns the batch loss
    /// before the update.
    pub fn step(&mut self, batch: &Batch, lr: f64) -> Result<f32> {
        self.step_accumulated(std::slice::from_ref(batch), lr)
    }

    /// One optimiser step on the gradient of several batches (gradient accumulation):
    /// each batch's loss is weighted so that the step follows the loss of all their
    /// examples together (token-weighted, or per example with [`Reduction::Examples`]).
    /// Returns that combined loss before the update.
    pub fn step_accumulated(&mut self, batches: &[Batch], lr: f64) -> Result<f32> {
        let model = self.model.take().ok_or_else(lost)?;
        match self.gradients(&model, batches) {
            Ok((loss, grads)) => {
                let optimizer = &mut self.optimizer;
                self.model = Some(model.map_network(|network| match optimizer {
                    State::Sgd(o) => o.step(lr, network, grads),
                    State::AdamW(o) => o.step(lr, network, grads),
                }));
                Ok(loss)
            }
            Err(e) => {
                self.model = Some(model);
                Err(e)
            }
        }
    }

    /// The combined loss of `batches` and its (clipped) gradients.
    fn gradients(&mut self, model: &Model<B>, batches: &[Batch]) -> Result<(f32, GradientsParams)> {
        let reduction = self.reduction;
        let weight = |b: &Batch| match reduction {
            Reduction::Tokens => b.supervised_tokens() as f64,
            Reduction::Examples => b.len() as f64,
        };
        let total: f64 = batches.iter().map(weight).sum();
        if total == 0.0 {
            return Err(Error::Prompt("no batches to train on".into()));
        }
        let mut accumulator = GradientsAccumulator::new();
        let mut loss = 0.0f64;
        for batch in batches {
            let share = weight(batch) / total;
            let l = match &mut self.features {
                Some(cache) => {
                    let features = cache.features(model, batch);
                    model.loss_from_features(batch, features, reduction)?
                }
                None => model.loss(batch, reduction)?,
            };
            loss += f64::from(l.scalar()?) * share;
            let grads = (l.value * share).backward();
            accumulator.accumulate(
                model.network(),
                GradientsParams::from_grads(grads, model.network()),
            );
        }
        let mut grads = accumulator.grads();
        if let Some(max_norm) = self.clip_norm {
            grads = clip_global_norm::<B>(grads, model.network(), max_norm)?;
        }
        Ok((loss as f32, grads))
    }
}

/// The ids of every float parameter.
struct Ids(Vec<(ParamId, usize)>);

impl<B: AutodiffBackend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0.push((param.id, D));
    }
}

/// torch's `clip_grad_norm_`: one L2 norm over every gradient; above `max_norm`, every
/// gradient is multiplied by `max_norm / (norm + 1e-6)`.
fn clip_global_norm<B: AutodiffBackend>(
    mut grads: GradientsParams,
    network: &PaliGemma<B>,
    max_norm: f32,
) -> Result<GradientsParams> {
    let mut ids = Ids(Vec::new());
    network.visit(&mut ids);
    fn sum_sq<B: Backend, const D: usize>(
        g: &GradientsParams,
        id: ParamId,
    ) -> Option<Tensor<B, 1>> {
        g.get::<B, D>(id).map(|t| t.powi_scalar(2).sum())
    }
    let mut squares = Vec::new();
    for &(id, rank) in &ids.0 {
        let s = match rank {
            1 => sum_sq::<B::InnerBackend, 1>(&grads, id),
            2 => sum_sq::<B::InnerBackend, 2>(&grads, id),
            3 => sum_sq::<B::InnerBackend, 3>(&grads, id),
            4 => sum_sq::<B::InnerBackend, 4>(&grads, id),
            _ => None,
        };
        squares.extend(s);
    }
    if squares.is_empty() {
        return Ok(grads);
    }
    let norm = Tensor::cat(squares, 0)
        .sum()
        .sqrt()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading the gradient norm: {e:?}")))?[0];
    if norm <= max_norm {
        return Ok(grads);
    }
    let factor = max_norm / (norm + 1e-6);
    fn scale<B: Backend, const D: usize>(g: &mut GradientsParams, id: ParamId, f: f32) {
        if let Some(t) = g.remove::<B, D>(id) {
            g.register(id, t * f);
        }
    }
    for &(id, rank) in &ids.0 {
        match rank {
            1 => scale::<B::InnerBackend, 1>(&mut grads, id, factor),
            2 => scale::<B::InnerBackend, 2>(&mut grads, id, factor),
            3 => scale::<B::InnerBackend, 3>(&mut grads, id, factor),
            4 => scale::<B::InnerBackend, 4>(&mut grads, id, factor),
            _ => {}
        }
    }
    Ok(grads)
}

fn lost() -> Error {
    Error::Backend("the trainer lost its model in an earlier failed step".into())
}
