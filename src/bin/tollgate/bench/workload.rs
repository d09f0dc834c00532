//! What every engine of `tollgate bench` is asked: the seed policies as routes, the request
//! sequence (tokens from a Zipf distribution, routes by weight), drawn once before any engine
//! runs, and the keys' bytes, written without the formatting machinery.

use tollgate::{Limit, Limits};

/// An endpoint group of a seed policy, as the bench drives it.
pub(super) struct Route {
    pub(super) name: &'static str,
    pub(super) limits: Limits,
    /// Per-minute limit, for the peers (governor and Redis check one window).
    #[cfg_attr(not(any(feature = "bench", feature = "redis")), allow(dead_code))]
    pub(super) per_minute: u32,
    weight: u32,
    pub(super) post: bool,
}

/// The routes of seed policy `name` (zorio or erzycall).
pub(super) fn policy(name: &str) -> Result<Vec<Route>, Box<dyn std::error::Error>> {
    let r = |name, limits: &[Limit], per_minute, weight, post| -> Result<Route, tollgate::Error> {
        Ok(Route {
            name,
            limits: Limits::new(limits)?,
            per_minute,
            weight,
            post,
        })
    };
    Ok(match name {
        "zorio" => vec![
            r("pbx-click-to-call", &[Limit::per_minute(10)], 10, 5, true)?,
            r("pbx", &[Limit::per_minute(60)], 60, 30, false)?,
            r("telesales", &[Limit::per_minute(120)], 120, 20, false)?,
            r("autocall", &[Limit::per_minute(120)], 120, 20, true)?,
            r("auth-login", &[Limit::per_minute(5).exact()], 5, 5, true)?,
            r("auth", &[Limit::per_minute(30)], 30, 20, false)?,
        ],
        "erzycall" => vec![r(
            "api",
            &[Limit::per_minute(60), Limit::per_hour(1000)],
            60,
            1,
            true,
        )?],
        other => return Err(format!("unknown policy {other:?} (zorio or erzycall)").into()),
    })
}

/// xorshift64: the bench's draws, the same on every run (nothing here is secret).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative Zipf weights over `n` ranks.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (0..n)
        .map(|k| {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            acc
        })
        .collect();
    for v in cdf.iter_mut() {
        *v /= acc;
    }
    cdf
}

/// The routes, and the request sequence every engine runs.
pub(super) struct Workload {
    pub(super) routes: Vec<Route>,
    /// The requests, as (token, route), drawn once before any engine runs: every engine makes
    /// the same requests in the same order on each thread, and no engine's timing includes the
    /// Zipf draw (a binary search over the token CDF, several cache misses).
    pub(super) seq: Vec<(u32, u8)>,
}

/// Requests drawn in advance (8 MiB, read in order: the prefetcher keeps it in cache).
const SEQ_LEN: usize = 1 << 20;

impl Workload {
    pub(super) fn new(routes: Vec<Route>, tokens: usize, zipf: f64) -> Workload {
        let cdf = zipf_cdf(tokens, zipf);
        let mut acc = 0;
        let route_cdf: Vec<u32> = routes
            .iter()
            .map(|r| {
                acc += r.weight;
                acc
            })
            .collect();
        let total = route_cdf.last().copied().unwrap_or(1).max(1);
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let seq = (0..SEQ_LEN)
            .map(|_| {
                let u = rng.unit();
                let token = cdf.partition_point(|&c| c < u).min(cdf.len() - 1);
                let w = (rng.next() % u64::from(total)) as u32;
                let route = route_cdf.partition_point(|&c| c <= w).min(routes.len() - 1);
                (token as u32, route as u8)
            })
            .collect();
        Workload { routes, seq }
    }

    /// Request `i` of thread `t` of `threads`: each thread walks its own stretch of the
    /// sequence, round and round.
    pub(super) fn at(&self, t: usize, threads: usize, i: u64) -> (usize, usize) {
        let start = SEQ_LEN / threads.max(1) * t;
        let (token, route) = self.seq[(start + i as usize) % SEQ_LEN];
        (token as usize, usize::from(route))
    }
}

/// The Idempotency-Keys of one thread's keyed POSTs, as 128-bit numbers: new ones, distinct
/// across threads, and retries of recent ones (which replay). Shared by tollgate's loop and the
/// floor toy's, so that both draw the same kind of keys.
pub(super) struct KeyDraw {
    next: u128,
    /// Up to [`KeyDraw::RECENT`] keys begun, with their scope's token.
    recent: Vec<(usize, u128)>,
}

impl KeyDraw {
    const RECENT: usize = 1024;

    pub(super) fn new(thread: usize) -> KeyDraw {
        KeyDraw {
            next: (thread as u128) << 64,
            recent: Vec::with_capacity(Self::RECENT),
        }
    }

    /// The scope's token and the key of a keyed POST of `token`: a recent key (a share
    /// `retries` of the time, once there is one), else a new one.
    pub(super) fn draw(&mut self, rng: &mut Rng, token: usize, retries: f64) -> (usize, u128) {
        if !self.recent.is_empty() && rng.unit() < retries {
            return self.recent[(rng.next() as usize) % self.recent.len()];
        }
        self.next += 1;
        (
            token,
            self.next
                .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
        )
    }

    /// Remember `key` (of `scope`'s token), begun, for retries: the recent keys fill, then
    /// one at random gives way.
    pub(super) fn begun(&mut self, rng: &mut Rng, scope: usize, key: u128) {
        if self.recent.len() < Self::RECENT {
            self.recent.push((scope, key));
        } else {
            let i = (rng.next() as usize) % Self::RECENT;
            self.recent[i] = (scope, key);
        }
    }
}

/// `tok_{token:028x}:{route}` into `buf`, without the formatting machinery (a gateway has the
/// key's bytes at hand; building them must not weigh on any engine's figures).
pub(super) fn key_into(buf: &mut [u8; 64], token: usize, route: &str) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf[..4].copy_from_slice(b"tok_");
    let t = token as u64;
    for (k, b) in buf[4..32].iter_mut().enumerate() {
        let shift = (27 - k) * 4;
        *b = if shift < 64 {
            HEX[((t >> shift) & 15) as usize]
        } else {
            b'0'
        };
    }
    buf[32] = b':';
    let r = &route.as_bytes()[..route.len().min(31)];
    buf[33..33 + r.len()].copy_from_slice(r);
    33 + r.len()
}
