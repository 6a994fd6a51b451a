//! Optimisation: the gradients of a batch loss applied by SGD or AdamW with torch's
//! semantics, in f32, to the parameters the [`Method`] trains.

use burn::optim::{
    AdamW, AdamWConfig, GradientsParams, Optimizer as _, Sgd, SgdConfig, adaptor::OptimizerAdaptor,
    decay::WeightDecayConfig, momentum::MomentumConfig,
};
use burn::tensor::backend::AutodiffBackend;

use super::batch::Batch;
use super::loss::Reduction;
use super::method::Method;
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
}

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
        })
    }

    /// Average the loss per example instead of per token (big_vision's colab).
    pub fn with_reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
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
        let model = self.model.take().ok_or_else(lost)?;
        let (loss, grads) = match model.loss(batch, self.reduction) {
            Ok(loss) => {
                let value = loss.scalar();
                let grads = GradientsParams::from_grads(loss.value.backward(), model.network());
                (value, grads)
            }
            Err(e) => {
                self.model = Some(model);
                return Err(e);
            }
        };
        let optimizer = &mut self.optimizer;
        self.model = Some(model.map_network(|network| match optimizer {
            State::Sgd(o) => o.step(lr, network, grads),
            State::AdamW(o) => o.step(lr, network, grads),
        }));
        loss
    }
}

fn lost() -> Error {
    Error::Backend("the trainer lost its model in an earlier failed step".into())
}
