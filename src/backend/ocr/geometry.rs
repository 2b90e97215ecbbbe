//! Image and box geometry the steps share: OpenCV-compatible bilinear resizing, the
//! minimum-area box of a region, unclipping a box outward, perspective crops of a box, and
//! the reading order of boxes. Built on imageproc and geo; rapidocr's numbers (cv2 with
//! pyclipper) are the reference.

use geo::{
    Area, Buffer, Coord, Euclidean, Length, LineString, MinimumRotatedRect, MultiPoint, Polygon,
};
use image::{Rgb, RgbImage};
use imageproc::geometric_transformations::Projection;

/// A quadrilateral: top-left, top-right, bottom-right, bottom-left, as (x, y).
pub type Quad = [[f32; 2]; 4];

/// `image` resized to `width` x `height` as cv2.resize's INTER_LINEAR does it: each output
/// pixel centre maps back to the input and is interpolated between its four neighbours
/// (no smoothing when shrinking), edges replicated, with OpenCV's 11-bit fixed-point
/// weights and one rounding. (imageproc's bilinear warp differs by a level here and
/// there, which is enough to move a recognised space.)
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    const ONE: i32 = 1 << 11;
    /// Per output position: the first input index and its weight (the next gets the rest).
    fn taps(from: u32, to: u32) -> Vec<(usize, i32)> {
        let scale = from as f64 / to as f64;
        (0..to)
            .map(|d| {
                let f = (d as f64 + 0.5) * scale - 0.5;
                let mut s = f.floor();
                let mut t = f - s;
                if s < 0.0 {
                    (s, t) = (0.0, 0.0);
                }
                if s >= from as f64 - 1.0 {
                    (s, t) = (from as f64 - 1.0, 0.0);
                }
                (s as usize, ((1.0 - t) * ONE as f64).round() as i32)
            })
            .collect()
    }
    let (xs, ys) = (taps(image.width(), width), taps(image.height(), height));
    let src = image.as_raw();
    let stride = image.width() as usize * 3;
    let last_x = image.width() as usize - 1;
    let last_y = image.height() as usize - 1;
    // Each input row resized across once, for the (at most two) output rows that use it.
    let across = |row: usize| -> Vec<i32> {
        let line = &src[row * stride..(row + 1) * stride];
        xs.iter()
            .flat_map(|&(x, w)| {
                let next = (x + 1).min(last_x);
                (0..3).map(move |c| {
                    line[x * 3 + c] as i32 * w + line[next * 3 + c] as i32 * (ONE - w)
                })
            })
            .collect()
    };
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    let mut cache: Option<(usize, Vec<i32>, Vec<i32>)> = None;
    for &(y, w) in &ys {
        let next = (y + 1).min(last_y);
        let (upper, lower) = match cache.take() {
            Some((cached, upper, lower)) if cached == y => (upper, lower),
            Some((cached, _, lower)) if cached + 1 == y => (lower, across(next)),
            _ => (across(y), across(next)),
        };
        out.extend(upper.iter().zip(&lower).map(|(a, b)| {
            ((*a as i64 * w as i64 + *b as i64 * (ONE - w) as i64 + (1 << 21)) >> 22).clamp(0, 255)
                as u8
        }));
        cache = Some((y, upper, lower));
    }
    RgbImage::from_raw(width, height, out).expect("width x height x 3 values")
}

