//! Minimum-cost one-to-one assignment (the Hungarian method, Kuhn 1955 /
//! Munkres 1957), as DETR-style detectors match their predictions to the
//! ground truth while training (Carion et al. 2020, "End-to-End Object
//! Detection with Transformers", §3.1; OWL-ViT trains its heads the same
//! way).
//!
//! [`min_cost_assignment`] takes an `n × m` cost matrix with `n ≤ m` (each
//! ground-truth object gets its own prediction) and returns, for each row,
//! the column it is assigned. It is the shortest-augmenting-path form with
//! row and column potentials, `O(n²·m)`: a few microseconds for the tiny
//! detector's 64 patches and ten objects.

/// For each of the `rows` rows of the row-major `cost` matrix (`rows ×
/// cols`, `rows ≤ cols`, finite costs), the column assigned to it, so that
/// no column is used twice and the total cost is the least possible.
/// Returns `None` when `rows > cols`, the matrix has the wrong length or a
/// cost is not finite.
pub fn min_cost_assignment(cost: &[f32], rows: usize, cols: usize) -> Option<Vec<usize>> {
    if rows > cols || cost.len() != rows * cols || cost.iter().any(|c| !c.is_finite()) {
        return None;
    }
    if rows == 0 {
        return Some(Vec::new());
    }
    let at = |i: usize, j: usize| f64::from(cost[i * cols + j]);
    // 1-based rows and columns; column 0 is the virtual start.
    let mut u = vec![0.0f64; rows + 1];
    let mut v = vec![0.0f64; cols + 1];
    // row_of[j]: the row holding column j (0 = free).
    let mut row_of = vec![0usize; cols + 1];
    let mut way = vec![0usize; cols + 1];
    for i in 1..=rows {
        row_of[0] = i;
        let mut j0 = 0usize;
        let mut min_to = vec![f64::INFINITY; cols + 1];
        let mut used = vec![false; cols + 1];
        loop {
            used[j0] = true;
            let i0 = row_of[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0usize;
            for j in 1..=cols {
                if used[j] {
                    continue;
                }
                let reduced = at(i0 - 1, j - 1) - u[i0] - v[j];
                if reduced < min_to[j] {
                    min_to[j] = reduced;
                    way[j] = j0;
                }
                if min_to[j] < delta {
                    delta = min_to[j];
                    j1 = j;
                }
            }
            for j in 0..=cols {
                if used[j] {
                    u[row_of[j]] += delta;
                    v[j] -= delta;
                } else {
                    min_to[j] -= delta;
                }
            }
            j0 = j1;
            if row_of[j0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        loop {
            let j1 = way[j0];
            row_of[j0] = row_of[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut out = vec![0usize; rows];
    for j in 1..=cols {
        if row_of[j] != 0 {
            out[row_of[j] - 1] = j - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn total(cost: &[f32], cols: usize, a: &[usize]) -> f32 {
        a.iter().enumerate().map(|(i, &j)| cost[i * cols + j]).sum()
    }

    /// Every injective assignment, for the brute-force check.
    fn brute(cost: &[f32], rows: usize, cols: usize) -> f32 {
        fn go(cost: &[f32], rows: usize, cols: usize, i: usize, used: &mut Vec<bool>) -> f32 {
            if i == rows {
                return 0.0;
            }
            let mut best = f32::INFINITY;
            for j in 0..cols {
                if !used[j] {
                    used[j] = true;
                    best = best.min(cost[i * cols + j] + go(cost, rows, cols, i + 1, used));
                    used[j] = false;
                }
            }
            best
        }
        go(cost, rows, cols, 0, &mut vec![false; cols])
    }

    #[test]
    fn a_hand_worked_case() {
        // Greedy row by row would take (0,0)=1 then (1,1)=9: total 10;
        // the optimum is (0,1)=2, (1,0)=3: total 5.
        let cost = [1.0, 2.0, 3.0, 9.0];
        assert_eq!(min_cost_assignment(&cost, 2, 2), Some(vec![1, 0]));
        // More columns than rows: row 0 takes the cheap spare column.
        let cost = [5.0, 5.0, 0.5, 1.0, 7.0, 0.2];
        assert_eq!(min_cost_assignment(&cost, 2, 3), Some(vec![2, 0]));
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(min_cost_assignment(&[1.0, 2.0], 2, 1), None);
        assert_eq!(min_cost_assignment(&[1.0], 1, 2), None);
        assert_eq!(min_cost_assignment(&[f32::NAN, 1.0], 1, 2), None);
        assert_eq!(min_cost_assignment(&[], 0, 3), Some(vec![]));
    }

    proptest! {
        #[test]
        fn optimal_and_one_to_one(
            (rows, cols, cost) in (1usize..5, 0usize..3).prop_flat_map(|(r, extra)| {
                let c = r + extra;
                (Just(r), Just(c), prop::collection::vec(-5.0f32..5.0, r * c))
            })
        ) {
            let a = min_cost_assignment(&cost, rows, cols).unwrap();
            let mut seen = a.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), rows);
            prop_assert!(a.iter().all(|&j| j < cols));
            let best = brute(&cost, rows, cols);
            prop_assert!((total(&cost, cols, &a) - best).abs() < 1e-4);
        }
    }
}
