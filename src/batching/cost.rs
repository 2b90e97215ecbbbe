//! What a batch of each size costs, measured at warmup, and how to run a batch for the
//! least: as one engine call or as pieces, whichever the measurements say is cheaper.

use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
