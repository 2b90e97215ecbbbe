//! Text-line crops: `text_crop` cuts each box out of the page for the direction classifier
//! (3 x 48 x 192); `text_lines` cuts them again for the recogniser, turns those the
//! classifier found upside down, and pads each to one of a few widths, so that lines of
//! similar length from any request share a shape and batch together (or, with
//! `group_size`, as rapidocr pads them, for answers equal to its own).

use image::RgbImage;

use super::{
    f32_tensor, f32s,
    geometry::{self, Quad},
    i32_tensor,
    params::Params,
    resample, tensor, BackendError, Signature, Step,
};
use crate::tensor::{DataType, Tensor};

/// The page and its boxes, as the steps receive them.
fn page_and_boxes(inputs: &[Tensor]) -> Result<(RgbImage, Vec<Quad>), BackendError> {
    let pixels = &inputs[0];
    let (h, w) = (pixels.shape[0] as u32, pixels.shape[1] as u32);
    let page = RgbImage::from_raw(w, h, super::raw(pixels).to_vec()).ok_or_else(|| {
        BackendError::BadInput("input 'pixels' does not hold height x width x 3 bytes".into())
    })?;
    let corners = f32s(&inputs[1]);
    if let Some(bad) = corners.iter().position(|v| !v.is_finite()) {
        return Err(BackendError::BadInput(format!(
            "input 'boxes': box {} has a coordinate that is not a number",
            bad / 8
        )));
    }
    // Corners outside the page are moved onto its edge: a crop is never larger than the
    // page, whatever a caller sends (an unbounded one would not even fail, but abort).
    let (max_x, max_y) = (w.saturating_sub(1) as f32, h.saturating_sub(1) as f32);
    let quads = corners
        .chunks_exact(8)
        .map(|c| {
            let at = |i: usize| [c[i].clamp(0.0, max_x), c[i + 1].clamp(0.0, max_y)];
            [at(0), at(2), at(4), at(6)]
        })
        .collect();
    Ok((page, quads))
}

/// A crop as the PP-OCR classifier and recogniser take it: resized to `height` keeping
/// its proportions (at most `max_width` wide), scaled to [-1, 1], channels first, and
/// padded with zeros on the right to `padded_width`.
fn normalised(crop: &RgbImage, height: u32, max_width: u32, padded_width: u32, out: &mut Vec<f32>) {
    let ratio = crop.width() as f64 / crop.height() as f64;
    let width = ((height as f64 * ratio).ceil() as u32).clamp(1, max_width);
    let resized = resample::resize(crop, width, height);
    let start = out.len();
    out.resize(start + 3 * (height * padded_width) as usize, 0.0);
    let plane = (height * padded_width) as usize;
    for (x, y, pixel) in resized.enumerate_pixels() {
        let at = (y * padded_width + x) as usize;
        for c in 0..3 {
            // rapidocr's order of operations in f32, for its values to the bit.
            out[start + c * plane + at] = (pixel[c] as f32 / 255.0 - 0.5) / 0.5;
        }
    }
}

/// Each box cut out of the page; a box too thin to cut gives an empty (black) crop.
fn crops(page: &RgbImage, quads: &[Quad]) -> Vec<RgbImage> {
    quads
        .iter()
        .map(|q| geometry::crop(page, q).unwrap_or_else(|| RgbImage::new(1, 1)))
        .collect()
}

pub struct TextCrop {
    signature: Signature,
    height: u32,
    width: u32,
}

impl TextCrop {
    pub fn new(params: &mut Params) -> Result<TextCrop, String> {
        let height = params.get("height", 48, "a number of pixels")?;
        let width = params.get("width", 192, "a number of pixels")?;
        Ok(TextCrop {
            signature: Signature {
                inputs: vec![
                    tensor("pixels", DataType::Uint8, &[-1, -1, 3]),
                    tensor("boxes", DataType::Fp32, &[-1, 4, 2]),
                ],
                outputs: vec![tensor(
                    "crops",
                    DataType::Fp32,
                    &[-1, 3, height as i64, width as i64],
                )],
            },
            height,
            width,
        })
    }
}

impl Step for TextCrop {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let (page, quads) = page_and_boxes(inputs)?;
        let mut values = Vec::new();
        for crop in crops(&page, &quads) {
            normalised(&crop, self.height, self.width, self.width, &mut values);
        }
        let shape = vec![quads.len(), 3, self.height as usize, self.width as usize];
        Ok(vec![f32_tensor("crops", shape, &values)])
    }
}

pub struct TextLines {
    signature: Signature,
    height: u32,
    /// Widths lines are padded to, ascending; a wider line is squeezed into the last.
    buckets: Vec<u32>,
    /// 0: each line padded to its bucket. N: lines sorted by width in groups of N, each
    /// padded to its group's widest (at least the first bucket), group k in output k, as
    /// rapidocr does; the recogniser reads a line a little differently at each padding,
    /// so this gives rapidocr's answers, at the cost of batching only within an image.
    group_size: usize,
    /// The classifier's probability for "upside down" above which a line is turned.
    cls_thresh: f32,
}

