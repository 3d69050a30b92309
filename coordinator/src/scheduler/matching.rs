//! What an agent offers a job, as leasing matches it: its queues, and the
//! labels it carries. The lease call and the explanation of a waiting job
//! ([`super::why`]) both read it from here.

use std::collections::BTreeMap;

use musketeer_tasks::job::{AGENT_LABEL, ARCH_LABEL, DEFAULT_QUEUE, RESERVED_LABEL_PREFIX};
use musketeer_tasks::protocol::Capacity;

/// The labels an agent carries when it leases: its own, less any it
/// claims under the reserved prefix, plus the reserved ones the
/// coordinator vouches for (its authenticated id, its architecture), which
/// jobs target with `agent` and `arch`.
pub fn agent_labels(agent_id: &str, c: &Capacity) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = c
        .labels
        .iter()
        .filter(|(k, _)| !k.starts_with(RESERVED_LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(AGENT_LABEL.to_string(), agent_id.to_string());
    labels.insert(ARCH_LABEL.to_string(), c.arch.clone());
    labels
}

/// Whether an agent with this capacity leases from `queue`: an agent that
/// names no queue serves the default one.
pub fn serves_queue(c: &Capacity, queue: &str) -> bool {
    if c.queues.is_empty() {
        queue == DEFAULT_QUEUE
    } else {
        c.queues.iter().any(|q| q == queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_labels_come_from_the_coordinator() {
        let c = Capacity {
            arch: "aarch64".into(),
            labels: BTreeMap::from([
                ("gpu".to_string(), "yes".to_string()),
                (AGENT_LABEL.to_string(), "someone-else".to_string()),
            ]),
            ..Capacity::default()
        };
        let labels = agent_labels("a1", &c);
        assert_eq!(labels["gpu"], "yes");
        assert_eq!(labels[AGENT_LABEL], "a1");
        assert_eq!(labels[ARCH_LABEL], "aarch64");
        assert!(serves_queue(&c, DEFAULT_QUEUE));
        assert!(!serves_queue(&c, "video"));
        let video = Capacity {
            queues: vec!["video".into()],
            ..c
        };
        assert!(serves_queue(&video, "video"));
        assert!(!serves_queue(&video, DEFAULT_QUEUE));
    }
}
