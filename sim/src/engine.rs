//! The discrete-event engine.
//!
//! Events are ordered by `(time, kind, sequence number)`; the loop pops the earliest, sets the
//! clock, and hands it to the [`Handler`], which appends the events that follow. Nothing else
//! touches the queue, so the same inputs give the same order of events, bit for bit.
//! Scheduling an event before the current time is an error.
//!
//! The queue is a binary heap plus one FIFO lane per event kind. An event goes to its kind's
//! lane when it is no earlier than the lane's last event (sequence numbers only grow, so each
//! lane stays sorted by the full key), otherwise to the heap; the next event is the least of the
//! heap's top and the lanes' fronts. The order is exactly the one a single heap gives, but the
//! common cases — flash completions, which a FIFO device delivers in order, and a chain of ops —
//! cost O(1) instead of O(log n).

use crate::error::SimError;
use crate::time::Ps;
use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// An event type: its kind breaks ties between events at the same time (lower first).
pub trait Event {
    fn kind(&self) -> u8;
}

/// Owns the simulated state and reacts to events.
pub trait Handler {
    type Event: Event;
    /// Handles `event` at time `now`, pushing `(time, event)` for each event that follows.
    fn handle(
        &mut self,
        now: Ps,
        event: Self::Event,
        follow: &mut Vec<(Ps, Self::Event)>,
    ) -> Result<(), SimError>;
}

struct Entry<E> {
    time: Ps,
    kind: u8,
    seq: u64,
    event: E,
}

impl<E> Entry<E> {
    #[inline]
    fn key(&self) -> (Ps, u8, u64) {
        (self.time, self.kind, self.seq)
    }
}
impl<E> PartialEq for Entry<E> {
    fn eq(&self, o: &Self) -> bool {
        self.key() == o.key()
    }
}
impl<E> Eq for Entry<E> {}
impl<E> PartialOrd for Entry<E> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<E> Ord for Entry<E> {
    // Reversed: BinaryHeap is a max-heap and we want the earliest first.
    #[inline]
    fn cmp(&self, o: &Self) -> Ordering {
        o.key().cmp(&self.key())
    }
}

/// Event kinds with a FIFO lane; kinds at or above it always use the heap.
const LANES: usize = 4;

/// The event queue and the clock.
pub struct Engine<E> {
    heap: BinaryHeap<Entry<E>>,
    lanes: [VecDeque<Entry<E>>; LANES],
    now: Ps,
    seq: u64,
    processed: u64,
    follow: Vec<(Ps, E)>,
}

impl<E: Event> Default for Engine<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E: Event> Engine<E> {
    pub fn new() -> Self {
        Engine {
            heap: BinaryHeap::new(),
            lanes: Default::default(),
            now: Ps::ZERO,
            seq: 0,
            processed: 0,
            follow: Vec::new(),
        }
    }

    /// The current simulated time.
    pub fn now(&self) -> Ps {
        self.now
    }

    /// Events handled so far.
    pub fn processed(&self) -> u64 {
        self.processed
    }

    /// Events waiting.
    pub fn pending(&self) -> usize {
        self.heap.len() + self.lanes.iter().map(VecDeque::len).sum::<usize>()
    }

    /// Schedules `event` at `time` (not before the current time).
    pub fn schedule(&mut self, time: Ps, event: E) -> Result<(), SimError> {
        if time < self.now {
            return Err(SimError::EventInPast {
                now: self.now,
                at: time,
            });
        }
        let kind = event.kind();
        let entry = Entry {
            time,
            kind,
            seq: self.seq,
            event,
        };
        self.seq += 1;
        match self.lanes.get_mut(kind as usize) {
            Some(lane) if lane.back().is_none_or(|b| b.time <= time) => lane.push_back(entry),
            _ => self.heap.push(entry),
        }
        Ok(())
    }

    /// Takes the earliest event at or before `limit`.
    #[inline]
    fn pop_until(&mut self, limit: Ps) -> Option<Entry<E>> {
        // The source of the least key: `LANES` for the heap, else a lane.
        let mut best: Option<(usize, (Ps, u8, u64))> = self.heap.peek().map(|e| (LANES, e.key()));
        for (i, lane) in self.lanes.iter().enumerate() {
            if let Some(e) = lane.front() {
                let k = e.key();
                if best.is_none_or(|(_, b)| k < b) {
                    best = Some((i, k));
                }
            }
        }
        let (src, key) = best?;
        if key.0 > limit {
            return None;
        }
        if src == LANES {
            self.heap.pop()
        } else {
            self.lanes[src].pop_front()
        }
    }

    /// Runs until the queue is empty; returns the time of the last event.
    pub fn run<H: Handler<Event = E>>(&mut self, handler: &mut H) -> Result<Ps, SimError> {
        self.run_until(handler, Ps(u64::MAX))
    }

