//! Limits: "N requests per window", and validated sets of them.

use std::sync::OnceLock;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::window::sliding::{self, Slide};
use crate::window::{places, At};

/// The default number of sub-windows ([`crate::Options::sub_windows`]).
pub(crate) const DEFAULT_SUB_WINDOWS: u32 = sliding::DEFAULT_B;

/// The most windows a [`Limits`] set may hold.
pub const MAX_WINDOWS: usize = 4;
/// The largest limit of a window in the default (sub-window counter) representation.
pub const MAX_BUCKETED_LIMIT: u32 = sliding::MAX_LIMIT;
/// The largest limit of a metered window ([`Limit::metered`]): its counters are two bits wider.
pub const MAX_METERED_LIMIT: u32 = sliding::MAX_LIMIT >> METERED_EXTRA_BITS;
/// How much wider a metered window's counters are than its limit needs.
const METERED_EXTRA_BITS: u32 = 2;
/// The largest limit of a window in the exact (timestamp log) representation.
pub const MAX_EXACT_LIMIT: u32 = 64;
/// The shortest window: one second.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window: 180 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(180 * 24 * 3600);

/// Windows longer than this must be whole seconds (the file stores longer windows in seconds).
const MAX_MS_ENCODED: u64 = (1 << 24) - 1;

/// How a window counts its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// `B` sub-window counters (64 by default, [`crate::Options::sub_windows`]), each as wide
    /// as the limit needs (the default). Never admits more than the limit in any interval of
    /// the window's length; releases quota at most one sub-window (`⌈W/B⌉` ms) plus `B` ms
    /// late (see `docs/ACCURACY.md`). Limits up to [`MAX_BUCKETED_LIMIT`].
    Bucketed,
    /// A log of the timestamps of admitted requests: exact both ways. Limits up to
    /// [`MAX_EXACT_LIMIT`]; meant for small limits such as 5 logins per minute.
    Exact,
}

/// One window: at most `limit` units of cost in any interval of length `window`.
///
/// ```
/// use tollgate::Limit;
/// let per_minute = Limit::per_minute(60);
/// assert_eq!(per_minute.limit(), 60);
/// assert_eq!(per_minute.window().as_secs(), 60);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    limit: u32,
    window_ms: u64,
    mode: Mode,
    metered: bool,
}

impl Limit {
    /// `limit` per `window`, counted with sub-window counters. Validated when it is put into a
    /// [`Limits`] set.
    pub fn new(limit: u32, window: Duration) -> Limit {
        Limit {
            limit,
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            mode: Mode::Bucketed,
            metered: false,
        }
    }

    /// `limit` per second.
    pub fn per_second(limit: u32) -> Limit {
        Limit::new(limit, Duration::from_secs(1))
    }

    /// `limit` per minute.
    pub fn per_minute(limit: u32) -> Limit {
        Limit::new(limit, Duration::from_secs(60))
    }

    /// `limit` per hour.
    pub fn per_hour(limit: u32) -> Limit {
        Limit::new(limit, Duration::from_secs(3600))
    }

    /// `limit` per day.
    pub fn per_day(limit: u32) -> Limit {
        Limit::new(limit, Duration::from_secs(86_400))
    }

    /// The same limit, counted exactly with a log of timestamps (limits up to
    /// [`MAX_EXACT_LIMIT`]).
    pub fn exact(self) -> Limit {
        Limit {
            mode: Mode::Exact,
            ..self
        }
    }

    /// The same limit for costs known only after the request ([`crate::debit`]): its counters
    /// are two bits wider than the limit needs, so that a settled cost above its estimate can
    /// be counted past the limit (an overdraft) up to at least three times the limit. Limits
    /// up to [`MAX_METERED_LIMIT`]; sliding windows only. Any sliding window can be reserved
    /// and settled; one that is not metered counts an overdraft only up to its counters' room
    /// (`2^bits - 1 - limit`, which can be 0).
    pub fn metered(self) -> Limit {
        Limit {
            metered: true,
            ..self
        }
    }

