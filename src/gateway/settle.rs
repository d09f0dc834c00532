//! Settling a metered request's reservation, once, whatever becomes of the request.
//!
//! A request of a metered group (`metered.rs`) reserves its estimate at step 5 of the
//! middleware. This file turns that reservation into the usage the upstream reports:
//!
//! * **At the response head**, when the usage is known there: the group's usage reader
//!   ([`Metering::set_usage_reader`]) if one is set and it answers, else `usage_header`. The
//!   response's rate-limit headers then show the units left after the settle.
//! * **At the end of the body**, when the head does not say and the group has a
//!   `usage_trailer` or a stream meter ([`Metering::set_stream_meter`]): the body is passed on
//!   frame by frame, the meter counts the units of each data frame, and the trailer settles it
//!   as it goes by. A body that ends without the trailer is settled with what the meter
//!   counted, or with the estimate when the group has no meter.
//! * **When the body is dropped before its end** (the client went away, the connection broke,
//!   the upstream's body failed): settled with what was streamed, as the group's stream meter
//!   counted it; with the estimate when the group has no meter (the usage is never known).
//! * **Before the upstream is called** (a 412 of `If-Match`, or the request's future dropped):
//!   settled with 0: the upstream did nothing. After it was called but before its head (the
//!   upstream failed, the client went away): with the estimate.
//!
//! A missing or unreadable usage is settled with the estimate and counted ([`Metering`]). A
//! settle the backend refuses or fails leaves the estimate counted (conservative) and is counted
//! too. A replay of an idempotent request reserves nothing, so it is never charged again.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::response::Parts;
use http::HeaderName;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::RwLock;

use super::body::{BoxError, GatewayBody};
use super::metered::{usage_in, Metered, Usage};
use super::metrics;
use super::policy::RateKey;
use crate::debit::Reservation;
use crate::{Backend, Decision, Limits};

/// What a settlement needs of its gateway: where the reservation lives, the time, and the
/// counts. The gateway (`middleware.rs`) implements it; this file does not name the gateway,
/// which names it.
pub(super) trait Site: Send + Sync {
    /// The backend holding a reservation: the fallback's store for one made there
    /// (local-only).
    fn settle_backend(&self, local: bool) -> &dyn Backend;
    /// The gateway's backend's time.
    fn now_ms(&self) -> u64;
    /// The gateway's metering.
    fn metering(&self) -> &Metering;
}

/// A usage reader: the units a response head reports, `None` when it does not say.
type UsageFn = Arc<dyn Fn(&Parts) -> Option<u32> + Send + Sync>;

/// A stream meter: the units one data frame of a response body carries.
type MeterFn = Arc<dyn Fn(&[u8]) -> u32 + Send + Sync>;

/// How a reservation was settled, for [`Metering`] and `tollgate_metered_settles_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum How {
    /// With the usage the response reported.
    Reported,
    /// With the estimate: the response did not say.
    Missing,
    /// With the estimate: the response said something that is not a number of units.
    Invalid,
    /// With the estimate: the body was dropped before its end, or the upstream failed.
    Dropped,
    /// With 0: the upstream was never called.
    NotCalled,
    /// With what the group's stream meter counted: the body ended without a usage, or was
    /// dropped before its end.
    Streamed,
}

impl How {
    fn as_str(self) -> &'static str {
        match self {
            How::Reported => "reported",
            How::Missing => "missing",
            How::Invalid => "invalid",
            How::Dropped => "dropped",
            How::NotCalled => "not_called",
            How::Streamed => "streamed",
        }
    }
}

/// The metered groups' side of a gateway (`Gateway::metering()`): the usage readers set in
/// code, and counts of how reservations were settled (a settle the backend refused or failed
/// is counted as [`Metering::failed`] only).
#[derive(Default)]
pub struct Metering {
    readers: RwLock<HashMap<Box<str>, UsageFn>>,
    meters: RwLock<HashMap<Box<str>, MeterFn>>,
    counts: [AtomicU64; 6],
    failed: AtomicU64,
}

impl fmt::Debug for Metering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metering")
            .field("readers", &self.readers.read().len())
            .field("meters", &self.meters.read().len())
            .field("reported", &self.reported())
            .field("estimated", &(self.missing() + self.invalid()))
            .field("dropped", &self.dropped())
            .field("failed", &self.failed())
            .finish_non_exhaustive()
    }
}

