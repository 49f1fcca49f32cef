//! Caches of weight units (neurons, channels, bundles), usable by any policy.
//!
//! Each cache holds unit ids (`u32`) up to a capacity in units (the policy converts its byte
//! budget with the unit size). [`UnitCache::access`] presents one token's set of needed units
//! and returns which were hits, which must be read (misses), which of those the cache keeps,
//! and which units it evicted to make room.
//!
//! - [`SlidingWindow`]: LLM in a Flash's window: the union of the last k tokens' sets.
//! - [`Lru`]: least recently used.
//! - [`Lfu`]: least frequently used, DIP's "mask-first" variant (the current set is always
//!   inserted; victims are the least-used units outside it).
//! - [`LfuAdmit`]: ActiveFlow's hot cache: a missed unit is admitted only if its use count
//!   exceeds the least-used cached unit's.
//! - [`Belady`]: the offline oracle: evict the unit whose next use is farthest (knows the future).

use std::collections::BTreeSet;

/// The outcome of one token's access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub hits: Vec<u32>,
    /// Units to read from flash this token.
    pub misses: Vec<u32>,
    /// Misses the cache keeps (the rest are streamed and dropped after use).
    pub admitted: Vec<u32>,
    pub evicted: Vec<u32>,
}

pub trait UnitCache: Send {
    /// Presents token `t`'s needed units (sorted, distinct).
    fn access(&mut self, t: u64, units: &[u32]) -> Access;
    fn contains(&self, unit: u32) -> bool;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Resident flags plus a count, shared by the caches.
#[derive(Debug, Clone)]
struct Resident {
    flag: Vec<bool>,
    n: usize,
}

impl Access {
    /// Records `u` as a hit when `res` holds it, otherwise as a miss that `res` now holds;
    /// true on a hit.
    fn hit_or_insert(&mut self, res: &mut Resident, u: u32) -> bool {
        let hit = res.has(u);
        if hit {
            self.hits.push(u);
        } else {
            self.misses.push(u);
            res.insert(u);
        }
        hit
    }
}

impl Resident {
    fn new(units: usize) -> Self {
        Resident {
            flag: vec![false; units],
            n: 0,
        }
    }
    fn has(&self, u: u32) -> bool {
        self.flag[u as usize]
    }
    fn insert(&mut self, u: u32) {
        if !self.flag[u as usize] {
            self.flag[u as usize] = true;
            self.n += 1;
        }
    }
    fn remove(&mut self, u: u32) {
        if self.flag[u as usize] {
            self.flag[u as usize] = false;
            self.n -= 1;
        }
    }
}

/// The union of the sets of the last `k` tokens.
#[derive(Debug, Clone)]
pub struct SlidingWindow {
    k: usize,
    res: Resident,
    last_use: Vec<u64>,
    history: std::collections::VecDeque<Vec<u32>>,
}

impl SlidingWindow {
    pub fn new(units: usize, k: usize) -> Self {
        assert!(k >= 1);
        SlidingWindow {
            k,
            res: Resident::new(units),
            last_use: vec![0; units],
            history: Default::default(),
        }
    }
}

impl UnitCache for SlidingWindow {
    fn access(&mut self, t: u64, units: &[u32]) -> Access {
        let mut a = Access::default();
        for &u in units {
            if self.res.has(u) {
                a.hits.push(u);
            } else {
                a.misses.push(u);
                a.admitted.push(u);
                self.res.insert(u);
            }
            self.last_use[u as usize] = t;
        }
        self.history.push_back(units.to_vec());
        if self.history.len() > self.k {
            let old = self.history.pop_front().expect("non-empty");
            // Units of the token leaving the window that no later token in it used.
            let oldest_kept = t + 1 - self.k as u64;
            for u in old {
                if self.res.has(u) && self.last_use[u as usize] < oldest_kept {
                    self.res.remove(u);
                    a.evicted.push(u);
                }
            }
        }
        a.evicted.sort_unstable();
        a
    }
    fn contains(&self, unit: u32) -> bool {
        self.res.has(unit)
    }
    fn len(&self) -> usize {
        self.res.n
    }
}

const NIL: u32 = u32::MAX;

/// Doubly linked lists of units threaded through per-unit links, one list per key (LRU: one
/// list; LFU: one per use count). O(1) insert, remove, and pop from the front. A unit's links
/// sit together in one 12-byte record: one cache line per touch, not three.
#[derive(Debug, Clone)]
struct Lists {
    link: Vec<Link>,
    head: Vec<u32>,
    tail: Vec<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
    list: u32,
}

impl Lists {
    fn new(units: usize) -> Self {
        Lists {
            link: vec![
                Link {
                    prev: NIL,
                    next: NIL,
                    list: NIL
                };
                units
            ],
            head: Vec::new(),
            tail: Vec::new(),
        }
    }
    fn push_back(&mut self, list: u32, u: u32) {
        let l = list as usize;
        if self.head.len() <= l {
            self.head.resize(l + 1, NIL);
            self.tail.resize(l + 1, NIL);
        }
        let tail = self.tail[l];
        self.link[u as usize] = Link {
            prev: tail,
            next: NIL,
            list,
        };
        if tail != NIL {
            self.link[tail as usize].next = u;
        } else {
            self.head[l] = u;
        }
        self.tail[l] = u;
    }
    fn remove(&mut self, u: u32) {
        let Link { prev, next, list } = self.link[u as usize];
        let l = list as usize;
        if prev != NIL {
            self.link[prev as usize].next = next;
        } else {
            self.head[l] = next;
        }
        if next != NIL {
            self.link[next as usize].prev = prev;
        } else {
            self.tail[l] = prev;
        }
        self.link[u as usize].list = NIL;
    }
    #[cfg(test)]
    fn next(&self, u: u32) -> u32 {
        self.link[u as usize].next
    }
    fn first(&self, list: u32) -> u32 {
        self.head.get(list as usize).copied().unwrap_or(NIL)
    }
}

/// Least recently used, `capacity` units; victims are outside the current set.
#[derive(Debug, Clone)]
pub struct Lru {
    capacity: usize,
    res: Resident,
    lists: Lists,
    stamp: Vec<u64>,
}

impl Lru {
    pub fn new(units: usize, capacity: usize) -> Self {
        Lru {
            capacity,
            res: Resident::new(units),
            lists: Lists::new(units),
            stamp: vec![u64::MAX; units],
        }
    }
}

impl UnitCache for Lru {
    fn access(&mut self, t: u64, units: &[u32]) -> Access {
        let mut a = Access::default();
        for &u in units {
            if a.hit_or_insert(&mut self.res, u) {
                self.lists.remove(u);
            }
            self.stamp[u as usize] = t;
            self.lists.push_back(0, u);
        }
        // The front of the list is the least recent; this token's units are at the back.
        while self.res.n > self.capacity {
            let v = self.lists.first(0);
            if v == NIL || self.stamp[v as usize] == t {
                break;
            }
            self.lists.remove(v);
            self.res.remove(v);
            a.evicted.push(v);
        }
        // Victims never come from the current set, so every miss stayed.
        a.admitted = a.misses.clone();
        a
    }
    fn contains(&self, unit: u32) -> bool {
        self.res.has(unit)
    }
    fn len(&self) -> usize {
        self.res.n
    }
}

/// The same cache as [`Lru`], kept as runs of consecutive units that share a last use: for sets
/// made of long ranges (the readahead windows of whole matrices that `mmap` touches), an access
/// costs a few map operations per range instead of list operations per unit. The LRU order is
/// (last use, unit), as in [`Lru`]; a test checks the two give the same answers.
#[derive(Debug, Clone)]
pub struct RunLru {
    capacity: usize,
    n: usize,
    /// Cached runs: first unit -> (last unit, last use).
    runs: std::collections::BTreeMap<u32, (u32, u64)>,
    /// The runs in LRU order: (last use, first unit).
    order: BTreeSet<(u64, u32)>,
}

impl RunLru {
    pub fn new(_units: usize, capacity: usize) -> Self {
        RunLru {
            capacity,
            n: 0,
            runs: Default::default(),
            order: BTreeSet::new(),
        }
    }

