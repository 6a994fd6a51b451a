//! The training loss: the network over a batch (prefix bidirectional, suffix causal,
//! padding invisible to real tokens, positions `1..=width` over the padded row as
//! transformers' training forward numbers them), logits only where a label exists,
//! cross-entropy in f32.

use burn::tensor::{Int, Tensor, TensorData, activation::log_softmax, backend::Backend};

use super::batch::Batch;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::prefix_lm::RowLayout;

/// How per-token losses become the batch loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean over every supervised token of the batch, as transformers computes it
    /// (examples weighted by their supervised token counts).
    #[default]
    Tokens,
    /// The mean of each example's mean, as big_vision's colab averages (equal to
    /// `Tokens` at batch size 1).
    Examples,
}

/// A batch loss, still attached to the autodiff graph on an autodiff backend.
#[derive(Debug, Clone)]
pub struct Loss<B: Backend> {
    /// The batch loss, one value: `loss.value.backward()` gives the gradients.
    pub value: Tensor<B, 1>,
    /// The loss of every supervised token, in batch order.
    pub token_losses: Tensor<B, 1>,
    /// Supervised tokens of each example.
    pub tokens_per_example: Vec<usize>,
}

impl<B: Backend> Loss<B> {
    /// The batch loss as a number.
    pub fn scalar(&self) -> Result<f32> {
        Ok(read(self.value.clone())?
            .first()
            .copied()
            .unwrap_or(f32::NAN))
    }

    /// Each example's mean token loss.
    pub fn per_example(&self) -> Result<Vec<f32>> {
        let all = read(self.token_losses.clone())?;
        let mut out = Vec::with_capacity(self.tokens_per_example.len());
        let mut start = 0;
        for &n in &self.tokens_per_example {
            let part = &all[start..start + n];
            out.push(part.iter().sum::<f32>() / n.max(1) as f32);
            start += n;
        }
        Ok(out)
    }
}

fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::Backend(format!("reading the loss: {e:?}")))
}

impl<B: Backend> Model<B> {
    /// The loss of `batch` (see [`Reduction`]). On an autodiff backend, call
    /// `.value.backward()` on the result for the gradients of every parameter.
    ///
    /// ```
    /// # fn main() -> paligemma::Result<()> {
    /// use burn::backend::Autodiff;
    /// use paligemma::{Model, backend::Cpu, train::{Example, Reduction}};
    ///
    /// let model = Model::<Autodiff<Cpu>>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let image = paligemma::load_image("tests/fixtures/images/photo.png")?;
    /// let batch = model.training_batch(&[Example::new(image, "caption en", "a photo")])?;
    /// let loss = model.loss(&batch, Reduction::Tokens)?;
    /// assert!(loss.scalar()? > 0.0);
    /// let gradients = loss.value.backward();
    /// # let _ = gradients;
    /// # Ok(()) }
    /// ```
    pub fn loss(&self, batch: &Batch, reduction: Reduction) -> Result<Loss<B>> {
        let features = self
            .network()
            .image_features(batch.pixels::<B>(self.device()));
        self.loss_from_features(batch, features, reduction)
    }

    /// [`Model::loss`] with the image features `[images, tokens, hidden]` of the
    /// batch's images (in batch order) given: computed once for a frozen vision tower.
    pub(crate) fn loss_from_features(
        &self,
        batch: &Batch,
        features: Tensor<B, 3>,
        reduction: Reduction,
    ) -> Result<Loss<B>> {
        let device = self.device();
        let net = self.network();
        let (rows, width) = (batch.len(), batch.width());
        let [_, tokens, hidden] = features.dims();
        let pad_id = self.tokenizer().padding_id();
        let mut first_image = 0;
        let embedded = (0..rows)
            .map(|r| {
                let k = batch.images_per_row[r];
                let f = features
                    .clone()
                    .slice([first_image..first_image + k, 0..tokens, 0..hidden])
                    .reshape([1, k * tokens, hidden]);
                first_image += k;
                let (left, len) = (batch.left_padding[r], batch.lengths[r]);
                let ids = &batch.input_ids[r][left..left + len];
                net.embed_padded(&f, ids, (left, width - left - len), pad_id)
            })
            .collect::<Result<Vec<_>>>()?;
        let layouts: Vec<RowLayout> = batch
            .left_padding
            .iter()
            .zip(&batch.prefix_lengths)
            .map(|(&pad, &prefix)| RowLayout { pad, prefix })
            .collect();
        let positions = vec![(1..=width).collect::<Vec<_>>(); rows];
        let out = net.forward_uncached(Tensor::cat(embedded, 0), &layouts, &positions);

        // Position i predicts the label at i + 1.
        let mut picked = Vec::new();
        let mut targets = Vec::new();
        let mut per_example = vec![0usize; rows];
        for (r, labels) in batch.labels.iter().enumerate() {
            for (i, label) in labels.iter().enumerate().skip(1) {
                if let Some(t) = label {
                    picked.push((r * width + i - 1) as i64);
                    targets.push(i64::from(*t));
                    per_example[r] += 1;
                }
            }
        }
        let m = picked.len();
        if m == 0 {
            return Err(Error::Prompt("the batch has no supervised tokens".into()));
        }
        let hidden_size = out.dims()[2];
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(picked, [m]), device);
        let chosen = out.reshape([rows * width, hidden_size]).select(0, index);
        let logits = net.logits(chosen.unsqueeze_dim(0));
        let vocab = logits.dims()[2];
        let log_probs = log_softmax(logits.reshape([m, vocab]), 1);
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [m, 1]), device);
        let token_losses = log_probs.gather(1, targets).reshape([m]).neg();
        let value = match reduction {
            Reduction::Tokens => token_losses.clone().mean(),
            Reduction::Examples => {
                let weights: Vec<f32> = per_example
                    .iter()
                    .flat_map(|&n| std::iter::repeat_n(1.0 / (n * rows) as f32, n))
                    .collect();
                let weights = Tensor::<B, 1>::from_data(TensorData::new(weights, [m]), device);
                (token_losses.clone() * weights).sum()
            }
        };
        Ok(Loss {
            value,
            token_losses,
            tokens_per_example: per_example,
        })
    }
}
