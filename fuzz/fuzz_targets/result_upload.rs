//! An agent's result upload, as `POST /v1/agent/results` takes it: the
//! batch decoded and checked ([`ResultBatch::decode_upload`], shared with
//! the API), each output decoded as the scheduler does, and the outputs
//! reduced against an honest job's plan as the coordinator reduces them.
//! A hostile agent may fail a job's tasks; it must never crash or wedge the
//! coordinator.
//!
//! Half the inputs are raw uploads; the other half edit an honest upload
//! byte by byte, so the fuzzer reaches deep into well-formed batches
//! without a seed corpus.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use musketeer_tasks::job::parse_job;
use musketeer_tasks::kernel::{ReducePlan, TaskOutput};
use musketeer_tasks::protocol::{encode, ResultBatch, TaskOutcome, TaskRef, TaskReport};

/// As the API allows (four leases of 1024 tasks).
const MAX_REPORTS_PER_BATCH: usize = 4096;

/// Small honest jobs, one per kernel, several tasks where the kernel splits.
const JOBS: [&str; 5] = [
    r#"{"kernel":"fibonacci","n":[0,1,2,90,186,187,300,1000],"items_per_task":3}"#,
    r#"{"kernel":"fibonacci","range":{"start":180,"end":200},"items_per_task":4}"#,
    r#"{"kernel":"factorial","n":400}"#,
    r#"{"kernel":"matmul","random":{"m":6,"k":4,"n":5,"seed":42}}"#,
    r#"{"kernel":"wordcount","text":"the cat and the hat, don't stop","top":3}"#,
];

struct Honest {
    tasks: usize,
    reduce: ReducePlan,
    upload: Vec<u8>,
}

fn honest() -> &'static [Honest] {
    static JOBS_RUN: OnceLock<Vec<Honest>> = OnceLock::new();
    JOBS_RUN.get_or_init(|| {
        JOBS.iter()
            .map(|body| {
                let (spec, options) = parse_job(body.as_bytes()).unwrap();
                let plan = spec.plan_with(&options).unwrap();
                let results = plan
                    .tasks
                    .iter()
                    .enumerate()
                    .map(|(i, (input, _))| TaskReport {
                        task: TaskRef {
                            job: "0190b8a4-7f5e-7a3c-9d1e-0123456789ab".into(),
                            index: i as u32,
                            lease: 7 + i as u64,
                        },
                        cpu_ms: 1,
                        outcome: TaskOutcome::Done(input.run().unwrap().encode()),
                    })
                    .collect();
                Honest {
                    tasks: plan.tasks.len(),
                    reduce: plan.reduce,
                    upload: encode(&ResultBatch { results }).unwrap(),
                }
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let job = &honest()[(mode >> 1) as usize % JOBS.len()];
    let edited;
    let upload = if mode & 1 == 0 {
        rest
    } else {
        // Each 3 bytes overwrite one byte of the honest upload: 2 for where
        // (modulo its length), 1 for the value; a last lone byte cuts it.
        let mut bytes = job.upload.clone();
        let mut edits = rest.chunks_exact(3);
        for e in &mut edits {
            let at = u16::from_le_bytes([e[0], e[1]]) as usize % bytes.len();
            bytes[at] = e[2];
        }
        if let [cut, ..] = edits.remainder() {
            bytes.truncate(*cut as usize * bytes.len() / 255);
        }
        edited = bytes;
        &edited
    };
    let Ok(batch) = ResultBatch::decode_upload(upload, MAX_REPORTS_PER_BATCH) else {
        return;
    };
    // What was accepted encodes to an upload that is accepted as the same.
    let again = ResultBatch::decode_upload(&encode(&batch).unwrap(), MAX_REPORTS_PER_BATCH)
        .expect("an accepted batch, encoded again, is accepted");
    assert_eq!(again, batch);
    let unedited = mode & 1 == 1 && rest.is_empty();
    // As the store keeps them: the last output that decodes, per task of
    // the job; reports for tasks it does not have are stale.
    let mut outputs: Vec<Option<TaskOutput>> = vec![None; job.tasks];
    for report in batch.results {
        if let TaskOutcome::Done(bytes) = report.outcome {
            if let (Ok(out), Some(slot)) = (
                TaskOutput::decode(&bytes),
                outputs.get_mut(report.task.index as usize),
            ) {
                *slot = Some(out);
            }
        }
    }
    let Some(outputs) = outputs.into_iter().collect::<Option<Vec<_>>>() else {
        assert!(!unedited, "the honest upload covers every task");
        return;
    };
    let result = match job.reduce.reduce(outputs) {
        Ok(r) => r,
        Err(_) if !unedited => return,
        Err(e) => panic!("the honest upload does not reduce: {e}"),
    };
    for format in ["json", "tsv", "npy"] {
        let _ = result.render(format);
    }
    let _ = result.encode();
});
