//! Where a step's job may take another step's result (`{"result_of":
//! "name"}`), what kind of step that must be, and how the value is fed in
//! on the coordinator once the result exists. One table, [`SLOTS`], decides
//! all three: submission checks against it, release substitutes by it.

use std::collections::HashMap;

use musketeer_tasks::wordcount::{WordcountOptions, WordcountOutput, WordcountReduce};
use musketeer_tasks::{JobResult, TaskOutput};
use serde_json::{Map, Value};

/// What a slot takes from the producing step's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A matmul result's matrix `c`, as an operand.
    Matrix,
    /// A Fibonacci result's `values`, as integers (indices, or a wasm
    /// job's items); a value past 64 bits fails the step with the reason,
    /// as one past the consumer's limits does.
    Integers,
    /// A wasm result's `values` (reduce `values`), each output as it is.
    Outputs,
    /// Word counts to merge: a list of references, merged on the coordinator.
    Merge,
}

/// A field of a kernel's job body that may stand for a step's result of
/// one kind. A field may have several slots, one per producing kernel;
/// they agree on whether the field is a list of references (a merge).
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// The consuming job's kernel.
    pub kernel: &'static str,
    /// The body field.
    pub field: &'static str,
    /// The kernel the producing step must run.
    pub producer: &'static str,
    /// What is taken from its result.
    pub shape: Shape,
}

/// Every place a result may go. A chain of matmuls, Fibonacci values fed
/// back as indices or as a wasm job's items, a wasm job's outputs as the
/// next one's items, and a chord of word counts merged into one.
pub const SLOTS: &[Slot] = &[
    Slot {
        kernel: "matmul",
        field: "a",
        producer: "matmul",
        shape: Shape::Matrix,
    },
    Slot {
        kernel: "matmul",
        field: "b",
        producer: "matmul",
        shape: Shape::Matrix,
    },
    Slot {
        kernel: "fibonacci",
        field: "n",
        producer: "fibonacci",
        shape: Shape::Integers,
    },
    Slot {
        kernel: "wasm",
        field: "items",
        producer: "fibonacci",
        shape: Shape::Integers,
    },
    Slot {
        kernel: "wasm",
        field: "items",
        producer: "wasm",
        shape: Shape::Outputs,
    },
    Slot {
        kernel: "wordcount",
        field: "merge",
        producer: "wordcount",
        shape: Shape::Merge,
    },
];

/// The slots, as a sentence for error messages: each field once, with
/// the kernels whose results it takes.
pub fn slots_sentence() -> String {
    let mut fields: Vec<(&str, &str, Vec<&str>)> = Vec::new();
    for s in SLOTS {
        match fields
            .iter_mut()
            .find(|(k, f, _)| *k == s.kernel && *f == s.field)
        {
            Some((_, _, from)) => from.push(s.producer),
            None => fields.push((s.kernel, s.field, vec![s.producer])),
        }
    }
    fields
        .iter()
        .map(|(k, f, from)| format!("{k} `{f}` (from a {} step)", from.join(" or ")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first slot of `field` in a `kernel` job, if results may go there.
pub fn slot(kernel: &str, field: &str) -> Option<&'static Slot> {
    SLOTS
        .iter()
        .find(|s| s.kernel == kernel && s.field == field)
}

/// The slot of `field` in a `kernel` job for a result of `producer`.
pub fn slot_from(kernel: &str, field: &str, producer: &str) -> Option<&'static Slot> {
    SLOTS
        .iter()
        .find(|s| s.kernel == kernel && s.field == field && s.producer == producer)
}

/// The kernels whose results `field` of a `kernel` job takes, as words.
pub fn producers(kernel: &str, field: &str) -> String {
    SLOTS
        .iter()
        .filter(|s| s.kernel == kernel && s.field == field)
        .map(|s| s.producer)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The step a `{"result_of":"name"}` value names, if it is one.
pub fn reference(v: &Value) -> Option<&str> {
    match v {
        Value::Object(m) if m.len() == 1 => m.get("result_of")?.as_str(),
        _ => None,
    }
}

/// Whether `result_of` appears anywhere in `v`.
fn mentions_result_of(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("result_of") || m.values().any(mentions_result_of),
        Value::Array(a) => a.iter().any(mentions_result_of),
        _ => false,
    }
}

/// The references of a job body: (slot, step named), in field order.
/// Errors say where a `result_of` stands that no slot allows.
pub fn references(
    kernel: &str,
    body: &Map<String, Value>,
) -> Result<Vec<(&'static Slot, String)>, String> {
    let mut refs = Vec::new();
    for (field, v) in body {
        let items: Vec<&Value> = match v {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        let named: Vec<Option<&str>> = items.iter().map(|v| reference(v)).collect();
        let is_ref = match (v, named.iter().all(Option::is_some)) {
            (Value::Array(a), true) => !a.is_empty(),
            (Value::Array(_), false) => false,
            (_, all) => all,
        };
        if !is_ref {
            if mentions_result_of(v) {
                return Err(format!(
                    "`result_of` in `{field}` is not a place a {kernel} job takes a step's result: results go into {}",
                    slots_sentence()
                ));
            }
            continue;
        }
        let Some(slot) = slot(kernel, field) else {
            return Err(format!(
                "`{field}` of a {kernel} job cannot take a step's result: results go into {}",
                slots_sentence()
            ));
        };
        let list = matches!(v, Value::Array(_));
        if list != (slot.shape == Shape::Merge) {
            return Err(if list {
                format!("`{field}` takes one `{{\"result_of\":...}}`, not a list")
            } else {
                format!("`{field}` takes a list of `{{\"result_of\":...}}`")
            });
        }
        for name in named.into_iter().flatten() {
            refs.push((slot, name.to_string()));
        }
    }
    if let Some(field) = body
        .keys()
        .find(|f| slot(kernel, f).map(|s| s.shape) == Some(Shape::Merge))
    {
        if refs.iter().all(|(s, _)| s.field != field) {
            return Err(format!(
                "`{field}` takes a non-empty list of `{{\"result_of\":...}}`, one per step to merge"
            ));
        }
    }
    Ok(refs)
}

/// A stand-in for a slot's value, of the right type, so that the rest of
/// a body can be checked by the kernel's own parser at submission.
pub fn placeholder(shape: Shape) -> Value {
    match shape {
        Shape::Matrix => serde_json::json!([[0.0]]),
        Shape::Integers | Shape::Outputs => serde_json::json!([0]),
        Shape::Merge => Value::Null,
    }
}

/// The value a slot takes from its producer's result.
pub fn value_of(shape: Shape, step: &str, result: &JobResult) -> Result<Value, String> {
    let (bytes, _) = result
        .render("json")
        .map_err(|e| format!("the result of step {step:?} cannot be read: {e}"))?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the result of step {step:?} cannot be read: {e}"))?;
    match shape {
        Shape::Matrix => json
            .get("c")
            .cloned()
            .ok_or_else(|| format!("the result of step {step:?} is not a matrix")),
        Shape::Outputs => json
            .get("values")
            .filter(|v| v.is_array())
            .cloned()
            .ok_or_else(|| {
                format!("the result of step {step:?} is one value, not a list: give that step `\"reduce\":\"values\"`")
            }),
        Shape::Integers => json
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the result of step {step:?} is not a list of values"))?
            .iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .map(Value::from)
                    .ok_or_else(|| {
                        let s = v.as_str().unwrap_or_default();
                        let shown = if s.len() > 24 { &s[..24] } else { s };
                        format!(
                            "a value of step {step:?} ({shown}{}) is too large for a 64-bit integer",
                            if s.len() > 24 { "..." } else { "" }
                        )
                    })
            })
            .collect::<Result<Vec<Value>, String>>()
            .map(Value::Array),
        Shape::Merge => Err("a merge is not a value".into()),
    }
}

