//! OpenCV 5's `cv2.resize` (INTER_LINEAR) and `cv2.warpPerspective` (INTER_CUBIC,
//! BORDER_REPLICATE) on 8-bit three-channel images, reproduced to the bit, so that the
//! detector and recogniser see the pixels rapidocr feeds them (its answers flip on a
//! level's difference: a space comes or goes, `I` becomes `l`).
//!
//! What "to the bit" takes, each checked against opencv-python 5.0 on random images
//! (`tests/python/test_ppocr.py::test_resampling_is_opencv_to_the_bit`):
//! - resize: coefficients computed in f32 and rounded to 11 bits each on its own (they
//!   need not sum to 2048); the horizontal pass exact in integers; the vertical pass as
//!   OpenCV's SIMD kernel does it (each row's sum shifted down 4 bits, multiplied and
//!   kept to its high 16 bits, the two added, then rounded by 2 bits), edge rows taken
//!   twice with their unclamped weights.
//! - warp: the page-to-crop transform solved as OpenCV solves it (an 8 x 8 LU with
//!   partial pivoting, products of the f32 corners in f32), inverted in closed form,
//!   narrowed to f32; each crop pixel's source found in f64 and narrowed; bicubic weights
//!   with A = -0.75 in f32, sums as fused multiply-adds, rounded half to even.
//!
//! The fused multiply-adds are done in f64 and narrowed (exact but for a tie that falls
//! between two f32s, about once in 2^29 sums): the target has no FMA instruction to rely
//! on, and libm's software `fmaf` would cost ten times as much.

use image::RgbImage;

/// `image` resized to `width` x `height` as `cv2.resize(image, (width, height))` does.
pub fn resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let xs = linear_coefficients(image.width(), width, true);
    let ys = linear_coefficients(image.height(), height, false);
    let src = image.as_raw();
    let stride = src_w * 3;
    // Each input row resized across once, for the (at most two) output rows that use it.
    let across = |row: usize| -> Vec<i32> {
        let line = &src[row * stride..(row + 1) * stride];
        xs.iter()
            .flat_map(|&(x, w0, w1)| {
                let x = x as usize;
                let next = (x + 1).min(src_w - 1);
                (0..3).map(move |c| line[x * 3 + c] as i32 * w0 + line[next * 3 + c] as i32 * w1)
            })
            .collect()
    };
    let clamp_row = |y: isize| y.clamp(0, src_h as isize - 1) as usize;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    let mut rows: Vec<(usize, Vec<i32>)> = Vec::with_capacity(2);
    for &(y, b0, b1) in &ys {
        let (upper, lower) = (clamp_row(y), clamp_row(y + 1));
        // Keep the rows still needed, resize the missing ones.
        rows.retain(|(at, _)| *at == upper || *at == lower);
        for at in [upper, lower] {
            if !rows.iter().any(|(r, _)| *r == at) {
                rows.push((at, across(at)));
            }
        }
        let find = |at: usize| &rows.iter().find(|(r, _)| *r == at).expect("resized").1;
        let (a, b) = (find(upper), find(lower));
        out.extend(a.iter().zip(b).map(|(a, b)| {
            let high = |v: i32, w: i32| ((v >> 4) * w) >> 16;
            ((high(*a, b0) + high(*b, b1) + 2) >> 2).clamp(0, 255) as u8
        }));
    }
    RgbImage::from_raw(width, height, out).expect("width x height x 3 values")
}

/// Per output position: the first input index and the 11-bit weights of it and the next.
/// Columns are clamped with their weight moved onto the edge; rows are not (the row
/// above the first is the first, each with its own weight).
fn linear_coefficients(from: u32, to: u32, clamp: bool) -> Vec<(isize, i32, i32)> {
    let scale = 1.0 / (to as f64 / from as f64);
    (0..to)
        .map(|d| {
            let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor();
            let mut t = f - s;
            if clamp && s < 0.0 {
                (s, t) = (0.0, 0.0);
            }
            if clamp && s >= from as f32 - 1.0 {
                (s, t) = (from as f32 - 1.0, 0.0);
            }
            let fixed = |v: f32| (v * 2048.0).round_ties_even() as i32;
            (s as isize, fixed(1.0 - t), fixed(t))
        })
        .collect()
}

