//! The optimiser's state on disk, keyed by parameter name: burn keys it by parameter
//! ids, which are fresh in every process, so a resumed run maps each saved entry to
//! the parameter of the same checkpoint name in the model it loaded.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::SimpleOptimizer;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::record::AdaptorRecord;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::{Tensor, backend::AutodiffBackend};

use super::names::checkpoint_name;
use crate::config::TextArch;
use crate::error::{Error, Result};
use crate::paligemma::PaliGemma;

/// What a state file holds after its header line (`MAGIC`, then the optimiser's
/// kind): each parameter's entry by checkpoint name (PEFT's key for an adapter matrix)
/// with the parameter's shape, in burn's named MessagePack.
type FileRecord<O, B> = Vec<(String, Vec<usize>, AdaptorRecord<O, B>)>;

const MAGIC: &str = "paligemma optimizer state v1";

/// A float parameter: its id in this process, checkpoint name and shape.
pub(super) struct Named {
    id: ParamId,
    name: String,
    shape: Vec<usize>,
}

/// The checkpoint name and shape of every float parameter of `network`.
pub(super) fn parameter_names<B: AutodiffBackend>(
    network: &PaliGemma<B>,
    arch: TextArch,
) -> Result<Vec<Named>> {
    let mut names = Names {
        arch,
        path: Vec::new(),
        out: Vec::new(),
        error: None,
    };
    network.visit(&mut names);
    match names.error {
        Some(e) => Err(e),
        None => Ok(names.out),
    }
}

struct Names {
    arch: TextArch,
    path: Vec<String>,
    out: Vec<Named>,
    error: Option<Error>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Names {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        match checkpoint_name(&self.path, self.arch) {
            Some(name) => self.out.push(Named {
                id: param.id,
                name,
                shape: param.val().dims().to_vec(),
            }),
            None => {
                self.error.get_or_insert(Error::Backend(format!(
                    "parameter {} has no checkpoint name",
                    self.path.join(".")
                )));
            }
        }
    }
}

/// The bytes of `optimizer`'s state: `kind`, and its entries by name.
pub(super) fn encode<O, B>(
    optimizer: &OptimizerAdaptor<O, PaliGemma<B>, B>,
    kind: &str,
    names: &[Named],
) -> Result<Vec<u8>>
where
    O: SimpleOptimizer<B::InnerBackend>,
    B: AutodiffBackend,
{
    use burn::optim::Optimizer as _;
    let mut records = optimizer.to_record();
    let entries: Vec<_> = names
        .iter()
        .filter_map(|p| {
            let record = records.remove(&p.id)?;
            Some((p.name.clone(), p.shape.clone(), record))
        })
        .collect();
    let body = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(entries, ())
        .map_err(|e| Error::Backend(format!("encoding the optimiser state: {e}")))?;
    let mut bytes = format!("{MAGIC} {kind}\n").into_bytes();
    bytes.extend(body);
    Ok(bytes)
}

/// `optimizer` with the state in `bytes` (read from `path`), each entry given to the
/// parameter of its name. A state of another kind, or naming a parameter the model
/// does not have or has in another shape, is refused.
pub(super) fn decode<O, B>(
    optimizer: OptimizerAdaptor<O, PaliGemma<B>, B>,
    kind: &str,
    names: &[Named],
    bytes: Vec<u8>,
    path: &Path,
    device: &B::Device,
) -> Result<OptimizerAdaptor<O, PaliGemma<B>, B>>
where
    O: SimpleOptimizer<B::InnerBackend>,
    B: AutodiffBackend,
{
    use burn::optim::Optimizer as _;
    let invalid = |reason: String| Error::OptimizerState {
        path: path.to_path_buf(),
        reason,
    };
    let header = bytes
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| std::str::from_utf8(&bytes[..end]).ok().map(|h| (h, end)));
    let Some((saved_kind, end)) =
        header.and_then(|(h, end)| Some((h.strip_prefix(MAGIC)?.trim().to_string(), end)))
    else {
        return Err(invalid("not an optimiser state of this crate".into()));
    };
    if saved_kind != kind {
        return Err(invalid(format!(
            "it holds {saved_kind} state, but this trainer runs {kind}"
        )));
    }
    let entries: FileRecord<O, B> = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .load(bytes[end + 1..].to_vec(), device)
        .map_err(|e| invalid(format!("its {kind} state does not decode ({e})")))?;
    let params: HashMap<&str, &Named> = names.iter().map(|p| (p.name.as_str(), p)).collect();
    // The optimiser's own map type (burn's, not std's), emptied.
    let mut records = optimizer.to_record();
    records.clear();
    for (name, shape, record) in entries {
        let param = params
            .get(name.as_str())
            .ok_or_else(|| invalid(format!("it has state for {name}, which this model lacks")))?;
        if param.shape != shape {
            return Err(invalid(format!(
                "its state for {name} has shape {shape:?}, but the parameter is {:?}",
                param.shape
            )));
        }
        records.insert(param.id, record);
    }
    Ok(optimizer.load_record(records))
}
