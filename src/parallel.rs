//! Work spread over every core, for the large inputs of `mailtls render` and the
//! reconcile: parsing documents and address-list entries.

/// `f` over `items` on every core, results in order. Items are taken one at a time, so a
/// few large documents among many small ones still keep every core busy.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        // This worker's results in the order it took them; indexes tell them apart.
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return out;
            };
            out.push((i, f(item)));
        }
    };
    let mut results: Vec<(usize, R)> = Vec::with_capacity(items.len());
    std::thread::scope(|scope| {
        let workers: Vec<_> = (1..threads).map(|_| scope.spawn(work)).collect();
        // This thread works too: one thread fewer to start, and what it allocates and frees
        // stays in the allocator arena the rest of the program uses.
        results.extend(work());
        for w in workers {
            // A worker panics only where the same call would panic in this thread.
            results.extend(w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
    });
    results.sort_unstable_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_the_order_of_the_items() {
        let items: Vec<usize> = (0..1000).collect();
        let doubled = super::map(&items, |i| i * 2);
        assert_eq!(doubled, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(super::map(&[] as &[usize], |i| *i).is_empty());
    }
}
