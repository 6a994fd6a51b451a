//! Safetensors loading: memory-mapped files, sharded checkpoints and the key layouts
//! written by different transformers versions.
//!
//! Tensors are converted one at a time from the mapped file straight into backend
//! tensors, so loading never holds more than the finished weights plus one tensor.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};

use crate::cpu::{FileBytes, HostMatrix, prefer_huge_pages, to_bf16};
use crate::error::{Error, Result};
use crate::precision::{self, WeightFormat};

/// One safetensors file (memory-mapped, or embedded in the binary) and its parsed header.
struct MappedFile {
    path: PathBuf,
    /// Shared with host matrices that use the bytes in place.
    mmap: Arc<FileBytes>,
    data_start: usize,
    metadata: Metadata,
}

impl MappedFile {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only; a checkpoint modified while it is being
        // loaded is outside what this crate can guard against (as for every mmap loader).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::new(path, FileBytes::Mapped(mmap))
    }

    fn new(path: &Path, bytes: FileBytes) -> Result<Self> {
        let (header_len, metadata) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::WeightFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(MappedFile {
            path: path.to_path_buf(),
            mmap: Arc::new(bytes),
            data_start: 8 + header_len,
            metadata,
        })
    }

    /// Drop the mapped pages of a tensor already copied into the backend, so that peak
    /// memory while loading is the converted weights plus about one tensor rather than
    /// the weights plus the whole file. The page cache keeps the file; a later read of
    /// the range faults it back in with the same contents.
    fn release(&self, range: std::ops::Range<usize>) {
        let FileBytes::Mapped(mmap) = &*self.mmap else {
            return;
        };
        #[cfg(unix)]
        // SAFETY: the mapping is a read-only shared file mapping and no reference into
        // `range` outlives this call's caller; dropping its pages only makes later reads
        // fault the unchanged file contents back in. Failure is harmless (advice only).
        let _ = unsafe {
            mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                range.start,
                range.len(),
            )
        };
        #[cfg(not(unix))]
        let _ = (mmap, range);
    }
}

/// A raw tensor view into a mapped file.
pub(crate) struct RawTensor<'a> {
    pub name: &'a str,
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub bytes: &'a [u8],
    /// Which file of the store, and the byte range in its mapping.
    file: usize,
    range: std::ops::Range<usize>,
}