    /// Whether the window is [`Limit::metered`].
    pub fn is_metered(&self) -> bool {
        self.metered
    }

    /// The number of units of cost allowed per window.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window's length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// The window's length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// How the window counts.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    fn validate(&self) -> Result<()> {
        if self.limit == 0 {
            return Err(Error::InvalidLimit("a limit must be at least 1"));
        }
        let min = MIN_WINDOW.as_millis() as u64;
        let max = MAX_WINDOW.as_millis() as u64;
        if self.window_ms < min {
            return Err(Error::InvalidLimit("a window must be at least 1 second"));
        }
        if self.window_ms > max {
            return Err(Error::InvalidLimit("a window must be at most 180 days"));
        }
        if self.window_ms > MAX_MS_ENCODED && !self.window_ms.is_multiple_of(1000) {
            return Err(Error::InvalidLimit(
                "a window longer than 4 hours must be a whole number of seconds",
            ));
        }
        match self.mode {
            Mode::Bucketed if self.limit > MAX_BUCKETED_LIMIT => Err(Error::InvalidLimit(
                "a limit must be at most 16777215 per window (use a shorter window)",
            )),
            Mode::Exact if self.limit > MAX_EXACT_LIMIT => Err(Error::InvalidLimit(
                "an exact limit must be at most 64 per window",
            )),
            Mode::Exact if self.metered => {
                Err(Error::InvalidLimit("an exact window cannot be metered"))
            }
            Mode::Bucketed if self.metered && self.limit > MAX_METERED_LIMIT => Err(
                Error::InvalidLimit("a metered limit must be at most 4194303 per window"),
            ),
            _ => Ok(()),
        }
    }

    /// The 32-bit descriptor stored in an entry for this window (see `docs/FORMAT.md`).
    pub(crate) fn descriptor(&self) -> u32 {
        let (unit_s, value) = if self.window_ms > MAX_MS_ENCODED {
            (1u32, (self.window_ms / 1000) as u32)
        } else {
            (0u32, self.window_ms as u32)
        };
        let exact = u32::from(self.mode == Mode::Exact);
        let low = match self.mode {
            Mode::Exact => self.limit - 1,
            Mode::Bucketed => self.counter_bits(),
        };
        (exact << 31) | (unit_s << 30) | ((value & 0xFF_FFFF) << 6) | (low & 0x3F)
    }
}

impl Limit {
    /// The counter width of this (sliding) window: what the limit needs, plus the headroom of
    /// a metered window.
    pub(crate) fn counter_bits(&self) -> u32 {
        let extra = if self.metered { METERED_EXTRA_BITS } else { 0 };
        (sliding::counter_bits(self.limit) + extra).min(sliding::MAX_BITS)
    }

    /// The shape of this window with `b` sub-windows (`None` for an exact window or a value
    /// out of range).
    pub(crate) fn slide(&self, b: u32) -> Option<Slide> {
        match self.mode {
            Mode::Exact => None,
            Mode::Bucketed => {
                Slide::for_width(self.counter_bits(), self.window_ms, b)?.with_limit(self.limit)
            }
        }
    }
}

/// What a stored 32-bit window descriptor says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Descriptor {
    pub window_ms: u64,
    pub exact: bool,
    /// Ring capacity of an exact window (0 for sliding windows).
    pub cap: u32,
    /// Counter width of a sliding window, in bits (0 for exact windows).
    pub bits: u32,
}

