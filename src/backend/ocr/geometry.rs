//! Box geometry the steps share: the minimum-area box of a region, unclipping a box
//! outward, perspective crops of a box, and the reading order of boxes. Built on geo;
//! rapidocr's numbers (cv2 with pyclipper) are the reference.

use geo::{Area, Coord, Euclidean, Length, LineString, Polygon};
use image::RgbImage;

/// A quadrilateral: top-left, top-right, bottom-right, bottom-left, as (x, y).
pub type Quad = [[f32; 2]; 4];

/// The minimum-area rectangle around `points` (whole pixels), as `cv2.minAreaRect` and
/// `cv2.boxPoints` give it, ordered as rapidocr orders it (by x, then the upper of each
/// pair first), and its shorter side (0 where the points are on one line).
pub fn mini_box(points: &[Coord<f64>]) -> ([[f64; 2]; 4], f64) {
    let whole: Vec<[i64; 2]> = points
        .iter()
        .map(|c| [c.x.round() as i64, c.y.round() as i64])
        .collect();
    let Some((corners, short)) = super::min_area_rect::box_points(&whole) else {
        return ([[0.0; 2]; 4], 0.0);
    };
    let corners = corners.map(|c| [c[0] as f64, c[1] as f64]);
    let mut sorted = corners;
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (first, fourth) = if sorted[1][1] > sorted[0][1] {
        (0, 1)
    } else {
        (1, 0)
    };
    let (second, third) = if sorted[3][1] > sorted[2][1] {
        (2, 3)
    } else {
        (3, 2)
    };
    let ordered = [sorted[first], sorted[second], sorted[third], sorted[fourth]];
    (ordered, short as f64)
}

/// The box grown outward by area x `ratio` / perimeter, with round joins (DB's
/// "unclip"): the points of the grown outline, as pyclipper's `PyclipperOffset` (Clipper
/// 6's offset with JT_ROUND, arc tolerance 0.25) gives them for rapidocr. Only their
/// convex hull is used, so the union Clipper runs afterwards (which only drops points
/// inside or on the outline of a convex result) is left out.
pub fn unclip(corners: &[[f64; 2]; 4], ratio: f64) -> Vec<Coord<f64>> {
    let ring: Vec<Coord<f64>> = corners.iter().map(|c| Coord { x: c[0], y: c[1] }).collect();
    let exact = Polygon::new(LineString::from(ring), Vec::new());
    let perimeter = Euclidean.length(exact.exterior());
    if perimeter <= 0.0 {
        return Vec::new();
    }
    let delta = exact.unsigned_area() * ratio / perimeter;
    // pyclipper takes whole coordinates (cut toward zero), without repeats.
    let mut path: Vec<[i64; 2]> = Vec::with_capacity(4);
    for c in corners {
        let p = [c[0] as i64, c[1] as i64];
        if path.last() != Some(&p) {
            path.push(p);
        }
    }
    while path.len() > 1 && path.last() == path.first() {
        path.pop();
    }
    let twice_area: i64 = (0..path.len())
        .map(|i| {
            let (a, b) = (path[i], path[(i + 1) % path.len()]);
            (a[0] + b[0]) * (a[1] - b[1])
        })
        .sum();
    if twice_area > 0 {
        path.reverse();
    }
    clipper_round_offset(&path, delta)
        .into_iter()
        .map(|[x, y]| Coord {
            x: x as f64,
            y: y as f64,
        })
        .collect()
}

/// Clipper's offset of a closed polygon by `delta` with round joins, step for step.
fn clipper_round_offset(path: &[[i64; 2]], delta: f64) -> Vec<[i64; 2]> {
    use std::f64::consts::PI;
    let n = path.len();
    if n == 0 || delta <= 0.0 {
        return path.to_vec();
    }
    let round = |v: f64| {
        if v < 0.0 {
            (v - 0.5) as i64
        } else {
            (v + 0.5) as i64
        }
    };
    let tolerance = 0.25f64.min(delta * 0.25);
    let steps = (PI / (1.0 - tolerance / delta).acos()).min(delta * PI);
    let (sin, cos) = ((2.0 * PI / steps).sin(), (2.0 * PI / steps).cos());
    let steps_per_radian = steps / (2.0 * PI);
    let normal = |a: [i64; 2], b: [i64; 2]| {
        if a == b {
            return [0.0, 0.0];
        }
        let (dx, dy) = ((b[0] - a[0]) as f64, (b[1] - a[1]) as f64);
        let f = 1.0 / (dx * dx + dy * dy).sqrt();
        [dy * f, -dx * f]
    };
    let normals: Vec<[f64; 2]> = (0..n).map(|j| normal(path[j], path[(j + 1) % n])).collect();
    let at = |p: [i64; 2], v: [f64; 2]| {
        [
            round(p[0] as f64 + v[0] * delta),
            round(p[1] as f64 + v[1] * delta),
        ]
    };
    let mut out = Vec::new();
    let mut k = n - 1;
    for j in 0..n {
        let (nk, nj, p) = (normals[k], normals[j], path[j]);
        let mut sin_a = nk[0] * nj[1] - nj[0] * nk[1];
        let cos_a = nk[0] * nj[0] + nj[1] * nk[1];
        if (sin_a * delta).abs() < 1.0 {
            if cos_a > 0.0 {
                out.push(at(p, nk));
                k = j;
                continue;
            }
        } else {
            sin_a = sin_a.clamp(-1.0, 1.0);
        }
        if sin_a * delta < 0.0 {
            out.extend([at(p, nk), p, at(p, nj)]);
        } else {
            let angle = sin_a.atan2(nk[0] * nj[0] + nk[1] * nj[1]);
            let count = round(steps_per_radian * angle.abs()).max(1);
            let [mut x, mut y] = nk;
            for _ in 0..count {
                out.push(at(p, [x, y]));
                (x, y) = (x * cos - sin * y, x * sin + y * cos);
            }
            out.push(at(p, nj));
        }
        k = j;
    }
    out
}

