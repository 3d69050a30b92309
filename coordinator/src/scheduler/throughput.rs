//! Results per second over the last hour, for the dashboard's chart: counts
//! in 10-second buckets, kept in memory. A restart starts the chart afresh
//! (the jobs and their history are in the store); with several coordinators
//! each counts the results it took in.

use std::collections::VecDeque;
use std::sync::Mutex;

/// One bucket's span.
pub const BUCKET_MS: u64 = 10_000;
/// Buckets kept: an hour.
pub const BUCKETS: usize = 360;

/// See the module documentation.
#[derive(Default)]
pub struct Throughput {
    /// (bucket number = ms / [`BUCKET_MS`], results), oldest first.
    buckets: Mutex<VecDeque<(u64, u64)>>,
}

impl Throughput {
    /// Counts `n` results taken in at `now_ms`.
    pub fn add(&self, now_ms: u64, n: u64) {
        if n == 0 {
            return;
        }
        let bucket = now_ms / BUCKET_MS;
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match b.back_mut() {
            Some((last, count)) if *last == bucket => *count += n,
            // A clock that stepped back adds to the newest bucket rather
            // than disorder the series.
            Some((last, count)) if *last > bucket => *count += n,
            _ => b.push_back((bucket, n)),
        }
        while b.len() > BUCKETS {
            b.pop_front();
        }
    }

    /// Results per second in each of the last [`BUCKETS`] buckets up to
    /// `now_ms`, oldest first; buckets without results are 0.
    pub fn per_second(&self, now_ms: u64) -> Vec<f64> {
        let newest = now_ms / BUCKET_MS;
        let oldest = newest.saturating_sub(BUCKETS as u64 - 1);
        let mut out = vec![0.0; BUCKETS];
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        for &(bucket, count) in b.iter() {
            if (oldest..=newest).contains(&bucket) {
                let at = (bucket - oldest) as usize + BUCKETS - 1 - (newest - oldest) as usize;
                out[at] = count as f64 * 1000.0 / BUCKET_MS as f64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_land_in_their_bucket_and_age_out() {
        let t = Throughput::default();
        let now = 1_000 * BUCKET_MS;
        t.add(now - 2 * BUCKET_MS, 30);
        t.add(now, 10);
        t.add(now + 1, 10);
        let rates = t.per_second(now + 5);
        assert_eq!(rates.len(), BUCKETS);
        assert_eq!(rates[BUCKETS - 1], 2.0);
        assert_eq!(rates[BUCKETS - 3], 3.0);
        assert_eq!(rates[BUCKETS - 2], 0.0);
        // An hour later all of it is gone from the chart.
        let later = t.per_second(now + BUCKETS as u64 * BUCKET_MS);
        assert!(later.iter().all(|&r| r == 0.0), "{later:?}");
    }
}
