//! Costs known only after the response: reserve an estimate, then settle the actual cost.
//!
//! A gateway in front of an LLM or a metered API learns a request's cost (tokens generated,
//! bytes sent, milliseconds of compute) when the upstream answers. It checks before the call
//! with an estimate and charges the real usage after it:
//!
//! 1. [`Backend::reserve`](crate::Backend::reserve) admits like a check when the estimate fits
//!    in every window and counts it, all or nothing, returning a [`Reservation`];
//! 2. [`Backend::settle`](crate::Backend::settle) turns the estimate into the actual cost. Less
//!    than the estimate: the difference goes back to the sub-windows it was counted in (quota
//!    the client can use at once; nothing goes back from a sub-window that has left the
//!    window). More: the extra is counted in the current sub-window even past the limit (an
//!    overdraft), and the key is refused until its usage is back under the limit.
//!
//! An estimate of 0 admits when any quota is left and counts nothing until the settle. A
//! reservation never settled (a crash, a timeout) keeps its estimate counted: conservative.
//!
//! **The bound** (`docs/ACCURACY.md`): for windows used with settle, no interval of the
//! window's length holds more than the limit plus the overdrafts of the requests settled in
//! it, each at most `actual - estimate` of its own request. An overdraft is counted only up to
//! the window's counters' room, which a [`Limit::metered`](crate::Limit::metered) window makes
//! at least three times its limit.
//!
//! A reservation can be settled once, until it expires (its TTL, [`DEFAULT_RESERVATION_TTL`]
//! unless given). The backend keeps a small guard record per open reservation (embedded: an
//! idempotency record under a scope of its own, living until the reservation expires; Redis:
//! a key with that expiry) and settling takes it first, so settling twice, or from two nodes at
//! once, is [`Error::ReservationSettled`] and nothing is
//! counted twice. The handle is plain data: [`Reservation::to_bytes`] and its `Display` /
//! `FromStr` text form let a gateway settle from another task, another node or after a
//! restart.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::decision::Decision;
use crate::error::{Error, Result};
use crate::idempotency::{record_key, Fingerprint, IdempotencyKey, RecordKey};
use crate::limit::{Limits, MAX_WINDOWS};

/// How long a reservation can be settled when no TTL is given: 15 minutes (long enough for a
/// streamed LLM answer, short enough that the guard records stay few).
pub const DEFAULT_RESERVATION_TTL: Duration = Duration::from_secs(15 * 60);

/// The longest TTL a reservation may have: one day.
pub const MAX_RESERVATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The bytes of a reservation's encoded form ([`Reservation::to_bytes`]).
pub const RESERVATION_BYTES: usize = 96;

/// The format byte of the encoded form.
const FORMAT: u8 = 1;

/// The idempotency scope of the embedded store's guard records: a first byte no gateway scope
/// has (scopes come from policy text).
pub(crate) const GUARD_SCOPE: &[u8] = b"\xfftollgate-reservation";

/// What [`Reservation::sub_window`] holds for a window in which nothing was counted.
const NOT_COUNTED: u64 = u64::MAX;

/// An estimate counted by [`Backend::reserve`](crate::Backend::reserve), to be settled once
/// with the actual cost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reservation {
    pub(crate) id: u128,
    /// The embedded store's guard record's fencing number (0 elsewhere).
    pub(crate) fence: u32,
    pub(crate) key_sum: u32,
    pub(crate) limits_sum: u32,
    pub(crate) estimate: u32,
    pub(crate) windows: u8,
    pub(crate) reserved_ms: u64,
    pub(crate) expires_ms: u64,
    /// The sub-window each window counted the estimate in ([`NOT_COUNTED`] if none).
    pub(crate) subs: [u64; MAX_WINDOWS],
}

