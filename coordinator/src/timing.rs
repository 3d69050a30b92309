//! When a job may start, when it expires and how long its result is kept:
//! the job options `countdown_s`, `not_before`, `expires` and
//! `result_ttl_s`, resolved once at submission into the store's absolute
//! times ([`JobTiming`]). The stores then hold the rules themselves: a
//! task's not-before time (the same one retries' backoff uses), an index
//! of expiring jobs, an index of results to delete.

use chrono::{DateTime, SecondsFormat, Utc};
use musketeer_tasks::job::{JobError, JobOptions, MAX_DELAY_S};

use crate::store::JobTiming;

/// Parses an RFC 3339 time option into ms since the Unix epoch.
fn parse_time(name: &str, value: &str) -> Result<u64, JobError> {
    let t = DateTime::parse_from_rfc3339(value).map_err(|e| {
        JobError::Invalid(format!(
            "`{name}` is {value:?}: {e}; give an RFC 3339 time such as 2026-12-01T18:30:00Z"
        ))
    })?;
    u64::try_from(t.timestamp_millis()).map_err(|_| {
        JobError::Invalid(format!(
            "`{name}` is {value:?}, before 1970: give a time to come"
        ))
    })
}

/// Resolves a job's time options against `now_ms`, the submission time.
pub fn job_timing(options: &JobOptions, now_ms: u64) -> Result<JobTiming, JobError> {
    let latest = now_ms + MAX_DELAY_S * 1000;
    let not_before_ms = match (options.countdown_s, &options.not_before) {
        (Some(s), _) => now_ms + s * 1000,
        (None, Some(t)) => parse_time("not_before", t)?,
        (None, None) => 0,
    };
    if not_before_ms > latest {
        return Err(JobError::Invalid(format!(
            "`not_before` is more than {} days away: give a nearer time",
            MAX_DELAY_S / 86_400
        )));
    }
    let expires_ms = match &options.expires {
        None => None,
        Some(t) => {
            let at = parse_time("expires", t)?;
            if at <= now_ms {
                return Err(JobError::Invalid(format!(
                    "`expires` is {t:?}, which has passed: give a time to come"
                )));
            }
            if at <= not_before_ms {
                return Err(JobError::Invalid(format!(
                    "`expires` is {t:?}, not after the job may start: it would expire unrun"
                )));
            }
            Some(at)
        }
    };
    Ok(JobTiming {
        not_before_ms,
        expires_ms,
        result_ttl_ms: options.result_ttl_s.map(|s| s * 1000),
    })
}

/// A time as RFC 3339 (UTC, whole seconds unless it has milliseconds).
pub fn rfc3339(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

/// Why an expired job ended: the error both stores record.
pub fn expiry_reason(expires_ms: u64) -> String {
    format!(
        "expired: tasks of it were still waiting to be leased at its `expires` time, {}",
        rfc3339(expires_ms)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: &str) -> JobOptions {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn countdown_and_not_before_resolve_to_one_start() {
        let now = 1_796_000_000_000;
        let t = job_timing(&options(r#"{"countdown_s":3}"#), now).unwrap();
        assert_eq!(t.not_before_ms, now + 3000);
        let t = job_timing(
            &options(r#"{"not_before":"2026-12-01T18:30:00Z","result_ttl_s":60}"#),
            now,
        )
        .unwrap();
        assert_eq!(t.not_before_ms, 1_796_149_800_000);
        assert_eq!(t.result_ttl_ms, Some(60_000));
        assert_eq!(
            job_timing(&JobOptions::default(), now).unwrap(),
            JobTiming::default()
        );
        assert_eq!(rfc3339(1_796_149_800_000), "2026-12-01T18:30:00Z");
    }

    #[test]
    fn bad_times_say_what_to_give() {
        let now = 1_700_000_000_000;
        let e = job_timing(&options(r#"{"not_before":"tomorrow"}"#), now).unwrap_err();
        assert!(e.to_string().contains("RFC 3339"), "{e}");
        let e = job_timing(&options(r#"{"expires":"2000-01-01T00:00:00Z"}"#), now).unwrap_err();
        assert!(e.to_string().contains("has passed"), "{e}");
        let e = job_timing(
            &options(r#"{"countdown_s":60,"expires":"2023-11-14T22:13:30Z"}"#),
            now,
        )
        .unwrap_err();
        assert!(e.to_string().contains("expire unrun"), "{e}");
        let e = job_timing(&options(r#"{"not_before":"2099-01-01T00:00:00Z"}"#), now).unwrap_err();
        assert!(e.to_string().contains("nearer"), "{e}");
    }
}
