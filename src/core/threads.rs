//! One scoped thread per item, joined in item order: the pattern that the
//! trainer's row-parallel parts, batched decoding and scoring share. A
//! thread that panics gives the caller's stand-in result for its item
//! instead of tearing the caller down.

/// Runs `f` on each item on its own scoped thread and returns the results in
/// item order; a panicking thread's result is `panicked(index)`.
pub fn on_threads<T, R, F, P>(items: impl IntoIterator<Item = T>, f: F, panicked: P) -> Vec<R>
where
    T: Send,
    R: Send,
    F: Fn(T) -> R + Sync,
    P: Fn(usize) -> R,
{
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(i, h)| h.join().unwrap_or_else(|_| panicked(i)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_item_order() {
        let out = on_threads(vec![3u64, 1, 2], |x| x * 10, |_| 0);
        assert_eq!(out, vec![30, 10, 20]);
    }

    #[test]
    fn a_panicking_item_gets_the_stand_in() {
        let out = on_threads(
            0..3,
            |i| {
                if i == 1 {
                    panic!("item 1 fails");
                }
                Ok::<usize, String>(i)
            },
            |i| Err(format!("thread {i} panicked")),
        );
        assert_eq!(
            out,
            vec![Ok(0), Err("thread 1 panicked".to_string()), Ok(2)]
        );
    }
}
