//! Step 5 of the middleware: the rate check of a request's group, or, for a metered group,
//! the reservation of its estimate, under the group's failure mode and shadow mode.
//!
//! Kept apart from `middleware.rs` (the order of the steps) because the two kinds of group
//! share their answers: the same 429, the same shadow record, the same failure modes; only the
//! backend call differs, and a metered one hands back a reservation to settle (`settle.rs`).

use http::{HeaderMap, Response};

use super::answer::{store_failure, unavailable, Ctx};
use super::body::GatewayBody;
use super::failure::{Calls, Outcome};
use super::metrics::{self, Refusal};
use super::shadow::ShadowLog;
use crate::debit::Reservation;
use crate::Decision;

/// What step 5 admitted: its decision (`None`: no group, or let through unchecked by
/// fail-open), and a metered group's reservation (and whether it lives in the fallback).
pub(super) type Checked = (Option<Decision>, Option<(Reservation, bool)>);

/// Step 5: the rate check of the request's group, with its cost, or a metered group's
/// reservation of its estimate (read from `headers`). A refusal is `Ok` only in shadow mode
/// (recorded); `Err` the answer (429, or the backend failing).
pub(super) fn rate_check<'a>(
    ctx: &mut Ctx<'a>,
    calls: &mut Calls<'a>,
    shadow: &ShadowLog,
    method: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<Checked, Box<Response<GatewayBody>>> {
    let Some((key, limits, group)) = ctx.rate.as_ref().map(|r| (r.key, r.limits, r.group)) else {
        return Ok((None, None));
    };
    let checked = match group.metered() {
        None => calls
            .check(key.as_bytes(), limits, group.cost())
            .map(|d| (d, None)),
        Some(m) => {
            let estimate = m.estimate_for(headers, limits);
            let ttl = m.reservation_ttl();
            calls
                .reserve(key.as_bytes(), limits, estimate, ttl)
                .map(|(reserved, local)| {
                    let (d, r) = reserved.into_parts();
                    (d, r.map(|r| (r, local)))
                })
        }
    };
    ctx.sync(calls);
    match checked {
        Outcome::Done((d, r)) if d.allowed() => {
            metrics::allowed(group.name(), &d);
            Ok((Some(d), r))
        }
        // Shadow mode: what enforcement would refuse goes on, counted, with its headers.
        Outcome::Done((d, r)) if !group.enforce() => {
            metrics::allowed(group.name(), &d);
            metrics::shadow_refusal(group.name());
            ctx.shadow_refusal(shadow, method, path, &d);
            Ok((Some(d), r))
        }
        Outcome::Done((d, _)) => {
            metrics::refused(group.name(), Refusal::Window);
            Err(Box::new(ctx.too_many_requests(&d)))
        }
        Outcome::Admit => Ok((None, None)),
        Outcome::Refuse => Err(Box::new(unavailable(ctx))),
        Outcome::Failed(e) => Err(Box::new(store_failure(ctx, &e))),
    }
}
