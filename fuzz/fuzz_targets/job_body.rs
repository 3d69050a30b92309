//! A submitter's job body, as `POST /v1/jobs` takes it: parsed, validated,
//! planned; and when the plan is small, every task is run through its
//! encodings as the agent receives it, reduced, and rendered in every format.
//! Whatever the body, the answer is a job or a clear error: no panic, no
//! runaway allocation, no plan that cannot run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use musketeer_tasks::job::{parse_job, JobSpec};
use musketeer_tasks::kernel::{TaskInput, TaskOutput};
use musketeer_tasks::JobResult;

/// Plans with more estimated work than this (about 2 ms natively, tens of
/// milliseconds under the sanitizer) are planned but not run: the fuzzer
/// hunts for wrong inputs, not for expensive ones, and a legal body may ask
/// for minutes of work.
const MAX_RUN_WORK: u64 = 2_000_000;
/// Nor are plans with more tasks than this run.
const MAX_RUN_TASKS: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Ok((spec, options)) = parse_job(data) else {
        return;
    };
    // What the coordinator understood reads back the same: no field is
    // dropped or defaulted on the way.
    let mut again = serde_json::to_value(&spec).expect("a spec serialises");
    let opts = serde_json::to_value(&options).expect("options serialise");
    again
        .as_object_mut()
        .unwrap()
        .extend(opts.as_object().unwrap().clone());
    let (spec2, options2) =
        parse_job(&serde_json::to_vec(&again).unwrap()).expect("a parsed job parses again");
    assert_eq!(spec2, spec);
    assert_eq!(options2, options);

    let Ok(plan) = spec.plan_with(&options) else {
        return;
    };
    assert!(!plan.tasks.is_empty(), "a plan with no task never finishes");
    for (input, cost) in &plan.tasks {
        // Agents size batches by the cost the input itself reports.
        assert_eq!(input.cost(), *cost, "a task's cost is not its input's");
    }
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
    if let (JobSpec::Fibonacci(job), JobResult::Fibonacci(r)) = (&spec, &result) {
        assert_eq!(
            r.values.iter().count() as u64,
            job.item_count(),
            "a value per index"
        );
    }
    for format in ["json", "tsv", "npy"] {
        if let Ok((bytes, _)) = result.render(format) {
            if format == "json" {
                serde_json::from_slice::<serde_json::Value>(&bytes).expect("the result is JSON");
            }
        }
    }
});
