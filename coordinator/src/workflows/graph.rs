//! A workflow as submitted (`POST /v1/workflows`): its steps parsed and
//! the whole graph checked before anything is stored: names, `after`,
//! every `result_of` against [`super::inputs::SLOTS`], cycles, size, and
//! each step's job body by the kernel's own parser.

use std::collections::HashMap;

use musketeer_tasks::job::{parse_job, JobOptions};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::inputs::{self, Shape};
use crate::modules::ModuleUse;

/// Most steps in one workflow: each is a job row and a node every sweep
/// looks at, and a graph of thousands of jobs is a batch, not a workflow.
pub const MAX_STEPS: usize = 1000;

/// What is wrong with a workflow; each message names the step at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkflowError {
    /// The body is not JSON.
    #[error("the body is not a valid JSON workflow: {0}")]
    Malformed(String),
    /// The workflow as a whole is wrong (no steps, too many).
    #[error("invalid workflow: {0}")]
    Invalid(String),
    /// One step is wrong.
    #[error("step {step:?}: {message}")]
    Step {
        /// The step's name.
        step: String,
        /// What is wrong with it.
        message: String,
    },
}

impl WorkflowError {
    /// The API error code.
    pub fn code(&self) -> &'static str {
        match self {
            WorkflowError::Malformed(_) => "malformed_json",
            WorkflowError::Invalid(_) => "invalid_workflow",
            WorkflowError::Step { .. } => "invalid_step",
        }
    }

    /// 400 for a body that is not JSON, 422 for the rest.
    pub fn http_status(&self) -> u16 {
        match self {
            WorkflowError::Malformed(_) => 400,
            _ => 422,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    steps: Vec<StepBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepBody {
    name: String,
    #[serde(default)]
    after: Vec<String>,
    job: Value,
}

/// A checked step.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// Its name, unique in the workflow.
    pub name: String,
    /// Every step it needs: its `after` and those whose results it takes,
    /// in the order they were first named.
    pub needs: Vec<String>,
    /// Its job body as submitted, `result_of` in place.
    pub body: Map<String, Value>,
    /// Its job's kernel.
    pub kernel: String,
    /// Its job's options.
    pub options: JobOptions,
    /// The module it runs, if it is a wasm step.
    pub module: Option<ModuleUse>,
}

impl PlannedStep {
    /// Whether this step merges word counts on the coordinator.
    pub fn is_merge(&self) -> bool {
        inputs::references(&self.kernel, &self.body)
            .map(|r| r.iter().any(|(s, _)| s.shape == Shape::Merge))
            .unwrap_or(false)
    }
}

fn step_error(step: &str, message: impl Into<String>) -> WorkflowError {
    WorkflowError::Step {
        step: step.to_string(),
        message: message.into(),
    }
}

/// A step name: short and plain, so it reads well in messages and URLs.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// The options of a merge step (a word count of other steps' counts): the
/// job options, and `top`; the counting options belong to the sources.
fn check_merge(body: &Map<String, Value>) -> Result<JobOptions, String> {
    let mut probe = body.clone();
    probe.remove("merge");
    probe.insert("text".into(), Value::from("x"));
    let (spec, options) =
        parse_job(&serde_json::to_vec(&probe).unwrap_or_default()).map_err(|e| e.to_string())?;
    if let musketeer_tasks::JobSpec::Wordcount(w) = spec {
        let counting = musketeer_tasks::wordcount::WordcountOptions {
            top: w.options.top,
            ..Default::default()
        };
        if w.options != counting {
            return Err(
                "a merge takes only `top` beside the job options: `min_len`, `case_sensitive` and `split` belong to the steps it merges"
                    .into(),
            );
        }
    }
    Ok(options)
}

/// Parses and checks a workflow body.
pub fn parse_workflow(body: &[u8]) -> Result<Vec<PlannedStep>, WorkflowError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| WorkflowError::Malformed(e.to_string()))?;
    let body: Body = serde_json::from_value(value).map_err(|e| {
        WorkflowError::Invalid(format!(
            "{e}: give {{\"steps\":[{{\"name\",\"after\",\"job\"}},...]}}"
        ))
    })?;
    if body.steps.is_empty() {
        return Err(WorkflowError::Invalid(
            "`steps` is empty: give at least one".into(),
        ));
    }
    if body.steps.len() > MAX_STEPS {
        return Err(WorkflowError::Invalid(format!(
            "the workflow has {} steps; at most {MAX_STEPS} are allowed: split it into several workflows",
            body.steps.len()
        )));
    }
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (i, s) in body.steps.iter().enumerate() {
        if !is_plain_name(&s.name) {
            return Err(step_error(
                &s.name,
                "a step name is 1 to 64 letters, digits, `_`, `-` or `.`",
            ));
        }
        if index.insert(&s.name, i).is_some() {
            return Err(step_error(
                &s.name,
                "two steps have this name: give each its own",
            ));
        }
    }
    let mut steps = Vec::with_capacity(body.steps.len());
    for s in &body.steps {
        let name = &s.name;
        let Value::Object(job) = &s.job else {
            return Err(step_error(name, "`job` must be a JSON object: a job body"));
        };
        let kernel = job
            .get("kernel")
            .and_then(Value::as_str)
            .ok_or_else(|| step_error(name, "its job has no `kernel`"))?
            .to_string();
        let refs = inputs::references(&kernel, job).map_err(|e| step_error(name, e))?;
        let mut needs: Vec<String> = Vec::new();
        for dep in s.after.iter().chain(refs.iter().map(|(_, n)| n)) {
            if dep == name {
                return Err(step_error(
                    name,
                    "it names itself: a step cannot wait for its own result",
                ));
            }
            if !index.contains_key(dep.as_str()) {
                return Err(step_error(
                    name,
                    format!("it names step {dep:?}, which is not in the workflow"),
                ));
            }
            if !needs.contains(dep) {
                needs.push(dep.clone());
            }
        }
        for (slot, producer) in &refs {
            let p = &body.steps[index[producer.as_str()]];
            let p_kernel = p.job.get("kernel").and_then(Value::as_str).unwrap_or("?");
            if inputs::slot_from(slot.kernel, slot.field, p_kernel).is_none() {
                return Err(step_error(
                    name,
                    format!(
                        "`{}` takes the result of a {} step; step {producer:?} is a {p_kernel} job",
                        slot.field,
                        inputs::producers(slot.kernel, slot.field)
                    ),
                ));
            }
        }
        let (options, module) = if refs.iter().any(|(s, _)| s.shape == Shape::Merge) {
            (check_merge(job).map_err(|e| step_error(name, e))?, None)
        } else {
            // The kernel's own parser, on the body with stand-ins of the
            // right type where results will go.
            let mut probe = job.clone();
            for (slot, _) in &refs {
                probe.insert(slot.field.to_string(), inputs::placeholder(slot.shape));
            }
            let bytes = serde_json::to_vec(&probe).unwrap_or_default();
            let (spec, options) = parse_job(&bytes).map_err(|e| step_error(name, e.to_string()))?;
            (options, ModuleUse::of(&spec))
        };
        steps.push(PlannedStep {
            name: name.clone(),
            needs,
            body: job.clone(),
            kernel,
            options,
            module,
        });
    }
    if let Some(cycle) = find_cycle(&steps) {
        return Err(step_error(
            &cycle[0],
            format!(
                "the steps {} wait for each other in a cycle",
                cycle.join(" -> ")
            ),
        ));
    }
    Ok(steps)
}

