//! `musketeer status` for people: the control socket's JSON as lines.

use std::fmt::Write;

use serde_json::Value;

/// Renders a status (see [`crate::control`]) as `musketeer status` prints it.
pub fn render(s: &Value) -> String {
    let mut out = String::new();
    let text = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let _ = writeln!(out, "coordinator:  {}", text(&s["coordinator"]));
    let _ = writeln!(
        out,
        "agent:        {} (version {})",
        text(&s["agent_id"]),
        text(&s["version"])
    );
    let state = match s["state"].as_str().unwrap_or("?") {
        "paused" => match s["paused_until_ms"].as_u64() {
            Some(ms) => format!("paused until {}", local(ms)),
            None => "paused until `musketeer resume`".to_string(),
        },
        "outside_schedule" => match s["next_window_in_min"].as_u64() {
            Some(m) => format!("outside schedule (next window in {})", minutes(m)),
            None => "outside schedule".to_string(),
        },
        "on_battery" => "on battery (paused until on mains power)".to_string(),
        other => other.replace('_', " "),
    };
    let _ = writeln!(out, "state:        {state}");
    let schedule = s["schedule"]
        .as_str()
        .map_or("always".to_string(), |t| format!("{t} (host local time)"));
    let _ = writeln!(out, "schedule:     {schedule}");
    let _ = writeln!(
        out,
        "on battery:   {}",
        if s["pause_on_battery"].as_bool() == Some(true) {
            "pause"
        } else {
            "keep working"
        }
    );
    let l = &s["limits"];
    let percent = |v: &Value, none: &str| v.as_u64().map_or(none.to_string(), |p| format!("{p}%"));
    let _ = writeln!(
        out,
        "limits:       {} cores, {} MiB, at most {} of each core, step aside above {}",
        l["cpus"],
        l["memory_bytes"].as_u64().unwrap_or(0) >> 20,
        percent(&l["max_cpu_percent"], "100%"),
        percent(&l["yield_to_host_percent"], "never"),
    );
    let t = &s["tasks"];
    let running: Vec<String> = t["running"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| format!("{}#{}", text(&r["job"]), r["index"]))
                .collect()
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "tasks:        {} running{}, {} queued, {} results to upload",
        running.len(),
        if running.is_empty() {
            String::new()
        } else {
            format!(" ({})", running.join(", "))
        },
        t["queued"],
        t["pending_upload"]
    );
    let w = &s["session"];
    let _ = writeln!(
        out,
        "since start:  {} done, {} failed, {} accepted, {} given back",
        w["done"], w["failed"], w["accepted"], w["released"]
    );
    let c = &s["coordinator_view"];
    match c["error"].as_str() {
        Some(e) => {
            let _ = writeln!(out, "coordinator says: cannot tell now ({e})");
        }
        None => {
            let _ = writeln!(
                out,
                "coordinator says: {} tasks credited, {} s of CPU credited, {} leases held, state {}, trust {}",
                c["tasks_done"],
                c["cpu_ms"].as_u64().unwrap_or(0) / 1000,
                c["leased"],
                text(&c["state"]),
                c["trust"]
            );
        }
    }
    out
}

fn local(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %H:%M:%S %Z")
                .to_string()
        })
        .unwrap_or_else(|| format!("{ms} ms after the epoch"))
}

fn minutes(m: u64) -> String {
    match (m / 60, m % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_status_reads_as_lines() {
        let s = json!({
            "coordinator": "https://127.0.0.1:8443", "agent_id": "a1", "version": "0.1.0",
            "state": "outside_schedule", "next_window_in_min": 125,
            "schedule": "mon-fri 18:00-08:00", "pause_on_battery": true,
            "limits": {"cpus": 2, "memory_bytes": 1u64 << 30, "max_cpu_percent": null, "yield_to_host_percent": 50},
            "tasks": {"running": [{"job": "j1", "index": 3, "attempt": 1}], "queued": 0, "pending_upload": 0},
            "session": {"done": 5, "failed": 0, "accepted": 5, "released": 1},
            "coordinator_view": {"tasks_done": 5, "cpu_ms": 12000, "leased": 1, "state": "active", "trust": "\"new\""},
        });
        let text = render(&s);
        for needle in [
            "outside schedule (next window in 2 h 5 min)",
            "mon-fri 18:00-08:00 (host local time)",
            "on battery:   pause",
            "2 cores, 1024 MiB, at most 100% of each core, step aside above 50%",
            "1 running (j1#3)",
            "5 tasks credited, 12 s of CPU credited, 1 leases held",
        ] {
            assert!(text.contains(needle), "{needle:?} not in\n{text}");
        }
        let down = json!({"state": "paused", "coordinator_view": {"error": "unreachable"}});
        let text = render(&down);
        assert!(text.contains("paused until `musketeer resume`"), "{text}");
        assert!(text.contains("cannot tell now (unreachable)"), "{text}");
    }
}