/// The 3 x 3 transform taking each `from` corner to its `to` corner, as
/// `cv2.getPerspectiveTransform` solves it; None where the corners are degenerate.
pub fn perspective_transform(from: &[[f32; 2]; 4], to: &[[f32; 2]; 4]) -> Option<[f64; 9]> {
    let mut a = [[0f64; 8]; 8];
    let mut b = [0f64; 8];
    for i in 0..4 {
        let ([sx, sy], [dx, dy]) = (from[i], to[i]);
        a[i][0] = sx as f64;
        a[i][1] = sy as f64;
        a[i][2] = 1.0;
        a[i + 4][3] = sx as f64;
        a[i + 4][4] = sy as f64;
        a[i + 4][5] = 1.0;
        // Products of the f32 corners are taken in f32, as OpenCV's Point2f are.
        a[i][6] = (-sx * dx) as f64;
        a[i][7] = (-sy * dx) as f64;
        a[i + 4][6] = (-sx * dy) as f64;
        a[i + 4][7] = (-sy * dy) as f64;
        b[i] = dx as f64;
        b[i + 4] = dy as f64;
    }
    let x = lu_solve(a, b)?;
    let mut m = [1f64; 9];
    m[..8].copy_from_slice(&x);
    Some(m)
}

/// Gaussian elimination with partial pivoting, the pivots kept as reciprocals.
fn lu_solve(mut a: [[f64; 8]; 8], mut b: [f64; 8]) -> Option<[f64; 8]> {
    const N: usize = 8;
    for i in 0..N {
        let mut k = i;
        for j in i + 1..N {
            if a[j][i].abs() > a[k][i].abs() {
                k = j;
            }
        }
        if a[k][i].abs() < f64::EPSILON * 100.0 {
            return None;
        }
        a.swap(i, k);
        b.swap(i, k);
        let d = -1.0 / a[i][i];
        for j in i + 1..N {
            let alpha = a[j][i] * d;
            let pivot_row = a[i];
            for (c, pivot) in pivot_row.iter().enumerate().skip(i + 1) {
                a[j][c] += alpha * pivot;
            }
            b[j] += alpha * b[i];
        }
        a[i][i] = -d;
    }
    for i in (0..N).rev() {
        let mut s = b[i];
        for k in i + 1..N {
            s -= a[i][k] * b[k];
        }
        b[i] = s * a[i][i];
    }
    Some(b)
}

/// A 3 x 3 inverse in closed form (what `cv::invert` does for 3 x 3).
fn invert3(m: &[f64; 9]) -> Option<[f64; 9]> {
    let s = |r: usize, c: usize| m[r * 3 + c];
    let det = s(0, 0) * (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1))
        - s(0, 1) * (s(1, 0) * s(2, 2) - s(1, 2) * s(2, 0))
        + s(0, 2) * (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0));
    if det == 0.0 || !det.is_finite() {
        return None;
    }
    let d = 1.0 / det;
    Some([
        (s(1, 1) * s(2, 2) - s(1, 2) * s(2, 1)) * d,
        (s(0, 2) * s(2, 1) - s(0, 1) * s(2, 2)) * d,
        (s(0, 1) * s(1, 2) - s(0, 2) * s(1, 1)) * d,
        (s(1, 2) * s(2, 0) - s(1, 0) * s(2, 2)) * d,
        (s(0, 0) * s(2, 2) - s(0, 2) * s(2, 0)) * d,
        (s(0, 2) * s(1, 0) - s(0, 0) * s(1, 2)) * d,
        (s(1, 0) * s(2, 1) - s(1, 1) * s(2, 0)) * d,
        (s(0, 1) * s(2, 0) - s(0, 0) * s(2, 1)) * d,
        (s(0, 0) * s(1, 1) - s(0, 1) * s(1, 0)) * d,
    ])
}

/// f32 `a * b + c` rounded once (see the module note).
fn fma(a: f32, b: f32, c: f32) -> f32 {
    (a as f64 * b as f64 + c as f64) as f32
}

/// The four bicubic weights (A = -0.75) for a fractional offset `t`.
fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    let (t2, u) = (t * t, 1.0 - t);
    let w0 = A * (t * (u * u));
    let w3 = A * (t2 * u);
    let w1 = fma(t2, fma(A + 2.0, t, -(A + 3.0)), 1.0);
    [w0, w1, 1.0 - w0 - w1 - w3, w3]
}

