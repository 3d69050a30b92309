//! A submitter's job body, as `POST /v1/jobs` takes it: parsed, validated,
//! planned; and when the plan is small, every task is run through its
//! encodings as the agent receives it, reduced, and rendered in every format.
//! Whatever the body, the answer is a job or a clear error: no panic, no
//! runaway allocation, no plan that cannot run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musketeer_tasks::job::parse_job;
use musketeer_tasks::kernel::{TaskInput, TaskOutput};

/// Plans with more estimated work than this (about 20 ms) are planned but
/// not run: the fuzzer hunts for wrong inputs, not for expensive ones, and a
/// legal body may ask for minutes of work.
const MAX_RUN_WORK: u64 = 20_000_000;
/// Nor are plans with more tasks than this run.
const MAX_RUN_TASKS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Ok((spec, options)) = parse_job(data) else {
        return;
    };
    let Ok(plan) = spec.plan_with(&options) else {
        return;
    };
    assert!(!plan.tasks.is_empty(), "a plan with no task never finishes");
    let work: u64 = plan.tasks.iter().map(|(_, c)| c.work).sum();
    if work > MAX_RUN_WORK || plan.tasks.len() > MAX_RUN_TASKS {
        return;
    }
    let mut outputs = Vec::with_capacity(plan.tasks.len());
    for (input, _) in &plan.tasks {
        // The coordinator stores the encoding; the agent decodes it.
        let input = TaskInput::decode(&input.encode()).expect("a planned input decodes");
        let output = input.run().expect("a planned task runs");
        outputs.push(TaskOutput::decode(&output.encode()).expect("an output decodes"));
    }
    let result = plan.reduce.reduce(outputs).expect("honest outputs reduce");
    for format in ["json", "tsv", "npy"] {
        if let Ok((bytes, _)) = result.render(format) {
            if format == "json" {
                serde_json::from_slice::<serde_json::Value>(&bytes).expect("the result is JSON");
            }
        }
    }
});
