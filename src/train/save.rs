//! Saving a (fine-tuned) model as a Hugging Face checkpoint directory that this crate
//! and transformers load: `model.safetensors` with the hub tensor names, in the
//! source checkpoint's dtype unless told otherwise, beside copies of its config,
//! tokenizer and processor files and `vae-oid.npz`.
//!
//! The directory is written under a temporary name next to the target and renamed
//! into place at the end, so a failed save never leaves a half-written checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Tensor, backend::Backend};

use super::names::checkpoint_name;
use crate::config::TextArch;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::precision::{Dtype, WeightFormat};

/// Files of a checkpoint directory that saving copies when the source has them.
const COPIED: [&str; 8] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "vae-oid.npz",
];

/// One tensor to write: its name, checkpoint shape and values (still a tensor).
pub(crate) struct Entry<B: Backend> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Tensor<B, 1>,
}

/// Collects every parameter with its checkpoint name.
struct Collect<B: Backend> {
    arch: TextArch,
    /// `[hidden, channels, patch, patch]`: the patch embedding's shape in checkpoints.
    patch_shape: Vec<usize>,
    path: Vec<String>,
    out: Vec<Entry<B>>,
    error: Option<Error>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(name) = checkpoint_name(&self.path, self.arch) else {
            self.error.get_or_insert(Error::Backend(format!(
                "parameter {} has no checkpoint name",
                self.path.join(".")
            )));
            return;
        };
        let value = param.val();
        let shape = if name.ends_with("patch_embedding.weight") {
            self.patch_shape.clone()
        } else {
            value.dims().to_vec()
        };
        self.out.push(Entry {
            name,
            shape,
            values: value.flatten::<1>(0, D - 1),
        });
    }
}

impl<B: Backend> Model<B> {
    /// Write the model as a checkpoint directory `dir` (which must not exist yet), with
    /// weights in `dtype` (`None`: the dtype of the checkpoint it was loaded from).
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use paligemma::{Model, backend::Cpu};
    /// let model = Model::<Cpu>::from_pretrained("tests/fixtures/pg1-tiny", &Default::default())?;
    /// let dir = tempfile::tempdir()?;
    /// let out = dir.path().join("copy");
    /// model.save_pretrained(&out, None)?;
    /// let again = Model::<Cpu>::from_pretrained(&out, &Default::default())?;
    /// assert_eq!(again.config(), model.config());
    /// # Ok(()) }
    /// ```
    pub fn save_pretrained(&self, dir: impl AsRef<Path>, dtype: Option<Dtype>) -> Result<()> {
        let dir = dir.as_ref();
        if matches!(
            self.weight_format(),
            WeightFormat::Int8 | WeightFormat::Int4
        ) {
            return Err(Error::Unsupported(format!(
                "a model with {} weights cannot be saved: they are a lossy copy of the \
                 checkpoint; load it with WeightFormat::Auto, Backend, F32 or Bf16",
                self.weight_format()
            )));
        }
        if dir.exists() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the output directory already exists",
                ),
            });
        }
        let source = self.source();
        let dtype = dtype.or(source.map(|s| s.dtype)).unwrap_or(Dtype::F32);
        let tmp = temporary_sibling(dir)?;
        let written = (|| {
            std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
            if let Some(source) = source {
                for name in COPIED {
                    source.origin.copy_file(name, &tmp.join(name))?;
                }
            }
            self.write_weights(&tmp.join("model.safetensors"), dtype)
        })();
        let renamed =
            written.and_then(|()| std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e)));
        if renamed.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        renamed
    }

    /// Every parameter into one safetensors file.
    fn write_weights(&self, path: &Path, dtype: Dtype) -> Result<()> {
        let c = &self.config().vision;
        let mut collect = Collect {
            arch: self.config().text.arch,
            patch_shape: vec![c.hidden_size, c.num_channels, c.patch_size, c.patch_size],
            path: Vec::new(),
            out: Vec::new(),
            error: None,
        };
        // Host weights (f32 and bf16, the same values) are written through backend
        // copies; backend layers pass through unchanged.
        let device = self.device();
        let network = self
            .network()
            .clone()
            .try_map_linears(|l| Ok(l.into_backend(device)))?;
        network.visit(&mut collect);
        if let Some(e) = collect.error {
            return Err(e);
        }
        write_safetensors(path, collect.out, dtype)
    }
}

/// Values read out of a tensor and encoded at a time when saving (16 MB of f32).
const WRITE_CHUNK: usize = 1 << 22;