impl TextLines {
    pub fn new(params: &mut Params) -> Result<TextLines, String> {
        let height = params.get("height", 48, "a number of pixels")?;
        let buckets = bucket_widths(params)?;
        let group_size = params.get("group_size", 0, "a number of lines (0: pad to buckets)")?;
        let mut outputs: Vec<_> = buckets
            .iter()
            .map(|w| {
                let width = if group_size == 0 { *w as i64 } else { -1 };
                tensor(
                    &format!("lines_{w}"),
                    DataType::Fp32,
                    &[-1, 3, height as i64, width],
                )
            })
            .collect();
        outputs.push(tensor("line_bucket", DataType::Int32, &[-1]));
        Ok(TextLines {
            signature: Signature {
                inputs: vec![
                    tensor("pixels", DataType::Uint8, &[-1, -1, 3]),
                    tensor("boxes", DataType::Fp32, &[-1, 4, 2]),
                    tensor("directions", DataType::Fp32, &[-1, 2]),
                ],
                outputs,
            },
            height,
            buckets,
            group_size,
            cls_thresh: params.get("cls_thresh", 0.9, "a probability")?,
        })
    }
}

/// The `buckets` parameter: line widths the recogniser is fed at, ascending.
pub fn bucket_widths(params: &mut Params) -> Result<Vec<u32>, String> {
    let mut buckets: Vec<u32> = params.list(
        "buckets",
        &[320, 480, 640, 960, 1280, 1920],
        "widths such as 320,480,640",
    )?;
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.is_empty() || buckets[0] == 0 {
        return Err("key `parameters.buckets.string_value`: expected widths above 0".into());
    }
    Ok(buckets)
}

impl Step for TextLines {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let (page, quads) = page_and_boxes(inputs)?;
        let directions = f32s(&inputs[2]);
        if directions.len() != quads.len() * 2 {
            return Err(BackendError::BadInput(format!(
                "input 'directions' has {} rows for {} boxes",
                directions.len() / 2,
                quads.len()
            )));
        }
        let lines: Vec<RgbImage> = crops(&page, &quads)
            .into_iter()
            .enumerate()
            .map(|(i, crop)| {
                let (upright, upside_down) = (directions[2 * i], directions[2 * i + 1]);
                if upside_down > upright && upside_down > self.cls_thresh {
                    geometry::rotate_half(&crop)
                } else {
                    crop
                }
            })
            .collect();
        let (line_bucket, widths) = if self.group_size == 0 {
            self.by_bucket(&lines)
        } else {
            self.by_group(&lines)
        };
        let mut per_bucket: Vec<(Vec<f32>, usize)> = vec![(Vec::new(), 0); self.buckets.len()];
        // Rows of an output keep the lines' order, which is how `ctc_decode` finds them.
        for (line, bucket) in lines.iter().zip(&line_bucket) {
            let padded = widths[*bucket as usize];
            let (values, rows) = &mut per_bucket[*bucket as usize];
            normalised(line, self.height, padded, padded, values);
            *rows += 1;
        }
        let mut outputs: Vec<Tensor> = per_bucket
            .iter()
            .zip(widths.iter().zip(&self.buckets))
            .map(|((values, rows), (width, name))| {
                let shape = vec![*rows, 3, self.height as usize, *width as usize];
                f32_tensor(&format!("lines_{name}"), shape, values)
            })
            .collect();
        outputs.push(i32_tensor("line_bucket", &line_bucket));
        Ok(outputs)
    }
}

impl TextLines {
    /// Proportional width of a line at the recogniser's height.
    fn ratio(line: &RgbImage) -> f64 {
        line.width() as f64 / line.height() as f64
    }

    /// Each line to the narrowest bucket that holds it: (output per line, output widths).
    fn by_bucket(&self, lines: &[RgbImage]) -> (Vec<i32>, Vec<u32>) {
        let outputs = lines
            .iter()
            .map(|line| {
                let width = (self.height as f64 * Self::ratio(line)).ceil();
                let bucket = self.buckets.iter().position(|b| *b as f64 >= width);
                bucket.unwrap_or(self.buckets.len() - 1) as i32
            })
            .collect();
        (outputs, self.buckets.clone())
    }

