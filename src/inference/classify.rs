//! Triton's classification extension: an output asked for with a class count comes back
//! as BYTES `"score:index[:label]"`, its top N per row, highest first.

use bytes::Bytes;

use crate::{
    error::InferError,
    tensor::{le_chunks, DataType, Tensor, TensorData},
};

/// The most elements one row may rank (Triton's bound, against pathological outputs).
const MAX_ELEMENTS: usize = 1_000_000;

/// `output` replaced by its top `count` classes per row: rows along the first dimension
/// when the model batches (`batched`), else the whole tensor as one row. Ties keep the
/// lower index first.
pub fn top_classes(
    output: Tensor,
    count: u32,
    batched: bool,
    labels: Option<&[String]>,
) -> Result<Tensor, InferError> {
    let unsupported = || {
        InferError::invalid(format!(
            "class result not available for output '{}' due to unsupported type '{}'; \
             classification ranks INT, UINT, FP32 and FP64 outputs",
            output.name, output.datatype
        ))
    };
    let TensorData::Fixed(bytes) = &output.data else {
        return Err(unsupported());
    };
    let values = scores(output.datatype, bytes).ok_or_else(unsupported)?;
    let rows = if batched && !output.shape.is_empty() {
        output.shape[0]
    } else {
        1
    };
    let per_row = values.len().checked_div(rows).unwrap_or(0);
    if per_row > MAX_ELEMENTS {
        return Err(InferError::invalid(format!(
            "output '{}' has {per_row} elements per row, over the {MAX_ELEMENTS} classification ranks",
            output.name
        )));
    }
    let kept = per_row.min(count as usize);
    let mut classes = Vec::with_capacity(rows * kept);
    let mut order: Vec<usize> = Vec::with_capacity(per_row);
    for row in values.chunks(per_row.max(1)).take(rows) {
        order.clear();
        order.extend(0..row.len());
        // Stable, so equal scores keep index order; NaN ranks as total_cmp places it.
        order.sort_by(|a, b| row[*b].value.total_cmp(&row[*a].value));
        for &at in &order[..kept] {
            let mut text = format!("{}:{at}", row[at].text);
            if let Some(label) = labels.and_then(|l| l.get(at)) {
                text.push(':');
                text.push_str(label);
            }
            classes.push(Bytes::from(text));
        }
    }
    let shape = if batched && !output.shape.is_empty() {
        vec![rows, kept]
    } else {
        vec![kept]
    };
    Ok(Tensor {
        name: output.name,
        datatype: DataType::Bytes,
        shape,
        data: TensorData::Bytes(classes),
    })
}

/// One element: the value it ranks by and how the answer writes it (as C++'s
/// `std::to_string` does, which Triton's answers use: six decimals for floats).
struct Score {
    value: f64,
    text: String,
}

fn scores(datatype: DataType, bytes: &[u8]) -> Option<Vec<Score>> {
    fn int<const N: usize, T: Into<i128> + Copy>(
        bytes: &[u8],
        from: fn([u8; N]) -> T,
    ) -> Vec<Score> {
        le_chunks::<N>(bytes)
            .map(|c| {
                let v: i128 = from(c).into();
                Score {
                    value: v as f64,
                    text: v.to_string(),
                }
            })
            .collect()
    }
    fn float<const N: usize>(bytes: &[u8], from: fn([u8; N]) -> f64) -> Vec<Score> {
        le_chunks::<N>(bytes)
            .map(|c| {
                let v = from(c);
                Score {
                    value: v,
                    text: format!("{v:.6}"),
                }
            })
            .collect()
    }
    Some(match datatype {
        DataType::Uint8 => int(bytes, u8::from_le_bytes),
        DataType::Uint16 => int(bytes, u16::from_le_bytes),
        DataType::Uint32 => int(bytes, u32::from_le_bytes),
        DataType::Uint64 => int(bytes, u64::from_le_bytes),
        DataType::Int8 => int(bytes, i8::from_le_bytes),
        DataType::Int16 => int(bytes, i16::from_le_bytes),
        DataType::Int32 => int(bytes, i32::from_le_bytes),
        DataType::Int64 => int(bytes, i64::from_le_bytes),
        DataType::Fp32 => float(bytes, |c| f32::from_le_bytes(c) as f64),
        DataType::Fp64 => float(bytes, f64::from_le_bytes),
        DataType::Bool | DataType::Fp16 | DataType::Bf16 | DataType::Bytes => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp32(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor {
            name: "probs".into(),
            datatype: DataType::Fp32,
            shape,
            data: TensorData::Fixed(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    fn texts(t: &Tensor) -> Vec<String> {
        match &t.data {
            TensorData::Bytes(items) => items
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect(),
            TensorData::Fixed(_) => panic!("classes are BYTES"),
        }
    }

    #[test]
    fn batched_rows_rank_separately_with_labels() {
        let labels = vec!["cat".to_owned(), "dog".to_owned(), "eel".to_owned()];
        let out = top_classes(
            fp32(vec![2, 3], &[0.1, 0.7, 0.2, 0.5, 0.25, 0.25]),
            2,
            true,
            Some(&labels),
        )
        .unwrap();
        assert_eq!(out.datatype, DataType::Bytes);
        assert_eq!(out.shape, vec![2, 2]);
        assert_eq!(
            texts(&out),
            [
                "0.700000:1:dog",
                "0.200000:2:eel",
                "0.500000:0:cat",
                "0.250000:1:dog"
            ]
        );
    }

    #[test]
    fn unbatched_ranks_the_whole_tensor_and_caps_the_count() {
        let out = top_classes(fp32(vec![1, 3], &[3.0, 1.0, 2.0]), 9, false, None).unwrap();
        assert_eq!(out.shape, vec![3]);
        assert_eq!(texts(&out), ["3.000000:0", "2.000000:2", "1.000000:1"]);
    }

    #[test]
    fn integers_print_whole_and_unsupported_types_are_named() {
        let ints = Tensor {
            name: "n".into(),
            datatype: DataType::Int32,
            shape: vec![3],
            data: TensorData::Fixed([-5i32, 7, 0].iter().flat_map(|v| v.to_le_bytes()).collect()),
        };
        assert_eq!(texts(&top_classes(ints, 1, false, None).unwrap()), ["7:1"]);
        let words = Tensor::zeros("w", DataType::Bytes, vec![2]);
        let err = top_classes(words, 1, false, None).unwrap_err().to_string();
        assert!(
            err.contains("output 'w' due to unsupported type 'BYTES'"),
            "{err}"
        );
    }
}
