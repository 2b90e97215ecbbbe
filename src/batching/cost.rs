//! What a batch of each size costs, measured at warmup, and how to run a batch for the
//! least: as one engine call or as pieces, whichever the measurements say is cheaper.

use std::{collections::HashMap, time::Duration};

use crate::job::ShapeKey;

/// Measured time per engine call by rows, for one input shape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CostCurve {
    /// (rows, time), ascending by rows.
    points: Vec<(usize, Duration)>,
}

impl CostCurve {
    pub fn new(mut points: Vec<(usize, Duration)>) -> CostCurve {
        points.sort_by_key(|p| p.0);
        points.dedup_by_key(|p| p.0);
        CostCurve { points }
    }

    pub fn points(&self) -> &[(usize, Duration)] {
        &self.points
    }

    /// Estimated nanoseconds for one call of `rows` rows: measured where measured, linear
    /// between measurements, per-row of the nearest measurement beyond them.
    fn estimate(&self, rows: usize) -> f64 {
        let ns = |d: Duration| d.as_nanos() as f64;
        match self.points.iter().position(|p| p.0 >= rows) {
            Some(i) if self.points[i].0 == rows => ns(self.points[i].1),
            Some(0) => ns(self.points[0].1) * rows as f64 / self.points[0].0 as f64,
            Some(i) => {
                let ((r0, t0), (r1, t1)) = (self.points[i - 1], self.points[i]);
                let f = (rows - r0) as f64 / (r1 - r0) as f64;
                ns(t0) + f * (ns(t1) - ns(t0))
            }
            None => {
                let (r, t) = *self.points.last().expect("non-empty");
                ns(t) * rows as f64 / r as f64
            }
        }
    }

    /// The curve of calls padded up to `buckets` (the smallest that holds them): a call of
    /// `r` rows costs what its bucket costs. Unchanged where there are no buckets.
    pub fn padded_to(&self, buckets: &[usize]) -> CostCurve {
        let Some(&max) = buckets.iter().max() else {
            return self.clone();
        };
        if self.points.is_empty() {
            return self.clone();
        }
        let bucket = |r: usize| buckets.iter().copied().filter(|b| *b >= r).min();
        CostCurve::new(
            (1..=max)
                .filter_map(|r| Some((r, bucket(r)?)))
                .map(|(r, b)| (r, Duration::from_nanos(self.estimate(b) as u64)))
                .collect(),
        )
    }

    /// The most rows of single-row requests that one call should carry: past it the
    /// measurements say pieces are cheaper. `max` where nothing was measured.
    pub fn efficient_rows(&self, max: usize) -> usize {
        if self.points.is_empty() {
            return max;
        }
        (1..=max)
            .rev()
            .find(|&r| self.plan(&vec![1; r]) == vec![r])
            .unwrap_or(1)
    }

    /// Engine nanoseconds per row when calls carry as many rows as are worth joining, up
    /// to `form_rows`; None where nothing was measured.
    pub fn row_cost_ns(&self, form_rows: usize) -> Option<f64> {
        if self.points.is_empty() {
            return None;
        }
        let rows = self.efficient_rows(form_rows.max(1));
        Some(self.estimate(rows) / rows as f64)
    }

    /// How many consecutive requests each engine call should take, for requests of
    /// `rows[i]` rows, so the whole batch costs the least. Never splits a request; with no
    /// measurements, one call.
    pub fn plan(&self, rows: &[usize]) -> Vec<usize> {
        if self.points.is_empty() || rows.len() <= 1 {
            return vec![rows.len()];
        }
        // best[i]: least cost of the first i requests; cut[i]: size of the last piece.
        let n = rows.len();
        let mut best = vec![f64::INFINITY; n + 1];
        let mut cut = vec![0; n + 1];
        best[0] = 0.0;
        for end in 1..=n {
            let mut piece_rows = 0;
            for start in (0..end).rev() {
                piece_rows += rows[start];
                let cost = best[start] + self.estimate(piece_rows);
                // Ties go to the bigger piece: fewer calls, same measured cost.
                if cost < best[end] * (1.0 - 1e-9) || (cost <= best[end] && end - start > cut[end])
                {
                    best[end] = cost;
                    cut[end] = end - start;
                }
            }
        }
        let mut pieces = Vec::new();
        let mut at = n;
        while at > 0 {
            pieces.push(cut[at]);
            at -= cut[at];
        }
        pieces.reverse();
        pieces
    }
}

/// Cost curves by shape key, measured at warmup; shapes not measured use `fallback`.
#[derive(Debug, Clone, Default)]
pub struct CostCurves {
    pub by_shape: HashMap<ShapeKey, CostCurve>,
    pub fallback: CostCurve,
}

impl CostCurves {
    pub fn for_shape(&self, key: &ShapeKey) -> &CostCurve {
        self.by_shape.get(key).unwrap_or(&self.fallback)
    }
}

