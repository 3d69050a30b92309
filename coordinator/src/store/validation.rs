//! Result validation for jobs with `redundancy` above 1: when a task's
//! replicas agree, which agents earned trust, and when a trusted agent's
//! word alone is enough (adaptive replication, as BOINC does it).
//!
//! These are the rules; every store applies them inside its own atomic
//! step, so that both stores judge a task the same way.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Consecutive agreeing results after which an agent is trusted. High
/// enough that an agent corrupting even one result in five almost never
/// gets there by luck (0.8^20 is about 1%, and one disagreement resets it).
pub const TRUST_AFTER: u64 = 20;

/// One in this many of a trusted agent's tasks is still replicated: the
/// spot check that catches an agent that turns bad after earning trust.
pub const SPOT_CHECK_ONE_IN: u64 = 5;

/// Replicas beyond a job's `redundancy` that disagreement may bring in
/// before the task is failed as undecidable.
pub fn max_extra_replicas(redundancy: u32) -> u32 {
    redundancy.max(2)
}

/// Agreeing results a task with this redundancy needs: a strict majority.
pub fn quorum(redundancy: u32) -> usize {
    redundancy as usize / 2 + 1
}

/// What the coordinator thinks of an agent's results so far.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Not enough agreeing results yet: its work is always replicated.
    #[default]
    New,
    /// Earned unreplicated work, with spot checks.
    Trusted,
    /// Outvoted often: flagged for the operator; always replicated.
    Suspect,
}

/// An agent's validation record.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrustRecord {
    /// Results that agreed with the accepted answer.
    pub valid: u64,
    /// Results the majority outvoted.
    pub invalid: u64,
    /// Agreeing results since the last outvoted or disputed one.
    pub streak: u64,
}

impl TrustRecord {
    /// The trust these counts earn. Suspect: outvoted at least twice and
    /// on more than one result in twenty; an honest agent on flaky
    /// hardware can lose one vote, a liar keeps losing them.
    pub fn trust(&self) -> Trust {
        if self.invalid >= 2 && self.invalid * 20 > self.valid {
            Trust::Suspect
        } else if self.streak >= TRUST_AFTER {
            Trust::Trusted
        } else {
            Trust::New
        }
    }
}

/// Whether this task is one of a trusted agent's spot checks: a fixed
/// function of the task, so every coordinator and every retry decides the
/// same, and an agent cannot tell which of its tasks are checked.
pub fn is_spot_check(job_id: &str, index: u32) -> bool {
    let mut h = Sha256::new();
    h.update(job_id.as_bytes());
    h.update(index.to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes")) % SPOT_CHECK_ONE_IN == 0
}

/// The digest replicas are compared by.
pub fn digest(output: &[u8]) -> [u8; 32] {
    Sha256::digest(output).into()
}

/// One returned replica of a task, as the judge sees it.
#[derive(Clone, Debug)]
pub struct Vote<'a> {
    /// Who returned it.
    pub agent: &'a str,
    /// The digest of its output.
    pub digest: [u8; 32],
}

/// What to do with a task after one of its replicas came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// This digest is the task's answer.
    Accept([u8; 32]),
    /// Wait for the replicas still out.
    Wait,
    /// Every replica is back and no answer has a majority: ask one more agent.
    AddReplica,
    /// Disagreement used up the extra replicas.
    GiveUp(String),
}

