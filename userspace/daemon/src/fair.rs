//! Per-IP-Group bounded queues drained by deficit round robin (Shreedhar & Varghese, 1995).
//!
//! Each class (one per IP Group, plus one for unclassified sources) has a bounded FIFO. A
//! full queue tail-drops the newcomer, so a flooded group loses its *own* excess and nothing
//! else. Draining visits the active classes in rounds; a class at the head of the round gets
//! `weight` credits and is served one datagram per credit (every datagram costs one: the
//! work a SIP request causes does not scale with its size). Service over any backlogged
//! interval is therefore proportional to the weights, and an idle class costs nothing because
//! only classes with queued items are on the active list.

use std::collections::VecDeque;

struct Class<T> {
    queue: VecDeque<T>,
    cap: usize,
    weight: u32,
    deficit: u32,
    active: bool,
    drops: u64,
}

/// Bounded per-class FIFOs with a DRR scheduler.
pub struct FairQueues<T> {
    classes: Vec<Class<T>>,
    /// Classes with queued items, in round order; the head is being served.
    active: VecDeque<usize>,
    len: usize,
}

impl<T> FairQueues<T> {
    /// One class per `(weight, capacity)`; a weight of 0 is treated as 1, capacity 0 as 1.
    pub fn new(classes: impl IntoIterator<Item = (u32, usize)>) -> Self {
        let classes: Vec<Class<T>> = classes
            .into_iter()
            .map(|(weight, cap)| Class {
                queue: VecDeque::new(),
                cap: cap.max(1),
                weight: weight.max(1),
                deficit: 0,
                active: false,
                drops: 0,
            })
            .collect();
        FairQueues {
            active: VecDeque::with_capacity(classes.len()),
            classes,
            len: 0,
        }
    }

    pub fn class_count(&self) -> usize {
        self.classes.len()
    }

    /// Enqueues at the tail of `class`. `Err(item)` when the class is full (tail drop, counted)
    /// or does not exist.
    #[inline]
    pub fn push(&mut self, class: usize, item: T) -> Result<(), T> {
        let Some(c) = self.classes.get_mut(class) else {
            return Err(item);
        };
        if c.queue.len() >= c.cap {
            c.drops += 1;
            return Err(item);
        }
        c.queue.push_back(item);
        self.len += 1;
        if !c.active {
            c.active = true;
            c.deficit = 0;
            self.active.push_back(class);
        }
        Ok(())
    }