/// Stream `entries` into a safetensors file in `dtype`, sorted by name, a slice of one
/// tensor in host memory at a time.
pub(crate) fn write_safetensors<B: Backend>(
    path: &Path,
    entries: Vec<Entry<B>>,
    dtype: Dtype,
) -> Result<()> {
    write_in_chunks(path, entries, dtype, WRITE_CHUNK)
}

/// [`write_safetensors`], reading `chunk` values of a tensor at a time.
fn write_in_chunks<B: Backend>(
    path: &Path,
    mut entries: Vec<Entry<B>>,
    dtype: Dtype,
    chunk: usize,
) -> Result<()> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let (tag, width) = match dtype {
        Dtype::F32 => ("F32", 4),
        Dtype::F16 => ("F16", 2),
        Dtype::Bf16 => ("BF16", 2),
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut offset = 0usize;
    for e in &entries {
        let bytes = e.shape.iter().product::<usize>() * width;
        header.insert(
                e.name.clone(),
                serde_json::json!({"dtype": tag, "shape": e.shape, "data_offsets": [offset, offset + bytes]}),
            );
        offset += bytes;
    }
    let mut header = serde_json::to_vec(&header)
        .map_err(|e| Error::Backend(format!("writing the safetensors header: {e}")))?;
    // The data starts 8-byte aligned, as the format recommends.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut out = std::io::BufWriter::new(file);
    let io = |e| Error::io(path, e);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    // A slice of each tensor at a time: reading a whole tensor out at once held a copy
    // of it and its encoded bytes beside the model.
    let chunk = chunk.max(1);
    let mut bytes = Vec::with_capacity(chunk * width);
    for e in entries {
        let n = e.values.dims()[0];
        for start in (0..n).step_by(chunk) {
            let values = e
                .values
                .clone()
                .slice(start..(start + chunk).min(n))
                .into_data()
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|err| Error::Backend(format!("reading {}: {err:?}", e.name)))?;
            bytes.clear();
            for v in values {
                match dtype {
                    Dtype::F32 => bytes.extend(v.to_le_bytes()),
                    Dtype::F16 => bytes.extend(half::f16::from_f32(v).to_le_bytes()),
                    Dtype::Bf16 => bytes.extend(half::bf16::from_f32(v).to_le_bytes()),
                }
            }
            out.write_all(&bytes).map_err(io)?;
        }
    }
    out.flush().map_err(io)?;
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// A fresh name beside `dir` (a directory or a file) for writing before the final
/// rename.
pub(super) fn temporary_sibling(dir: &Path) -> Result<PathBuf> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the output path has no directory name",
            ),
        })?
        .to_string_lossy();
    let parent = dir.parent().unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.partial-{}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Tensor, TensorData};

    use super::*;
    use crate::backend::Cpu;

    /// Tensors written a few values at a time (chunks that end inside a tensor, at its
    /// end, and past it, and an empty tensor) read back with every value in place.
    #[test]
    fn chunked_writes_keep_every_value() {
        let device = Default::default();
        let entry = |name: &str, values: Vec<f32>, shape: Vec<usize>| Entry::<Cpu> {
            name: name.into(),
            values: Tensor::from_data(TensorData::new(values.clone(), [values.len()]), &device),
            shape,
        };
        let a: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..6).map(|i| 100.0 + i as f32).collect();
        let dir = tempfile::tempdir().unwrap();
        for chunk in [1, 3, 4, 6, 64] {
            for dtype in [Dtype::F32, Dtype::Bf16] {
                let path = dir.path().join(format!("{chunk}-{dtype:?}.safetensors"));
                let entries = vec![
                    entry("b", b.clone(), vec![2, 3]),
                    entry("a", a.clone(), vec![10]),
                    entry("empty", Vec::new(), vec![0]),
                ];
                write_in_chunks(&path, entries, dtype, chunk).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
                for (name, want, shape) in [("a", &a, vec![10]), ("b", &b, vec![2, 3])] {
                    let view = file.tensor(name).unwrap();
                    assert_eq!(view.shape(), shape.as_slice());
                    let got: Vec<f32> = match dtype {
                        Dtype::F32 => view
                            .data()
                            .chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                        _ => view
                            .data()
                            .chunks_exact(2)
                            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                            .collect(),
                    };
                    assert_eq!(&got, want, "{name}, chunk {chunk}, {dtype:?}");
                }
                assert!(file.tensor("empty").unwrap().data().is_empty());
            }
        }
    }
}