/// Engine time per row by input shape, from the warmup cost curves at the batch size the
/// scheduler forms; shapes not measured scale the measured one by their element count.
#[derive(Debug, Default)]
pub struct WorkEstimate {
    by_shape: HashMap<ShapeKey, f64>,
    /// (ns per row, elements per row) of the fallback curve's shape.
    scaled_from: Option<(f64, f64)>,
}

impl WorkEstimate {
    pub fn new(curves: &CostCurves, form_rows: usize) -> WorkEstimate {
        let by_shape: HashMap<ShapeKey, f64> = curves
            .by_shape
            .iter()
            .filter_map(|(key, curve)| Some((key.clone(), curve.row_cost_ns(form_rows)?)))
            .collect();
        let scaled_from = curves
            .by_shape
            .iter()
            .find(|(_, c)| **c == curves.fallback)
            .and_then(|(key, _)| Some((by_shape.get(key).copied()?, elements(key))));
        WorkEstimate {
            by_shape,
            scaled_from,
        }
    }

    /// Estimated engine nanoseconds for `rows` rows of shape `key`; `observed` (ns per row
    /// of recent calls) where warmup measured nothing.
    pub fn nanos(&self, key: &ShapeKey, rows: usize, observed: u64) -> u64 {
        let per_row = match (self.by_shape.get(key), self.scaled_from) {
            (Some(ns), _) => *ns,
            (None, Some((ns, base))) if base > 0.0 => ns * elements(key) / base,
            _ => observed as f64,
        };
        (per_row * rows as f64) as u64
    }
}

fn elements(key: &ShapeKey) -> f64 {
    key.elements_per_row() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DataType;

    #[test]
    fn padded_calls_cost_what_their_bucket_costs() {
        let ms = Duration::from_millis;
        // A GPU-like curve: 8 rows cost little more than 1, so joining always pays.
        let curve = CostCurve::new(vec![(1, ms(10)), (2, ms(11)), (4, ms(12)), (8, ms(15))]);
        let padded = curve.padded_to(&[1, 2, 4, 8]);
        assert_eq!(padded.estimate(3), padded.estimate(4), "3 rows run as 4");
        assert_eq!(padded.estimate(5), curve.estimate(8), "5 rows run as 8");
        assert_eq!(curve.padded_to(&[8]).efficient_rows(8), 8);
        // Where 8 rows cost more than two calls of 4, padding to buckets stops at 4.
        let steep = CostCurve::new(vec![(1, ms(1)), (4, ms(4)), (8, ms(20))]);
        assert_eq!(steep.padded_to(&[1, 2, 4, 8]).efficient_rows(8), 4);
        assert_eq!(
            steep.padded_to(&[]).points(),
            steep.points(),
            "no buckets: as measured"
        );
    }

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    #[test]
    fn a_batch_that_costs_more_per_row_runs_as_pieces() {
        // tract on the PP-OCR classifier: batch 4 costs 16x batch 1.
        let curve = CostCurve::new(vec![(1, ms(1.2)), (4, ms(19.9)), (8, ms(39.9))]);
        assert_eq!(curve.plan(&[1, 1, 1, 1]), vec![1, 1, 1, 1]);
        assert_eq!(curve.efficient_rows(8), 1);
    }

    #[test]
    fn a_batch_that_is_cheaper_per_row_runs_whole() {
        // A GEMM-bound model: batch 8 costs 2x batch 1.
        let curve = CostCurve::new(vec![(1, ms(1.0)), (4, ms(1.5)), (8, ms(2.0))]);
        assert_eq!(curve.plan(&[1; 8]), vec![8]);
        assert_eq!(curve.plan(&[2, 3, 1]), vec![3]);
    }

    #[test]
    fn mixed_curves_pick_the_cheapest_split() {
        // Cheap up to 4 rows, then steep.
        let curve = CostCurve::new(vec![(1, ms(1.0)), (4, ms(1.2)), (8, ms(10.0))]);
        assert_eq!(curve.plan(&[1; 8]), vec![4, 4]);
        assert_eq!(curve.plan(&[3]), vec![1]);
        assert_eq!(curve.efficient_rows(8), 4);
        assert!(CostCurve::default().plan(&[1, 1]) == vec![2]);
    }

    #[test]
    fn unmeasured_shapes_scale_by_their_size() {
        let key = |w: usize| ShapeKey::from(vec![(DataType::Fp32, vec![3, 48, w])]);
        let curve = CostCurve::new(vec![
            (1, Duration::from_millis(10)),
            (2, Duration::from_millis(16)),
        ]);
        let curves = CostCurves {
            by_shape: [(key(320), curve.clone())].into_iter().collect(),
            fallback: curve,
        };
        let estimate = WorkEstimate::new(&curves, 2);
        assert_eq!(estimate.nanos(&key(320), 1, 0), 8_000_000);
        assert_eq!(estimate.nanos(&key(640), 2, 0), 32_000_000);
        let none = WorkEstimate::new(&CostCurves::default(), 2);
        assert_eq!(none.nanos(&key(320), 3, 5), 15);
    }
}
