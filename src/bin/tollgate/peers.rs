//! The Redis peer's client side: connections through the `redis` crate (feature `redis`), and
//! the sliding-window script a hand-written Redis limiter typically runs.

use std::time::Duration;

/// A connection to the server at `addr` (`HOST:PORT`), with the bench's timeouts.
pub fn connect(addr: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let con = client.get_connection_with_timeout(Duration::from_millis(300))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

/// A typical hand-written sliding-window limiter: a sorted set of request timestamps per key.
/// KEYS[1] = key; ARGV = now_ms, window_ms, limit, member. Returns 1 if admitted.
pub const SLIDING_WINDOW_LUA: &str = r"
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
if redis.call('ZCARD', key) < limit then
  redis.call('ZADD', key, now, ARGV[4])
  redis.call('PEXPIRE', key, window)
  return 1
end
return 0
";