    /// The next item in DRR order, with its class.
    #[inline]
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let &idx = self.active.front()?;
        let c = &mut self.classes[idx];
        if c.deficit == 0 {
            // Head of a new round for this class: grant its quantum.
            c.deficit = c.weight;
        }
        let item = c.queue.pop_front().expect("active classes are non-empty");
        c.deficit -= 1;
        self.len -= 1;
        if c.queue.is_empty() {
            // An emptied class leaves the round and forfeits its credit (standard DRR), so
            // idling cannot bank service for a later burst.
            c.active = false;
            c.deficit = 0;
            self.active.pop_front();
        } else if c.deficit == 0 {
            self.active.rotate_left(1);
        }
        Some((idx, item))
    }

    /// Serves up to `max` items in DRR order; returns how many were served. The worker pops
    /// item by item (it looks at the queues between items); this is the tests' shorthand.
    #[cfg(test)]
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(usize, T)) -> usize {
        let mut n = 0;
        while n < max {
            let Some((c, item)) = self.pop() else { break };
            f(c, item);
            n += 1;
        }
        n
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Classes with queued items.
    pub fn active_classes(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn class_len(&self, class: usize) -> usize {
        self.classes.get(class).map_or(0, |c| c.queue.len())
    }

    /// Free places in `class` before it tail-drops (0 for an unknown class).
    pub fn room(&self, class: usize) -> usize {
        self.classes
            .get(class)
            .map_or(0, |c| c.cap.saturating_sub(c.queue.len()))
    }

    /// New weight and capacity for `class` (reload). Items already queued beyond a smaller
    /// capacity stay and are served; the class takes new items again once below it. A new
    /// weight applies from the class's next round.
    pub fn set_class(&mut self, class: usize, weight: u32, cap: usize) {
        if let Some(c) = self.classes.get_mut(class) {
            c.weight = weight.max(1);
            c.cap = cap.max(1);
            c.deficit = c.deficit.min(c.weight);
        }
    }

    /// Tail drops of `class` since creation.
    pub fn drops(&self, class: usize) -> u64 {
        self.classes.get(class).map_or(0, |c| c.drops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_classes_counts_classes_with_items() {
        let mut q: FairQueues<u32> = FairQueues::new([(1, 10), (1, 10), (1, 10)]);
        assert_eq!(q.active_classes(), 0);
        q.push(2, 1).unwrap();
        q.push(2, 2).unwrap();
        assert_eq!(q.active_classes(), 1);
        q.push(0, 3).unwrap();
        assert_eq!(q.active_classes(), 2);
        // Draining a class empty takes it off the round.
        q.drain(2, |_, _| {});
        assert_eq!(q.active_classes(), 1);
        q.drain(10, |_, _| {});
        assert_eq!(q.active_classes(), 0);
    }

    #[test]
    fn set_class_changes_weight_and_capacity_live() {
        let mut q: FairQueues<u32> = FairQueues::new([(1, 10), (1, 10)]);
        for i in 0..10 {
            q.push(0, i).unwrap();
            q.push(1, i).unwrap();
        }
        // Shrinking below the backlog keeps it but refuses newcomers.
        q.set_class(0, 3, 4);
        assert_eq!(q.room(0), 0);
        assert!(q.push(0, 99).is_err());
        assert_eq!(q.class_len(0), 10);
        // From the next round class 0 gets 3 credits per 1 of class 1.
        let per = served(&mut q, 12);
        assert!(per[0] >= 8 && per[1] <= 4, "{per:?}");
        assert!(q.class_len(0) < 4);
        assert!(q.push(0, 100).is_ok());
    }

    fn served(q: &mut FairQueues<u32>, n: usize) -> Vec<usize> {
        let mut per = vec![0; q.class_count()];
        q.drain(n, |c, _| per[c] += 1);
        per
    }

    #[test]
    fn weights_are_honoured_while_backlogged() {
        let mut q = FairQueues::new([(1, 1000), (3, 1000)]);
        for i in 0..1000 {
            q.push(0, i).unwrap();
            q.push(1, i).unwrap();
        }
        let per = served(&mut q, 400);
        assert_eq!(per, vec![100, 300]);
    }

    #[test]
    fn fifo_within_a_class() {
        let mut q = FairQueues::new([(2, 10), (1, 10)]);
        for i in 0..5 {
            q.push(0, i).unwrap();
        }
        q.push(1, 100).unwrap();
        let mut order = Vec::new();
        q.drain(usize::MAX, |c, x| order.push((c, x)));
        assert_eq!(
            order,
            vec![(0, 0), (0, 1), (1, 100), (0, 2), (0, 3), (0, 4)]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn bounded_with_tail_drop() {
        let mut q = FairQueues::new([(1, 3)]);
        assert_eq!(q.room(0), 3);
        assert_eq!(q.room(1), 0);
        for i in 0..3 {
            q.push(0, i).unwrap();
        }
        assert_eq!(q.room(0), 0);
        assert_eq!(q.push(0, 99), Err(99));
        assert_eq!(q.push(0, 98), Err(98));
        assert_eq!(q.drops(0), 2);
        assert_eq!(q.len(), 3);
        // The oldest survive (tail drop): 0, 1, 2.
        let mut got = Vec::new();
        q.drain(10, |_, x| got.push(x));
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(q.push(5, 1), Err(1), "unknown class is refused");
    }

    #[test]
    fn flooded_class_cannot_starve_another() {
        // Class 0 is flooded far beyond what is drained per round; class 1 trickles in.
        // Every class-1 item must be served within one round of arriving.
        let mut q = FairQueues::new([(1, 4096), (1, 4096)]);
        let mut served_b = 0;
        let mut flood_drops = 0;
        for round in 0..1000u32 {
            for i in 0..100 {
                if q.push(0, i).is_err() {
                    flood_drops += 1;
                }
            }
            q.push(1, round).unwrap();
            // Capacity: 10 per round, far below the flood's 100.
            q.drain(10, |c, _| served_b += (c == 1) as u32);
            assert!(q.class_len(1) <= 1, "class 1 backlog grew at round {round}");
        }
        assert!(served_b >= 999, "class 1 got {served_b} of 1000");
        assert!(flood_drops > 0 && q.drops(0) == flood_drops as u64);
        assert_eq!(q.drops(1), 0);
    }

    #[test]
    fn empty_queues_are_skipped_and_do_not_bank_credit() {
        let mut q = FairQueues::new([(1, 100), (5, 100), (1, 100)]);
        for i in 0..10 {
            q.push(2, i).unwrap();
        }
        // Only class 2 is active: all service goes to it, none wasted on idle classes.
        assert_eq!(served(&mut q, 4), vec![0, 0, 4]);
        // Class 1 (weight 5) was idle; when it arrives it gets its weight per round, no more.
        for i in 0..20 {
            q.push(1, i).unwrap();
        }
        let per = served(&mut q, 12);
        assert_eq!(per[1] + per[2], 12);
        assert!(per[1] <= 10 && per[2] >= 2, "{per:?}");
        assert_eq!(q.len(), 30 - 4 - 12);
    }
}