    /// Runs every event at or before `limit`.
    pub fn run_until<H: Handler<Event = E>>(
        &mut self,
        handler: &mut H,
        limit: Ps,
    ) -> Result<Ps, SimError> {
        let mut follow = std::mem::take(&mut self.follow);
        while let Some(Entry { time, event, .. }) = self.pop_until(limit) {
            self.now = time;
            self.processed += 1;
            handler.handle(time, event, &mut follow)?;
            for (t, e) in follow.drain(..) {
                self.schedule(t, e)?;
            }
        }
        self.follow = follow;
        Ok(self.now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Ev(u8, &'static str);
    impl Event for Ev {
        fn kind(&self) -> u8 {
            self.0
        }
    }
    struct Log(Vec<(u64, &'static str)>);
    impl Handler for Log {
        type Event = Ev;
        fn handle(&mut self, now: Ps, e: Ev, follow: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
            self.0.push((now.0, e.1));
            if e.1 == "a" {
                follow.push((Ps(now.0 + 5), Ev(0, "c")));
            }
            Ok(())
        }
    }

    #[test]
    fn orders_by_time_kind_then_sequence() {
        let mut eng = Engine::new();
        eng.schedule(Ps(10), Ev(1, "late-kind")).unwrap();
        eng.schedule(Ps(10), Ev(0, "b")).unwrap();
        eng.schedule(Ps(10), Ev(0, "b2")).unwrap();
        eng.schedule(Ps(3), Ev(5, "a")).unwrap();
        let mut log = Log(vec![]);
        eng.run(&mut log).unwrap();
        assert_eq!(
            log.0,
            vec![(3, "a"), (8, "c"), (10, "b"), (10, "b2"), (10, "late-kind")]
        );
        assert_eq!(eng.processed(), 5);
    }

    #[test]
    fn lanes_and_heap_give_the_order_of_a_full_sort() {
        // Random times (often out of order within a kind, so both the lanes and the heap are
        // used) and kinds below and above the lane count; each event may schedule a follower.
        struct Spawn(Vec<(u64, u8, u64)>, u64);
        #[derive(Debug)]
        struct E(u8, u64);
        impl Event for E {
            fn kind(&self) -> u8 {
                self.0
            }
        }
        impl Handler for Spawn {
            type Event = E;
            fn handle(&mut self, now: Ps, e: E, f: &mut Vec<(Ps, E)>) -> Result<(), SimError> {
                self.0.push((now.0, e.0, e.1));
                self.1 = self.1.wrapping_mul(6364136223846793005).wrapping_add(1);
                if e.1 < 3000 {
                    let dt = (self.1 >> 33) % 7;
                    f.push((Ps(now.0 + dt), E(((self.1 >> 40) % 6) as u8, e.1 + 1000)));
                }
                Ok(())
            }
        }
        let mut eng = Engine::new();
        let mut x = 7u64;
        let mut scheduled = Vec::new();
        for id in 0..1000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (t, k) = ((x >> 33) % 50, ((x >> 50) % 6) as u8);
            eng.schedule(Ps(t), E(k, id)).unwrap();
            scheduled.push((t, k, id));
        }
        assert_eq!(eng.pending(), 1000);
        let mut log = Spawn(Vec::new(), 1);
        eng.run(&mut log).unwrap();
        // The same run on a plain min-heap of (time, kind, sequence).
        let mut heap = std::collections::BinaryHeap::new();
        for (seq, &(t, k, id)) in scheduled.iter().enumerate() {
            heap.push(std::cmp::Reverse((t, k, seq as u64, id)));
        }
        let mut seq = scheduled.len() as u64;
        let mut want = Spawn(Vec::new(), 1);
        let mut f = Vec::new();
        while let Some(std::cmp::Reverse((t, k, _, id))) = heap.pop() {
            want.handle(Ps(t), E(k, id), &mut f).unwrap();
            for (t, e) in f.drain(..) {
                heap.push(std::cmp::Reverse((t.0, e.0, seq, e.1)));
                seq += 1;
            }
        }
        assert!(log.0.len() > 3000);
        assert_eq!(log.0, want.0);
    }

    #[test]
    fn scheduling_in_the_past_is_an_error() {
        struct Back;
        impl Handler for Back {
            type Event = Ev;
            fn handle(&mut self, now: Ps, _: Ev, f: &mut Vec<(Ps, Ev)>) -> Result<(), SimError> {
                f.push((Ps(now.0 - 1), Ev(0, "x")));
                Ok(())
            }
        }
        let mut eng = Engine::new();
        eng.schedule(Ps(10), Ev(0, "a")).unwrap();
        assert!(matches!(
            eng.run(&mut Back),
            Err(SimError::EventInPast { .. })
        ));
    }
}
