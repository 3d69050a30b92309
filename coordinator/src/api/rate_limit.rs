//! Request-rate limits: a token bucket per enrolled agent, and one per
//! client address for what carries no valid credential (enrolment, failed
//! authentication, the public pages). A caller over its limit gets `429 Too
//! Many Requests` with `Retry-After` and a JSON error saying what to do.
//!
//! The operator's admin token is never limited: the operator is trusted, and
//! a script polling a job must not lock itself out.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::ApiError;

/// Independent locks, so thousands of agents calling at once do not queue
/// on one mutex.
const SHARDS: usize = 16;

/// A shard forgets idle callers once it holds this many: a bucket that has
/// refilled completely is the same as no bucket, so forgetting it is free.
const PRUNE_AT: usize = 4096;

/// A sustained rate and a burst: `per_s` requests per second on average,
/// up to `burst` at once after a quiet spell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests per second refilled; 0 turns the limit off.
    pub per_s: f64,
    /// Most requests in a burst (the bucket's size).
    pub burst: f64,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        per_s: 0.0,
        burst: 0.0,
    };

    /// Whether the limit applies at all.
    pub fn is_on(&self) -> bool {
        self.per_s > 0.0
    }
}

/// The limits `serve` enforces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Each enrolled agent's calls under `/v1/agent/`.
    pub per_agent: RateLimit,
    /// Each client address's enrolments, failed authentications and
    /// public-page requests.
    pub per_address: RateLimit,
}

/// Per agent: an agent batches its work (a lease, an upload and a heartbeat
/// every second or so, more only when tasks are tiny); fifty a second
/// with a burst of two hundred leaves it ten times its need, and still
/// stops one broken or hostile agent from monopolising the store's writer.
pub const DEFAULT_AGENT_LIMIT: RateLimit = RateLimit {
    per_s: 50.0,
    burst: 200.0,
};

/// Per address: enrolment happens once per agent and the dashboard reloads
/// every two seconds; twenty a second with a burst of two hundred lets a
/// rack of machines behind one address join together, and makes guessing
/// tokens hopeless.
pub const DEFAULT_ADDRESS_LIMIT: RateLimit = RateLimit {
    per_s: 20.0,
    burst: 200.0,
};

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            per_agent: DEFAULT_AGENT_LIMIT,
            per_address: DEFAULT_ADDRESS_LIMIT,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, limit: RateLimit, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * limit.per_s).min(limit.burst)
    }
}

struct Shard<K> {
    buckets: HashMap<K, Bucket>,
    prune_at: usize,
}

/// Token buckets keyed by caller.
pub struct Limiter<K> {
    limit: RateLimit,
    hasher: RandomState,
    shards: Vec<Mutex<Shard<K>>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// Buckets of `limit` each.
    pub fn new(limit: RateLimit) -> Limiter<K> {
        Limiter {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        prune_at: PRUNE_AT,
                    })
                })
                .collect(),
        }
    }

    /// The limit applied.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one request from `key`'s bucket, or says how long until one is
    /// there.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        if !self.limit.is_on() {
            return Ok(());
        }
        let limit = self.limit;
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        if shard.buckets.len() >= shard.prune_at {
            shard
                .buckets
                .retain(|_, b| b.refilled(limit, now) < limit.burst);
            shard.prune_at = (shard.buckets.len() * 2).max(PRUNE_AT);
        }
        let bucket = shard.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let tokens = bucket.refilled(limit, now);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / limit.per_s))
        }
    }
}

/// The per-agent and per-address buckets of one coordinator.
pub struct RateLimiters {
    /// Keyed by agent id.
    pub agents: Limiter<String>,
    /// Keyed by client address.
    pub addresses: Limiter<IpAddr>,
    /// Requests refused so far, for `/metrics`.
    pub refused: AtomicU64,
}

impl RateLimiters {
    /// Empty buckets for `limits`.
    pub fn new(limits: RateLimits) -> RateLimiters {
        RateLimiters {
            agents: Limiter::new(limits.per_agent),
            addresses: Limiter::new(limits.per_address),
            refused: AtomicU64::new(0),
        }
    }

