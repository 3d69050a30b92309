//! The lying agent, for testing result validation: `--corrupt-results F`
//! (hidden from `--help`) makes the agent upload wrong answers for a
//! fraction `F` of its tasks. The outputs stay well formed (they decode
//! and reduce), only their numbers are wrong, which is what a faulty or
//! dishonest volunteer would send.
//!
//! Which tasks are corrupted is decided by a hash of the agent's id and the
//! task (job and index, not the lease), so the choice is the same on every
//! retry and reproducible across runs, while two lying agents pick
//! different tasks and cannot agree on a wrong answer by accident.

use musketeer_tasks::protocol::{
    Heartbeat, HeartbeatAck, LeaseRequest, LeaseResponse, Release, ReleaseAck, ResultAck,
    ResultBatch, TaskOutcome, TaskRef,
};
use musketeer_tasks::wasm::ModuleId;
use musketeer_tasks::TaskOutput;
use sha2::{Digest, Sha256};

use crate::client::{AgentApi, ClientError};

/// Parses the fraction: a number from 0 to 1.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction from 0 to 1, e.g. 0.25".into()),
    }
}

/// Whether the agent `agent` corrupts `task` at `fraction`.
pub fn is_chosen(agent: &str, task: &TaskRef, fraction: f64) -> bool {
    let digest = Sha256::new()
        .chain_update(agent.as_bytes())
        .chain_update([0])
        .chain_update(task.job.as_bytes())
        .chain_update(task.index.to_le_bytes())
        .finalize();
    let draw = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    // draw / 2^64 < fraction, without the rounding of a float division at 1.0.
    fraction >= 1.0 || (draw as f64) < fraction * 18_446_744_073_709_551_616.0
}

/// An [`AgentApi`] that corrupts a fraction of the results it uploads.
#[derive(Clone, Debug)]
pub struct Lying<A> {
    inner: A,
    agent: String,
    fraction: f64,
}

impl<A> Lying<A> {
    /// Wraps `inner`, lying as agent `agent` about `fraction` of the tasks.
    pub fn new(inner: A, agent: impl Into<String>, fraction: f64) -> Lying<A> {
        Lying {
            inner,
            agent: agent.into(),
            fraction,
        }
    }

    /// `batch` with the chosen outputs falsified.
    pub fn corrupt(&self, batch: &ResultBatch) -> ResultBatch {
        let mut batch = batch.clone();
        for report in &mut batch.results {
            if !is_chosen(&self.agent, &report.task, self.fraction) {
                continue;
            }
            if let TaskOutcome::Done(bytes) = &mut report.outcome {
                if let Ok(output) = TaskOutput::decode(bytes) {
                    *bytes = output.falsified().encode();
                    tracing::debug!(
                        "corrupted the result of {}#{}",
                        report.task.job,
                        report.task.index
                    );
                }
            }
        }
        batch
    }
}

impl<A: AgentApi> AgentApi for Lying<A> {
    async fn lease(&self, req: &LeaseRequest) -> Result<LeaseResponse, ClientError> {
        self.inner.lease(req).await
    }

    async fn results(&self, batch: &ResultBatch) -> Result<ResultAck, ClientError> {
        self.inner.results(&self.corrupt(batch)).await
    }

    async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAck, ClientError> {
        self.inner.heartbeat(hb).await
    }

    async fn release(&self, r: &Release) -> Result<ReleaseAck, ClientError> {
        self.inner.release(r).await
    }

    async fn module(&self, id: &ModuleId) -> Result<Vec<u8>, ClientError> {
        self.inner.module(id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musketeer_tasks::protocol::TaskReport;
    use musketeer_tasks::TaskInput;

    fn task(job: &str, index: u32, lease: u64) -> TaskRef {
        TaskRef {
            job: job.into(),
            index,
            lease,
        }
    }

    #[test]
    fn the_fraction_is_held_and_the_choice_is_stable() {
        let chosen = (0..10_000)
            .filter(|&i| is_chosen("agent-a", &task("job", i, 1), 0.25))
            .count();
        assert!((2_300..2_700).contains(&chosen), "{chosen} of 10000");
        for i in 0..100 {
            // A retry (a new lease) of the same task is chosen alike.
            assert_eq!(
                is_chosen("agent-a", &task("job", i, 1), 0.5),
                is_chosen("agent-a", &task("job", i, 99), 0.5)
            );
        }
        let differ = (0..1000)
            .filter(|&i| {
                is_chosen("agent-a", &task("j", i, 1), 0.5)
                    != is_chosen("agent-b", &task("j", i, 1), 0.5)
            })
            .count();
        assert!(differ > 300, "two liars should mostly disagree: {differ}");
        assert!((0..100).all(|i| is_chosen("a", &task("j", i, 1), 1.0)));
        assert!((0..100).all(|i| !is_chosen("a", &task("j", i, 1), 0.0)));
    }

    #[test]
    fn fractions_parse_from_zero_to_one() {
        assert_eq!(parse_fraction("0.25"), Ok(0.25));
        assert_eq!(parse_fraction("1"), Ok(1.0));
        assert!(parse_fraction("1.5").is_err());
        assert!(parse_fraction("-0.1").is_err());
        assert!(parse_fraction("NaN").is_err());
        assert!(parse_fraction("lots").unwrap_err().contains("fraction"));
    }

    #[test]
    fn every_kernel_output_is_falsified_but_still_decodes() {
        use musketeer_tasks::factorial::FactorialTask;
        use musketeer_tasks::fibonacci::FibonacciTask;
        use musketeer_tasks::matmul::{MatmulTask, RandomMatrices, Tile};
        use musketeer_tasks::wordcount::{WordcountOptions, WordcountTask};
        let inputs = [
            TaskInput::Fibonacci(FibonacciTask::List(vec![10, 20])),
            TaskInput::Factorial(FactorialTask { lo: 1, hi: 20 }),
            TaskInput::Matmul(MatmulTask::Random {
                tile: Tile {
                    row: 0,
                    rows: 2,
                    col: 0,
                    cols: 2,
                },
                matrices: RandomMatrices {
                    m: 2,
                    k: 3,
                    n: 2,
                    seed: 7,
                },
            }),
            TaskInput::Wordcount(WordcountTask {
                text: b"the cat the hat".to_vec(),
                options: WordcountOptions::default(),
            }),
        ];
        for input in inputs {
            let honest = input.run().unwrap();
            let lie = honest.clone().falsified();
            assert_ne!(lie, honest, "{}", input.kernel());
            assert_eq!(TaskOutput::decode(&lie.encode()).unwrap(), lie);
            assert_eq!(
                std::mem::discriminant(&lie),
                std::mem::discriminant(&honest)
            );
        }
    }

    #[test]
    fn only_chosen_done_reports_change() {
        let out = TaskInput::Fibonacci(FibonacciTask::List(vec![10]))
            .run()
            .unwrap()
            .encode();
        use musketeer_tasks::fibonacci::FibonacciTask;
        let batch = ResultBatch {
            results: vec![
                TaskReport {
                    task: task("j", 0, 1),
                    cpu_ms: 1,
                    outcome: TaskOutcome::Done(out.clone()),
                },
                TaskReport {
                    task: task("j", 1, 2),
                    cpu_ms: 1,
                    outcome: TaskOutcome::Failed("no".into()),
                },
            ],
        };
        let all = Lying::new((), "a", 1.0).corrupt(&batch);
        assert_ne!(all.results[0], batch.results[0]);
        assert_eq!(all.results[1], batch.results[1]);
        let none = Lying::new((), "a", 0.0).corrupt(&batch);
        assert_eq!(none, batch);
    }
}
