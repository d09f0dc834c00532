//! Peers measured in the same run as tollgate: governor's keyed limiter (in process) and Redis
//! (INCR + EXPIRE, and a sliding-window Lua script) through a minimal RESP client.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// A reply from Redis.
#[derive(Debug)]
pub enum Reply {
    Simple,
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array,
}

/// One Redis connection speaking RESP2.
pub struct Redis {
    w: TcpStream,
    r: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Redis {
    pub fn connect(addr: &str) -> io::Result<Redis> {
        let sa = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::other("no address"))?;
        let s = TcpStream::connect_timeout(&sa, Duration::from_millis(300))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Redis {
            r: BufReader::new(s.try_clone()?),
            w: s,
            buf: Vec::with_capacity(256),
        })
    }

    /// Send one command and read its reply.
    pub fn cmd(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.buf.clear();
        write!(self.buf, "*{}\r\n", args.len())?;
        for a in args {
            write!(self.buf, "${}\r\n", a.len())?;
            self.buf.extend_from_slice(a);
            self.buf.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&self.buf)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        Ok(line.trim_end().to_string())
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (tag, rest) = line.split_at(line.len().min(1));
        match tag {
            "+" => Ok(Reply::Simple),
            "-" => Err(io::Error::other(format!("redis error: {rest}"))),
            ":" => rest.parse().map(Reply::Int).map_err(io::Error::other),
            "$" => {
                let n: i64 = rest.parse().map_err(io::Error::other)?;
                if n < 0 {
                    return Ok(Reply::Nil);
                }
                let mut data = vec![0u8; n as usize + 2];
                io::Read::read_exact(&mut self.r, &mut data)?;
                data.truncate(n as usize);
                Ok(Reply::Bulk(data))
            }
            "*" => {
                let n: i64 = rest.parse().map_err(io::Error::other)?;
                for _ in 0..n.max(0) {
                    self.read_reply()?;
                }
                Ok(Reply::Array)
            }
            _ => Err(io::Error::other(format!("unexpected reply {line:?}"))),
        }
    }
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

/// Load the Lua script; returns its SHA1.
pub fn load_script(r: &mut Redis) -> io::Result<String> {
    match r.cmd(&[b"SCRIPT", b"LOAD", SLIDING_WINDOW_LUA.as_bytes()])? {
        Reply::Bulk(sha) => String::from_utf8(sha).map_err(io::Error::other),
        other => Err(io::Error::other(format!("SCRIPT LOAD answered {other:?}"))),
    }
}