    /// One request by agent `id`.
    pub fn agent(&self, id: &str) -> Result<(), ApiError> {
        self.agents
            .check(&id.to_string(), Instant::now())
            .map_err(|wait| {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let l = self.agents.limit();
                too_many(
                    wait,
                    format!(
                    "agent {id} sent more than {} requests per second (bursts of {}): wait for \
                     Retry-After and send fewer, larger batches; the operator sets this limit \
                     with `serve --agent-requests-per-s`",
                    l.per_s, l.burst
                ),
                )
            })
    }

    /// One unauthenticated request (or failed authentication) from `addr`.
    pub fn address(&self, addr: Option<IpAddr>) -> Result<(), ApiError> {
        // Without a peer address (a router driven in-process, not over a
        // socket) there is no one to charge.
        let Some(addr) = addr else { return Ok(()) };
        self.addresses.check(&addr, Instant::now()).map_err(|wait| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let l = self.addresses.limit();
            too_many(
                wait,
                format!(
                    "{addr} sent more than {} unauthenticated requests per second (bursts of {}): \
                     wait for Retry-After; check the token if these are failed logins; the \
                     operator sets this limit with `serve --address-requests-per-s`",
                    l.per_s, l.burst
                ),
            )
        })
    }
}

fn too_many(wait: Duration, message: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
    // Whole seconds, rounded up: a client that waits that long always finds
    // a request in its bucket.
    e.retry_after_s = Some(wait.as_secs_f64().ceil().max(1.0) as u64);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_A_SECOND: RateLimit = RateLimit {
        per_s: 10.0,
        burst: 5.0,
    };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let l = Limiter::new(TEN_A_SECOND);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check(&"a", t0).unwrap();
        }
        let wait = l.check(&"a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        // Another caller has its own bucket.
        l.check(&"b", t0).unwrap();
        // A tenth of a second refills one request, and only one.
        let t1 = t0 + Duration::from_millis(100);
        l.check(&"a", t1).unwrap();
        assert!(l.check(&"a", t1).is_err());
        // A long pause refills no more than the burst.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            l.check(&"a", t2).unwrap();
        }
        assert!(l.check(&"a", t2).is_err());
    }

    #[test]
    fn refused_requests_do_not_dig_a_deeper_hole() {
        let l = Limiter::new(TEN_A_SECOND);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.check(&"a", t0).unwrap();
        }
        for _ in 0..1000 {
            assert!(l.check(&"a", t0).is_err());
        }
        // A hammering client is back as soon as it waits Retry-After.
        l.check(&"a", t0 + Duration::from_millis(100)).unwrap();
    }

    #[test]
    fn zero_is_off() {
        let l = Limiter::new(RateLimit::OFF);
        let t0 = Instant::now();
        for _ in 0..100_000 {
            l.check(&1u32, t0).unwrap();
        }
    }

    #[test]
    fn idle_callers_are_forgotten() {
        let l = Limiter::new(TEN_A_SECOND);
        let t0 = Instant::now();
        let old = (SHARDS * PRUNE_AT) as u32;
        for k in 0..old {
            l.check(&k, t0).unwrap();
        }
        // A second later every old bucket is full again, the same as none;
        // enough new callers make each shard prune.
        let t1 = t0 + Duration::from_secs(1);
        for k in old..old * 5 {
            l.check(&k, t1).unwrap();
        }
        let kept_old: usize = l
            .shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap()
                    .buckets
                    .keys()
                    .filter(|&&k| k < old)
                    .count()
            })
            .sum();
        assert_eq!(kept_old, 0);
    }

    #[test]
    fn the_error_says_when_to_come_back() {
        let r = RateLimiters::new(RateLimits {
            per_agent: RateLimit {
                per_s: 0.5,
                burst: 1.0,
            },
            per_address: RateLimit::OFF,
        });
        r.agent("a1").unwrap();
        let e = r.agent("a1").unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, "rate_limited");
        assert_eq!(e.retry_after_s, Some(2));
        assert!(
            e.message.contains("--agent-requests-per-s"),
            "{}",
            e.message
        );
        assert_eq!(r.refused.load(Ordering::Relaxed), 1);
        r.address(Some(IpAddr::from([127, 0, 0, 1]))).unwrap();
    }
}
