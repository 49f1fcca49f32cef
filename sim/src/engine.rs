//! The discrete-event engine.
//!
//! Events wait in a binary heap ordered by `(time, kind, sequence number)`; the loop pops the
//! earliest, sets the clock, and hands it to the [`Handler`], which appends the events that
//! follow. Nothing else touches the queue, so the same inputs give the same order of events,
//! bit for bit. Scheduling an event before the current time is an error.

use crate::error::SimError;
use crate::time::Ps;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

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

/// The event queue and the clock.
pub struct Engine<E> {
    heap: BinaryHeap<Entry<E>>,
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
        self.heap.len()
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
        self.heap.push(Entry {
            time,
            kind,
            seq: self.seq,
            event,
        });
        self.seq += 1;
        Ok(())
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
        while let Some(top) = self.heap.peek() {
            if top.time > limit {
                break;
            }
            let Entry { time, event, .. } = self.heap.pop().expect("peeked");
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
