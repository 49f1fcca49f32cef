//! Weight layouts: where each matrix sits in the flash file, which decides read sizes.
//!
//! The per-matrix layout stores the tensors of [`ModelShape::tensors`] one after another, each
//! row-major (`[out][in]`) and starting on an `alignment_bytes` boundary so that O_DIRECT reads
//! of whole tensors or rows are possible. (Bundled and cross-layer layouts come with the
//! policies that use them.)

use flashsim_workloads::shape::{ModelShape, TensorKind, TensorShape};

/// One matrix in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorExtent {
    pub shape: TensorShape,
    pub offset: u64,
    /// Bytes of one row (`cols` weights).
    pub row_bytes: u64,
    pub bytes: u64,
}

impl TensorExtent {
    /// The byte range of rows `[first, first + count)`.
    pub fn rows(&self, first: u64, count: u64) -> crate::Extent {
        debug_assert!(first + count <= self.shape.rows);
        crate::Extent {
            offset: self.offset + first * self.row_bytes,
            bytes: count * self.row_bytes,
        }
    }
    pub fn whole(&self) -> crate::Extent {
        crate::Extent {
            offset: self.offset,
            bytes: self.bytes,
        }
    }
}

/// The per-matrix layout of a model's weight file.
#[derive(Debug, Clone)]
pub struct WeightLayout {
    tensors: Vec<TensorExtent>,
    pub file_bytes: u64,
    pub alignment_bytes: u64,
}

impl WeightLayout {
    pub fn per_matrix(shape: &ModelShape, alignment_bytes: u64) -> Self {
        assert!(alignment_bytes.is_power_of_two());
        let mut off = 0u64;
        let mut tensors = Vec::new();
        for t in shape.tensors() {
            off = off.next_multiple_of(alignment_bytes);
            let row_bytes = shape.weight_bytes(t.cols);
            let bytes = row_bytes * t.rows;
            tensors.push(TensorExtent {
                shape: t,
                offset: off,
                row_bytes,
                bytes,
            });
            off += bytes;
        }
        WeightLayout {
            tensors,
            file_bytes: off.next_multiple_of(alignment_bytes),
            alignment_bytes,
        }
    }

    pub fn tensors(&self) -> &[TensorExtent] {
        &self.tensors
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

    /// The matrices of layer `layer`.
    pub fn layer(&self, layer: u32) -> impl Iterator<Item = &TensorExtent> {
        self.tensors
            .iter()
            .filter(move |t| t.shape.layer == Some(layer))
    }
}
