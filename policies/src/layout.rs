//! Weight layouts: where each matrix sits in the flash file, which decides read sizes.
//!
//! - [`WeightLayout::per_matrix`]: the tensors of [`ModelShape::tensors`] one after another,
//!   each row-major (`[out][in]`, a *row* = one output neuron, contiguous) or, per matrix,
//!   column-major (`[in][out]`, a *column* = one input channel, contiguous) — whichever unit the
//!   policy reads. Each tensor starts on an `alignment_bytes` boundary (O_DIRECT).
//! - [`WeightLayout::bundled`]: LLM in a Flash's row-column bundling: for each layer, neuron i's
//!   gate row, up row and down column stored together (`bundle_bytes` each), after the other
//!   matrices in per-matrix order.
//!
//! - [`WeightLayout::interleaved`]: ActiveFlow's cross-layer layout: inside each group of N
//!   layers and for each operator (a set of matrices sharing one input, e.g. Q, K, V), the
//!   weights are ordered by (channel, layer, matrix), so channel c of the whole group is one
//!   contiguous read of N × unit bytes.
//!
//! A *unit* is what a policy reads or caches: a row or column of a matrix, or a bundle.
//! [`coalesce`] merges adjacent extents into reads of at most a configured size.

use crate::plan::Extent;
use flashsim_workloads::shape::{ModelShape, TensorKind, TensorShape};

/// The matrices of `layer` among `kinds`, in the model's order: an interleaved unit's order.
fn operator_matrices(shape: &ModelShape, layer: u32, kinds: &[TensorKind]) -> Vec<TensorShape> {
    shape
        .layer_tensors(layer)
        .into_iter()
        .filter(|t| kinds.contains(&t.kind))
        .collect()
}

/// Which dimension of a matrix is contiguous on flash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Major {
    /// `[out][in]`: row r (output neuron r) is contiguous.
    Row,
    /// `[in][out]`: column c (input channel c) is contiguous.
    Col,
}

/// One matrix in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorExtent {
    pub shape: TensorShape,
    pub offset: u64,
    /// Bytes of one row (`cols` weights) for row-major, of one column for column-major.
    pub row_bytes: u64,
    pub bytes: u64,
    pub major: Major,
}

impl TensorExtent {
    /// Number of contiguous units (rows for row-major, columns for column-major).
    pub fn units(&self) -> u64 {
        match self.major {
            Major::Row => self.shape.rows,
            Major::Col => self.shape.cols,
        }
    }
    /// The byte range of units `[first, first + count)` (rows or columns by `major`).
    pub fn rows(&self, first: u64, count: u64) -> Extent {
        debug_assert!(first + count <= self.units());
        Extent {
            offset: self.offset + first * self.row_bytes,
            bytes: count * self.row_bytes,
        }
    }
    /// Unit `i` alone.
    pub fn unit(&self, i: u64) -> Extent {
        self.rows(i, 1)
    }
    pub fn whole(&self) -> Extent {
        Extent {
            offset: self.offset,
            bytes: self.bytes,
        }
    }
}

/// Bundles of one layer: neuron i's FFN weights at `offset + i * bundle_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleRegion {
    pub layer: u32,
    pub offset: u64,
    pub bundle_bytes: u64,
    pub neurons: u64,
}

impl BundleRegion {
    pub fn bundle(&self, i: u64) -> Extent {
        Extent {
            offset: self.offset + i * self.bundle_bytes,
            bytes: self.bundle_bytes,
        }
    }
}

/// One (layer group, operator) region of an interleaved layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterleaveRegion {
    pub first_layer: u32,
    pub layers: u32,
    /// Index of the operator in the list given to [`WeightLayout::interleaved`].
    pub oper: usize,
    /// Input channels of the operator's matrices.
    pub channels: u64,
    /// Bytes of one channel of one layer (a column of each of the operator's matrices).
    pub unit_bytes: u64,
    pub offset: u64,
}

