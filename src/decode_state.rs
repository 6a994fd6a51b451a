//! What a decoding loop carries from one step to the next, and how batches of it are
//! regrouped: rows that finished leave, rows prefilled later join (continuous batching).

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::kv_cache::{CacheRows, KvCache};
use crate::prefix_lm::RowLayout;

/// What a decoding loop carries between [`PaliGemma::prefill`](crate::PaliGemma::prefill)
/// and [`PaliGemma::extend`](crate::PaliGemma::extend): the KV cache, each row's layout
/// and its next position.
#[derive(Debug)]
pub struct DecodeState<B: Backend> {
    pub(crate) cache: KvCache<B>,
    pub(crate) rows: Vec<RowLayout>,
    pub(crate) next_position: Vec<usize>,
    pub(crate) device: B::Device,
}

impl<B: Backend> DecodeState<B> {
    /// Positions held by the cache so far (padding included).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing has been run yet.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Rows in the batch.
    pub fn batch(&self) -> usize {
        self.rows.len()
    }

    /// Positions the cache has room for.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Rewind to the first `len` positions (e.g. the prompt, to decode again from it).
    pub fn truncate(&mut self, len: usize) {
        let back = self.cache.len().saturating_sub(len);
        self.cache.truncate(len);
        for p in &mut self.next_position {
            *p = p.saturating_sub(back);
        }
    }

    /// One batch of the chosen rows of several states, in order, with room for `room`
    /// more positions: finished rows leave a batch this way and newly prefilled rows
    /// join it.
    ///
    /// Every row keeps its positions and its cached keys and values; only its left
    /// padding changes, so that all rows end at the same cache position (padding no
    /// real token sees). Padding every kept row has is dropped. A regrouped row
    /// computes what it computed before.
    pub fn regroup(parts: &[(&DecodeState<B>, &[usize])], room: usize) -> Result<Self> {
        let mut len = 0;
        let mut device = None;
        for (state, rows) in parts {
            for &r in rows.iter() {
                let Some(layout) = state.rows.get(r) else {
                    return Err(Error::Prompt(format!(
                        "row {r} of a batch of {}",
                        state.rows.len()
                    )));
                };
                len = len.max(state.len() - layout.pad.min(state.len()));
                device.get_or_insert_with(|| state.device.clone());
            }
        }
        let Some(device) = device else {
            return Err(Error::Prompt("no rows to regroup".into()));
        };
        let mut layouts = Vec::new();
        let mut next_position = Vec::new();
        let mut sources = Vec::with_capacity(parts.len());
        for (state, rows) in parts {
            let shift = len as isize - state.len() as isize;
            for &r in rows.iter() {
                let layout = &state.rows[r];
                layouts.push(RowLayout {
                    pad: (layout.pad as isize + shift).max(0) as usize,
                    prefix: layout.prefix,
                });
                next_position.push(state.next_position[r]);
            }
            sources.push(CacheRows {
                cache: &state.cache,
                rows,
                shift,
            });
        }
        let capacity = len.saturating_add(room);
        Ok(DecodeState {
            cache: KvCache::gather(&sources, len, capacity)?,
            rows: layouts,
            next_position,
            device,
        })
    }
}