    /// rapidocr's padding: lines sorted by width, in groups of `group_size`, each padded
    /// to its group's widest (never under the first bucket, never over the last). Lines
    /// beyond the outputs' count of groups all share the last output.
    fn by_group(&self, lines: &[RgbImage]) -> (Vec<i32>, Vec<u32>) {
        let mut order: Vec<usize> = (0..lines.len()).collect();
        order.sort_by(|a, b| Self::ratio(&lines[*a]).total_cmp(&Self::ratio(&lines[*b])));
        let last = self.buckets.len() - 1;
        let mut outputs = vec![0; lines.len()];
        let mut widest = vec![self.buckets[0] as f64 / self.height as f64; self.buckets.len()];
        for (rank, line) in order.iter().enumerate() {
            let group = (rank / self.group_size).min(last);
            outputs[*line] = group as i32;
            widest[group] = widest[group].max(Self::ratio(&lines[*line]));
        }
        let widths = widest
            .iter()
            .map(|ratio| ((self.height as f64 * ratio) as u32).min(self.buckets[last]))
            .collect();
        (outputs, widths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn crops_keep_their_proportions_and_are_padded_with_zeros() {
        let crop = RgbImage::from_pixel(100, 20, image::Rgb([255, 255, 255]));
        let mut values = Vec::new();
        normalised(&crop, 48, 192, 192, &mut values);
        assert_eq!(values.len(), 3 * 48 * 192);
        // 100 x 20 at height 48 is 240 wide, over 192: squeezed to 192, no padding.
        assert_eq!(values[191], 1.0);
        let mut values = Vec::new();
        let narrow = RgbImage::from_pixel(20, 20, image::Rgb([255, 255, 255]));
        normalised(&narrow, 48, 192, 192, &mut values);
        assert_eq!((values[47], values[48]), (1.0, 0.0), "48 wide, then zeros");
    }

    #[test]
    fn boxes_beyond_the_page_are_cut_to_it_and_non_numbers_refused() {
        let step = TextCrop::new(&mut Params::new(&BTreeMap::new())).unwrap();
        let page = || Tensor {
            name: "pixels".into(),
            datatype: DataType::Uint8,
            shape: vec![40, 60, 3],
            data: crate::tensor::TensorData::Fixed(vec![200; 40 * 60 * 3].into()),
        };
        // A box a billion pixels across: cut to the 60 x 40 page, one crop as usual.
        let huge = [[0.0, 0.0], [1e9, 0.0], [1e9, 1e9], [0.0, 1e9]].concat();
        let out = step
            .run(&[page(), f32_tensor("boxes", vec![1, 4, 2], &huge)])
            .unwrap();
        assert_eq!(out[0].shape, vec![1, 3, 48, 192]);
        let nan = [[0.0, 0.0], [f32::NAN, 0.0], [10.0, 10.0], [0.0, 10.0]].concat();
        let err = step
            .run(&[page(), f32_tensor("boxes", vec![1, 4, 2], &nan)])
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("box 0 has a coordinate that is not a number"),
            "{err}"
        );
    }

    #[test]
    fn with_group_size_lines_are_padded_in_width_order_groups_as_rapidocr_pads_them() {
        let given = BTreeMap::from([
            ("buckets".to_owned(), "320,640,960".to_owned()),
            ("group_size".to_owned(), "2".to_owned()),
        ]);
        let step = TextLines::new(&mut Params::new(&given)).unwrap();
        // Ratios 20, 2, 10, 1, 30, 40, 50 (48 high: 960, 96, 480, 48, 1440, 1920, 2400 wide).
        let lines: Vec<RgbImage> = [20, 2, 10, 1, 30, 40, 50]
            .iter()
            .map(|r| RgbImage::new(10 * r, 10))
            .collect();
        let (outputs, widths) = step.by_group(&lines);
        // Sorted: 1, 2 | 10, 20 | 30, 40, 50 (the rest share the last output).
        assert_eq!(outputs, vec![1, 0, 1, 0, 2, 2, 2]);
        // Group 0 is padded to the first bucket at least; the last is capped at the last.
        assert_eq!(widths, vec![320, 960, 960]);
    }

    #[test]
    fn lines_go_to_the_narrowest_bucket_that_holds_them_and_upside_down_ones_are_turned() {
        let given = BTreeMap::from([("buckets".to_owned(), "160,320".to_owned())]);
        let step = TextLines::new(&mut Params::new(&given)).unwrap();
        let page = Tensor {
            name: "pixels".into(),
            datatype: DataType::Uint8,
            shape: vec![60, 400, 3],
            data: crate::tensor::TensorData::Fixed(vec![128; 60 * 400 * 3].into()),
        };
        // 40 x 20 -> 96 wide (bucket 160); 300 x 20 -> 720 (squeezed into 320).
        let boxes = [[0.0, 0.0], [40.0, 0.0], [40.0, 20.0], [0.0, 20.0]]
            .iter()
            .chain(&[[0.0, 30.0], [300.0, 30.0], [300.0, 50.0], [0.0, 50.0]])
            .flatten()
            .copied()
            .collect::<Vec<f32>>();
        let out = step
            .run(&[
                page,
                f32_tensor("boxes", vec![2, 4, 2], &boxes),
                f32_tensor("directions", vec![2, 2], &[0.05, 0.95, 0.99, 0.01]),
            ])
            .unwrap();
        assert_eq!(out[0].shape, vec![1, 3, 48, 160]);
        assert_eq!(out[1].shape, vec![1, 3, 48, 320]);
        assert_eq!(super::super::i32s(&out[2]), vec![0, 1]);
    }
}