/// The `width` x `height` crop whose corners (clockwise from the top-left) are `quad` on
/// `page`, as `cv2.warpPerspective(page, M, (width, height), flags=INTER_CUBIC,
/// borderMode=BORDER_REPLICATE)` with M from `perspective_transform(quad, crop corners)`.
pub fn warp_crop(
    page: &RgbImage,
    quad: &[[f32; 2]; 4],
    width: u32,
    height: u32,
) -> Option<RgbImage> {
    let (w, h) = (width as f32, height as f32);
    let corners = [[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]];
    let m = invert3(&perspective_transform(quad, &corners)?)?.map(|v| v as f32);
    let (page_w, page_h) = (page.width() as i64, page.height() as i64);
    // Far-off sources are pulled in before the floor (their pixels are the edge's anyway).
    let (big_w, big_h) = (page_w.max(16) as f32, page_h.max(16) as f32);
    let raw = page.as_raw();
    let stride = page_w as usize * 3;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        let y = y as f32;
        let (row_x, row_y, row_z) = (y * m[1] + m[2], y * m[4] + m[5], y * m[7] + m[8]);
        for x in 0..width {
            let x = x as f64;
            let inv_z = 1.0 / (row_z as f64 + m[6] as f64 * x);
            let sx = ((row_x as f64 + m[0] as f64 * x) * inv_z) as f32;
            let sy = ((row_y as f64 + m[3] as f64 * x) * inv_z) as f32;
            let (sx, sy) = (sx.clamp(-big_w, 2.0 * big_w), sy.clamp(-big_h, 2.0 * big_h));
            let (fx, fy) = (sx.floor(), sy.floor());
            let (wx, wy) = (cubic_weights(sx - fx), cubic_weights(sy - fy));
            // A NaN source (a degenerate transform) saturates to 0: the corner pixel.
            let at = |v: f32, i: i64, last: i64| (v as i64 - 1 + i).clamp(0, last) as usize;
            let cols: [usize; 4] = std::array::from_fn(|i| at(fx, i as i64, page_w - 1) * 3);
            let rows: [usize; 4] = std::array::from_fn(|j| at(fy, j as i64, page_h - 1) * stride);
            for c in 0..3 {
                let mut acc = 0f32;
                for (row, wy) in rows.iter().zip(wy) {
                    let v = |i: usize| raw[row + cols[i] + c] as f32;
                    let mut sum = v(0) * wx[0];
                    for (i, w) in wx.iter().enumerate().skip(1) {
                        sum = fma(v(i), *w, sum);
                    }
                    acc = fma(sum, wy, acc);
                }
                out.push(acc.round_ties_even().clamp(0.0, 255.0) as u8);
            }
        }
    }
    RgbImage::from_raw(width, height, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn halving_averages_neighbours_and_edge_rows_keep_their_own_weights() {
        // 4 px wide, values 0, 40, 80, 120: halved, each output pixel is the mean of two.
        let image = RgbImage::from_fn(4, 1, |x, _| Rgb([(x * 40) as u8; 3]));
        let half = resize(&image, 2, 1);
        assert_eq!(
            (half.get_pixel(0, 0)[0], half.get_pixel(1, 0)[0]),
            (20, 100)
        );
        // 3 x 2 -> 2 x 3, grey: what opencv-python 5.0 answers. The exact one-rounding
        // formula gives 32 and 172 where OpenCV's SIMD vertical pass gives 31 and 171.
        let rows = [[217, 69, 19], [208, 128, 186]];
        let image = RgbImage::from_fn(3, 2, |x, y| Rgb([rows[y as usize][x as usize]; 3]));
        let resized = resize(&image, 2, 3);
        let grey: Vec<u8> = resized.pixels().map(|p| p[0]).collect();
        assert_eq!(grey, vec![180, 31, 184, 102, 188, 171]);
    }

    #[test]
    fn an_axis_aligned_box_is_cut_out_pixel_for_pixel() {
        let page = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 5, y as u8 * 7, 9]));
        let quad = [[10.0, 5.0], [30.0, 5.0], [30.0, 20.0], [10.0, 20.0]];
        let crop = warp_crop(&page, &quad, 20, 15).unwrap();
        assert_eq!(crop.get_pixel(0, 0), page.get_pixel(10, 5));
        assert_eq!(crop.get_pixel(19, 14), page.get_pixel(29, 19));
        // A degenerate box (all corners on one point) has no transform.
        assert!(warp_crop(&page, &[[3.0, 3.0]; 4], 5, 5).is_none());
    }
}