impl Descriptor {
    /// Decode a descriptor; `None` if it cannot have been written by [`Limit::descriptor`].
    pub(crate) fn decode(d: u32) -> Option<Descriptor> {
        let exact = d >> 31 == 1;
        let unit_s = (d >> 30) & 1 == 1;
        let value = u64::from((d >> 6) & 0xFF_FFFF);
        let window_ms = if unit_s { value * 1000 } else { value };
        let low = d & 0x3F;
        let min = MIN_WINDOW.as_millis() as u64;
        let max = MAX_WINDOW.as_millis() as u64;
        if window_ms < min || window_ms > max {
            return None;
        }
        let (cap, bits) = if exact { (low + 1, 0) } else { (0, low) };
        if cap > MAX_EXACT_LIMIT || (!exact && !(1..=sliding::MAX_BITS).contains(&bits)) {
            return None;
        }
        Some(Descriptor {
            window_ms,
            exact,
            cap,
            bits,
        })
    }

    /// The shape of a sliding window with `b` sub-windows (`None` for an exact window, or `b`
    /// out of range).
    pub(crate) fn slide(&self, b: u32) -> Option<Slide> {
        if self.exact {
            return None;
        }
        Slide::for_width(self.bits, self.window_ms, b)
    }

    /// Number of 8-byte state words this window occupies in an entry of a store with `b`
    /// sub-windows per window (0 if `b` is out of range).
    pub(crate) fn words(&self, b: u32) -> usize {
        let (head, ring) = self.parts(b);
        head + ring
    }

    /// The words of this window's head part and of its ring part (see [`crate::window::At`]):
    /// an exact window's meta word and ring are all head part; a sliding window's head part is
    /// its head and base words. `(0, 0)` if `b` is out of range.
    pub(crate) fn parts(&self, b: u32) -> (usize, usize) {
        if self.exact {
            (1 + self.cap as usize, 0)
        } else {
            self.slide(b)
                .map_or((0, 0), |s| (s.head_words(), s.ring_words()))
        }
    }
}

/// The words of window `l`'s head part and ring part in an entry (see [`crate::window::At`]),
/// given its shape if it is a sliding one: [`Descriptor::parts`] for a limit.
fn window_parts(slide: Option<&Slide>, l: &Limit) -> (usize, usize) {
    match slide {
        Some(g) => (g.head_words(), g.ring_words()),
        None => (1 + l.limit as usize, 0),
    }
}

/// A set's shapes and places for one number of sub-windows per window.
#[derive(Debug, Clone)]
struct Shaped {
    slides: [Option<Slide>; MAX_WINDOWS],
    rel_at: [At; MAX_WINDOWS],
    state_words: u16,
}

impl Shaped {
    /// The shapes of `limits`' sliding windows with `b` sub-windows (`None` for exact ones),
    /// where each window lies from the first state word, and how many state words they take.
    fn new(limits: &[Limit], b: u32) -> Shaped {
        let mut slides = [None; MAX_WINDOWS];
        let mut parts = [(0usize, 0usize); MAX_WINDOWS];
        for ((g, p), l) in slides.iter_mut().zip(parts.iter_mut()).zip(limits) {
            *g = l.slide(b);
            *p = window_parts(g.as_ref(), l);
        }
        let (rel_at, words) = places(parts.get(..limits.len()).unwrap_or(&[]));
        Shaped {
            slides,
            rel_at,
            state_words: u16::try_from(words).unwrap_or(u16::MAX),
        }
    }
}

/// The slot of `b` in [`Limits`]' table of other numbers of sub-windows (`b` clamped into
/// `MIN_B..=MAX_B`, which every store's is).
#[inline]
fn other_slot(b: u32) -> usize {
    (b.clamp(sliding::MIN_B, sliding::MAX_B) - sliding::MIN_B) as usize
}

/// The sliding windows' shapes of a [`Limits`] for one store (see [`Limits::shapes`]),
/// borrowed from the set: one pointer, whatever the number of sub-windows.
#[derive(Clone, Copy)]
pub(crate) struct Shapes<'a>(&'a [Option<Slide>; MAX_WINDOWS]);

