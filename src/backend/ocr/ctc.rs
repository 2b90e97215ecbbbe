//! `ctc_decode`: the recogniser's per-step class scores into text (greedy CTC: the best
//! class at each step, repeats merged, blanks dropped), each line's score the mean of its
//! characters', lines under `text_score` left out, and boxes mapped back onto the original
//! image. The dictionary is read from the recogniser's ONNX metadata (`character`).

use std::path::Path;

use bytes::Bytes;
use prost::Message;

use super::{
    bytes_tensor, crop::bucket_widths, decode::GEOMETRY, f32_tensor, f32s, i32s, params::Params,
    raw, tensor, BackendError, Signature, Step,
};
use crate::tensor::{le_chunks, DataType, Tensor};

pub struct CtcDecode {
    signature: Signature,
    /// Index 0 is CTC's blank; then the dictionary; then a space.
    characters: Vec<String>,
    buckets: usize,
    text_score: f32,
}

impl CtcDecode {
    pub fn new(params: &mut Params, model_dir: &Path) -> Result<CtcDecode, String> {
        let buckets = bucket_widths(params)?;
        let source: String = params.get(
            "dictionary",
            String::new(),
            "a path, relative to this model's folder, to the recogniser's .onnx or a .txt of one character a line",
        )?;
        if source.is_empty() {
            return Err("key `parameters.dictionary`: expected the recogniser's model file (its metadata holds `character`) or a text file".into());
        }
        let characters = dictionary(&model_dir.join(&source))?;
        let mut inputs: Vec<_> = buckets
            .iter()
            .map(|w| {
                tensor(
                    &format!("scores_{w}"),
                    DataType::Fp32,
                    &[-1, -1, characters.len() as i64],
                )
            })
            .collect();
        inputs.extend([
            tensor("line_bucket", DataType::Int32, &[-1]),
            tensor("boxes", DataType::Fp32, &[-1, 4, 2]),
            tensor("geometry", DataType::Fp32, &[GEOMETRY.len() as i64]),
        ]);
        Ok(CtcDecode {
            signature: Signature {
                inputs,
                outputs: vec![
                    tensor("text", DataType::Bytes, &[-1]),
                    tensor("text_score", DataType::Fp32, &[-1]),
                    tensor("boxes", DataType::Fp32, &[-1, 4, 2]),
                ],
            },
            characters,
            buckets: buckets.len(),
            text_score: params.get("text_score", 0.5, "a score between 0 and 1")?,
        })
    }

    /// One line's text and score from its steps x classes scores (raw little-endian
    /// FP32, read where they lie).
    fn decode(&self, scores: &[u8]) -> (String, f32) {
        let classes = self.characters.len();
        let mut text = String::new();
        let (mut sum, mut kept) = (0f64, 0usize);
        let mut previous = usize::MAX;
        for step in scores.chunks_exact(classes * 4) {
            let (best, p) = le_chunks::<4>(step)
                .map(f32::from_le_bytes)
                .enumerate()
                .fold(
                    (0, f32::MIN),
                    |(bi, bp), (i, p)| {
                        if p > bp {
                            (i, p)
                        } else {
                            (bi, bp)
                        }
                    },
                );
            if best != 0 && best != previous {
                text.push_str(&self.characters[best]);
                sum += p as f64;
                kept += 1;
            }
            previous = best;
        }
        let score = if kept == 0 {
            0.0
        } else {
            (sum / kept as f64) as f32
        };
        (text, score)
    }
}

/// CTC's classes: blank, the dictionary's characters, and a space, as PaddleOCR orders them.
fn dictionary(path: &Path) -> Result<Vec<String>, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("dictionary {shown}: {e}"))?;
    let text = if path.extension().is_some_and(|e| e == "onnx") {
        let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| format!("dictionary {shown}: not an ONNX model: {e}"))?;
        model
            .metadata_props
            .into_iter()
            .find(|p| p.key == "character")
            .map(|p| p.value)
            .ok_or_else(|| format!("dictionary {shown}: no `character` in the model's metadata"))?
    } else {
        String::from_utf8(bytes).map_err(|_| format!("dictionary {shown}: not UTF-8 text"))?
    };
    let mut characters = vec![String::new()];
    characters.extend(text.lines().map(str::to_owned));
    characters.push(" ".into());
    Ok(characters)
}

