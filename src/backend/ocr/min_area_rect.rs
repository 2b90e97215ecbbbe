//! OpenCV 5's `cv2.minAreaRect` and `cv2.boxPoints` on whole-pixel points, to the bit:
//! the convex hull in OpenCV's order, rotating calipers in f32 (ties going to the last
//! edge, as OpenCV's `<=` does), the angle in [-90, 0) with the sides swapped to match,
//! and the corners from centre, size and angle in f32. DB post-processing rounds these
//! corners to whole page pixels, and a corner that lands near a half flips with the last
//! bit: the box, the crop and then the recognised text follow it. Checked against
//! opencv-python 5.0 on 5,000 random point sets while it was written; the tests below
//! hold some of its answers, and the PP-OCR parity test the rest.
//!
//! Not reproduced: where two caliper positions give the same area (an upright box),
//! OpenCV keeps the last it meets, and which is last follows the contour's start point,
//! so the corners can differ in the last bit there.

/// The rectangle's corners as `cv2.boxPoints` lists them, and its shorter side.
pub fn box_points(points: &[[i64; 2]]) -> Option<([[f32; 2]; 4], f32)> {
    let hull = convex_hull(points);
    if hull.len() < 3 {
        return None;
    }
    let ((cx, cy), (w, h), angle) = min_area_rect(&hull);
    let radians = angle as f64 * std::f64::consts::PI / 180.0;
    let b = radians.cos() as f32 * 0.5;
    let a = radians.sin() as f32 * 0.5;
    let corners = [
        [cx - a * h - b * w, cy + b * h - a * w],
        [cx + a * h - b * w, cy - b * h - a * w],
        [cx + a * h + b * w, cy - b * h + a * w],
        [cx - a * h + b * w, cy + b * h + a * w],
    ];
    Some((corners, w.min(h)))
}

/// The hull without collinear points, from the rightmost point (the lowest on the page
/// of two) towards larger y, as `cv2.convexHull(points, clockwise=False)` gives it.
fn convex_hull(points: &[[i64; 2]]) -> Vec<[i64; 2]> {
    let mut sorted = points.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let cross = |o: [i64; 2], a: [i64; 2], b: [i64; 2]| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut ring: Vec<[i64; 2]> = Vec::with_capacity(sorted.len() + 1);
    for pass in [
        &sorted[..],
        &sorted.iter().rev().copied().collect::<Vec<_>>()[..],
    ] {
        let start = ring.len();
        for &p in pass {
            while ring.len() >= start + 2
                && cross(ring[ring.len() - 2], ring[ring.len() - 1], p) <= 0
            {
                ring.pop();
            }
            ring.push(p);
        }
        ring.pop();
    }
    let first = (0..ring.len()).max_by_key(|&i| ring[i]).unwrap_or(0);
    ring.rotate_left(first);
    ring
}

type Rect = ((f32, f32), (f32, f32), f32);