impl Shapes<'_> {
    /// The shape of window `i` (`None` for an exact window).
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<&Slide> {
        self.all().get(i)?.as_ref()
    }

    /// Every window's shape, as one array: a loop over the windows indexes it directly, with
    /// no variant to match on every window.
    #[inline]
    pub(crate) fn all(&self) -> &[Option<Slide>; MAX_WINDOWS] {
        self.0
    }
}

/// A validated set of limits checked together: a request is admitted only if every window has
/// room for its cost, and a rejected request consumes nothing in any window.
///
/// Build it once (at policy load) and reuse it for every check: building validates, checking
/// does not allocate.
///
/// ```
/// use tollgate::{Limit, Limits};
/// let limits = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
/// assert_eq!(limits.len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct Limits {
    items: [Limit; MAX_WINDOWS],
    descriptors: [u32; MAX_WINDOWS],
    /// The descriptors as an entry stores them: two per word.
    desc_words: [u64; MAX_WINDOWS.div_ceil(2)],
    /// The windows' shapes and places with the default number of sub-windows, so checks do
    /// not divide.
    base: Shaped,
    /// The same for the other numbers of sub-windows (`MIN_B..=MAX_B`, one slot each), each
    /// worked out on the first check of a store with that number and kept: a store opened
    /// with `Options::sub_windows` then checks as cheaply as one with the default, and no
    /// check works them out twice. The table (4 KiB) is made on the first such check.
    other: OnceLock<Box<[OnceLock<Box<Shaped>>]>>,
    len: u8,
    min_limit: u32,
    has_exact: bool,
    /// [`Limits::fingerprint`], worked out once.
    fingerprint: u32,
}

impl PartialEq for Limits {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Limits {}

impl std::hash::Hash for Limits {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl Limits {
    /// Validate a set of 1 to [`MAX_WINDOWS`] limits with distinct window lengths.
    pub fn new(limits: &[Limit]) -> Result<Limits> {
        if limits.is_empty() {
            return Err(Error::InvalidLimit("a limit set needs at least one window"));
        }
        if limits.len() > MAX_WINDOWS {
            return Err(Error::InvalidLimit("a limit set holds at most 4 windows"));
        }
        let mut items = [Limit::new(1, MIN_WINDOW); MAX_WINDOWS];
        let mut descriptors = [0u32; MAX_WINDOWS];
        let mut min_limit = u32::MAX;
        let mut has_exact = false;
        for (i, l) in limits.iter().enumerate() {
            l.validate()?;
            if limits.iter().take(i).any(|o| o.window_ms == l.window_ms) {
                return Err(Error::InvalidLimit(
                    "two windows of a set have the same length",
                ));
            }
            if l.mode == Mode::Bucketed && l.slide(DEFAULT_SUB_WINDOWS).is_none() {
                return Err(Error::InvalidLimit("a window must be 1 second to 180 days"));
            }
            if let (Some(slot), Some(d)) = (items.get_mut(i), descriptors.get_mut(i)) {
                *slot = *l;
                *d = l.descriptor();
            }
            min_limit = min_limit.min(l.limit);
            has_exact |= l.mode == Mode::Exact;
        }
        let mut desc_words = [0u64; MAX_WINDOWS.div_ceil(2)];
        for (w, pair) in desc_words.iter_mut().zip(descriptors.chunks(2)) {
            let lo = u64::from(pair.first().copied().unwrap_or(0));
            let hi = u64::from(pair.get(1).copied().unwrap_or(0));
            *w = lo | (hi << 32);
        }
        Ok(Limits {
            items,
            descriptors,
            desc_words,
            base: Shaped::new(limits, DEFAULT_SUB_WINDOWS),
            other: OnceLock::new(),
            len: limits.len() as u8,
            min_limit,
            has_exact,
            fingerprint: fingerprint_of(limits),
        })
    }

    /// The limits of the set, in the order given.
    pub fn as_slice(&self) -> &[Limit] {
        self.items.get(..self.len as usize).unwrap_or(&[])
    }

