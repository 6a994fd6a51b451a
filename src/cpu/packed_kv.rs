//! One decoder layer's keys and values in host memory, stored in the packed layouts the
//! attention kernel multiplies: a step writes its own keys and values into place and
//! reads every earlier position where it lies, with no copy or repacking per step.

use super::isa::Isa;

/// Keys and values of `heads` attention heads (batch rows x key/value heads) with room
/// for `capacity` positions of width `d`.
///
/// Keys are packed `[capacity / lanes][d][lanes]` per head, the score product's packed
/// operand; values `[d / lanes][capacity][lanes]`, the value product's. Positions that
/// were never written hold zeros.
#[derive(Debug, Clone)]
pub(crate) struct PackedKv {
    isa: Isa,
    heads: usize,
    capacity: usize,
    d: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

impl PackedKv {
    /// Zeroed storage for kernel level `isa`.
    pub(crate) fn new(isa: Isa, heads: usize, capacity: usize, d: usize) -> Self {
        let lanes = isa.lanes();
        let k_head = capacity.div_ceil(lanes) * d * lanes;
        let v_head = d.div_ceil(lanes) * capacity * lanes;
        PackedKv {
            isa,
            heads,
            capacity,
            d,
            k: vec![0.0; heads * k_head],
            v: vec![0.0; heads * v_head],
        }
    }

    /// The kernel level whose lanes the layout follows.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Heads held.
    pub(crate) fn heads(&self) -> usize {
        self.heads
    }

    /// Positions each head has room for.
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Head width.
    pub(crate) fn d(&self) -> usize {
        self.d
    }

    fn k_head(&self) -> usize {
        let lanes = self.isa.lanes();
        self.capacity.div_ceil(lanes) * self.d * lanes
    }

    fn v_head(&self) -> usize {
        let lanes = self.isa.lanes();
        self.d.div_ceil(lanes) * self.capacity * lanes
    }

    /// Head `h`'s packed keys.
    pub(crate) fn keys(&self, h: usize) -> &[f32] {
        let n = self.k_head();
        &self.k[h * n..][..n]
    }

    /// Head `h`'s packed values.
    pub(crate) fn values(&self, h: usize) -> &[f32] {
        let n = self.v_head();
        &self.v[h * n..][..n]
    }

    /// Write positions `start..start + n` of every head from `k` and `v`, each
    /// `[heads, n, d]` row-major.
    pub(crate) fn write(&mut self, start: usize, n: usize, k: &[f32], v: &[f32]) {
        let d = self.d;
        assert!(start + n <= self.capacity, "cache capacity");
        assert!(
            k.len() == self.heads * n * d && v.len() == k.len(),
            "key size"
        );
        for h in 0..self.heads {
            for i in 0..n {
                let at = (h * n + i) * d;
                self.set(h, start + i, &k[at..at + d], &v[at..at + d]);
            }
        }
    }

    /// Write one position of head `h`.
    fn set(&mut self, h: usize, pos: usize, key: &[f32], value: &[f32]) {
        let (lanes, d, capacity) = (self.isa.lanes(), self.d, self.capacity);
        let k0 = h * self.k_head() + (pos / lanes) * d * lanes + pos % lanes;
        for (c, &x) in key.iter().enumerate() {
            self.k[k0 + c * lanes] = x;
        }
        let v0 = h * self.v_head() + pos * lanes;
        for (c, &x) in value.iter().enumerate() {
            self.v[v0 + (c / lanes) * capacity * lanes + c % lanes] = x;
        }
    }

    /// Position `pos` of head `h`: its key and value.
    fn get(&self, h: usize, pos: usize, key: &mut [f32], value: &mut [f32]) {
        let (lanes, d, capacity) = (self.isa.lanes(), self.d, self.capacity);
        let k0 = h * self.k_head() + (pos / lanes) * d * lanes + pos % lanes;
        for (c, x) in key.iter_mut().enumerate() {
            *x = self.k[k0 + c * lanes];
        }
        let v0 = h * self.v_head() + pos * lanes;
        for (c, x) in value.iter_mut().enumerate() {
            *x = self.v[v0 + (c / lanes) * capacity * lanes + c % lanes];
        }
    }

    /// Copy positions `from..from + n` of `src`'s head `src_head` to positions
    /// `to..to + n` of head `dst_head`.
    pub(crate) fn copy_positions(
        &mut self,
        dst_head: usize,
        to: usize,
        src: &PackedKv,
        src_head: usize,
        from: usize,
        n: usize,
    ) {
        assert!(src.d == self.d && src.isa == self.isa, "cache layout");
        assert!(
            from + n <= src.capacity && to + n <= self.capacity,
            "cache capacity"
        );
        let (mut key, mut value) = (vec![0f32; self.d], vec![0f32; self.d]);
        for i in 0..n {
            src.get(src_head, from + i, &mut key, &mut value);
            self.set(dst_head, to + i, &key, &value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_packed_layouts() {
        for &(_, isa) in Isa::all().iter().filter(|&&(_, l)| l <= Isa::best()) {
            let (heads, capacity, d, n) = (3, 21, 19, 5);
            let mut kv = PackedKv::new(isa, heads, capacity, d);
            let k: Vec<f32> = (0..heads * n * d).map(|i| i as f32).collect();
            let v: Vec<f32> = k.iter().map(|x| -x).collect();
            kv.write(14, n, &k, &v);
            let mut moved = PackedKv::new(isa, 2, 30, d);
            moved.copy_positions(1, 3, &kv, 2, 14, n);
            let (mut key, mut value) = (vec![0f32; d], vec![0f32; d]);
            for i in 0..n {
                moved.get(1, 3 + i, &mut key, &mut value);
                let at = (2 * n + i) * d;
                assert_eq!(key, k[at..at + d], "{isa:?} key {i}");
                assert_eq!(value, v[at..at + d], "{isa:?} value {i}");
            }
            moved.get(0, 3, &mut key, &mut value);
            assert!(key.iter().chain(&value).all(|&x| x == 0.0));
        }
    }
}