/// A cycle of steps (first repeated at the end), if the graph has one.
fn find_cycle(steps: &[PlannedStep]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    // 0 unseen, 1 on the current path, 2 done. Iterative, so a 1,000-step
    // chain cannot overflow the stack.
    let mut mark = vec![0u8; steps.len()];
    for start in 0..steps.len() {
        if mark[start] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = 1;
        while let Some(top) = path.last_mut() {
            let (node, next) = *top;
            if let Some(dep) = steps[node].needs.get(next) {
                top.1 += 1;
                let d = index[dep.as_str()];
                match mark[d] {
                    0 => {
                        mark[d] = 1;
                        path.push((d, 0));
                    }
                    1 => {
                        let at = path.iter().position(|&(n, _)| n == d).unwrap_or(0);
                        let mut cycle: Vec<String> = path[at..]
                            .iter()
                            .map(|&(n, _)| steps[n].name.clone())
                            .collect();
                        cycle.push(steps[d].name.clone());
                        return Some(cycle);
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                path.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: serde_json::Value) -> WorkflowError {
        parse_workflow(&serde_json::to_vec(&body).unwrap()).unwrap_err()
    }

    fn fib(n: u64) -> serde_json::Value {
        serde_json::json!({"kernel":"fibonacci","n":[n]})
    }

    #[test]
    fn a_chain_parses_with_its_needs() {
        let steps = parse_workflow(
            br#"{"steps":[
                {"name":"ab","job":{"kernel":"matmul","a":[[1,2]],"b":[[3],[4]]}},
                {"name":"abc","job":{"kernel":"matmul","a":{"result_of":"ab"},"b":[[5]]}},
                {"name":"tail","after":["abc","ab"],"job":{"kernel":"factorial","n":5}}
            ]}"#,
        )
        .unwrap();
        assert_eq!(steps[1].needs, ["ab"]);
        assert_eq!(steps[2].needs, ["abc", "ab"]);
        assert!(!steps[1].is_merge());
    }

    #[test]
    fn bad_graphs_name_the_step() {
        let e = err(serde_json::json!({"steps":[{"name":"a","after":["a"],"job":fib(1)}]}));
        assert!(
            matches!(&e, WorkflowError::Step { step, .. } if step == "a"),
            "{e}"
        );
        assert!(e.to_string().contains("names itself"), "{e}");
        let e = err(serde_json::json!({"steps":[{"name":"a","after":["zz"],"job":fib(1)}]}));
        assert!(e.to_string().contains("\"zz\""), "{e}");
        let e = err(serde_json::json!({"steps":[
            {"name":"a","after":["c"],"job":fib(1)},
            {"name":"b","after":["a"],"job":fib(1)},
            {"name":"c","after":["b"],"job":fib(1)}]}));
        assert!(e.to_string().contains("a -> c -> b -> a"), "{e}");
        let e =
            err(serde_json::json!({"steps":[{"name":"a","job":fib(1)},{"name":"a","job":fib(2)}]}));
        assert!(e.to_string().contains("two steps"), "{e}");
        let e = err(serde_json::json!({"steps":[
            {"name":"f","job":fib(1)},
            {"name":"m","job":{"kernel":"matmul","a":{"result_of":"f"},"b":[[1]]}}]}));
        assert!(e.to_string().contains("step \"m\""), "{e}");
        assert!(e.to_string().contains("fibonacci job"), "{e}");
        let e = err(
            serde_json::json!({"steps":[{"name":"a","job":{"kernel":"fibonacci","n":[1],"priorty":1}}]}),
        );
        assert!(e.to_string().contains("priorty"), "{e}");
        let many: Vec<serde_json::Value> = (0..10_000)
            .map(|i| serde_json::json!({"name": format!("s{i}"), "job": fib(1)}))
            .collect();
        let e = err(serde_json::json!({"steps": many}));
        assert!(e.to_string().contains("10000 steps"), "{e}");
        assert_eq!(e.http_status(), 422);
    }

    #[test]
    fn a_long_chain_is_checked_without_recursion() {
        let steps: Vec<serde_json::Value> = (0..MAX_STEPS)
            .map(|i| {
                let after: Vec<String> =
                    (i > 0).then(|| format!("s{}", i - 1)).into_iter().collect();
                serde_json::json!({"name": format!("s{i}"), "after": after, "job": fib(1)})
            })
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"steps": steps})).unwrap();
        assert_eq!(parse_workflow(&body).unwrap().len(), MAX_STEPS);
    }

    #[test]
    fn merges_take_only_top() {
        let steps = parse_workflow(
            br#"{"steps":[
                {"name":"a","job":{"kernel":"wordcount","text":"x y"}},
                {"name":"all","job":{"kernel":"wordcount","merge":[{"result_of":"a"}],"top":3}}
            ]}"#,
        )
        .unwrap();
        assert!(steps[1].is_merge());
        let e = err(serde_json::json!({"steps":[
            {"name":"a","job":{"kernel":"wordcount","text":"x"}},
            {"name":"all","job":{"kernel":"wordcount","merge":[{"result_of":"a"}],"min_len":3}}]}));
        assert!(e.to_string().contains("only `top`"), "{e}");
    }
}