    /// Number of windows in the set.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: a set has at least one window.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The smallest limit of the set.
    pub fn min_limit(&self) -> u32 {
        self.min_limit
    }

    pub(crate) fn descriptors(&self) -> &[u32] {
        self.descriptors.get(..self.len as usize).unwrap_or(&[])
    }

    /// The shape of sliding window `i` in a store with `b` sub-windows per window (`None` for
    /// an exact window).
    #[cfg(feature = "redis")]
    pub(crate) fn slide(&self, i: usize, b: u32) -> Option<Slide> {
        self.shapes(b).get(i).copied()
    }

    /// The shapes and places for a store with `b` sub-windows per window: the set's own for
    /// the default, else the ones kept for `b` (worked out on the first check that asks).
    #[inline]
    fn shaped(&self, b: u32) -> &Shaped {
        if b == DEFAULT_SUB_WINDOWS {
            return &self.base;
        }
        match self
            .other
            .get()
            .and_then(|t| t.get(other_slot(b)))
            .and_then(OnceLock::get)
        {
            Some(o) => o,
            None => self.shaped_first(b),
        }
    }

    /// [`Limits::shaped`] the first time a store with `b` sub-windows asks: out of line, so
    /// that the compiler cannot hoist it onto the check's path.
    #[cold]
    #[inline(never)]
    fn shaped_first(&self, b: u32) -> &Shaped {
        // Every store's `b` is in range (`Options` checks it when the store opens); were one
        // not, it would get the nearest one's shapes, never another's from its slot.
        let b = b.clamp(sliding::MIN_B, sliding::MAX_B);
        let table = self.other.get_or_init(|| {
            (sliding::MIN_B..=sliding::MAX_B)
                .map(|_| OnceLock::new())
                .collect()
        });
        match table.get(other_slot(b)) {
            Some(slot) => slot.get_or_init(|| Box::new(Shaped::new(self.as_slice(), b))),
            // Not reached: the table has a slot for every `b` in range.
            None => &self.base,
        }
    }

    /// The shapes of the set's sliding windows in a store with `b` sub-windows per window,
    /// borrowed (no copy on the check path).
    #[inline]
    pub(crate) fn shapes(&self, b: u32) -> Shapes<'_> {
        Shapes(&self.shaped(b).slides)
    }

    /// The descriptor words an entry for this set holds (`len.div_ceil(2)` of them).
    #[inline]
    pub(crate) fn desc_words(&self) -> &[u64] {
        self.desc_words.get(..self.len().div_ceil(2)).unwrap_or(&[])
    }

    /// Where every window's head part and ring part are, from the first state word, in a
    /// store with `b` sub-windows per window (entries past the set's windows are zero),
    /// borrowed; and how many state words the windows take in all (what an entry holds after
    /// its key). Both from one look-up of the shapes: a check needs both.
    #[inline]
    pub(crate) fn rel_offsets(&self, b: u32) -> (&[At; MAX_WINDOWS], usize) {
        let s = self.shaped(b);
        (&s.rel_at, usize::from(s.state_words))
    }

    pub(crate) fn has_exact(&self) -> bool {
        self.has_exact
    }

