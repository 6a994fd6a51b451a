//! The checkpoint's tokenizer: prompt ids exactly as transformers'
//! `PaliGemmaProcessor` builds them, and generated ids back to text.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};

/// The checkpoint's tokenizer plus the special ids PaliGemma needs, resolved by text.
#[derive(Clone)]
pub struct Tokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// `<image>`.
    pub image_id: u32,
    /// `<bos>`.
    pub bos_id: u32,
    /// `<eos>`.
    pub eos_id: u32,
    /// `<pad>`, when the tokenizer has one.
    pub pad_id: Option<u32>,
    /// Which side training batches are padded on (`tokenizer_config.json`'s
    /// `padding_side`; Gemma's tokenizer pads on the left when it says nothing).
    pub padding_side: PaddingSide,
    /// Ids dropped when decoding to text (special tokens other than `<loc>`/`<seg>`).
    skip_ids: HashSet<u32>,
}

/// Where padding goes in a batch of different lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaddingSide {
    /// Before the first token (Gemma's tokenizer default).
    #[default]
    Left,
    /// After the last token.
    Right,
}

impl Tokenizer {
    /// Load `tokenizer.json` from a checkpoint directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(Error::MissingFile {
                path,
                hint: "the checkpoint's tokenizer (tokenizer.json) is required".into(),
            });
        }
        let tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let mut out = Self::new(tokenizer)?;
        let config = dir.join("tokenizer_config.json");
        if config.is_file() {
            let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
            out.padding_side = padding_side(&text)
                .map_err(|reason| Error::Tokenizer(format!("{}: {reason}", config.display())))?;
        }
        Ok(out)
    }

    /// A tokenizer from the bytes of `tokenizer.json` and, optionally, the text of
    /// `tokenizer_config.json` (embedded checkpoints); `name` stands for the files in
    /// errors.
    pub(crate) fn from_bytes(json: &[u8], config: Option<&str>, name: &str) -> Result<Self> {
        let tokenizer = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::Tokenizer(format!("{name}: {e}")))?;
        let mut out = Self::new(tokenizer)?;
        if let Some(text) = config {
            out.padding_side = padding_side(text)
                .map_err(|reason| Error::Tokenizer(format!("{name}: {reason}")))?;
        }
        Ok(out)
    }

    /// Wrap a tokenizer, resolving the special tokens.
    pub fn new(tokenizer: tokenizers::Tokenizer) -> Result<Self> {
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| Error::Tokenizer(format!("the tokenizer has no {t} token")))
        };
        let image_id = id("<image>")?;
        let bos_id = id("<bos>")?;
        let eos_id = id("<eos>")?;
        let pad_id = tokenizer.token_to_id("<pad>");
        let skip_ids = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !is_loc_or_seg(&t.content))
            .map(|(id, _)| id)
            .chain([image_id, bos_id, eos_id])
            .chain(pad_id)
            .collect();
        Ok(Tokenizer {
            tokenizer,
            image_id,
            bos_id,
            eos_id,
            pad_id,
            padding_side: PaddingSide::default(),
            skip_ids,
        })
    }

    /// The id batches are padded with: `<pad>`, or 0 when the tokenizer has none.
    pub fn padding_id(&self) -> u32 {
        self.pad_id.unwrap_or(0)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.tokenizer
    }

    /// Input ids for a prompt: `<image>` x `num_image_tokens`, `<bos>`, the prompt's
    /// tokens and `\n`, with no other special tokens added.
    pub fn prompt_ids(&self, prompt: &str, num_image_tokens: usize) -> Result<Vec<u32>> {
        let text = format!("{prompt}\n");
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let body = enc.get_ids();
        if body.contains(&self.image_id) {
            return Err(Error::Prompt(
                "the prompt contains the <image> token; the image placeholders are added \
                 automatically"
                    .into(),
            ));
        }
        let mut ids = Vec::with_capacity(num_image_tokens + 1 + body.len());
        ids.extend(std::iter::repeat_n(self.image_id, num_image_tokens));
        ids.push(self.bos_id);
        ids.extend_from_slice(body);
        Ok(ids)
    }

    /// Ids of a training target: the suffix's tokens and `<eos>`, as `PaliGemmaProcessor`
    /// appends them after the prompt (no other special tokens added).
    pub fn suffix_ids(&self, suffix: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(suffix, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let body = enc.get_ids();
        if body.contains(&self.image_id) {
            return Err(Error::Prompt(
                "the suffix contains the <image> token, which only the image block may hold".into(),
            ));
        }
        let mut ids = Vec::with_capacity(body.len() + 1);
        ids.extend_from_slice(body);
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Generated ids as text, dropping special tokens but keeping `<loc>`/`<seg>`.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        let kept: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !self.skip_ids.contains(id))
            .collect();
        self.tokenizer
            .decode(&kept, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// `padding_side` of a `tokenizer_config.json` (optional file, optional field).
/// `padding_side` of a `tokenizer_config.json` document.
fn padding_side(text: &str) -> std::result::Result<PaddingSide, String> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match json.get("padding_side").and_then(|v| v.as_str()) {
        None => Ok(PaddingSide::default()),
        Some("left") => Ok(PaddingSide::Left),
        Some("right") => Ok(PaddingSide::Right),
        Some(other) => Err(format!(
            "padding_side is {other:?}, expected \"left\" or \"right\""
        )),
    }
}

fn is_loc_or_seg(token: &str) -> bool {
    let digits = |rest: &str, n: usize| {
        rest.strip_suffix('>')
            .is_some_and(|d| d.len() == n && d.bytes().all(|b| b.is_ascii_digit()))
    };
    token.strip_prefix("<loc").is_some_and(|r| digits(r, 4))
        || token.strip_prefix("<seg").is_some_and(|r| digits(r, 3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_seg_names() {
        assert!(is_loc_or_seg("<loc0012>") && is_loc_or_seg("<seg127>"));
        assert!(!is_loc_or_seg("<loc12>") && !is_loc_or_seg("<image>"));
    }
}