impl RawTensor<'_> {
    /// Decode the tensor's elements into f32 (exact for f32, bf16 and f16 inputs).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        self.decode(|x| x)
    }

    /// Bytes per element, or an error for dtypes a checkpoint's floats cannot have.
    fn width(&self) -> Result<usize> {
        match self.dtype {
            Dtype::F32 => Ok(4),
            Dtype::BF16 | Dtype::F16 => Ok(2),
            other => Err(Error::TensorDtype {
                name: self.name.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    /// Decode every element and map it through `cast`, on all cores: a 3B checkpoint is
    /// billions of values, and converting straight into the target type keeps a single
    /// output buffer (no f32 copy of a half-precision tensor).
    fn decode<T, F>(&self, cast: F) -> Result<Vec<T>>
    where
        T: Copy + Default + Send,
        // A closure type (not a fn pointer) so the per-element cast is inlined.
        F: Fn(f32) -> T + Copy + Send,
    {
        let width = self.width()?;
        let n = self.bytes.len() / width;
        let mut out = vec![T::default(); n];
        prefer_huge_pages(&mut out);
        let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
        let chunk = n.div_ceil(threads).max(1 << 20);
        let dtype = self.dtype;
        std::thread::scope(|scope| {
            for (dst, src) in out.chunks_mut(chunk).zip(self.bytes.chunks(chunk * width)) {
                scope.spawn(move || {
                    const BLOCK: usize = 4096;
                    let mut buf = [0f32; BLOCK];
                    for (d, s) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK * width)) {
                        let buf = &mut buf[..d.len()];
                        convert(dtype, s, buf);
                        for (o, &v) in d.iter_mut().zip(buf.iter()) {
                            *o = cast(v);
                        }
                    }
                });
            }
        });
        Ok(out)
    }

    /// The tensor as backend data in `target`: half-precision bytes already in the
    /// target dtype are copied as they are, everything else converted element-wise.
    fn to_data<const D: usize>(
        &self,
        shape: [usize; D],
        target: precision::Dtype,
    ) -> Result<TensorData> {
        Ok(match (self.dtype, target) {
            (Dtype::BF16, precision::Dtype::Bf16) | (Dtype::F16, precision::Dtype::F16) => {
                TensorData::from_bytes_vec(self.bytes.to_vec(), shape, target.burn_dtype())
            }
            (_, precision::Dtype::F32) => TensorData::new(self.to_f32()?, shape),
            (_, precision::Dtype::F16) => TensorData::new(self.decode(half::f16::from_f32)?, shape),
            (_, precision::Dtype::Bf16) => {
                TensorData::new(self.decode(half::bf16::from_f32)?, shape)
            }
        })
    }
}

/// Little-endian `src` values of `dtype` into `dst`.
fn convert(dtype: Dtype, src: &[u8], dst: &mut [f32]) {
    match dtype {
        Dtype::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        // bf16 is the upper half of an f32: widening is a shift, exact for every value.
        Dtype::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        _ => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
    }
}

/// All safetensors files of a checkpoint, indexed by tensor name.
pub struct WeightStore {
    files: Vec<MappedFile>,
    index: HashMap<String, usize>,
    dtype: precision::Dtype,
    format: WeightFormat,
}

impl WeightStore {
    /// Open a checkpoint directory: `model.safetensors.index.json` with its shards, or a
    /// single `model.safetensors`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths = if index_path.is_file() {
            shard_paths(dir, &index_path)?
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(Error::MissingFile {
                path: single,
                hint: "a checkpoint directory needs model.safetensors or \
                       model.safetensors.index.json with its shards"
                    .into(),
            });
        };
        Self::open_files(&paths)
    }

    /// Open an explicit list of safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            if !path.is_file() {
                return Err(Error::MissingFile {
                    path: path.clone(),
                    hint: "listed in model.safetensors.index.json".into(),
                });
            }
            let file = MappedFile::open(path)?;
            for name in file.metadata.tensors().keys() {
                index.insert(name.clone(), files.len());
            }
            files.push(file);
        }
        Ok(WeightStore {
            files,
            index,
            dtype: precision::Dtype::F32,
            format: WeightFormat::Backend,
        })
    }

    /// One safetensors file embedded in the binary; `name` stands for its path in errors.
    pub(crate) fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        let file = MappedFile::new(Path::new(name), FileBytes::Static(bytes))?;
        let index = file
            .metadata
            .tensors()
            .keys()
            .map(|name| (name.clone(), 0))
            .collect();
        Ok(WeightStore {
            files: vec![file],
            index,
            dtype: precision::Dtype::F32,
            format: WeightFormat::Backend,
        })
    }

    /// Convert tensors into `dtype` when loading them (default f32).
    pub fn with_dtype(mut self, dtype: precision::Dtype) -> Self {
        self.dtype = dtype;
        self
    }

    /// The dtype tensors are converted into.
    pub fn dtype(&self) -> precision::Dtype {
        self.dtype
    }

    /// Hold the large matrices in `format` (default: backend tensors).
    pub fn with_format(mut self, format: WeightFormat) -> Self {
        self.format = format;
        self
    }

    /// How the large matrices are held.
    pub fn format(&self) -> WeightFormat {
        self.format
    }

    fn raw(&self, name: &str) -> Option<Result<RawTensor<'_>>> {
        let (name, &file_idx) = self.index.get_key_value(name)?;
        let file = &self.files[file_idx];
        let info = file.metadata.info(name)?;
        let (start, end) = info.data_offsets;
        let range = file.data_start + start..file.data_start + end;
        let bytes = file
            .mmap
            .get(range.clone())
            .ok_or_else(|| Error::WeightFile {
                path: file.path.clone(),
                reason: format!("tensor {name} points past the end of the file"),
            });
        Some(bytes.map(|bytes| RawTensor {
            name,
            dtype: info.dtype,
            shape: &info.shape,
            bytes,
            file: file_idx,
            range,
        }))
    }

    /// Find a tensor by its canonical (hub-layout) name, trying the other known layouts.
    pub(crate) fn find(&self, canonical: &str) -> Result<RawTensor<'_>> {
        let tried = layout_candidates(canonical);
        for name in &tried {
            if let Some(raw) = self.raw(name) {
                return raw;
            }
        }
        Err(Error::MissingTensor {
            name: canonical.to_string(),
            tried: tried.join(", "),
        })
    }

    /// The dtype a tensor is stored in (what a saved fine-tune keeps by default).
    pub(crate) fn stored_dtype(&self, canonical: &str) -> Result<precision::Dtype> {
        let raw = self.find(canonical)?;
        match raw.dtype {
            Dtype::F32 => Ok(precision::Dtype::F32),
            Dtype::BF16 => Ok(precision::Dtype::Bf16),
            Dtype::F16 => Ok(precision::Dtype::F16),
            other => Err(Error::TensorDtype {
                name: raw.name.to_string(),
                dtype: format!("{other:?}"),
            }),
        }
    }

    /// Load a tensor with a required shape into the backend, in the store's dtype.
    pub(crate) fn tensor<B: Backend, const D: usize>(
        &self,
        canonical: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        self.tensor_as(canonical, shape, device, self.dtype)
    }

    /// Load a tensor in f32 whatever the compute dtype (norm weights).
    pub(crate) fn tensor_f32<B: Backend, const D: usize>(
        &self,
        canonical: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        self.tensor_as(canonical, shape, device, precision::Dtype::F32)
    }

    /// Load a `[rows, cols]` matrix into host memory in the store's (host) format.
    ///
    /// A tensor already in the format (bf16 for bf16, f32 for f32) is used in place
    /// from the mapping when it is aligned, so loading copies nothing; other tensors are
    /// converted on all cores (int8 a block of rows at a time, with no f32 copy of the
    /// whole tensor) and their mapped pages released.
    pub(crate) fn host_matrix(
        &self,
        canonical: &str,
        rows: usize,
        cols: usize,
    ) -> Result<HostMatrix> {
        let raw = self.checked(canonical, &[rows, cols])?;
        let file = &self.files[raw.file];
        let start = raw.range.start;
        let in_place = match (self.format, raw.dtype) {
            (WeightFormat::Bf16, Dtype::BF16) => {
                HostMatrix::mapped_bf16(&file.mmap, start, rows, cols)
            }
            (WeightFormat::F32, Dtype::F32) => {
                HostMatrix::mapped_f32(&file.mmap, start, rows, cols)
            }
            _ => None,
        };
        if let Some(m) = in_place {
            return Ok(m);
        }
        let matrix = match self.format {
            WeightFormat::Int8 | WeightFormat::Int4 => {
                // Rows are released as they are quantized, so peak memory is the
                // quantized weights plus one block of source rows, not plus a whole
                // bf16 table.
                let row_bytes = cols * raw.width()?;
                let fill = |r: usize, out: &mut [f32]| {
                    convert(
                        raw.dtype,
                        &raw.bytes[r * row_bytes..(r + 1) * row_bytes],
                        out,
                    )
                };
                let done = |done: std::ops::Range<usize>| {
                    file.release(start + done.start * row_bytes..start + done.end * row_bytes)
                };
                if self.format == WeightFormat::Int8 {
                    HostMatrix::int8_rows(rows, cols, fill, done)
                } else {
                    HostMatrix::int4_rows(rows, cols, fill, done)
                }
            }
            WeightFormat::F32 => HostMatrix::f32(rows, cols, raw.to_f32()?),
            _ => HostMatrix::bf16(rows, cols, raw.decode(to_bf16)?),
        };
        file.release(raw.range.clone());
        Ok(matrix)
    }

    /// A tensor's values in f32 on the host (small vectors: host-weight biases).
    pub(crate) fn values_f32(&self, canonical: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.checked(canonical, shape)?.to_f32()
    }

    /// Find a tensor and check its shape.
    fn checked(&self, canonical: &str, shape: &[usize]) -> Result<RawTensor<'_>> {
        let raw = self.find(canonical)?;
        if raw.shape != shape {
            return Err(Error::TensorShape {
                name: raw.name.to_string(),
                found: raw.shape.to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(raw)
    }

    fn tensor_as<B: Backend, const D: usize>(
        &self,
        canonical: &str,
        shape: [usize; D],
        device: &B::Device,
        dtype: precision::Dtype,
    ) -> Result<Tensor<B, D>> {
        let raw = self.checked(canonical, &shape)?;
        let data = raw.to_data(shape, dtype)?;
        self.files[raw.file].release(raw.range.clone());
        Ok(Tensor::from_data(data, (device, dtype.burn_dtype())))
    }
}

fn shard_paths(dir: &Path, index_path: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let bad = |reason: String| Error::WeightFile {
        path: index_path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no \"weight_map\" object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for value in map.values() {
        let file = value
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        // Shards must sit in the checkpoint directory itself.
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!("shard name {file:?} is not a plain file name")));
        }
        if !files.iter().any(|f| f == file) {
            files.push(file.to_string());
        }
    }
    files.sort();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Every spelling of a hub-layout tensor name used by released checkpoints and by
/// transformers 4.x / 5.x `save_pretrained`.
fn layout_candidates(canonical: &str) -> Vec<String> {
    let mut out = vec![canonical.to_string()];
    if let Some(rest) = canonical.strip_prefix("vision_tower.vision_model.") {
        out.push(format!("vision_tower.{rest}"));
        out.push(format!("model.vision_tower.vision_model.{rest}"));
        out.push(format!("model.vision_tower.{rest}"));
    } else if let Some(rest) = canonical.strip_prefix("multi_modal_projector.") {
        out.push(format!("model.multi_modal_projector.{rest}"));
    } else if let Some(rest) = canonical.strip_prefix("language_model.model.") {
        out.push(format!("language_model.{rest}"));
        out.push(format!("model.language_model.{rest}"));
        out.push(format!("model.language_model.model.{rest}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_cover_v5_layouts() {
        let c = layout_candidates("vision_tower.vision_model.post_layernorm.weight");
        assert!(c.contains(&"vision_tower.post_layernorm.weight".to_string()));
        assert!(c.contains(&"model.vision_tower.post_layernorm.weight".to_string()));
        let c = layout_candidates("language_model.model.norm.weight");
        assert!(c.contains(&"model.language_model.norm.weight".to_string()));
    }
}
