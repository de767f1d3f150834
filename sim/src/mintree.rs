//! An indexed minimum over a fixed set of slots: each container's next event time.
//!
//! A global event heap would collect a stale entry every time a container's next event moves
//! (which is on nearly every call start and finish); a tournament tree instead holds exactly
//! one time per container, updates in O(log n) and answers "which container is next" in O(1).

/// A complete binary tree over `n` slots; internal nodes hold the index of their subtree's
/// earliest slot.
#[derive(Debug, Clone)]
pub struct MinTree {
    times: Vec<f64>,
    /// `tree[1]` is the root; leaves start at `leaves`.
    tree: Vec<u32>,
    leaves: usize,
}

impl MinTree {
    /// `n` slots, all at +infinity (nothing scheduled).
    pub fn new(n: usize) -> Self {
        let leaves = n.max(1).next_power_of_two();
        let mut times = vec![f64::INFINITY; leaves];
        times.truncate(leaves);
        let mut tree = vec![0u32; 2 * leaves];
        for i in 0..leaves {
            tree[leaves + i] = i as u32;
        }
        for i in (1..leaves).rev() {
            tree[i] = tree[2 * i];
        }
        MinTree {
            times,
            tree,
            leaves,
        }
    }

    /// Sets slot `i`'s time (+infinity: nothing scheduled).
    #[inline]
    pub fn set(&mut self, i: usize, t: f64) {
        // A quarter of the updates leave the time as it was: nothing above can change.
        if self.times[i] == t {
            return;
        }
        self.times[i] = t;
        let mut node = (self.leaves + i) / 2;
        while node >= 1 {
            let (a, b) = (self.tree[2 * node], self.tree[2 * node + 1]);
            // Ties go to the lower slot, so the order of simultaneous events is fixed.
            let (ta, tb) = (self.times[a as usize], self.times[b as usize]);
            let winner = if tb < ta { b } else { a };
            // Nothing above can change if this subtree's winner is the same other slot.
            if winner == self.tree[node] && winner as usize != i {
                break;
            }
            self.tree[node] = winner;
            node /= 2;
        }
    }

    /// The earliest slot and its time.
    #[inline]
    pub fn min(&self) -> (usize, f64) {
        let i = self.tree[1] as usize;
        (i, self.times[i])
    }

    #[cfg(test)]
    pub fn get(&self, i: usize) -> f64 {
        self.times[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_the_minimum_through_updates() {
        let mut t = MinTree::new(5);
        assert_eq!(t.min().1, f64::INFINITY);
        t.set(3, 2.0);
        t.set(1, 5.0);
        assert_eq!(t.min(), (3, 2.0));
        t.set(3, 7.0);
        assert_eq!(t.min(), (1, 5.0));
        t.set(4, 5.0);
        assert_eq!(t.min(), (1, 5.0), "ties go to the lower slot");
        t.set(1, f64::INFINITY);
        assert_eq!(t.min(), (4, 5.0));
        assert_eq!(t.get(3), 7.0);
    }

    #[test]
    fn agrees_with_a_linear_scan() {
        let mut t = MinTree::new(37);
        let mut v = vec![f64::INFINITY; 37];
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % 37;
            let val = ((x >> 11) % 1000) as f64;
            t.set(i, val);
            v[i] = val;
            let (mi, mt) = t.min();
            let best = v.iter().cloned().fold(f64::INFINITY, f64::min);
            assert_eq!(mt, best);
            assert_eq!(v.iter().position(|&y| y == best).unwrap(), mi);
        }
    }
}