/// The minimum-area rectangle around `points`, ordered as rapidocr orders it (by x, then
/// the upper of each pair first), and its shorter side (0 for points on one line).
pub fn mini_box(points: &[Coord<f64>]) -> ([[f64; 2]; 4], f64) {
    let rect = MultiPoint::from(points.to_vec()).minimum_rotated_rect();
    let corners: Vec<[f64; 2]> = rect
        .iter()
        .flat_map(|r| r.exterior().coords().take(4))
        .map(|c| [c.x, c.y])
        .collect();
    if corners.len() < 4 {
        return ([[0.0; 2]; 4], 0.0);
    }
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
    let side = |a: [f64; 2], b: [f64; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    let short = side(ordered[0], ordered[1]).min(side(ordered[1], ordered[2]));
    (ordered, short)
}

/// The box grown outward by area x `ratio` / perimeter, with round joins (DB's
/// "unclip"): the points of the grown outline.
pub fn unclip(corners: &[[f64; 2]; 4], ratio: f64) -> Vec<Coord<f64>> {
    let polygon = |round: fn(f64) -> f64| {
        let ring: Vec<Coord<f64>> = corners
            .iter()
            .map(|c| Coord {
                x: round(c[0]),
                y: round(c[1]),
            })
            .collect();
        Polygon::new(LineString::from(ring), Vec::new())
    };
    // The distance from the box as found; the outline grown from whole pixels and given
    // back in whole pixels, as pyclipper (integer coordinates) does for rapidocr.
    let exact = polygon(|v| v);
    let perimeter = Euclidean.length(exact.exterior());
    if perimeter <= 0.0 {
        return Vec::new();
    }
    let distance = exact.unsigned_area() * ratio / perimeter;
    polygon(f64::trunc)
        .buffer(distance)
        .0
        .iter()
        .flat_map(|p| p.exterior().coords().copied())
        .map(|c| Coord {
            x: c.x.round(),
            y: c.y.round(),
        })
        .collect()
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

/// The box cut out of `image` and straightened (bicubic, edges replicated); a crop at
/// least 1.5 times as tall as wide is turned a quarter counter-clockwise to lie flat.
/// None for a box too thin to hold a pixel.
pub fn crop(image: &RgbImage, quad: &Quad) -> Option<RgbImage> {
    let (width, height) = crop_size(quad);
    if width == 0 || height == 0 {
        return None;
    }
    let (w, h) = (width as f32, height as f32);
    let corners = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)];
    // Each crop pixel's place on the page.
    let to_page = Projection::from_control_points(corners, quad.map(|p| (p[0], p[1])))?;
    let mut out = RgbImage::from_fn(width, height, |x, y| {
        let (px, py) = to_page * (x as f32, y as f32);
        cubic(image, px, py)
    });
    if height as f32 / width as f32 >= 1.5 {
        out = image::imageops::rotate270(&out);
    }
    Some(out)
}

/// The page at (x, y) by OpenCV's bicubic interpolation (cv2.warpPerspective's
/// INTER_CUBIC: the position taken to 1/32 pixel, weights with A = -0.75, edges
/// replicated, one rounding at the end). imageproc's bicubic is Catmull-Rom (A = -0.5)
/// and rounds each row: on text edges that moves recognised spaces.
fn cubic(image: &RgbImage, x: f32, y: f32) -> Rgb<u8> {
    const A: f32 = -0.75;
    let weights = |t: f32| {
        let t = (t * 32.0).round() / 32.0;
        let w0 = ((A * (t + 1.0) - 5.0 * A) * (t + 1.0) + 8.0 * A) * (t + 1.0) - 4.0 * A;
        let w1 = ((A + 2.0) * t - (A + 3.0)) * t * t + 1.0;
        let w2 = ((A + 2.0) * (1.0 - t) - (A + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0;
        [w0, w1, w2, 1.0 - w0 - w1 - w2]
    };
    let (x0, y0) = (x.floor(), y.floor());
    let (wx, wy) = (weights(x - x0), weights(y - y0));
    let (max_x, max_y) = (image.width() as i64 - 1, image.height() as i64 - 1);
    let mut sum = [0f32; 3];
    for (j, wy) in wy.iter().enumerate() {
        let row = (y0 as i64 - 1 + j as i64).clamp(0, max_y) as u32;
        for (i, wx) in wx.iter().enumerate() {
            let col = (x0 as i64 - 1 + i as i64).clamp(0, max_x) as u32;
            let pixel = image.get_pixel(col, row);
            for c in 0..3 {
                sum[c] += wx * wy * pixel[c] as f32;
            }
        }
    }
    Rgb(sum.map(|v| v.round().clamp(0.0, 255.0) as u8))
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

    #[test]
    fn resizing_matches_opencv_linear_at_the_centres() {
        // 4 px wide, values 0, 40, 80, 120: halved, each output pixel is the mean of two.
        let image = RgbImage::from_fn(4, 1, |x, _| Rgb([(x * 40) as u8; 3]));
        let half = resize(&image, 2, 1);
        assert_eq!(half.get_pixel(0, 0)[0], 20);
        assert_eq!(half.get_pixel(1, 0)[0], 100);
    }

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
