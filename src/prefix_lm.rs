//! The prefix-LM attention mask and the row layout it is built from: image and prompt
//! tokens attend to each other in both directions, generated tokens causally.

use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

/// What each token of a batch row is, for building attention masks.
#[derive(Debug, Clone)]
pub struct RowLayout {
    /// Left padding before the first real token.
    pub pad: usize,
    /// Tokens (after padding) in the bidirectional prefix: image, `<bos>`, prompt, `\n`.
    pub prefix: usize,
}

/// Boolean mask `[batch, 1, q_len, kv_len]`, `true` where attention is NOT allowed.
///
/// Query `i` sits at cache position `offset + i`. A key is visible when it is causal
/// (and inside the sliding window, if any) or when query and key both lie in the
/// prefix block, which stays fully visible inside itself even on sliding layers;
/// padding is never visible. Padding queries see themselves so that no row is empty
/// (an empty row would give NaN that leaks through `0 * NaN` in later layers).
pub fn prefix_lm_mask<B: Backend>(
    rows: &[RowLayout],
    offset: usize,
    q_len: usize,
    kv_len: usize,
    window: Option<usize>,
    device: &B::Device,
) -> Tensor<B, 4, Bool> {
    let masked = prefix_lm_hidden(rows, offset, q_len, kv_len, window);
    Tensor::from_data(
        TensorData::new(masked, [rows.len(), 1, q_len, kv_len]),
        device,
    )
}

/// [`prefix_lm_mask`]'s values in host memory, `[batch, q_len, kv_len]` row-major.
pub(crate) fn prefix_lm_hidden(
    rows: &[RowLayout],
    offset: usize,
    q_len: usize,
    kv_len: usize,
    window: Option<usize>,
) -> Vec<bool> {
    let mut masked = Vec::with_capacity(rows.len() * q_len * kv_len);
    for row in rows {
        let prefix_end = row.pad + row.prefix;
        for i in 0..q_len {
            let q = offset + i;
            for k in 0..kv_len {
                let causal = k <= q && window.is_none_or(|w| k + w > q);
                let in_prefix =
                    (row.pad..prefix_end).contains(&q) && (row.pad..prefix_end).contains(&k);
                let visible = if q < row.pad {
                    k == q
                } else {
                    k >= row.pad && (causal || in_prefix)
                };
                masked.push(!visible);
            }
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    fn mask_rows(
        rows: &[RowLayout],
        offset: usize,
        q: usize,
        kv: usize,
        w: Option<usize>,
    ) -> Vec<bool> {
        prefix_lm_mask::<B>(rows, offset, q, kv, w, &Default::default())
            .into_data()
            .to_vec::<bool>()
            .unwrap()
    }

    #[test]
    fn prefix_is_bidirectional_suffix_causal() {
        // 3 prefix tokens then 2 generated ones, no padding.
        let m = mask_rows(&[RowLayout { pad: 0, prefix: 3 }], 0, 5, 5, None);
        let visible = |q: usize, k: usize| !m[q * 5 + k];
        assert!(visible(0, 2), "prefix sees later prefix tokens");
        assert!(!visible(0, 3), "prefix does not see the suffix");
        assert!(visible(3, 0) && visible(3, 3) && !visible(3, 4));
        assert!(visible(4, 4));
    }

    #[test]
    fn sliding_window_spares_the_prefix_block() {
        let m = mask_rows(&[RowLayout { pad: 0, prefix: 4 }], 0, 6, 6, Some(2));
        let visible = |q: usize, k: usize| !m[q * 6 + k];
        assert!(
            visible(0, 3) && visible(3, 0),
            "prefix block ignores the window"
        );
        assert!(
            visible(5, 4) && visible(5, 5) && !visible(5, 3),
            "window of 2 after it"
        );
    }

    #[test]
    fn padding_is_invisible() {
        let m = mask_rows(&[RowLayout { pad: 2, prefix: 2 }], 0, 4, 4, None);
        let visible = |q: usize, k: usize| !m[q * 4 + k];
        assert!(
            visible(0, 0) && !visible(0, 1),
            "pad rows only see themselves"
        );
        assert!(!visible(2, 0) && !visible(3, 1) && visible(2, 3));
    }
}