impl Metering {
    /// Read the usage of group `group`'s responses with `reader`, in code: it sees the
    /// response head, and its answer wins over the group's `usage_header` (`None`: it does
    /// not know; then `usage_header`, then `usage_trailer`). Replaces any reader of the group;
    /// kept across policy reloads (it is looked up by name). It runs on the request's task:
    /// keep it quick.
    ///
    /// ```
    /// use tollgate::gateway::{Gateway, Policy};
    /// use tollgate::{Options, Store};
    ///
    /// let policy = Policy::from_toml_str(r#"
    ///     [[group]]
    ///     name = "chat"
    ///     route = "/v1/*"
    ///     windows = [{ limit = 1000, window = "60s" }]
    ///     [group.metered]
    ///     unit = "tokens"
    ///     estimate = 100
    /// "#)?;
    /// let gateway = Gateway::new(Store::open_in_memory(Options::default())?, policy);
    /// // This upstream says `x-usage: prompt=12, completion=30`: the request used 42 tokens.
    /// gateway.metering().set_usage_reader("chat", |head| {
    ///     let v = head.headers.get("x-usage")?.to_str().ok()?;
    ///     v.split(',').try_fold(0u32, |n, part| {
    ///         n.checked_add(part.split_once('=')?.1.trim().parse().ok()?)
    ///     })
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_usage_reader(
        &self,
        group: &str,
        reader: impl Fn(&Parts) -> Option<u32> + Send + Sync + 'static,
    ) {
        self.readers.write().insert(group.into(), Arc::new(reader));
    }

    /// Remove group `group`'s usage reader.
    pub fn clear_usage_reader(&self, group: &str) {
        self.readers.write().remove(group);
    }

    fn reader(&self, group: &str) -> Option<UsageFn> {
        self.readers.read().get(group).cloned()
    }

    /// Count the units of group `group`'s streamed responses with `meter`, in code: it sees
    /// each data frame of a body whose head did not report its usage, and says how many units
    /// the frame carries (the bytes, the tokens of a server-sent event). A body that ends
    /// without a `usage_trailer`, or that is dropped before its end (the client went away), is
    /// settled with the sum: what was streamed. A trailer that reports the usage still wins.
    /// Replaces any meter of the group; kept across policy reloads. It runs on the body's
    /// task for every frame: keep it quick.
    ///
    /// ```
    /// use tollgate::gateway::{Gateway, Policy};
    /// use tollgate::{Options, Store};
    ///
    /// let policy = Policy::from_toml_str(r#"
    ///     [[group]]
    ///     name = "downloads"
    ///     route = "/files/*"
    ///     windows = [{ limit = 4000000, window = "1h" }]
    ///     [group.metered]
    ///     unit = "bytes"
    ///     estimate = 65536
    /// "#)?;
    /// let gateway = Gateway::new(Store::open_in_memory(Options::default())?, policy);
    /// // Charge the bytes actually sent, also when the client goes away halfway.
    /// gateway
    ///     .metering()
    ///     .set_stream_meter("downloads", |frame| u32::try_from(frame.len()).unwrap_or(u32::MAX));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_stream_meter(
        &self,
        group: &str,
        meter: impl Fn(&[u8]) -> u32 + Send + Sync + 'static,
    ) {
        self.meters.write().insert(group.into(), Arc::new(meter));
    }

    /// Remove group `group`'s stream meter.
    pub fn clear_stream_meter(&self, group: &str) {
        self.meters.write().remove(group);
    }

    fn meter(&self, group: &str) -> Option<MeterFn> {
        self.meters.read().get(group).cloned()
    }

    fn count(&self, how: How) -> u64 {
        self.counts
            .get(how as usize)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Reservations settled with the usage their response reported.
    pub fn reported(&self) -> u64 {
        self.count(How::Reported)
    }

    /// Reservations settled with their estimate because the response did not say its usage.
    pub fn missing(&self) -> u64 {
        self.count(How::Missing)
    }

    /// Reservations settled with their estimate because the response's usage was not a
    /// whole number.
    pub fn invalid(&self) -> u64 {
        self.count(How::Invalid)
    }

    /// Reservations settled with their estimate because the body was dropped before its end
    /// (or the upstream failed after it was called).
    pub fn dropped(&self) -> u64 {
        self.count(How::Dropped)
    }

    /// Reservations settled with 0 because the upstream was never called.
    pub fn not_called(&self) -> u64 {
        self.count(How::NotCalled)
    }

    /// Reservations settled with what their group's stream meter counted (the body ended
    /// without reporting its usage, or was dropped before its end).
    pub fn streamed(&self) -> u64 {
        self.count(How::Streamed)
    }

    /// Settles the backend refused or failed (the estimate stays counted).
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn record(&self, group: &str, how: How, ok: bool) {
        let n = if ok {
            self.counts.get(how as usize)
        } else {
            Some(&self.failed)
        };
        if let Some(n) = n {
            n.fetch_add(1, Ordering::Relaxed);
        }
        metrics::settled(group, how.as_str(), ok);
    }
}

/// A reservation to settle once: explicitly, or when dropped.
pub(super) struct Settlement<G: Site + 'static> {
    gw: Arc<G>,
    /// Whether the reservation lives in the fallback's store (local-only).
    local: bool,
    key: RateKey,
    limits: Limits,
    group: Box<str>,
    reservation: Option<Reservation>,
    /// Whether the upstream was called: a drop settles the estimate then, else 0.
    called: bool,
}