impl Reservation {
    /// A new reservation of `estimate` for `key` and `limits`, made at `now_ms`, open for
    /// `ttl_ms`; `subs[i]` is the sub-window window `i` counted it in.
    pub(crate) fn new(
        key: &[u8],
        limits: &Limits,
        estimate: u32,
        now_ms: u64,
        ttl_ms: u64,
        subs: &[Option<u64>; MAX_WINDOWS],
    ) -> Reservation {
        // 64 random bits (a fresh seed per call) and a process-wide sequence number: unique
        // in a process, and across processes unless two 64-bit draws collide.
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let id = u128::from(crate::version::random_word()) << 64
            | u128::from(SEQ.fetch_add(1, Ordering::Relaxed));
        Reservation {
            id,
            fence: 0,
            key_sum: crc32fast::hash(key),
            limits_sum: limits.fingerprint(),
            estimate,
            windows: limits.len() as u8,
            reserved_ms: now_ms,
            expires_ms: now_ms.saturating_add(ttl_ms),
            subs: subs.map(|m| m.unwrap_or(NOT_COUNTED)),
        }
    }

    /// The same reservation, counted in sub-window `subs[i]` of window `i` (a store that learns
    /// them only once the estimate is counted, after the id named its guard).
    #[cfg(feature = "redis")]
    pub(crate) fn counted_in(self, subs: &[Option<u64>; MAX_WINDOWS]) -> Reservation {
        Reservation {
            subs: subs.map(|m| m.unwrap_or(NOT_COUNTED)),
            ..self
        }
    }

    /// The units counted when it was reserved.
    pub fn estimate(&self) -> u32 {
        self.estimate
    }

    /// When it was reserved (ms since the Unix epoch).
    pub fn reserved_ms(&self) -> u64 {
        self.reserved_ms
    }

    /// From when it can no longer be settled (ms since the Unix epoch).
    pub fn expires_ms(&self) -> u64 {
        self.expires_ms
    }

    /// Its 128-bit identity (random).
    pub fn id(&self) -> u128 {
        self.id
    }

    /// The sub-window window `i` counted the estimate in (`None` if nothing was counted
    /// there: an estimate of 0, a full store that admitted without counting).
    pub fn sub_window(&self, i: usize) -> Option<u64> {
        self.subs.get(i).copied().filter(|&m| m != NOT_COUNTED)
    }

    /// Whether it was made for `key` and `limits` (a settle against anything else is refused
    /// with [`Error::ReservationMismatch`]).
    pub fn is_for(&self, key: &[u8], limits: &Limits) -> bool {
        self.key_sum == crc32fast::hash(key)
            && self.limits_sum == limits.fingerprint()
            && usize::from(self.windows) == limits.len()
    }

    /// Refuse a settle of this reservation by `key` and `limits` at `now_ms` that cannot be
    /// right: another key or window set, or past its expiry. Every backend's settle starts
    /// here, before it touches anything stored.
    pub(crate) fn check_settle(&self, key: &[u8], limits: &Limits, now_ms: u64) -> Result<()> {
        // An empty or over-long key is not the key of any reservation: a mismatch too.
        if !self.is_for(key, limits) {
            return Err(Error::ReservationMismatch);
        }
        if now_ms >= self.expires_ms {
            return Err(Error::ReservationExpired {
                expires_ms: self.expires_ms,
            });
        }
        Ok(())
    }

    /// The embedded store's guard record's key: [`GUARD_SCOPE`] and the id.
    pub(crate) fn guard_key(&self) -> Result<RecordKey> {
        record_key(GUARD_SCOPE, &IdempotencyKey::from_raw(self.id))
    }

    /// The fingerprint of the guard record: what the reservation says of itself, so that a
    /// forged handle with a known id does not match.
    pub(crate) fn guard_fingerprint(&self) -> Fingerprint {
        let mut b = [0u8; 32];
        pack(
            &mut b,
            &[
                &self.key_sum.to_le_bytes(),
                &self.limits_sum.to_le_bytes(),
                &self.estimate.to_le_bytes(),
                &self.reserved_ms.to_le_bytes(),
                &self.expires_ms.to_le_bytes(),
            ],
        );
        Fingerprint::from_bytes(b)
    }

