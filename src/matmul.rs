//! The product every layer uses: activations times a weight stored `[out, in]`.

use burn::tensor::{Tensor, backend::Backend};

/// `x @ W^T` for `x` `[..., in]` and `W` `[out, in]`.
///
/// The leading dimensions are flattened so the product is one 2-D matmul against a
/// transposed view of `W`: CPU backends then stream the weight as stored, while a
/// batched (3-D) product would first copy the whole weight into a contiguous buffer.
pub(crate) fn matmul_transposed<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    w: &Tensor<B, 2>,
) -> Tensor<B, D> {
    let mut dims = x.dims();
    let d_in = dims[D - 1];
    let rows = dims[..D - 1].iter().product();
    let y = x.reshape([rows, d_in]).matmul(w.clone().transpose());
    dims[D - 1] = w.dims()[0];
    y.reshape(dims)
}
