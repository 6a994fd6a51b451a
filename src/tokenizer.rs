//! The checkpoint's tokenizer: prompt ids exactly as transformers'
//! `PaliGemmaProcessor` builds them, and generated ids back to text.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};

/// The checkpoint's tokenizer plus the special ids PaliGemma needs, resolved by text.
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
    /// Ids dropped when decoding to text (special tokens other than `<loc>`/`<seg>`).
    skip_ids: HashSet<u32>,
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
        Self::new(tokenizer)
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
            skip_ids,
        })
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