impl<G: Site + 'static> Settlement<G> {
    pub(super) fn new(
        gw: Arc<G>,
        local: bool,
        key: RateKey,
        limits: Limits,
        group: &str,
        reservation: Reservation,
    ) -> Settlement<G> {
        Settlement {
            gw,
            local,
            key,
            limits,
            group: group.into(),
            reservation: Some(reservation),
            called: false,
        }
    }

    /// The upstream is being called: from now on a drop charges the estimate.
    pub(super) fn upstream_called(&mut self) {
        self.called = true;
    }

    fn estimate(&self) -> u32 {
        self.reservation.as_ref().map_or(0, Reservation::estimate)
    }

    /// Settle with `actual`; the state after it, if the backend answered.
    fn settle(&mut self, actual: u32, how: How) -> Option<Decision> {
        let r = self.reservation.take()?;
        let store = self.gw.settle_backend(self.local);
        let now = self.gw.now_ms();
        let done = metrics::call("settle", || {
            store.settle_at(self.key.as_bytes(), &self.limits, &r, actual, now)
        });
        self.gw.metering().record(&self.group, how, done.is_ok());
        done.ok()
    }
}

impl<G: Site + 'static> Drop for Settlement<G> {
    fn drop(&mut self) {
        if self.reservation.is_some() {
            if self.called {
                let estimate = self.estimate();
                self.settle(estimate, How::Dropped);
            } else {
                self.settle(0, How::NotCalled);
            }
        }
    }
}

/// At the response head: settle with the usage it reports, or pass the body on to be settled
/// at its end (a `usage_trailer`), or settle with the estimate. The body to send, and the
/// state after the settle when it happened here.
pub(super) fn at_head<G: Site + 'static>(
    mut s: Settlement<G>,
    metered: &Metered,
    parts: &Parts,
    body: GatewayBody,
) -> (GatewayBody, Option<Decision>) {
    let read = s.gw.metering().reader(&s.group).and_then(|f| f(parts));
    let usage = read.map_or_else(|| metered.usage_in_head(&parts.headers), Usage::Reported);
    let estimate = s.estimate();
    let meter = s.gw.metering().meter(&s.group);
    let watch = metered.usage_trailer().is_some() || meter.is_some();
    let settled = match usage {
        Usage::Reported(n) => s.settle(n, How::Reported),
        Usage::Invalid => s.settle(estimate, How::Invalid),
        Usage::Missing if watch && !body.is_end_stream() => {
            let watched = MeteredBody {
                inner: body,
                trailer: metered.usage_trailer().cloned(),
                meter,
                streamed: 0,
                settlement: s,
            };
            return (watched.boxed_unsync(), None);
        }
        Usage::Missing => s.settle(estimate, How::Missing),
    };
    (body, settled)
}

/// A response body whose trailer, or whose stream meter's count, settles its request's
/// reservation.
struct MeteredBody<G: Site + 'static> {
    inner: GatewayBody,
    trailer: Option<HeaderName>,
    meter: Option<MeterFn>,
    /// The units the meter counted so far.
    streamed: u32,
    settlement: Settlement<G>,
}

impl<G: Site + 'static> MeteredBody<G> {
    /// Settle a body that ended, or was dropped, without reporting its usage: with what the
    /// meter counted, else with the estimate (counted as `how`).
    fn settle_unreported(&mut self, how: How) {
        if self.meter.is_some() {
            let n = self.streamed;
            self.settlement.settle(n, How::Streamed);
        } else {
            let e = self.settlement.estimate();
            self.settlement.settle(e, how);
        }
    }
}

impl<G: Site + 'static> Drop for MeteredBody<G> {
    fn drop(&mut self) {
        // A consumer may stop at `is_end_stream` without asking for the end: that is the end.
        // Dropped before it: what was streamed, if metered (else the settlement's own drop
        // charges the estimate).
        if self.inner.is_end_stream() {
            self.settle_unreported(How::Missing);
        } else if self.meter.is_some() {
            self.settle_unreported(How::Dropped);
        }
    }
}

impl<G: Site + 'static> Body for MeteredBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(meter)) = (f.data_ref(), &this.meter) {
                    this.streamed = this.streamed.saturating_add(meter(data));
                }
                let reported = f
                    .trailers_ref()
                    .map_or(Usage::Missing, |t| usage_in(this.trailer.as_ref(), t));
                match reported {
                    Usage::Reported(n) => {
                        this.settlement.settle(n, How::Reported);
                    }
                    Usage::Invalid => {
                        let e = this.settlement.estimate();
                        this.settlement.settle(e, How::Invalid);
                    }
                    Usage::Missing => {}
                }
            }
            // The end without the trailer.
            None => this.settle_unreported(How::Missing),
            // A failed body is dropped: the drop settles it.
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