impl Step for CtcDecode {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let line_bucket = i32s(&inputs[self.buckets]);
        let boxes = f32s(&inputs[self.buckets + 1]);
        let geometry = f32s(&inputs[self.buckets + 2]);
        let [ratio_h, ratio_w, pad_top, pad_left, height, width] = geometry[..] else {
            return Err(BackendError::BadInput(
                "input 'geometry' must hold 6 numbers".into(),
            ));
        };
        if boxes.len() != line_bucket.len() * 8 {
            return Err(BackendError::BadInput(format!(
                "{} boxes for {} lines",
                boxes.len() / 8,
                line_bucket.len()
            )));
        }
        let mut next_row = vec![0usize; self.buckets];
        let (mut text, mut text_score, mut kept_boxes) = (Vec::new(), Vec::new(), Vec::new());
        for (line, bucket) in line_bucket.iter().enumerate() {
            let bucket = usize::try_from(*bucket)
                .ok()
                .filter(|b| *b < self.buckets)
                .ok_or_else(|| {
                    BackendError::BadInput(format!("line {line}: no bucket {bucket}"))
                })?;
            let row = next_row[bucket];
            next_row[bucket] += 1;
            let shape = &inputs[bucket].shape;
            let per_row = shape[1] * shape[2] * 4;
            let Some(row_scores) = raw(&inputs[bucket]).get(row * per_row..(row + 1) * per_row)
            else {
                return Err(BackendError::BadInput(format!(
                    "input '{}' has {} rows, line {line} needs row {row}",
                    inputs[bucket].name, shape[0]
                )));
            };
            let (line_text, score) = self.decode(row_scores);
            if score < self.text_score {
                continue;
            }
            text.push(Bytes::from(line_text));
            text_score.push(score);
            for corner in boxes[line * 8..line * 8 + 8].chunks_exact(2) {
                let x = ((corner[0] - pad_left) * ratio_w).clamp(0.0, width);
                let y = ((corner[1] - pad_top) * ratio_h).clamp(0.0, height);
                kept_boxes.extend([x, y]);
            }
        }
        let lines = text.len();
        Ok(vec![
            bytes_tensor("text", text),
            f32_tensor("text_score", vec![lines], &text_score),
            f32_tensor("boxes", vec![lines, 4, 2], &kept_boxes),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_merge_blanks_split_and_the_score_is_the_kept_characters_mean() {
        let step = CtcDecode {
            signature: Signature {
                inputs: vec![],
                outputs: vec![],
            },
            characters: vec!["".into(), "a".into(), "b".into(), " ".into()],
            buckets: 1,
            text_score: 0.5,
        };
        let row = |best: usize, p: f32| {
            let mut r = vec![(1.0 - p) / 3.0; 4];
            r[best] = p;
            r
        };
        let raw =
            |values: Vec<f32>| -> Vec<u8> { values.iter().flat_map(|v| v.to_le_bytes()).collect() };
        // a a _ a b b _ -> "aab"
        let scores: Vec<f32> = [
            (1, 0.9),
            (1, 0.8),
            (0, 0.9),
            (1, 0.7),
            (2, 0.6),
            (2, 0.9),
            (0, 0.9),
        ]
        .iter()
        .flat_map(|(b, p)| row(*b, *p))
        .collect();
        let (text, score) = step.decode(&raw(scores));
        assert_eq!(text, "aab");
        assert!((score - (0.9 + 0.7 + 0.6) / 3.0).abs() < 1e-6);
        assert_eq!(step.decode(&raw(row(0, 0.9))), (String::new(), 0.0));
    }
}
