//! The matching window every phase shares: sightings grouped by signature; a group closes a
//! window after its first sighting arrived (arrivals are not in time order across CPUs).

use std::collections::{HashMap, VecDeque};

pub struct Window<S> {
    window_ns: u64,
    open: HashMap<u64, Vec<S>>,
    /// (first arrival, signature), oldest first: when each open group is due.
    due: VecDeque<(u64, u64)>,
}

impl<S> Window<S> {
    pub fn new(window_ns: u64) -> Self {
        Self {
            window_ns,
            open: HashMap::new(),
            due: VecDeque::new(),
        }
    }

    pub fn push(&mut self, signature: u64, t_ns: u64, s: S) {
        let due = &mut self.due;
        self.open
            .entry(signature)
            .or_insert_with(|| {
                due.push_back((t_ns, signature));
                Vec::new()
            })
            .push(s);
    }

    /// Removes the groups due at `now_ns` (every group with `None`), oldest first.
    pub fn take_due(&mut self, now_ns: Option<u64>) -> Vec<Vec<S>> {
        let now = now_ns.unwrap_or(u64::MAX);
        let mut groups = Vec::new();
        while let Some(&(first, sig)) = self.due.front() {
            if first.saturating_add(self.window_ns) > now {
                break;
            }
            self.due.pop_front();
            groups.extend(self.open.remove(&sig));
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_due_a_window_after_its_first_arrival() {
        let mut w = Window::new(1_000);
        for (sig, t) in [(7, 150), (7, 100), (8, 120), (7, 400)] {
            w.push(sig, t, t);
        }
        // Signature 7 arrived first (at 150): nothing leaves before it is due, in arrival order.
        assert!(w.take_due(Some(1_149)).is_empty());
        assert_eq!(
            w.take_due(Some(1_150)),
            vec![vec![150, 100, 400], vec![120]]
        );
        w.push(9, 2_000, 2_000);
        assert_eq!(w.take_due(None), vec![vec![2_000]]);
        assert!(w.take_due(None).is_empty());
    }
}
