//! `db_postprocess`: the detector's text-probability map into text boxes (Differentiable
//! Binarization's post-processing): threshold, dilate, trace each region's border, keep
//! the boxes whose mean probability passes, grow each outward (unclip), map to the page,
//! and order them for reading.

use geo::Coord;
use image::{GrayImage, Luma};
use imageproc::{
    contours::find_contours,
    drawing::draw_polygon_mut,
    morphology::{grayscale_dilate, Mask},
    point::Point,
};

use super::{
    f32_tensor, f32s,
    geometry::{self, Quad},
    params::Params,
    tensor, BackendError, Signature, Step,
};
use crate::tensor::{DataType, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
enum ScoreMode {
    /// The mean probability inside the region's box.
    Fast,
    /// The mean probability inside the region's traced outline.
    Slow,
}

impl std::str::FromStr for ScoreMode {
    type Err = ();

    fn from_str(s: &str) -> Result<ScoreMode, ()> {
        match s {
            "fast" => Ok(ScoreMode::Fast),
            "slow" => Ok(ScoreMode::Slow),
            _ => Err(()),
        }
    }
}

pub struct DbPostprocess {
    signature: Signature,
    thresh: f32,
    box_thresh: f32,
    max_candidates: usize,
    unclip_ratio: f64,
    use_dilation: bool,
    score_mode: ScoreMode,
}

/// Regions whose box is shorter than this are noise (and this + 2 once grown).
const MIN_SIZE: f64 = 3.0;

impl DbPostprocess {
    pub fn new(params: &mut Params) -> Result<DbPostprocess, String> {
        Ok(DbPostprocess {
            signature: Signature {
                inputs: vec![
                    tensor("maps", DataType::Fp32, &[1, 1, -1, -1]),
                    tensor("pixels", DataType::Uint8, &[-1, -1, 3]),
                ],
                outputs: vec![
                    tensor("boxes", DataType::Fp32, &[-1, 4, 2]),
                    tensor("scores", DataType::Fp32, &[-1]),
                ],
            },
            thresh: params.get("thresh", 0.3, "a probability")?,
            box_thresh: params.get("box_thresh", 0.5, "a probability")?,
            max_candidates: params.get("max_candidates", 1000, "a count")?,
            unclip_ratio: params.get("unclip_ratio", 1.6, "a ratio")?,
            use_dilation: params.get("use_dilation", true, "true or false")?,
            score_mode: params.get("score_mode", ScoreMode::Fast, "fast or slow")?,
        })
    }

    /// The boxes of one map (height x width), in page pixels of `dest` (width, height).
    fn boxes(
        &self,
        map: &[f32],
        width: usize,
        height: usize,
        dest: (f64, f64),
    ) -> Vec<(Quad, f32)> {
        let mut bitmap = GrayImage::from_fn(width as u32, height as u32, |x, y| {
            Luma([if map[y as usize * width + x as usize] > self.thresh {
                255
            } else {
                0
            }])
        });
        if self.use_dilation {
            // OpenCV's 2x2 kernel anchored at its centre (1, 1): each pixel takes the
            // maximum of itself and its upper and left neighbours.
            let kernel = GrayImage::from_pixel(2, 2, Luma([255]));
            bitmap = grayscale_dilate(&bitmap, &Mask::from_image(&kernel, 1, 1));
        }
        let mut found = Vec::new();
        for contour in find_contours::<i32>(&bitmap)
            .iter()
            .take(self.max_candidates)
        {
            let points: Vec<Coord<f64>> = contour
                .points
                .iter()
                .map(|p| Coord {
                    x: p.x as f64,
                    y: p.y as f64,
                })
                .collect();
            let (corners, short) = geometry::mini_box(&points);
            if short < MIN_SIZE {
                continue;
            }
            let score = match self.score_mode {
                ScoreMode::Fast => {
                    let outline: Vec<Point<i32>> = corners
                        .iter()
                        .map(|c| Point::new(c[0] as i32, c[1] as i32))
                        .collect();
                    mean_inside(map, width, height, &outline)
                }
                ScoreMode::Slow => mean_inside(map, width, height, &contour.points),
            };
            if score < self.box_thresh {
                continue;
            }
            let grown = geometry::unclip(&corners, self.unclip_ratio);
            if grown.len() < 3 {
                continue;
            }
            let (corners, short) = geometry::mini_box(&grown);
            if short < MIN_SIZE + 2.0 {
                continue;
            }
            // In f32, halves to even, as numpy does rapidocr's arithmetic.
            let scale = |v: f64, from: usize, to: f64| {
                ((v as f32 / from as f32 * to as f32).round_ties_even() as f64).clamp(0.0, to)
            };
            let quad: Quad = corners.map(|c| {
                [
                    scale(c[0], width, dest.0) as f32,
                    scale(c[1], height, dest.1) as f32,
                ]
            });
            found.push((quad, score));
        }
        found
    }
}

/// The mean of `map` over the filled polygon `outline` (cut to the map).
fn mean_inside(map: &[f32], width: usize, height: usize, outline: &[Point<i32>]) -> f32 {
    let clamp = |v: i32, max: usize| v.clamp(0, max as i32 - 1);
    let xs = outline.iter().map(|p| p.x);
    let ys = outline.iter().map(|p| p.y);
    let (x0, x1) = (
        clamp(xs.clone().min().unwrap_or(0), width),
        clamp(xs.max().unwrap_or(0), width),
    );
    let (y0, y1) = (
        clamp(ys.clone().min().unwrap_or(0), height),
        clamp(ys.max().unwrap_or(0), height),
    );
    let mut mask = GrayImage::new((x1 - x0 + 1) as u32, (y1 - y0 + 1) as u32);
    let shifted: Vec<Point<i32>> = outline
        .iter()
        .map(|p| Point::new(p.x - x0, p.y - y0))
        .collect();
    draw_polygon_mut(&mut mask, &shifted, Luma([1]));
    let (mut sum, mut count) = (0f64, 0u32);
    for (x, y, inside) in mask.enumerate_pixels() {
        if inside[0] == 1 {
            sum += map[(y as i32 + y0) as usize * width + (x as i32 + x0) as usize] as f64;
            count += 1;
        }
    }
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

impl Step for DbPostprocess {
    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn run(&self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let (height, width) = (inputs[0].shape[2], inputs[0].shape[3]);
        let (page_h, page_w) = (inputs[1].shape[0], inputs[1].shape[1]);
        if height == 0 || width == 0 || page_h == 0 || page_w == 0 {
            return Err(BackendError::BadInput(
                "inputs 'maps' and 'pixels' must not be empty".into(),
            ));
        }
        let map = f32s(&inputs[0]);
        let found = self.boxes(&map, width, height, (page_w as f64, page_h as f64));
        // As rapidocr keeps them: corners clockwise from the top-left, whole pixels inside
        // the page, and only boxes more than 3 pixels each way.
        let kept: Vec<(Quad, f32)> = found
            .into_iter()
            .map(|(quad, score)| {
                let quad = geometry::order_clockwise(quad).map(|p| {
                    [
                        p[0].clamp(0.0, page_w as f32 - 1.0).trunc(),
                        p[1].clamp(0.0, page_h as f32 - 1.0).trunc(),
                    ]
                });
                (quad, score)
            })
            .filter(|(quad, _)| {
                let (w, h) = geometry::crop_size(quad);
                w > 3 && h > 3
            })
            .collect();
        let quads: Vec<Quad> = kept.iter().map(|(q, _)| *q).collect();
        let order = geometry::reading_order(&quads);
        let boxes: Vec<f32> = order.iter().flat_map(|&i| quads[i].concat()).collect();
        let scores: Vec<f32> = order.iter().map(|&i| kept[i].1).collect();
        Ok(vec![
            f32_tensor("boxes", vec![order.len(), 4, 2], &boxes),
            f32_tensor("scores", vec![order.len()], &scores),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_bright_band_becomes_one_box_grown_and_scaled_to_the_page() {
        let step = DbPostprocess::new(&mut Params::new(&BTreeMap::new())).unwrap();
        // A 64 x 32 map, text probability 0.9 in x 10..50, y 10..20; the page is twice as big.
        let (w, h) = (64, 32);
        let map: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (10..50).contains(&x) && (10..20).contains(&y) {
                    0.9
                } else {
                    0.0
                }
            })
            .collect();
        let found = step.boxes(&map, w, h, (128.0, 64.0));
        assert_eq!(found.len(), 1);
        let (quad, score) = found[0];
        // Dilation grows the region to 41 x 11 pixels, the box's outline is filled edges
        // included (as cv2.fillPoly does), and 400 of its 451 pixels hold 0.9.
        assert!((score - 0.9 * 400.0 / 451.0).abs() < 0.001, "{score}");
        // Region 40 x 10 (after dilation 41 x 11 -> box 40 x 10 between pixel centres),
        // grown by area * 1.6 / perimeter = 6.4: about 52.8 x 22.8, doubled onto the page.
        let (cw, ch) = geometry::crop_size(&quad);
        assert!(
            (100..=110).contains(&cw) && (42..=48).contains(&ch),
            "{quad:?}"
        );
    }
}