impl InterleaveRegion {
    /// Channel `c` of `layer` alone.
    pub fn channel(&self, layer: u32, c: u64) -> Extent {
        debug_assert!(
            layer >= self.first_layer
                && layer < self.first_layer + self.layers
                && c < self.channels
        );
        Extent {
            offset: self.offset
                + (c * self.layers as u64 + (layer - self.first_layer) as u64) * self.unit_bytes,
            bytes: self.unit_bytes,
        }
    }
    /// Channel `c` of every layer of the group: one read.
    pub fn group_channel(&self, c: u64) -> Extent {
        Extent {
            offset: self.offset + c * self.layers as u64 * self.unit_bytes,
            bytes: self.layers as u64 * self.unit_bytes,
        }
    }
}

/// A model's weight file.
#[derive(Debug, Clone)]
pub struct WeightLayout {
    tensors: Vec<TensorExtent>,
    bundles: Vec<BundleRegion>,
    interleave: Vec<InterleaveRegion>,
    /// The matrix kinds of each interleaved operator (`InterleaveRegion::oper` indexes it).
    opers: Vec<Vec<TensorKind>>,
    pub file_bytes: u64,
    pub alignment_bytes: u64,
}

impl WeightLayout {
    /// Every matrix row-major.
    pub fn per_matrix(shape: &ModelShape, alignment_bytes: u64) -> Self {
        Self::oriented(shape, alignment_bytes, |_| Major::Row)
    }

    /// Per-matrix, each matrix in the orientation `major(kind)` gives.
    pub fn oriented(
        shape: &ModelShape,
        alignment_bytes: u64,
        major: impl Fn(TensorKind) -> Major,
    ) -> Self {
        assert!(alignment_bytes.is_power_of_two());
        let mut off = 0u64;
        let mut tensors = Vec::new();
        for t in shape.tensors() {
            off = off.next_multiple_of(alignment_bytes);
            let m = major(t.kind);
            let row_bytes = match m {
                Major::Row => shape.weight_bytes(t.cols),
                Major::Col => shape.weight_bytes(t.rows),
            };
            let units = if m == Major::Row { t.rows } else { t.cols };
            let bytes = row_bytes * units;
            tensors.push(TensorExtent {
                shape: t,
                offset: off,
                row_bytes,
                bytes,
                major: m,
            });
            off += bytes;
        }
        WeightLayout {
            tensors,
            bundles: Vec::new(),
            interleave: Vec::new(),
            opers: Vec::new(),
            file_bytes: off.next_multiple_of(alignment_bytes),
            alignment_bytes,
        }
    }

    /// LLM in a Flash's bundling: the FFN matrices of every layer are replaced by one region of
    /// `intermediate` bundles (gate row, up row, down column of neuron i); everything else is
    /// row-major per matrix.
    pub fn bundled(shape: &ModelShape, alignment_bytes: u64) -> Self {
        let mut l = Self::oriented(shape, alignment_bytes, |_| Major::Row);
        let ffn_mats = if shape.gated { 3 } else { 2 };
        let bundle_bytes = ffn_mats * shape.weight_bytes(shape.hidden as u64);
        l.tensors.retain(|t| !t.shape.kind.is_ffn());
        // Repack: non-FFN tensors first, then one bundle region per layer.
        let mut off = 0u64;
        for t in &mut l.tensors {
            off = off.next_multiple_of(alignment_bytes);
            t.offset = off;
            off += t.bytes;
        }
        for layer in 0..shape.layers {
            off = off.next_multiple_of(alignment_bytes);
            let neurons = shape.intermediate as u64;
            l.bundles.push(BundleRegion {
                layer,
                offset: off,
                bundle_bytes,
                neurons,
            });
            off += neurons * bundle_bytes;
        }
        l.file_bytes = off.next_multiple_of(alignment_bytes);
        l
    }