    /// The encoded form: [`RESERVATION_BYTES`] bytes, little-endian, with a crc32
    /// (`docs/FORMAT.md`, "Reservations").
    pub fn to_bytes(&self) -> [u8; RESERVATION_BYTES] {
        let mut b = [0u8; RESERVATION_BYTES];
        let s = self.subs.map(u64::to_le_bytes);
        pack(
            &mut b,
            &[
                &[FORMAT, self.windows, 0, 0],
                &self.fence.to_le_bytes(),
                &self.id.to_le_bytes(),
                &self.key_sum.to_le_bytes(),
                &self.limits_sum.to_le_bytes(),
                &self.estimate.to_le_bytes(),
                &[0; 4],
                &self.reserved_ms.to_le_bytes(),
                &self.expires_ms.to_le_bytes(),
                &s[0],
                &s[1],
                &s[2],
                &s[3],
            ],
        );
        let crc = crc32fast::hash(b.get(..88).unwrap_or(&[]));
        if let Some(d) = b.get_mut(88..92) {
            d.copy_from_slice(&crc.to_le_bytes());
        }
        b
    }

    /// Read the encoded form back; [`Error::InvalidReservation`] if it is not one (wrong
    /// length, format or checksum), never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Reservation> {
        let bad = Error::InvalidReservation;
        if bytes.len() != RESERVATION_BYTES {
            return Err(bad("a reservation is 96 bytes"));
        }
        let word = |at: usize| -> u64 {
            let mut w = [0u8; 8];
            if let Some(s) = bytes.get(at..at + 8) {
                w.copy_from_slice(s);
            }
            u64::from_le_bytes(w)
        };
        let half = |at: usize| -> u32 {
            let mut w = [0u8; 4];
            if let Some(s) = bytes.get(at..at + 4) {
                w.copy_from_slice(s);
            }
            u32::from_le_bytes(w)
        };
        if half(88) != crc32fast::hash(bytes.get(..88).unwrap_or(&[])) {
            return Err(bad("checksum mismatch"));
        }
        let head = half(0).to_le_bytes();
        if head[0] != FORMAT || head[2] != 0 || head[3] != 0 || half(92) != 0 || half(36) != 0 {
            return Err(bad("unknown reservation format"));
        }
        let windows = head[1];
        if windows == 0 || usize::from(windows) > MAX_WINDOWS {
            return Err(bad("a reservation covers 1 to 4 windows"));
        }
        let mut subs = [NOT_COUNTED; MAX_WINDOWS];
        for (i, m) in subs.iter_mut().enumerate() {
            *m = word(56 + 8 * i);
        }
        Ok(Reservation {
            windows,
            fence: half(4),
            id: u128::from(word(8)) | (u128::from(word(16)) << 64),
            key_sum: half(24),
            limits_sum: half(28),
            estimate: half(32),
            reserved_ms: word(40),
            expires_ms: word(48),
            subs,
        })
    }
}

/// Write `parts` one after the other from the start of `buf` (what does not fit is left out).
fn pack(buf: &mut [u8], parts: &[&[u8]]) {
    let mut at = 0;
    for p in parts {
        if let Some(d) = buf.get_mut(at..at + p.len()) {
            d.copy_from_slice(p);
        }
        at += p.len();
    }
}

/// The text form: the encoded bytes in lowercase hex (192 characters), fit for a header or a
/// database column.
impl fmt::Display for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.to_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Reservation {
    type Err = Error;

    fn from_str(s: &str) -> Result<Reservation> {
        let s = s.trim();
        if s.len() != 2 * RESERVATION_BYTES || !s.is_ascii() {
            return Err(Error::InvalidReservation("a reservation is 192 hex digits"));
        }
        let mut b = [0u8; RESERVATION_BYTES];
        for (i, d) in b.iter_mut().enumerate() {
            let pair = s.get(2 * i..2 * i + 2).unwrap_or("");
            *d = u8::from_str_radix(pair, 16)
                .map_err(|_| Error::InvalidReservation("a reservation is 192 hex digits"))?;
        }
        Reservation::from_bytes(&b)
    }
}

/// The answer to [`Backend::reserve`](crate::Backend::reserve): the decision, and the
/// reservation when it was admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Reserved {
    pub(crate) decision: Decision,
    pub(crate) reservation: Option<Reservation>,
}

impl Reserved {
    /// Whether the estimate was admitted (and counted).
    pub fn allowed(&self) -> bool {
        self.reservation.is_some()
    }

    /// What goes in the headers, as for a check of the estimate.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// The reservation to settle, when admitted.
    pub fn reservation(&self) -> Option<&Reservation> {
        self.reservation.as_ref()
    }

