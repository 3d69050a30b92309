//! Decoding Redis replies into the store's types.

use super::*;

/// A reply as an integer (0 for a missing or non-numeric one).
pub(super) fn reply_i64(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        Value::SimpleString(s) => s.parse().unwrap_or(0),
        Value::Double(d) => *d as i64,
        _ => 0,
    }
}

/// A reply as an integer, `None` for nil.
pub(super) fn reply_opt_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Nil => None,
        v => Some(reply_i64(v)),
    }
}

/// A reply as text, `None` for nil or an array.
pub(super) fn reply_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A reply as raw bytes, `None` for nil.
pub(super) fn reply_bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// A reply's elements: an array's, a map's keys and values in turn, or
/// the reply itself.
pub(super) fn reply_items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a,
        Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Nil => Vec::new(),
        v => vec![v],
    }
}

/// A job's status from its [`STATUS_FIELDS`], if it exists and is sealed.
pub(super) fn status_of(id: &str, f: &[Value]) -> Option<JobStatus> {
    if reply_string(&f[11]).as_deref() != Some("1") {
        return None;
    }
    Some(JobStatus {
        id: id.to_string(),
        kernel: reply_string(&f[0])?,
        state: JobState::parse(&reply_string(&f[1])?).unwrap_or(JobState::Failed),
        queue: reply_string(&f[2])?,
        priority: reply_i64(&f[3]) as u8,
        progress: Progress {
            total: reply_i64(&f[4]) as u64,
            done: reply_i64(&f[5]) as u64,
            failed: reply_i64(&f[6]) as u64,
        },
        error: reply_string(&f[7]),
        created_ms: reply_i64(&f[8]) as u64,
        started_ms: reply_opt_i64(&f[9]).map(|v| v as u64),
        finished_ms: reply_opt_i64(&f[10]).map(|v| v as u64),
        not_before_ms: reply_opt_i64(&f[12]).map(|v| v as u64),
        expires_ms: reply_opt_i64(&f[13]).map(|v| v as u64),
        result_expires_ms: reply_opt_i64(&f[14]).map(|v| v as u64),
        workflow: reply_string(&f[15]),
        schedule: reply_string(&f[16]),
    })
}

pub(super) fn hgetall(key: String) -> Cmd {
    let mut c = ::redis::cmd("HGETALL");
    c.arg(key);
    c
}

/// A hash's fields and values as strings.
pub(super) fn reply_pairs(v: Value) -> Vec<(String, String)> {
    let flat = reply_items(v);
    flat.chunks(2)
        .filter_map(|kv| Some((reply_string(kv.first()?)?, reply_string(kv.get(1)?)?)))
        .collect()
}

/// The fields of a job's hash that its status needs, in this order.
pub(super) const STATUS_FIELDS: [&str; 17] = [
    "kernel",
    "state",
    "queue",
    "priority",
    "total",
    "done",
    "failed",
    "error",
    "created_ms",
    "started_ms",
    "finished_ms",
    "sealed",
    "not_before_ms",
    "expires_ms",
    "result_expires_ms",
    "workflow",
    "schedule",
];