    /// ActiveFlow's interleaved layout with groups of `group` layers; `opers` lists the
    /// operators, each a set of matrices sharing one input. Embedding and LM head stay
    /// row-major; every layer matrix not named in `opers` is stored per matrix, row-major.
    pub fn interleaved(
        shape: &ModelShape,
        alignment_bytes: u64,
        group: u32,
        opers: &[&[TensorKind]],
    ) -> Self {
        assert!(group >= 1);
        let named: Vec<TensorKind> = opers.iter().flat_map(|o| o.iter().copied()).collect();
        let mut l = Self::oriented(shape, alignment_bytes, |_| Major::Row);
        l.tensors
            .retain(|t| t.shape.layer.is_none() || !named.contains(&t.shape.kind));
        let mut off = 0u64;
        for t in &mut l.tensors {
            off = off.next_multiple_of(alignment_bytes);
            t.offset = off;
            off += t.bytes;
        }
        let mut first = 0;
        while first < shape.layers {
            let layers = group.min(shape.layers - first);
            for (oi, kinds) in opers.iter().enumerate() {
                let mats = operator_matrices(shape, first, kinds);
                let channels = mats[0].cols;
                assert!(
                    mats.iter().all(|m| m.cols == channels),
                    "an operator's matrices share their input"
                );
                let unit_bytes = mats.iter().map(|m| shape.weight_bytes(m.rows)).sum();
                off = off.next_multiple_of(alignment_bytes);
                l.interleave.push(InterleaveRegion {
                    first_layer: first,
                    layers,
                    oper: oi,
                    channels,
                    unit_bytes,
                    offset: off,
                });
                off += channels * layers as u64 * unit_bytes;
            }
            first += layers;
        }
        l.opers = opers.iter().map(|o| o.to_vec()).collect();
        l.file_bytes = off.next_multiple_of(alignment_bytes);
        l
    }

    /// Every (layer group, operator) region of an interleaved layout, in file order.
    pub fn interleave_regions(&self) -> &[InterleaveRegion] {
        &self.interleave
    }

    /// The matrices of `region`'s operator in `layer`, in the order one channel's unit holds
    /// their columns (each column `rows` weights, row 0 first).
    pub fn interleave_matrices(
        &self,
        shape: &ModelShape,
        region: &InterleaveRegion,
        layer: u32,
    ) -> Vec<TensorShape> {
        operator_matrices(shape, layer, &self.opers[region.oper])
    }

    /// The interleave region holding operator `oper` of `layer`.
    pub fn interleave_region(&self, layer: u32, oper: usize) -> Option<&InterleaveRegion> {
        self.interleave
            .iter()
            .find(|r| r.oper == oper && layer >= r.first_layer && layer < r.first_layer + r.layers)
    }

    pub fn tensors(&self) -> &[TensorExtent] {
        &self.tensors
    }

    /// The bundle region of `layer`, if this layout bundles.
    pub fn bundles(&self, layer: u32) -> Option<&BundleRegion> {
        self.bundles.iter().find(|b| b.layer == layer)
    }

    /// The matrix `kind` of `layer` (`None` for embedding and LM head). The LM head of a model
    /// with tied embeddings is the embedding matrix.
    pub fn tensor(&self, kind: TensorKind, layer: Option<u32>) -> Option<&TensorExtent> {
        self.tensors
            .iter()
            .find(|t| t.shape.kind == kind && t.shape.layer == layer)
            .or_else(|| {
                (kind == TensorKind::LmHead)
                    .then(|| self.tensor(TensorKind::Embedding, None))
                    .flatten()
            })
    }

    /// Bytes of every matrix outside the FFN (embedding, attention, LM head): what policies that
    /// stream only the FFN keep resident.
    pub fn non_ffn_bytes(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| !t.shape.kind.is_ffn())
            .map(|t| t.bytes)
            .sum()
    }

    /// The extents of [`WeightLayout::non_ffn_bytes`]'s matrices.
    pub fn non_ffn_extents(&self) -> Vec<Extent> {
        self.tensors
            .iter()
            .filter(|t| !t.shape.kind.is_ffn())
            .map(|t| t.whole())
            .collect()
    }

    /// The matrices of layer `layer`.
    pub fn layer(&self, layer: u32) -> impl Iterator<Item = &TensorExtent> {
        self.tensors
            .iter()
            .filter(move |t| t.shape.layer == Some(layer))
    }
}

/// Merges extents (sorted by offset on return) that touch or overlap into reads of at most
/// `max_bytes`; a single extent larger than `max_bytes` is split.
pub fn coalesce(mut extents: Vec<Extent>, max_bytes: u64) -> Vec<Extent> {
    assert!(max_bytes > 0);
    // Policies mostly list their extents in file order already.
    if !extents.is_sorted() {
        extents.sort_unstable();
    }
    let mut out: Vec<Extent> = Vec::with_capacity(extents.len());
    for e in extents {
        if let Some(last) = out.last_mut() {
            if e.offset <= last.end() && last.bytes < max_bytes {
                let end = last.end().max(e.end());
                let merged = end - last.offset;
                if merged <= max_bytes {
                    last.bytes = merged;
                    continue;
                }
                // Fill the last read up to max_bytes, carry the rest.
                let rest = Extent {
                    offset: last.offset + max_bytes,
                    bytes: end - (last.offset + max_bytes),
                };
                last.bytes = max_bytes;
                push_split(&mut out, rest, max_bytes);
                continue;
            }
            if e.end() <= last.end() {
                continue;
            }
        }
        push_split(&mut out, e, max_bytes);
    }
    out
}

