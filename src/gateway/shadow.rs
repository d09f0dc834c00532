//! Shadow mode: a group with `enforce = false` is checked, counted and answered with its
//! headers as usual, and a request its windows refuse is let through and recorded here.
//!
//! This file exists so that an operator can try a limit on live traffic before enforcing it:
//! how many requests, of which groups, would the limit have refused? The crate logs nothing
//! itself (it has no logging dependency, and a library printing to stderr is a nuisance), so a
//! shadow refusal is
//!
//! * **counted**: [`ShadowLog::refusals`] in all, [`ShadowLog::refusals_of`] per group, read at
//!   any time through `Gateway::shadow()`; the counts live in memory, from the gateway's start,
//!   across policy reloads;
//! * **handed to a hook**, if one is set ([`ShadowLog::set_hook`]): a callback given a
//!   [`ShadowRefusal`] (group, method, path, the decision, the token's partition key; never the
//!   token), to log with whatever the application uses.
//!
//! The check itself is the usual one: the store counts an admitted request and not a refused
//! one, so a shadowed group's counts are exactly those enforcement would leave, and turning
//! `enforce` on later starts from where the shadow left off.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::partition::PartitionKey;
use crate::Decision;

/// One request a shadowed group would have refused, as a [`ShadowLog`] hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct ShadowRefusal<'a> {
    pub(crate) group: &'a str,
    pub(crate) method: &'a str,
    pub(crate) path: &'a str,
    pub(crate) decision: &'a Decision,
    pub(crate) partition_key: PartitionKey,
}

impl ShadowRefusal<'_> {
    /// The group's name.
    pub fn group(&self) -> &str {
        self.group
    }

    /// The request's method.
    pub fn method(&self) -> &str {
        self.method
    }

    /// The request's path (without the query).
    pub fn path(&self) -> &str {
        self.path
    }

    /// The refusing decision: its violated windows, and the `Retry-After` it would have sent.
    pub fn decision(&self) -> &Decision {
        self.decision
    }

    /// The token's partition key (a keyed hash, the `pk` of the IETF fields): enough to tell
    /// callers apart in a log without writing their credentials there.
    pub fn partition_key(&self) -> PartitionKey {
        self.partition_key
    }
}

type Hook = Arc<dyn Fn(&ShadowRefusal<'_>) + Send + Sync>;

/// The shadow refusals of a gateway: counts, and an optional hook.
#[derive(Default)]
pub struct ShadowLog {
    total: AtomicU64,
    groups: RwLock<HashMap<Box<str>, AtomicU64>>,
    hook: RwLock<Option<Hook>>,
}

impl fmt::Debug for ShadowLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowLog")
            .field("refusals", &self.refusals())
            .field("hook", &self.hook.read().is_some())
            .finish_non_exhaustive()
    }
}

impl ShadowLog {
    /// An empty log.
    pub fn new() -> ShadowLog {
        ShadowLog::default()
    }

    /// Requests let through that enforcement would have refused, every group together.
    pub fn refusals(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests of group `group` let through that enforcement would have refused.
    pub fn refusals_of(&self, group: &str) -> u64 {
        self.groups
            .read()
            .get(group)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Every group with shadow refusals, and its count, by name.
    pub fn by_group(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .groups
            .read()
            .iter()
            .map(|(g, n)| (g.to_string(), n.load(Ordering::Relaxed)))
            .collect();
        out.sort();
        out
    }

    /// Call `hook` on every shadow refusal from now on (replacing any hook set before). It runs
    /// on the request's task, before the request goes on: keep it quick (hand the event to a
    /// logger or a channel).
    pub fn set_hook(&self, hook: impl Fn(&ShadowRefusal<'_>) + Send + Sync + 'static) {
        *self.hook.write() = Some(Arc::new(hook));
    }

    /// Remove the hook.
    pub fn clear_hook(&self) {
        *self.hook.write() = None;
    }

    /// Count `event`, then hand it to the hook.
    pub(crate) fn record(&self, event: &ShadowRefusal<'_>) {
        self.total.fetch_add(1, Ordering::Relaxed);
        let counted = self
            .groups
            .read()
            .get(event.group)
            .map(|n| n.fetch_add(1, Ordering::Relaxed))
            .is_some();
        if !counted {
            self.groups
                .write()
                .entry(event.group.into())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
        let hook = self.hook.read().clone();
        if let Some(hook) = hook {
            hook(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::PartitionSecret;
    use crate::{Limit, Limits, Options, Store};
    use std::sync::Mutex;

    #[test]
    fn counts_per_group_and_calls_the_hook() {
        let store = Store::open_in_memory(Options::default()).unwrap();
        let limits = Limits::new(&[Limit::per_minute(1)]).unwrap();
        store.check(b"k", &limits, 1).unwrap();
        let d = store.check(b"k", &limits, 1).unwrap();
        assert!(!d.allowed());
        let log = ShadowLog::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        log.set_hook(move |e| {
            s.lock().unwrap().push(format!(
                "{} {} {} {}",
                e.group(),
                e.method(),
                e.path(),
                e.partition_key()
            ));
        });
        let pk = PartitionSecret::from_passphrase("a test passphrase!").key_of("tok");
        let event = |group| ShadowRefusal {
            group,
            method: "GET",
            path: "/x",
            decision: &d,
            partition_key: pk,
        };
        log.record(&event("a"));
        log.record(&event("b"));
        log.record(&event("a"));
        assert_eq!(log.refusals(), 3);
        assert_eq!(log.refusals_of("a"), 2);
        assert_eq!(log.refusals_of("c"), 0);
        assert_eq!(log.by_group(), vec![("a".into(), 2), ("b".into(), 1)]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0], format!("a GET /x {pk}"));
        assert!(!seen[0].contains("tok"));
        log.clear_hook();
        log.record(&event("a"));
        assert_eq!(seen.len(), 3);
    }
}
