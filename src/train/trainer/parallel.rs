//! Row-parallel steps: the rows of a micro-batch (its chosen and rejected
//! responses) split into parts that threads compute side by side, each
//! with single-threaded operations.
//!
//! Why: on a CPU the matrices of a LLaVA row are small (a few hundred
//! tokens), and one operation spread over the cores gains almost nothing:
//! measured on the shared TRL checkpoint, a DPO step ran as fast with one
//! thread per operation as with two, while two rows on two cores run
//! independently. The same split serves the one-off reference log-probs.
//!
//! How it stays exact: the loss depends on a row only through its summed
//! response log-probs `s_i`. Each part computes its `s_i` and keeps their
//! graph; the loss is computed once from the `s_i` held as constants, and
//! its gradient `c_i = ∂L/∂s_i` goes back to the parts; each part then
//! backpropagates `Σ c_i s_i` through its rows. By the chain rule the parts'
//! gradients add up to the gradient of the loss over the whole micro-batch
//! (up to float summation order, as with any change of batching).

use crate::core::threads::on_threads;

use super::{Result, TrainError};

/// Splits rows of the given token lengths into at most `workers` parts
/// with about the same number of tokens each: longest row first, each into
/// the part with the fewest tokens so far (ties: the lower part). Parts
/// list their rows in increasing order; none is empty. Deterministic: the
/// same lengths and workers give the same parts.
pub(super) fn split_rows(lengths: &[usize], workers: usize) -> Vec<Vec<usize>> {
    let n_parts = workers.clamp(1, lengths.len().max(1));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut parts = vec![Vec::new(); n_parts];
    let mut load = vec![0usize; n_parts];
    for row in order {
        let lightest = (0..n_parts).min_by_key(|&p| (load[p], p)).unwrap_or(0);
        load[lightest] += lengths[row];
        parts[lightest].push(row);
    }
    parts.retain(|p| !p.is_empty());
    for p in &mut parts {
        p.sort_unstable();
    }
    parts
}

/// Runs `f` on every item, each on its own thread when there are several
/// (inline when there is one), and returns the results in item order; the
/// first error wins. A panicking thread becomes an error, not a panic of
/// the caller.
pub(super) fn run_parts<T, R, F>(items: Vec<T>, f: F) -> Result<Vec<R>>
where
    T: Send,
    R: Send,
    F: Fn(T) -> Result<R> + Sync,
{
    if items.len() <= 1 {
        return items.into_iter().map(&f).collect();
    }
    on_threads(items, f, |_| {
        Err(TrainError::Config {
            field: "workers",
            message: "a training thread panicked".into(),
        })
    })
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_balance_tokens_and_cover_every_row_once() {
        let lengths = [160, 150, 170, 140];
        let parts = split_rows(&lengths, 2);
        assert_eq!(parts, vec![vec![2, 3], vec![0, 1]]);
        let loads: Vec<usize> = parts
            .iter()
            .map(|p| p.iter().map(|&r| lengths[r]).sum())
            .collect();
        assert_eq!(loads, vec![310, 310]);
        // More workers than rows: one row each; one worker: everything.
        assert_eq!(split_rows(&[5, 7], 8), vec![vec![1], vec![0]]);
        assert_eq!(split_rows(&[5, 7, 9], 1), vec![vec![0, 1, 2]]);
        assert_eq!(split_rows(&[], 4), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn parts_run_in_order_and_errors_come_back() {
        let out = run_parts(vec![1, 2, 3], |x| Ok(x * 10)).unwrap();
        assert_eq!(out, vec![10, 20, 30]);
        let err = run_parts(vec![1, 2], |x| {
            if x == 2 {
                Err(TrainError::Config {
                    field: "x",
                    message: "two".into(),
                })
            } else {
                Ok(x)
            }
        });
        assert!(err.is_err());
        let panicked = run_parts(vec![1, 2], |x| {
            if x == 1 {
                panic!("boom");
            }
            Ok(x)
        });
        assert!(panicked.unwrap_err().to_string().contains("panicked"));
    }
}
