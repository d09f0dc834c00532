//! Versions and concurrency permits on the server, for [`RedisStore`]: what a fleet of
//! gateways must agree on exactly, so the hybrid store forwards them here too.
//!
//! * A version is a hash `{e, n}` (`keys::version`); reading, bumping and compare-and-bumping
//!   are one script (`version.lua`): the compare and the bump cannot interleave with another
//!   node's. The epoch is drawn by the caller and kept by the first one to reach a new key.
//! * A key's permits are a sorted set scored by deadline (`keys::permits`): taking one is one
//!   script (`permit.lua`: drop the ended, count, add), releasing is one `ZREM`, counting one
//!   `ZCOUNT`. A node that dies holding permits leaves members whose deadlines pass: the next
//!   acquire drops them.
//!
//! Neither is retried on a fresh connection when a pooled one turns out dead: a bump or an
//! acquire that ran before the connection died would run twice.

use std::sync::LazyLock;

use ::redis::{Script, Value};

use super::conn::{self, array, bad_reply, int, uint};
use super::keys;
use super::store::RedisStore;
use crate::backend::check_key;
use crate::error::{Error, Result};
use crate::permit::Permit;
use crate::version::{random_word, Version, VersionBump};

static VERSION: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("version.lua")));
static PERMIT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("permit.lua")));

/// Extra time the server keeps a permit set past the longest lease taken in it.
const PERMIT_SLACK_MS: u64 = 60_000;

/// A decimal u64 (an epoch) from a reply.
fn word(v: Option<&Value>) -> Result<u64> {
    match v {
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_reply("an epoch")),
        Some(Value::Int(i)) => u64::try_from(*i).map_err(|_| bad_reply("an epoch")),
        _ => Err(bad_reply("an epoch")),
    }
}

impl RedisStore {
    /// Run the version script: `(matched, version)`.
    fn run_version(&self, key: &[u8], op: &str, expected: &Version) -> Result<(bool, Version)> {
        check_key(key)?;
        let k = keys::version(&self.options().prefix, key);
        let (fresh, e, n) = (
            random_word().to_string(),
            expected.epoch.to_string(),
            expected.number.to_string(),
        );
        let args: [&[u8]; 4] = [op.as_bytes(), fresh.as_bytes(), e.as_bytes(), n.as_bytes()];
        let reply = self
            .pool()
            .with(|c| conn::eval(c, &VERSION, &[&k], &args))?;
        let r = array(Some(&reply))?;
        let version = Version {
            epoch: word(r.get(1))?,
            number: uint(r.get(2))?,
        };
        Ok((int(r.first())? == 1, version))
    }

    /// The current version of `key`, fleet-wide: as [`Store::version`](crate::Store::version).
    pub fn version(&self, key: &[u8]) -> Result<Version> {
        let none = Version {
            epoch: 0,
            number: 0,
        };
        Ok(self.run_version(key, "0", &none)?.1)
    }

    /// Bump the version of `key`: the new one.
    pub fn bump_version(&self, key: &[u8]) -> Result<Version> {
        let none = Version {
            epoch: 0,
            number: 0,
        };
        Ok(self.run_version(key, "1", &none)?.1)
    }

    /// Bump the version of `key` if it is `expected`, in one script.
    pub fn bump_version_if(&self, key: &[u8], expected: &Version) -> Result<VersionBump> {
        Ok(match self.run_version(key, "2", expected)? {
            (true, v) => VersionBump::Bumped(v),
            (false, v) => VersionBump::Stale(v),
        })
    }

    /// Take one of `cap` permits of `key` until `now_ms + lease_ms`, fleet-wide: as
    /// [`Store::acquire_permit_at`](crate::Store::acquire_permit_at), without its bound on
    /// `cap`.
    pub fn acquire_permit_at(
        &self,
        key: &[u8],
        cap: u32,
        lease_ms: u64,
        now_ms: u64,
    ) -> Result<Option<Permit>> {
        check_key(key)?;
        if lease_ms == 0 {
            return Err(Error::InvalidLimit("a permit lease of 0"));
        }
        if cap == 0 {
            return Ok(None);
        }
        let k = keys::permits(&self.options().prefix, key);
        let stamp = random_word();
        let deadline = now_ms.saturating_add(lease_ms);
        let (now, cap_s, dl, member, gc) = (
            now_ms.to_string(),
            cap.to_string(),
            deadline.to_string(),
            format!("{stamp:x}"),
            (lease_ms + PERMIT_SLACK_MS).to_string(),
        );
        let args: [&[u8]; 5] = [
            now.as_bytes(),
            cap_s.as_bytes(),
            dl.as_bytes(),
            member.as_bytes(),
            gc.as_bytes(),
        ];
        let reply = self.pool().with(|c| conn::eval(c, &PERMIT, &[&k], &args))?;
        let r = array(Some(&reply))?;
        let held = u32::try_from(uint(r.get(1))?).map_err(|_| bad_reply("a count"))?;
        Ok((int(r.first())? == 1).then(|| Permit {
            key: key.to_vec(),
            slot: 0,
            stamp,
            deadline_ms: deadline,
            held,
        }))
    }

    /// Give a permit back; `false` if it had already ended and been dropped.
    pub fn release_permit(&self, permit: &Permit) -> Result<bool> {
        check_key(&permit.key)?;
        let k = keys::permits(&self.options().prefix, &permit.key);
        let member = format!("{:x}", permit.stamp);
        let removed: i64 = self
            .pool()
            .with(|c| ::redis::cmd("ZREM").arg(&k).arg(member.as_bytes()).query(c))?;
        Ok(removed == 1)
    }

    /// Permits of `key` held at `now_ms`, fleet-wide.
    pub fn permits_held_at(&self, key: &[u8], now_ms: u64) -> Result<u32> {
        check_key(key)?;
        let k = keys::permits(&self.options().prefix, key);
        let n: i64 = self.pool().with_retry(|c| {
            ::redis::cmd("ZCOUNT")
                .arg(&k)
                .arg(format!("({now_ms}"))
                .arg("+inf")
                .query(c)
        })?;
        u32::try_from(n).map_err(|_| bad_reply("a count"))
    }
}