    fn insert(&mut self, start: u32, end: u32, stamp: u64) {
        self.runs.insert(start, (end, stamp));
        self.order.insert((stamp, start));
    }

    fn remove(&mut self, start: u32) -> (u32, u64) {
        let (end, stamp) = self.runs.remove(&start).expect("a cached run");
        self.order.remove(&(stamp, start));
        (end, stamp)
    }
}

impl UnitCache for RunLru {
    fn access(&mut self, t: u64, units: &[u32]) -> Access {
        let mut a = Access::default();
        let mut i = 0;
        let mut overlapping = Vec::new();
        while i < units.len() {
            // The next range of consecutive units, [lo, hi].
            let lo = units[i];
            let mut hi = lo;
            while i + 1 < units.len() && units[i + 1] == hi + 1 {
                i += 1;
                hi += 1;
            }
            i += 1;
            // Cached runs that overlap it: the one holding `lo`, and those starting inside.
            overlapping.clear();
            if let Some((&s, &(e, _))) = self.runs.range(..lo).next_back() {
                if e >= lo {
                    overlapping.push(s);
                }
            }
            overlapping.extend(self.runs.range(lo..=hi).map(|(&s, _)| s));
            let mut next = lo;
            for &s in &overlapping {
                let (e, stamp) = self.remove(s);
                let (from, to) = (s.max(lo), e.min(hi));
                a.misses.extend(next..from);
                a.hits.extend(from..=to);
                next = to + 1;
                // The parts outside the range stay where they were in the LRU order.
                if s < from {
                    self.insert(s, from - 1, stamp);
                }
                if to < e {
                    self.insert(to + 1, e, stamp);
                }
                self.n -= (to - from + 1) as usize;
            }
            a.misses.extend(next..=hi);
            self.n += (hi - lo + 1) as usize;
            self.insert(lo, hi, t);
        }
        // The oldest first, never from this access's set.
        while self.n > self.capacity {
            let Some(&(stamp, s)) = self.order.first() else {
                break;
            };
            if stamp == t {
                break;
            }
            let (e, _) = self.remove(s);
            let take = ((e - s + 1) as usize).min(self.n - self.capacity) as u32;
            a.evicted.extend(s..s + take);
            if s + take <= e {
                self.insert(s + take, e, stamp);
            }
            self.n -= take as usize;
        }
        a.admitted = a.misses.clone();
        a
    }
    fn contains(&self, unit: u32) -> bool {
        self.runs
            .range(..=unit)
            .next_back()
            .is_some_and(|(_, &(e, _))| e >= unit)
    }
    fn len(&self) -> usize {
        self.n
    }
}

/// Least frequently used with DIP's mask-first rule: the current set is always inserted (and
/// may exceed the capacity when it alone is larger); victims are the least-used units outside
/// it, ties to the least recently used (then the lower unit id). Use counts cover the whole run,
/// cached or not. `evicted` comes out in unit order.
///
/// A mask keeps a large share of all units (DIP keeps half), so one access touches a large share
/// of the state anyway: instead of per-unit priority lists, the cache keeps a histogram of the
/// use counts of the cached units and, when it must evict, finds the count at which the victims
/// end from the histogram and takes them in one sequential pass (plus a selection among the units
/// at exactly that count, by last use). The result is the same as walking count-ordered LRU
/// lists (a test checks it against that implementation).
#[derive(Debug, Clone)]
pub struct Lfu {
    capacity: usize,
    n: usize,
    /// Per unit: use count (with [`Lfu::RESIDENT`] set while cached) and last use.
    unit: Vec<LfuUnit>,
    /// The sum of `hist[c]`'s lanes: cached units with use count `c`.
    hist: Vec<[u32; 4]>,
    ties: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct LfuUnit {
    count: u32,
    stamp: u32,
}

impl Lfu {
    const RESIDENT: u32 = 1 << 31;