    /// The decision and the reservation.
    pub fn into_parts(self) -> (Decision, Option<Reservation>) {
        (self.decision, self.reservation)
    }
}

/// Refuse a TTL out of range (zero, or above [`MAX_RESERVATION_TTL`]); its milliseconds.
pub(crate) fn ttl_ms(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() || ttl > MAX_RESERVATION_TTL {
        return Err(Error::InvalidReservation(
            "a reservation's TTL must be 1 ms to 1 day",
        ));
    }
    Ok(ttl.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limit;

    fn sample() -> Reservation {
        let limits =
            Limits::new(&[Limit::per_minute(1000).metered(), Limit::per_day(50_000)]).unwrap();
        Reservation::new(
            b"k",
            &limits,
            500,
            1_000_000,
            60_000,
            &[Some(7), Some(9), None, None],
        )
    }

    #[test]
    fn the_encoded_and_text_forms_round_trip() {
        let r = sample();
        assert_eq!(Reservation::from_bytes(&r.to_bytes()).unwrap(), r);
        assert_eq!(r.to_string().parse::<Reservation>().unwrap(), r);
        assert_eq!(r.sub_window(0), Some(7));
        assert_eq!(r.sub_window(2), None);
        assert_eq!(r.expires_ms(), 1_060_000);
    }

    #[test]
    fn damaged_forms_are_typed_errors() {
        let r = sample();
        let b = r.to_bytes();
        for i in 0..RESERVATION_BYTES {
            let mut d = b;
            d[i] ^= 0x10;
            assert!(
                matches!(
                    Reservation::from_bytes(&d),
                    Err(Error::InvalidReservation(_))
                ),
                "byte {i}"
            );
        }
        assert!(Reservation::from_bytes(&b[..95]).is_err());
        assert!("zz".parse::<Reservation>().is_err());
        let mut s = r.to_string();
        s.replace_range(0..2, "é");
        assert!(s.parse::<Reservation>().is_err());
    }

    proptest::proptest! {
        /// Any bytes or text: a typed error or a reservation that encodes back to them,
        /// never a panic.
        #[test]
        fn any_input_decodes_or_is_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            text in "[0-9a-f]{0,200}",
        ) {
            if let Ok(r) = Reservation::from_bytes(&bytes) {
                proptest::prop_assert_eq!(&r.to_bytes()[..], &bytes[..]);
            }
            if let Ok(r) = text.parse::<Reservation>() {
                proptest::prop_assert_eq!(r.to_string(), text);
            }
        }

        /// A valid encoding with any fields round-trips, text and bytes.
        #[test]
        fn every_valid_reservation_round_trips(
            id in proptest::prelude::any::<u128>(),
            fence in proptest::prelude::any::<u32>(),
            sums in proptest::prelude::any::<(u32, u32, u32)>(),
            windows in 1u8..=4,
            times in proptest::prelude::any::<(u64, u64)>(),
            subs in proptest::prelude::any::<[u64; 4]>(),
        ) {
            let r = Reservation {
                id,
                fence,
                key_sum: sums.0,
                limits_sum: sums.1,
                estimate: sums.2,
                windows,
                reserved_ms: times.0,
                expires_ms: times.1,
                subs,
            };
            proptest::prop_assert_eq!(Reservation::from_bytes(&r.to_bytes()).unwrap(), r.clone());
            proptest::prop_assert_eq!(r.to_string().parse::<Reservation>().unwrap(), r);
        }
    }

    #[test]
    fn a_reservation_knows_its_key_and_windows() {
        let r = sample();
        let limits =
            Limits::new(&[Limit::per_minute(1000).metered(), Limit::per_day(50_000)]).unwrap();
        assert!(r.is_for(b"k", &limits));
        assert!(!r.is_for(b"other", &limits));
        let plain = Limits::new(&[Limit::per_minute(1000), Limit::per_day(50_000)]).unwrap();
        assert!(!r.is_for(b"k", &plain));
        assert!(matches!(
            r.check_settle(b"k", &limits, 1_060_000),
            Err(Error::ReservationExpired {
                expires_ms: 1_060_000
            })
        ));
        assert!(r.check_settle(b"k", &limits, 1_059_999).is_ok());
    }
}