    /// A checksum of the set that is the same in every process and build (a reservation
    /// carries it, so that it is settled against the windows it was counted in).
    pub(crate) fn fingerprint(&self) -> u32 {
        self.fingerprint
    }
}

/// crc32 of each window's limit, length, mode and metering ([`Limits::fingerprint`]).
fn fingerprint_of(limits: &[Limit]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for l in limits {
        h.update(&l.limit.to_le_bytes());
        h.update(&l.window_ms.to_le_bytes());
        h.update(&[u8::from(l.mode == Mode::Exact), u8::from(l.metered)]);
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_for_other_sub_windows_match_a_fresh_working_out() {
        let set = Limits::new(&[Limit::per_minute(60), Limit::per_hour(1000)]).unwrap();
        // Every number asked for is worked out once and kept, each in its own slot.
        for b in [
            32,
            128,
            32,
            16,
            DEFAULT_SUB_WINDOWS,
            32,
            sliding::MAX_B,
            128,
        ] {
            let want = Shaped::new(set.as_slice(), b);
            assert_eq!(set.shapes(b).all(), &want.slides, "b = {b}");
            assert_eq!(set.rel_offsets(b).0, &want.rel_at, "b = {b}");
            assert_eq!(
                set.rel_offsets(b).1,
                usize::from(want.state_words),
                "b = {b}"
            );
            assert!(want.slides.iter().take(2).all(Option::is_some));
        }
        let kept: Vec<u32> = set
            .other
            .get()
            .map(|t| {
                (sliding::MIN_B..)
                    .zip(t.iter())
                    .filter_map(|(b, o)| o.get().map(|_| b))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(kept, [16, 32, 128, sliding::MAX_B]);
        // Kept, not worked out again: the same place in memory each time.
        assert!(std::ptr::eq(set.shapes(128).all(), set.shapes(128).all()));
        // The two numbers really lay the windows out differently.
        assert_ne!(
            set.rel_offsets(32).1,
            set.rel_offsets(DEFAULT_SUB_WINDOWS).1
        );
    }

    #[test]
    fn descriptors_round_trip() {
        for l in [
            Limit::per_second(1),
            Limit::per_minute(60),
            Limit::per_hour(1000),
            Limit::per_day(65_535),
            Limit::per_minute(5).exact(),
            Limit::new(32, Duration::from_millis(1500)).exact(),
            Limit::new(7, MAX_WINDOW),
        ] {
            let d = Descriptor::decode(l.descriptor()).expect("valid descriptor");
            assert_eq!(d.window_ms, l.window_ms());
            assert_eq!(d.exact, l.mode() == Mode::Exact);
            if d.exact {
                assert_eq!(d.cap, l.limit());
            }
        }
    }

    #[test]
    fn bad_limits_are_typed_errors() {
        let bad = [
            Limit::per_minute(0),
            Limit::new(5, Duration::from_millis(999)),
            Limit::new(5, MAX_WINDOW + Duration::from_secs(1)),
            Limit::new(5, Duration::from_millis(5 * 3_600_000 + 1)),
            Limit::per_minute(MAX_BUCKETED_LIMIT + 1),
            Limit::per_minute(MAX_EXACT_LIMIT + 1).exact(),
        ];
        for l in bad {
            assert!(
                matches!(Limits::new(&[l]), Err(Error::InvalidLimit(_))),
                "{l:?}"
            );
        }
        assert!(matches!(Limits::new(&[]), Err(Error::InvalidLimit(_))));
        let nine: Vec<Limit> = (1..=5)
            .map(|i| Limit::new(5, Duration::from_secs(i)))
            .collect();
        assert!(matches!(Limits::new(&nine), Err(Error::InvalidLimit(_))));
        assert!(matches!(
            Limits::new(&[Limit::per_minute(5), Limit::per_minute(6)]),
            Err(Error::InvalidLimit(_))
        ));
    }

    #[test]
    fn garbage_descriptors_are_refused() {
        assert!(Descriptor::decode(0).is_none());
        assert!(Descriptor::decode(u32::MAX).is_none());
        // A sliding descriptor's low bits are its counter width: 0 or more than 24 bits cannot
        // have been written by us.
        assert!(Descriptor::decode(Limit::per_minute(5).descriptor() & !0x3F).is_none());
        assert!(Descriptor::decode(Limit::per_minute(5).descriptor() | 0x3F).is_none());
        let d = Descriptor::decode(Limit::per_minute(5).descriptor()).expect("valid");
        assert_eq!((d.bits, d.exact), (3, false));
        let e = Descriptor::decode(Limit::per_minute(64).exact().descriptor()).expect("valid");
        assert_eq!((e.cap, e.exact), (64, true));
    }
}