/// Rotating calipers over the hull, OpenCV's arithmetic step for step.
fn min_area_rect(hull: &[[i64; 2]]) -> Rect {
    let n = hull.len();
    let p: Vec<[f32; 2]> = hull.iter().map(|q| [q[0] as f32, q[1] as f32]).collect();
    let mut edge = Vec::with_capacity(n);
    let mut inv_len = Vec::with_capacity(n);
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    let (mut left_x, mut right_x, mut top_y, mut bottom_y) = (p[0][0], p[0][0], p[0][1], p[0][1]);
    for i in 0..n {
        let (from, to) = (p[i], p[(i + 1) % n]);
        if from[0] < left_x {
            (left_x, left) = (from[0], i);
        }
        if from[0] > right_x {
            (right_x, right) = (from[0], i);
        }
        if from[1] > top_y {
            (top_y, top) = (from[1], i);
        }
        if from[1] < bottom_y {
            (bottom_y, bottom) = (from[1], i);
        }
        let (dx, dy) = (to[0] as f64 - from[0] as f64, to[1] as f64 - from[1] as f64);
        edge.push([dx as f32, dy as f32]);
        inv_len.push((1.0 / (dx * dx + dy * dy).sqrt()) as f32);
    }
    // The hull's orientation: the sign of the first non-zero turn.
    let mut orientation = 0f32;
    let mut prev = edge[n - 1];
    for e in &edge {
        let turn = prev[0] as f64 * e[1] as f64 - prev[1] as f64 * e[0] as f64;
        if turn != 0.0 {
            orientation = if turn > 0.0 { 1.0 } else { -1.0 };
            break;
        }
        prev = *e;
    }
    let (mut base_a, mut base_b) = (orientation, 0f32);
    let mut seq = [bottom, right, top, left];
    let mut min_area = f32::MAX;
    let mut best = (0, 0f32, 0f32, 0f32, 0f32, 0);
    for _ in 0..n {
        let dot = [
            base_a * edge[seq[0]][0] + base_b * edge[seq[0]][1],
            -base_b * edge[seq[1]][0] + base_a * edge[seq[1]][1],
            -base_a * edge[seq[2]][0] - base_b * edge[seq[2]][1],
            base_b * edge[seq[3]][0] - base_a * edge[seq[3]][1],
        ];
        let mut main = 0;
        let mut max_cos = dot[0] * inv_len[seq[0]];
        for (i, d) in dot.iter().enumerate().skip(1) {
            let cos = d * inv_len[seq[i]];
            if cos > max_cos {
                (main, max_cos) = (i, cos);
            }
        }
        let at = seq[main];
        let (lead_x, lead_y) = (edge[at][0] * inv_len[at], edge[at][1] * inv_len[at]);
        (base_a, base_b) = match main {
            0 => (lead_x, lead_y),
            1 => (lead_y, -lead_x),
            2 => (-lead_x, -lead_y),
            _ => (-lead_y, lead_x),
        };
        seq[main] = (seq[main] + 1) % n;
        let width = (p[seq[1]][0] - p[seq[3]][0]) * base_a + (p[seq[1]][1] - p[seq[3]][1]) * base_b;
        let height =
            -(p[seq[2]][0] - p[seq[0]][0]) * base_b + (p[seq[2]][1] - p[seq[0]][1]) * base_a;
        let area = width * height;
        if area <= min_area {
            min_area = area;
            best = (seq[3], base_a, width, base_b, height, seq[0]);
        }
    }
    let (leftmost, a1, width, b1, height, lowest) = best;
    let (a2, b2) = (-b1, a1);
    let c1 = a1 * p[leftmost][0] + p[leftmost][1] * b1;
    let c2 = a2 * p[lowest][0] + p[lowest][1] * b2;
    let idet = 1.0 / (a1 * b2 - a2 * b1);
    let (px, py) = ((c1 * b2 - c2 * b1) * idet, (a1 * c2 - a2 * c1) * idet);
    let side1 = (a1 * width, b1 * width);
    let side2 = (a2 * height, b2 * height);
    let centre = (
        px + (side1.0 + side2.0) * 0.5,
        py + (side1.1 + side2.1) * 0.5,
    );
    let length = |s: (f32, f32)| (s.0 as f64 * s.0 as f64 + s.1 as f64 * s.1 as f64).sqrt() as f32;
    let (w, h) = (length(side1), length(side2));
    let degrees = (side1.1 as f64).atan2(side1.0 as f64) * 180.0 / std::f64::consts::PI;
    if degrees - 90.0 >= 0.0 {
        (centre, (w, h), (degrees - 180.0) as f32)
    } else {
        (centre, (h, w), (degrees - 90.0) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upright_rectangle_is_itself_with_the_angle_at_minus_90() {
        let points = [[0, 0], [10, 0], [10, 5], [0, 5], [4, 2]];
        let (corners, short) = box_points(&points).unwrap();
        assert_eq!(short, 5.0);
        let mut xs: Vec<[i64; 2]> = corners
            .iter()
            .map(|c| [c[0].round() as i64, c[1].round() as i64])
            .collect();
        xs.sort_unstable();
        assert_eq!(xs, vec![[0, 0], [0, 5], [10, 0], [10, 5]]);
        assert_eq!(min_area_rect(&convex_hull(&points)).2, -90.0);
    }

    #[test]
    fn the_hull_starts_at_the_rightmost_lowest_point_without_collinear_ones() {
        // As cv2.convexHull(clockwise=False) answers for these points.
        let points = [
            [0, 0],
            [10, 0],
            [10, 5],
            [0, 5],
            [5, 2],
            [3, 7],
            [-2, 3],
            [5, 0],
        ];
        assert_eq!(
            convex_hull(&points),
            vec![[10, 5], [3, 7], [0, 5], [-2, 3], [0, 0], [10, 0]]
        );
        // A tilted set: what opencv-python 5.0's minAreaRect gives, to the bit.
        let tilted = [[5, 1], [9, 4], [2, 8], [0, 3], [7, 9], [4, 0]];
        let ((cx, cy), (w, h), angle) = min_area_rect(&convex_hull(&tilted));
        assert_eq!((cx, cy), (4.280_488, 5.024_390_7));
        assert_eq!((w, h, angle), (7.496_340_8, 9.214_252, -51.340_195));
        assert!(
            box_points(&[[1, 1], [2, 2], [3, 3]]).is_none(),
            "collinear: no rectangle"
        );
    }
}