/// A step's job body with every reference replaced by its value.
pub fn substitute(
    kernel: &str,
    body: &Map<String, Value>,
    results: &HashMap<String, JobResult>,
) -> Result<Map<String, Value>, String> {
    let mut out = body.clone();
    for (slot, name) in references(kernel, body)? {
        if slot.shape == Shape::Merge {
            continue;
        }
        let result = results
            .get(&name)
            .ok_or_else(|| format!("the result of step {name:?} is gone"))?;
        let producer = result.kind().name();
        let slot = slot_from(kernel, slot.field, producer).ok_or_else(|| {
            format!(
                "step {name:?} is a {producer} job, whose result `{}` cannot take",
                slot.field
            )
        })?;
        out.insert(slot.field.to_string(), value_of(slot.shape, &name, result)?);
    }
    Ok(out)
}

/// Merges word-count results into one, with the word-count kernel's own
/// reduce: equal to counting the concatenation of their texts (a word
/// never straddles two texts).
pub fn merge_counts(sources: Vec<(String, JobResult)>, top: usize) -> Result<JobResult, String> {
    let outputs = sources
        .into_iter()
        .map(|(name, r)| match r {
            JobResult::Wordcount(r) => Ok(TaskOutput::Wordcount(WordcountOutput {
                total_words: r.total_words,
                counts: r.counts,
            })),
            other => Err(format!(
                "step {name:?} is a {} job, not a word count",
                other.kind().name()
            )),
        })
        .collect::<Result<Vec<_>, String>>()?;
    let reduce = WordcountReduce {
        options: WordcountOptions {
            top,
            ..WordcountOptions::default()
        },
    };
    reduce.reduce(outputs).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn references_are_found_only_in_slots() {
        let b = body(serde_json::json!({"kernel":"matmul","a":{"result_of":"x"},"b":[[1.0]]}));
        let refs = references("matmul", &b).unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!((refs[0].0.field, refs[0].1.as_str()), ("a", "x"));
        let b = body(serde_json::json!({"kernel":"factorial","n":{"result_of":"x"}}));
        let e = references("factorial", &b).unwrap_err();
        assert!(e.contains("cannot take a step's result"), "{e}");
        let b = body(serde_json::json!({"kernel":"matmul","labels":{"k":{"result_of":"x"}}}));
        assert!(references("matmul", &b).unwrap_err().contains("`labels`"));
        let b = body(
            serde_json::json!({"kernel":"wordcount","merge":[{"result_of":"a"},{"result_of":"b"}]}),
        );
        let names: Vec<String> = references("wordcount", &b)
            .unwrap()
            .into_iter()
            .map(|r| r.1)
            .collect();
        assert_eq!(names, ["a", "b"]);
        let b = body(serde_json::json!({"kernel":"wordcount","merge":[]}));
        assert!(references("wordcount", &b)
            .unwrap_err()
            .contains("non-empty"));
        let b = body(serde_json::json!({"kernel":"wordcount","merge":{"result_of":"a"}}));
        assert!(references("wordcount", &b).unwrap_err().contains("a list"));
    }

    #[test]
    fn values_become_indices_and_too_large_ones_are_named() {
        let r = JobResult::Fibonacci(musketeer_tasks::fibonacci::FibonacciResult {
            values: musketeer_tasks::fibonacci::FibonacciOutput {
                digits: "5589".into(),
                ends: vec![1, 2, 4],
            },
        });
        assert_eq!(
            value_of(Shape::Integers, "f", &r).unwrap(),
            serde_json::json!([5, 5, 89])
        );
    }
}