    pub fn new(units: usize, capacity: usize) -> Self {
        assert!(units <= u32::MAX as usize);
        Lfu {
            capacity,
            n: 0,
            unit: vec![LfuUnit::default(); units],
            hist: vec![[0; 4]; 2],
            ties: Vec::new(),
        }
    }
}

impl UnitCache for Lfu {
    // The loops are written without data-dependent branches (a flag is summed into a cursor, a
    // slot written whether it is kept or not): hits and victims are close to random. The
    // histogram has four lanes, used in turn, so that runs of equal counts do not make a chain of
    // stores and loads to one counter; a lane may wrap, only the sum of the four counts.
    fn access(&mut self, t: u64, units: &[u32]) -> Access {
        const RES: u32 = Lfu::RESIDENT;
        let t = u32::try_from(t).expect("token index below 2^32");
        let (mut hits, mut misses) = (vec![0; units.len()], vec![0; units.len()]);
        let (mut nh, mut nm, mut top) = (0, 0, 0);
        // The current set leaves the histogram while the victims are chosen: it is never evicted.
        for (i, &u) in units.iter().enumerate() {
            let x = &mut self.unit[u as usize];
            let c = x.count & !RES;
            let hit = x.count & RES != 0;
            hits[nh] = u;
            misses[nm] = u;
            nh += hit as usize;
            nm += !hit as usize;
            let lane = &mut self.hist[c as usize][i & 3];
            *lane = lane.wrapping_sub(hit as u32);
            assert!(c + 1 < RES, "use count overflow");
            top = top.max(c + 1);
            *x = LfuUnit {
                count: (c + 1) | RES,
                stamp: t,
            };
        }
        hits.truncate(nh);
        misses.truncate(nm);
        self.n += nm;
        if top as usize >= self.hist.len() {
            self.hist.resize(top as usize + 1, [0; 4]);
        }
        let mut evicted = Vec::new();
        if self.n > self.capacity {
            let candidates = self.n - units.len();
            let need = (self.n - self.capacity).min(candidates);
            // Victims: every candidate below count `cut`, and the `at_cut` least recent at it.
            let count = |h: &[u32; 4]| h.iter().fold(0u32, |a, &b| a.wrapping_add(b)) as usize;
            let (mut cut, mut below) = (0usize, 0usize);
            while cut < self.hist.len() && below + count(&self.hist[cut]) <= need {
                below += count(&self.hist[cut]);
                self.hist[cut] = [0; 4];
                cut += 1;
            }
            let at_cut = need - below;
            // One pass: take the candidates below `cut`, gather those at `cut` by last use. Per
            // block of 64 units the flags become two bit masks (a loop that vectorizes), whose
            // set bits are then listed.
            evicted.reserve(need);
            self.ties.clear();
            let cut = cut as u32;
            for (b, block) in self.unit.chunks_mut(64).enumerate() {
                let (mut go_bits, mut tie_bits) = (0u64, 0u64);
                for (j, x) in block.iter_mut().enumerate() {
                    let c = x.count & !RES;
                    let candidate = (x.count & RES != 0) & (x.stamp != t);
                    let go = candidate & (c < cut);
                    go_bits |= (go as u64) << j;
                    tie_bits |= ((candidate & (c == cut)) as u64) << j;
                    x.count ^= RES * go as u32;
                }
                let base = b * 64;
                while go_bits != 0 {
                    evicted.push((base + go_bits.trailing_zeros() as usize) as u32);
                    go_bits &= go_bits - 1;
                }
                while tie_bits != 0 {
                    let j = tie_bits.trailing_zeros() as usize;
                    self.ties
                        .push(((block[j].stamp as u64) << 32) | (base + j) as u64);
                    tie_bits &= tie_bits - 1;
                }
            }
            debug_assert_eq!(evicted.len(), below);
            evicted.resize(need, 0);
            if at_cut > 0 {
                let ties = &mut self.ties[..];
                ties.select_nth_unstable(at_cut - 1);
                let chosen = &mut ties[..at_cut];
                chosen.iter_mut().for_each(|k| *k &= u32::MAX as u64);
                chosen.sort_unstable();
                for &k in chosen.iter() {
                    self.unit[k as usize].count ^= RES;
                }
                // Both runs are in unit order: merge them from the back.
                let (mut i, mut j) = (below, at_cut);
                while j > 0 {
                    let tie = chosen[j - 1] as u32;
                    if i > 0 && evicted[i - 1] > tie {
                        evicted[i + j - 1] = evicted[i - 1];
                        i -= 1;
                    } else {
                        evicted[i + j - 1] = tie;
                        j -= 1;
                    }
                }
                let lane = &mut self.hist[cut as usize][0];
                *lane = lane.wrapping_sub(at_cut as u32);
            }
            self.n -= need;
        }
        for (i, &u) in units.iter().enumerate() {
            let lane = &mut self.hist[(self.unit[u as usize].count & !RES) as usize][i & 3];
            *lane = lane.wrapping_add(1);
        }
        Access {
            hits,
            admitted: misses.clone(),
            misses,
            evicted,
        }
    }
    fn contains(&self, unit: u32) -> bool {
        self.unit[unit as usize].count & Self::RESIDENT != 0
    }
    fn len(&self) -> usize {
        self.n
    }
}

/// ActiveFlow's hot cache: use counts over the current context; a missed unit is loaded on
/// demand and admitted only if the cache has room or its count exceeds the least-used cached
/// unit's (which it then replaces).
#[derive(Debug, Clone)]
pub struct LfuAdmit {
    capacity: usize,
    res: Resident,
    count: Vec<u64>,
    order: BTreeSet<(u64, u32)>,
}

impl LfuAdmit {
    pub fn new(units: usize, capacity: usize) -> Self {
        LfuAdmit {
            capacity,
            res: Resident::new(units),
            count: vec![0; units],
            order: BTreeSet::new(),
        }
    }
    /// Forgets the counts (a new sequence begins).
    pub fn reset_counts(&mut self) {
        self.count.iter_mut().for_each(|c| *c = 0);
        let cached: Vec<u32> = self.order.iter().map(|&(_, u)| u).collect();
        self.order = cached.into_iter().map(|u| (0, u)).collect();
    }
}

impl UnitCache for LfuAdmit {
    fn access(&mut self, _t: u64, units: &[u32]) -> Access {
        let mut a = Access::default();
        for &u in units {
            let c = &mut self.count[u as usize];
            if self.res.has(u) {
                self.order.remove(&(*c, u));
                *c += 1;
                self.order.insert((*c, u));
                a.hits.push(u);
                continue;
            }
            *c += 1;
            let c = *c;
            a.misses.push(u);
            if self.res.n < self.capacity {
                self.res.insert(u);
                self.order.insert((c, u));
                a.admitted.push(u);
            } else if let Some(&(min_c, v)) = self.order.iter().next() {
                if c > min_c && units.binary_search(&v).is_err() {
                    self.order.remove(&(min_c, v));
                    self.res.remove(v);
                    a.evicted.push(v);
                    self.res.insert(u);
                    self.order.insert((c, u));
                    a.admitted.push(u);
                }
            }
        }
        a
    }
    fn contains(&self, unit: u32) -> bool {
        self.res.has(unit)
    }
    fn len(&self) -> usize {
        self.res.n
    }
}

/// Belady's optimal replacement (offline: built from every token's future set). The current
/// set is always inserted; victims are the units outside it whose next use is farthest.
#[derive(Debug, Clone)]
pub struct Belady {
    capacity: usize,
    res: Resident,
    /// For each token, each unit of its set with the token of its next use (u64::MAX: never).
    next_use: Vec<Vec<(u32, u64)>>,
    keys: Vec<(u64, u64)>,
    order: BTreeSet<(u64, u64, u32)>,
}

impl Belady {
    /// `future[t]` is token t's set (sorted).
    pub fn new(units: usize, capacity: usize, future: &[Vec<u32>]) -> Self {
        let mut next = vec![u64::MAX; units];
        let mut next_use = vec![Vec::new(); future.len()];
        for (t, set) in future.iter().enumerate().rev() {
            next_use[t] = set.iter().map(|&u| (u, next[u as usize])).collect();
            for &u in set {
                next[u as usize] = t as u64;
            }
        }
        Belady {
            capacity,
            res: Resident::new(units),
            next_use,
            keys: vec![(0, 0); units],
            order: BTreeSet::new(),
        }
    }
}

impl UnitCache for Belady {
    fn access(&mut self, t: u64, units: &[u32]) -> Access {
        let mut a = Access::default();
        let nexts = &self.next_use[t as usize];
        debug_assert_eq!(
            nexts.len(),
            units.len(),
            "Belady sees the set it was built with"
        );
        for &(u, next) in nexts {
            let k = &mut self.keys[u as usize];
            if a.hit_or_insert(&mut self.res, u) {
                self.order.remove(&(k.0, k.1, u));
            }
            // Smallest key evicted first: farthest next use = smallest (MAX - next).
            *k = (u64::MAX - next, 0);
            self.order.insert((k.0, 0, u));
        }
        let mut skipped = Vec::new();
        while self.res.n > self.capacity {
            let Some(&(k1, k2, v)) = self.order.iter().next() else {
                break;
            };
            self.order.remove(&(k1, k2, v));
            if units.binary_search(&v).is_ok() {
                skipped.push((k1, k2, v));
                continue;
            }
            self.res.remove(v);
            self.keys[v as usize] = (0, 0);
            a.evicted.push(v);
        }
        self.order.extend(skipped);
        a.admitted = a.misses.clone();
        a
    }
    fn contains(&self, unit: u32) -> bool {
        self.res.has(unit)
    }
    fn len(&self) -> usize {
        self.res.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list-walking LFU the histogram one replaced: the reference it is checked against.
    #[derive(Debug, Clone)]
    pub struct LfuLists {
        capacity: usize,
        res: Resident,
        count: Vec<u32>,
        stamp: Vec<u64>,
        lists: Lists,
        min_count: u32,
    }

    impl LfuLists {
        fn new(units: usize, capacity: usize) -> Self {
            LfuLists {
                capacity,
                res: Resident::new(units),
                count: vec![0; units],
                stamp: vec![u64::MAX; units],
                lists: Lists::new(units),
                min_count: 1,
            }
        }
    }

    impl UnitCache for LfuLists {
        fn access(&mut self, t: u64, units: &[u32]) -> Access {
            let mut a = Access::default();
            for &u in units {
                if a.hit_or_insert(&mut self.res, u) {
                    self.lists.remove(u);
                }
                self.count[u as usize] += 1;
                self.stamp[u as usize] = t;
                let c = self.count[u as usize];
                self.lists.push_back(c, u);
                self.min_count = self.min_count.min(c);
            }
            // Victims: lowest count first, oldest first within a count, skipping this token's set.
            let mut c = self.min_count;
            let mut cursor = self.lists.first(c);
            while self.res.n > self.capacity {
                while cursor == NIL {
                    c += 1;
                    if c as usize >= self.lists.head.len() {
                        break;
                    }
                    cursor = self.lists.first(c);
                }
                if cursor == NIL {
                    break;
                }
                let v = cursor;
                cursor = self.lists.next(v);
                if self.stamp[v as usize] == t {
                    continue;
                }
                self.lists.remove(v);
                self.res.remove(v);
                a.evicted.push(v);
            }
            while (self.min_count as usize) < self.lists.head.len()
                && self.lists.first(self.min_count) == NIL
            {
                self.min_count += 1;
            }
            a.admitted = a.misses.clone();
            a
        }
        fn contains(&self, unit: u32) -> bool {
            self.res.has(unit)
        }
        fn len(&self) -> usize {
            self.res.n
        }
    }

    fn run(c: &mut dyn UnitCache, sets: &[&[u32]]) -> Vec<Access> {
        sets.iter()
            .enumerate()
            .map(|(t, s)| c.access(t as u64, s))
            .collect()
    }

    #[test]
    fn sliding_window_keeps_the_union_of_the_last_k_sets() {
        let mut w = SlidingWindow::new(8, 2);
        let a = run(&mut w, &[&[0, 1], &[1, 2], &[3], &[3]]);
        assert_eq!(a[0].misses, vec![0, 1]);
        // Token 1: window {tokens 0, 1} = {0, 1, 2}, nothing leaves.
        assert_eq!(
            (a[1].hits.clone(), a[1].misses.clone(), a[1].evicted.clone()),
            (vec![1], vec![2], vec![])
        );
        // Token 2: window {1, 2} = {1, 2, 3}; of token 0's units, 0 leaves, 1 was used at 1.
        assert_eq!(
            (a[2].misses.clone(), a[2].evicted.clone()),
            (vec![3], vec![0])
        );
        // Token 3: window {2, 3} = {3}; token 1's units 1 and 2 leave.
        assert_eq!(
            (a[3].hits.clone(), a[3].evicted.clone()),
            (vec![3], vec![1, 2])
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn lru_evicts_the_least_recent_outside_the_current_set() {
        let mut c = Lru::new(8, 2);
        let a = run(&mut c, &[&[0], &[1], &[0], &[2]]);
        assert_eq!(a[2].hits, vec![0]);
        assert_eq!(
            (a[3].misses.clone(), a[3].evicted.clone()),
            (vec![2], vec![1])
        );
    }

    #[test]
    fn lfu_mask_first_keeps_the_frequent_and_always_inserts_the_mask() {
        let mut c = Lfu::new(8, 2);
        let a = run(&mut c, &[&[0, 1], &[0], &[0, 2], &[3, 4, 5]]);
        // Token 2: 2 inserted, the victim is 1 (count 1) not 0 (count 3).
        assert_eq!(a[2].evicted, vec![1]);
        // Token 3: the mask alone (3 units) exceeds the capacity: all inserted, 0 and 2 evicted.
        assert_eq!(a[3].admitted, vec![3, 4, 5]);
        let mut ev = a[3].evicted.clone();
        ev.sort();
        assert_eq!(ev, vec![0, 2]);
    }

    /// Random masks of varying size and skew, capacities from below one mask to above all units:
    /// the histogram LFU gives the same hits, misses and victims as the list-walking one.
    #[test]
    fn lfu_equals_the_list_walking_reference() {
        let mut next = crate::testing::xorshift(0x9e37_79b9_7f4a_7c15u64);
        for case in 0..60 {
            let units = 1 + (next() % 64) as usize;
            let capacity = (next() % (units as u64 + 4)) as usize;
            let (mut fast, mut slow) = (Lfu::new(units, capacity), LfuLists::new(units, capacity));
            for t in 0..80u64 {
                let p = next() % 100;
                let skew = 1 + next() % 3;
                let set: Vec<u32> = (0..units as u32)
                    .filter(|&u| next() % 100 < p / (1 + u as u64 * skew / units as u64))
                    .collect();
                let (a, mut b) = (fast.access(t, &set), slow.access(t, &set));
                b.evicted.sort_unstable();
                assert_eq!(a, b, "case {case} token {t}");
                crate::testing::assert_same_contents(&fast, &slow, units);
            }
        }
    }

    /// Random sets made of runs of varying length: the run-keeping LRU gives the same hits,
    /// misses, admissions and victims (in the same order) as the list one.
    #[test]
    fn run_lru_equals_the_list_lru() {
        let mut next = crate::testing::xorshift(0x2545_f491_4f6c_dd1du64);
        for case in 0..80 {
            let units = 1 + (next() % 200) as usize;
            let capacity = (next() % (units as u64 + 8)) as usize;
            let (mut fast, mut slow) = (RunLru::new(units, capacity), Lru::new(units, capacity));
            for t in 0..60u64 {
                let mut set = Vec::new();
                let mut u = (next() % 8) as u32;
                while (u as usize) < units {
                    let len = 1 + (next() % [2, 10, 60][case % 3]) as u32;
                    set.extend(u..(u + len).min(units as u32));
                    u += len + (next() % 20) as u32;
                }
                let (a, b) = (fast.access(t, &set), slow.access(t, &set));
                assert_eq!(a, b, "case {case} token {t}");
                crate::testing::assert_same_contents(&fast, &slow, units);
            }
        }
    }

    #[test]
    fn lfu_admit_refuses_units_used_less_than_the_coldest_cached() {
        let mut c = LfuAdmit::new(8, 1);
        let a = run(&mut c, &[&[0], &[0], &[1], &[1], &[1]]);
        assert_eq!(a[0].admitted, vec![0]);
        // Unit 1 at count 1 vs cached 0 at count 2: loaded on demand, not admitted.
        assert!(a[2].admitted.is_empty() && a[2].misses == vec![1]);
        // Count 2 is not more than 2: still refused; count 3 replaces 0.
        assert!(a[3].admitted.is_empty());
        assert_eq!(
            (a[4].admitted.clone(), a[4].evicted.clone()),
            (vec![1], vec![0])
        );
    }

    #[test]
    fn belady_evicts_the_farthest_next_use() {
        let future: Vec<Vec<u32>> = vec![vec![0], vec![1], vec![2], vec![0], vec![1]];
        let mut c = Belady::new(4, 2, &future);
        let a: Vec<Access> = future
            .iter()
            .enumerate()
            .map(|(t, s)| c.access(t as u64, s))
            .collect();
        // At token 2, cache {0, 1}: 0 is next used at 3, 1 at 4: evict 1.
        assert_eq!(a[2].evicted, vec![1]);
        assert_eq!(a[3].hits, vec![0]);
        // Belady's misses: 0, 1, 2, 1 = 4; LRU on the same sequence misses all 5.
        let misses: usize = a.iter().map(|x| x.misses.len()).sum();
        assert_eq!(misses, 4);
        let mut lru = Lru::new(4, 2);
        let lm: usize = future
            .iter()
            .enumerate()
            .map(|(t, s)| lru.access(t as u64, s).misses.len())
            .sum();
        assert_eq!(lm, 5);
    }
}
