//! Packed weights kept once per model, whatever number of plans use them. tract packs each
//! matrix product's constant operand into the layout its kernel reads as it optimises a
//! plan, so every plan (one per line width for PP-OCR's recogniser) held its own packed
//! copy of the weights: 9.9 MB a plan. A new plan's packed operands that hold the same
//! values as one an earlier plan packed now point at that one.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex, Weak},
};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::{
    ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec},
    tract_linalg::mmm::{EagerPackedInput, MMMInputValue},
};

/// The packed operands the model's plans have built, by a hash of their values.
#[derive(Default)]
pub struct SharedWeights {
    kept: Mutex<HashMap<u64, Vec<Kept>>>,
}

/// A packed operand some plan holds: its layout, and its bytes while a plan holds them.
struct Kept {
    like: EagerPackedInput,
    bytes: Weak<Blob>,
}

impl Kept {
    fn upgrade(&self) -> Option<EagerPackedInput> {
        Some(EagerPackedInput {
            packed: self.bytes.upgrade()?,
            ..self.like.clone()
        })
    }
}

impl SharedWeights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Kept>>> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points every packed constant operand of `model` that an earlier plan already holds
    /// (the same layout and the same values) at that plan's copy, so that this plan's own
    /// is freed; keeps the others for later plans. Returns the bytes no longer held twice.
    pub fn share(&self, model: &mut TypedModel) -> usize {
        // What plans let go since is forgotten: a server seeing pages of ever new sizes
        // builds plans for as long as it runs.
        self.lock().retain(|_, same_key| {
            same_key.retain(|kept| kept.bytes.strong_count() > 0);
            !same_key.is_empty()
        });
        let mut shared = 0;
        for_each_packed(model, |packed| {
            if let Some(earlier) = self.earlier_or_keep(packed) {
                shared += packed.packed.len();
                packed.packed = earlier;
            }
        });
        shared
    }

    /// An operand kept earlier with the same values as `packed`; otherwise `packed` is kept
    /// for the plans to come, and None.
    fn earlier_or_keep(&self, packed: &EagerPackedInput) -> Option<Arc<Blob>> {
        // Operands whose values cannot be read back (a quantised block format) are left be.
        let ours = values(packed)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ours.hash(&mut hasher);
        let key = hasher.finish();
        let mut kept = self.lock();
        let same_key = kept.entry(key).or_default();
        // Compared in full: the bytes themselves differ between plans in the padding the
        // layout leaves uninitialised, and a hash alone could collide.
        let earlier = same_key.iter().filter_map(Kept::upgrade).find(|earlier| {
            earlier.fact == packed.fact
                && earlier.mn == packed.mn
                && earlier.panel_bytes == packed.panel_bytes
                && values(earlier).as_deref() == Some(&ours[..])
        });
        match earlier {
            Some(earlier) => Some(earlier.packed),
            None => {
                same_key.push(Kept {
                    like: EagerPackedInput {
                        packed: Arc::default(),
                        ..packed.clone()
                    },
                    bytes: Arc::downgrade(&packed.packed),
                });
                None
            }
        }
    }
}

/// Calls `visit` with each packed constant operand of the model's matrix products.
fn for_each_packed(model: &mut TypedModel, mut visit: impl FnMut(&mut EagerPackedInput)) {
    for node in model.nodes_mut() {
        let Some(op) = node.op_as_mut::<OptMatMul>() else {
            continue;
        };
        for spec in &mut op.micro_ops {
            let ProtoFusedSpec::AddMatMul { a, b, .. } = spec else {
                continue;
            };
            for operand in [a, b] {
                if let MatMulOperand::Const(value) = operand {
                    if let Some(packed) = value.downcast_mut::<EagerPackedInput>() {
                        visit(packed);
                    }
                }
            }
        }
    }
}

/// Every value of a packed operand as f32 bits, row by row (`mn` rows of `k`).
fn values(packed: &EagerPackedInput) -> Option<Vec<u32>> {
    let (rows, k) = (packed.mn(), packed.k());
    let mut row = vec![0f32; k];
    let mut out = Vec::with_capacity(rows * k);
    for mn in 0..rows {
        packed.extract_at_mn_f32(mn, &mut row).ok()?;
        out.extend(row.iter().map(|v| v.to_bits()));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tract_onnx::tract_hir::infer::InferenceFact;

    use super::*;

    fn classifier(rows: usize) -> TypedModel {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ppocr_cls/1/model.onnx");
        let mut graph = tract_onnx::onnx()
            .model_for_path(path)
            .expect("the classifier loads");
        graph
            .set_input_fact(
                0,
                InferenceFact::dt_shape(f32::datum_type(), tvec![rows, 3, 48, 192]),
            )
            .unwrap();
        graph.into_optimized().expect("optimises")
    }

    fn packed(model: &mut TypedModel) -> Vec<Arc<Blob>> {
        let mut out = Vec::new();
        for_each_packed(model, |p| out.push(Arc::clone(&p.packed)));
        out
    }

    fn run(model: TypedModel, input: &Tensor) -> Vec<u8> {
        let outputs = model
            .into_runnable()
            .unwrap()
            .run(tvec![input.clone().into()])
            .unwrap();
        outputs[0].as_bytes().to_vec()
    }

    #[test]
    fn a_later_plan_reads_the_earlier_plans_packed_weights_and_answers_the_same() {
        let weights = SharedWeights::default();
        let mut one_row = classifier(1);
        assert_eq!(weights.share(&mut one_row), 0, "nothing to share with yet");
        let mut two_rows = classifier(2);
        let shared = weights.share(&mut two_rows);
        assert!(shared > 0, "the second plan shares the first one's weights");
        let earlier = packed(&mut one_row);
        let reused: usize = packed(&mut two_rows)
            .iter()
            .filter(|b| earlier.iter().any(|e| Arc::ptr_eq(e, b)))
            .map(|b| b.len())
            .sum();
        assert_eq!(
            reused, shared,
            "what it reports shared is what it points at"
        );

        let input = Tensor::from_shape(
            &[2, 3, 48, 192],
            &(0..2 * 3 * 48 * 192)
                .map(|i| ((i * 7919) % 255) as f32 / 255.0 - 0.5)
                .collect::<Vec<f32>>(),
        )
        .unwrap();
        assert_eq!(run(two_rows, &input), run(classifier(2), &input));
    }

    #[test]
    fn weights_no_plan_holds_any_more_are_not_shared_nor_remembered() {
        let weights = SharedWeights::default();
        let mut first = classifier(2);
        weights.share(&mut first);
        drop(first);
        let mut again = classifier(2);
        assert_eq!(weights.share(&mut again), 0);
        drop(again);
        // Entries no values of a later plan come by: dropped all the same.
        let mut other = classifier(1);
        let stale = weights.lock().values().flatten().next().map(|kept| Kept {
            like: kept.like.clone(),
            bytes: Weak::new(),
        });
        weights.lock().insert(u64::MAX, stale.into_iter().collect());
        weights.share(&mut other);
        assert!(
            weights
                .kept
                .lock()
                .unwrap()
                .values()
                .flatten()
                .all(|kept| kept.bytes.strong_count() > 0),
            "entries of the dropped plans are gone once the next plan is built"
        );
    }
}
