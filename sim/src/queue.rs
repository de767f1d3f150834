//! The engine's pending events: a min-queue on (time, order of scheduling).
//!
//! Every event of a run but the containers' own (CPU done, quota spent) passes through here
//! once: a simulated hotel-reservation quarter hour pops 24.8 million (calls delivered and
//! answered, arrivals, period ends) from a queue 24 long on average. Two things make it a
//! little cheaper than `std`'s `BinaryHeap` of (time, sequence) pairs compared field by field
//! (2.5% of that run):
//! * the key is one `u128`, the time's bits above the sequence number. A non-negative `f64`'s
//!   bits order as the number does, so one integer comparison (no branch on equal times)
//!   gives the same order;
//! * four children a node instead of two: half the levels for a pop to sift through, and the
//!   four keys a level compares sit in one or two cache lines.
//!
//! Ties in time pop in the order they were pushed, so a run's event order, and therefore its
//! results, is exactly the one the binary heap gave.

/// Children per node.
const ARITY: usize = 4;

/// A min-queue of events of kind `K`, earliest first, ties in push order.
#[derive(Debug, Clone)]
pub struct EventQueue<K> {
    keys: Vec<u128>,
    kinds: Vec<K>,
    seq: u64,
}

impl<K: Copy> EventQueue<K> {
    pub fn new() -> Self {
        EventQueue {
            keys: Vec::new(),
            kinds: Vec::new(),
            seq: 0,
        }
    }

    fn key(&mut self, t: f64) -> u128 {
        // -0.0 would sort after every positive time; +0.0 adds nothing to any other time.
        let t = t + 0.0;
        debug_assert!(t >= 0.0, "event time {t} is negative or NaN");
        self.seq += 1;
        (u128::from(t.to_bits()) << 64) | u128::from(self.seq)
    }

    fn time(key: u128) -> f64 {
        f64::from_bits((key >> 64) as u64)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The earliest event's time (+infinity when empty).
    #[inline]
    pub fn peek_time(&self) -> f64 {
        self.keys.first().map_or(f64::INFINITY, |&k| Self::time(k))
    }

    /// Schedules `kind` at `t` (not negative), after every event already at `t`.
    pub fn push(&mut self, t: f64, kind: K) {
        let key = self.key(t);
        let mut i = self.keys.len();
        self.keys.push(key);
        self.kinds.push(kind);
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.keys[parent] <= key {
                break;
            }
            self.keys[i] = self.keys[parent];
            self.kinds[i] = self.kinds[parent];
            i = parent;
        }
        self.keys[i] = key;
        self.kinds[i] = kind;
    }

    /// Takes the earliest event.
    pub fn pop(&mut self) -> Option<(f64, K)> {
        let first = *self.keys.first()?;
        let first_kind = self.kinds[0];
        let last = self.keys.pop().expect("not empty");
        let last_kind = self.kinds.pop().expect("as many kinds as keys");
        let n = self.keys.len();
        if n > 0 {
            // Sift the last element down from the root: at each level move the least child
            // up until the last element is no greater than it.
            let mut i = 0;
            loop {
                let c0 = i * ARITY + 1;
                if c0 >= n {
                    break;
                }
                let end = (c0 + ARITY).min(n);
                let mut best = c0;
                let mut best_key = self.keys[c0];
                for c in c0 + 1..end {
                    let k = self.keys[c];
                    if k < best_key {
                        best = c;
                        best_key = k;
                    }
                }
                if last <= best_key {
                    break;
                }
                self.keys[i] = best_key;
                self.kinds[i] = self.kinds[best];
                i = best;
            }
            self.keys[i] = last;
            self.kinds[i] = last_kind;
        }
        Some((Self::time(first), first_kind))
    }

    /// Keeps only the events `keep` accepts, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let mut pending: Vec<(u128, K)> = self
            .keys
            .iter()
            .zip(&self.kinds)
            .filter(|(_, k)| keep(k))
            .map(|(&key, &k)| (key, k))
            .collect();
        pending.sort_unstable_by_key(|&(key, _)| key);
        // A sorted array is a valid heap.
        self.keys = pending.iter().map(|&(key, _)| key).collect();
        self.kinds = pending.into_iter().map(|(_, k)| k).collect();
    }
}

impl<K: Copy> Default for EventQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn pops_in_time_order_with_ties_in_push_order() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        let mut q = EventQueue::new();
        let mut expected = Vec::new();
        let mut now = 0.0;
        let mut pushed = 0u32;
        // Interleaved pushes and pops, as the engine does them: times never before `now`,
        // many equal (a tenth of a grid of 1 ms steps).
        for round in 0..20_000 {
            for _ in 0..rng.random_range(0..4) {
                let t = now + f64::from(rng.random_range(0..50u32)) * 1e-3;
                q.push(t, pushed);
                expected.push((t, pushed));
                pushed += 1;
            }
            if round % 3 != 0 {
                if let Some((t, id)) = q.pop() {
                    assert!(t >= now, "time went back: {t} after {now}");
                    // The reference: the earliest time, then the first pushed.
                    let at = expected
                        .iter()
                        .enumerate()
                        .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0).then(a.1 .1.cmp(&b.1 .1)))
                        .map(|(i, _)| i)
                        .unwrap();
                    assert_eq!(expected.swap_remove(at), (t, id));
                    now = t;
                }
            }
            assert_eq!(q.len(), expected.len());
        }
        assert!(pushed > 20_000, "the test pushed {pushed}");
    }

    #[test]
    fn zero_and_negative_zero_are_one_time() {
        let mut q = EventQueue::new();
        q.push(0.0, 'a');
        q.push(-0.0, 'b');
        q.push(1e-300, 'c');
        assert_eq!(q.pop(), Some((0.0, 'a')));
        assert_eq!(q.pop(), Some((0.0, 'b')));
        assert_eq!(q.pop(), Some((1e-300, 'c')));
        assert_eq!(q.pop(), None);
        assert_eq!(q.peek_time(), f64::INFINITY);
    }

    #[test]
    fn retain_keeps_the_order_of_what_it_keeps() {
        let mut q = EventQueue::new();
        for i in 0..100u32 {
            q.push(f64::from(i % 7), i);
        }
        q.retain(|&i| i % 3 != 0);
        let mut last = (-1.0, 0);
        let mut n = 0;
        while let Some((t, i)) = q.pop() {
            assert!(i % 3 != 0);
            assert!(
                t > last.0 || (t == last.0 && i > last.1),
                "{t},{i} after {last:?}"
            );
            last = (t, i);
            n += 1;
        }
        assert_eq!(n, 66);
    }
}