fn push_split(out: &mut Vec<Extent>, e: Extent, max_bytes: u64) {
    let mut off = e.offset;
    while off < e.end() {
        let b = max_bytes.min(e.end() - off);
        out.push(Extent {
            offset: off,
            bytes: b,
        });
        off += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, bytes: u64) -> Extent {
        Extent { offset, bytes }
    }

    #[test]
    fn coalesce_merges_adjacent_and_caps_the_size() {
        // Three adjacent 8-byte units and a separate one.
        let v = vec![ext(16, 8), ext(0, 8), ext(8, 8), ext(40, 8)];
        assert_eq!(coalesce(v.clone(), 64), vec![ext(0, 24), ext(40, 8)]);
        assert_eq!(
            coalesce(v.clone(), 16),
            vec![ext(0, 16), ext(16, 8), ext(40, 8)]
        );
        assert_eq!(
            coalesce(vec![ext(0, 40)], 16),
            vec![ext(0, 16), ext(16, 16), ext(32, 8)]
        );
        // Duplicates and overlaps are read once.
        assert_eq!(
            coalesce(vec![ext(0, 8), ext(0, 8), ext(4, 8)], 64),
            vec![ext(0, 12)]
        );
    }

    #[test]
    fn bundles_hold_gate_up_and_down_of_one_neuron() {
        let s = ModelShape {
            name: "t".into(),
            source: String::new(),
            layers: 2,
            hidden: 8,
            intermediate: 4,
            heads: 2,
            kv_heads: 2,
            vocab: 4,
            bytes_per_weight: 2.0,
            gated: true,
            tied_embeddings: true,
            head_dim: None,
        };
        let l = WeightLayout::bundled(&s, 1);
        // Embedding 4x8, then per layer q,k,v,o (8x8 each): 64 + 2 * 4 * 128 = 1088 bytes.
        let b0 = l.bundles(0).unwrap();
        assert_eq!((b0.offset, b0.bundle_bytes, b0.neurons), (1088, 3 * 16, 4));
        assert_eq!(b0.bundle(2), ext(1088 + 96, 48));
        assert_eq!(l.bundles(1).unwrap().offset, 1088 + 4 * 48);
        assert_eq!(l.file_bytes, 1088 + 2 * 4 * 48);
        assert!(l.tensors().iter().all(|t| !t.shape.kind.is_ffn()));
        // Interleaved, groups of 2 layers, one operator (gate, up): channel c of a layer is a gate
        // column (4 fp16 = 8 B) then an up column (8 B); of both layers, one 32-byte read.
        let il = WeightLayout::interleaved(&s, 1, 2, &[&[TensorKind::Gate, TensorKind::Up]]);
        let r = il.interleave_region(1, 0).unwrap();
        assert_eq!(
            (r.first_layer, r.layers, r.channels, r.unit_bytes),
            (0, 2, 8, 16)
        );
        assert_eq!(r.group_channel(3), ext(r.offset + 3 * 32, 32));
        assert_eq!(r.channel(1, 3), ext(r.offset + 3 * 32 + 16, 16));
        // Everything else stays: the embedding and every layer's attention and down.
        assert_eq!(il.tensors().len(), 1 + 2 * 5);
        assert_eq!(
            il.file_bytes,
            il.tensors().iter().map(|t| t.bytes).sum::<u64>() + 2 * 8 * 8 * 2
        );
        // Column-major down: a column of down (one neuron) is `hidden` weights.
        let o = WeightLayout::oriented(&s, 1, |k| {
            if k == TensorKind::Down {
                Major::Col
            } else {
                Major::Row
            }
        });
        let down = o.tensor(TensorKind::Down, Some(0)).unwrap();
        assert_eq!((down.units(), down.row_bytes), (4, 16));
    }
}