/// The four corners reordered clockwise from the top-left (the left pair by x, each pair
/// by y), as rapidocr does before cropping.
pub fn order_clockwise(points: Quad) -> Quad {
    let mut by_x = points;
    by_x.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([by_x[0], by_x[1]], [by_x[2], by_x[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Width and height of the upright crop of `quad` (whole pixels, as rapidocr truncates).
pub fn crop_size(quad: &Quad) -> (u32, u32) {
    let width = distance(quad[0], quad[1]).max(distance(quad[2], quad[3]));
    let height = distance(quad[0], quad[3]).max(distance(quad[1], quad[2]));
    (width as u32, height as u32)
}

/// The box cut out of `image` and straightened as rapidocr does it (OpenCV's bicubic
/// warp, edges replicated: `resample::warp_crop`); a crop at least 1.5 times as tall as
/// wide is turned a quarter counter-clockwise to lie flat. None for a box too thin to
/// hold a pixel.
pub fn crop(image: &RgbImage, quad: &Quad) -> Option<RgbImage> {
    let (width, height) = crop_size(quad);
    if width == 0 || height == 0 {
        return None;
    }
    let mut out = super::resample::warp_crop(image, quad, width, height)?;
    if height as f32 / width as f32 >= 1.5 {
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

/// A crop turned half a turn (the classifier found it upside down).
pub fn rotate_half(image: &RgbImage) -> RgbImage {
    image::imageops::rotate180(image)
}

/// Boxes in reading order, as rapidocr sorts them: by the top-left corner's y then x,
/// then neighbours whose tops lie within 10 pixels swapped into left-to-right order.
pub fn reading_order(quads: &[Quad]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..quads.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (quads[a][0], quads[b][0]);
        pa[1].total_cmp(&pb[1]).then(pa[0].total_cmp(&pb[0]))
    });
    for i in 0..order.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            let (upper, lower) = (quads[order[j]][0], quads[order[j + 1]][0]);
            if (lower[1] - upper[1]).abs() < 10.0 && lower[0] < upper[0] {
                order.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn a_box_is_unclipped_by_area_times_ratio_over_perimeter() {
        // 100 x 20: area 2000, perimeter 240, ratio 1.5 -> 12.5 on every side, the outline
        // in whole pixels (halves away from zero, as pyclipper rounds): 126 x 46.
        let corners = [[0.0, 0.0], [100.0, 0.0], [100.0, 20.0], [0.0, 20.0]];
        let (grown, short) = mini_box(&unclip(&corners, 1.5));
        assert!((short - 46.0).abs() < 0.01, "{short}");
        assert_eq!(grown[0], [-13.0, -13.0], "{grown:?}");
        assert_eq!(grown[2], [113.0, 33.0], "{grown:?}");
    }

    #[test]
    fn reading_order_is_top_to_bottom_then_left_to_right_within_a_line() {
        let at = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]];
        let quads = [
            at(50.0, 102.0),
            at(0.0, 100.0),
            at(0.0, 0.0),
            at(30.0, 104.0),
        ];
        assert_eq!(reading_order(&quads), vec![2, 1, 3, 0]);
    }

    #[test]
    fn tall_crops_are_laid_flat() {
        let image = RgbImage::from_pixel(50, 50, Rgb([200, 10, 10]));
        let quad = [[10.0, 5.0], [20.0, 5.0], [20.0, 45.0], [10.0, 45.0]];
        let crop = crop(&image, &quad).unwrap();
        assert_eq!(crop.dimensions(), (40, 10));
        assert_eq!(order_clockwise([quad[2], quad[0], quad[3], quad[1]]), quad);
    }
}