/// Judges a task from the replicas returned so far.
///
/// - `votes`: the returned replicas, in any order;
/// - `outstanding`: replicas still pending or leased;
/// - `replicas`: how many replicas the task has had in all;
/// - `solo`: the newest vote comes from a trusted agent and the task is not a
///   spot check, so its word alone is enough if it is the first.
pub fn judge(
    votes: &[Vote<'_>],
    outstanding: usize,
    replicas: u32,
    redundancy: u32,
    solo: bool,
) -> Verdict {
    if solo && votes.len() == 1 {
        return Verdict::Accept(votes[0].digest);
    }
    let mut best: Option<([u8; 32], usize)> = None;
    for v in votes {
        let n = votes.iter().filter(|w| w.digest == v.digest).count();
        if best.is_none_or(|(_, m)| n > m) {
            best = Some((v.digest, n));
        }
    }
    if let Some((d, n)) = best {
        if n >= quorum(redundancy) {
            return Verdict::Accept(d);
        }
    }
    if outstanding > 0 {
        return Verdict::Wait;
    }
    if replicas < redundancy + max_extra_replicas(redundancy) {
        Verdict::AddReplica
    } else {
        let distinct = {
            let mut ds: Vec<_> = votes.iter().map(|v| v.digest).collect();
            ds.sort();
            ds.dedup();
            ds.len()
        };
        Verdict::GiveUp(give_up_reason(votes.len(), distinct, quorum(redundancy)))
    }
}

/// Why a task whose replicas never agreed failed; generic so that a store
/// can also render it as a template (the Redis store's scripts do).
pub fn give_up_reason(
    votes: impl std::fmt::Display,
    distinct: impl std::fmt::Display,
    quorum: impl std::fmt::Display,
) -> String {
    format!(
        "{votes} agents returned {distinct} different answers and no answer reached a majority of {quorum}; \
         check the agents list for suspect agents and remove them"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(agent: &str, d: u8) -> Vote<'_> {
        Vote {
            agent,
            digest: [d; 32],
        }
    }

    #[test]
    fn majority_accepts_and_disagreement_asks_for_more() {
        assert_eq!(judge(&[v("a", 1)], 1, 2, 2, false), Verdict::Wait);
        assert_eq!(
            judge(&[v("a", 1), v("b", 1)], 0, 2, 2, false),
            Verdict::Accept([1; 32])
        );
        assert_eq!(
            judge(&[v("a", 1), v("b", 2)], 0, 2, 2, false),
            Verdict::AddReplica
        );
        assert_eq!(
            judge(&[v("a", 1), v("b", 2), v("c", 1)], 0, 3, 2, false),
            Verdict::Accept([1; 32])
        );
        // Three of five agree: enough for redundancy 5 before the rest return.
        assert_eq!(
            judge(
                &[v("a", 1), v("b", 2), v("c", 1), v("d", 1)],
                1,
                5,
                5,
                false
            ),
            Verdict::Accept([1; 32])
        );
        assert!(matches!(
            judge(
                &[v("a", 1), v("b", 2), v("c", 3), v("d", 4)],
                0,
                4,
                2,
                false
            ),
            Verdict::GiveUp(_)
        ));
    }

    #[test]
    fn a_trusted_first_answer_stands_alone() {
        assert_eq!(judge(&[v("a", 7)], 1, 2, 2, true), Verdict::Accept([7; 32]));
        // Not when another replica came back first and disagrees.
        assert_eq!(
            judge(&[v("b", 1), v("a", 7)], 0, 2, 2, true),
            Verdict::AddReplica
        );
    }

    #[test]
    fn trust_is_earned_slowly_and_lost_quickly() {
        let mut r = TrustRecord::default();
        assert_eq!(r.trust(), Trust::New);
        r.valid = TRUST_AFTER;
        r.streak = TRUST_AFTER;
        assert_eq!(r.trust(), Trust::Trusted);
        r.invalid = 1;
        r.streak = 0;
        assert_eq!(r.trust(), Trust::New);
        r.invalid = 2;
        assert_eq!(r.trust(), Trust::Suspect);
        // Two slips in a long honest record are not a liar.
        r.valid = 1000;
        r.streak = 500;
        assert_eq!(r.trust(), Trust::Trusted);
    }

    #[test]
    fn spot_checks_are_about_one_in_five() {
        let n = (0..10_000).filter(|i| is_spot_check("job", *i)).count();
        assert!((1_600..2_400).contains(&n), "{n}");
    }
}
