//! One small sample job per kernel, for `musketeer-coordinator demo` and
//! for anyone trying the API: each runs in well under a second.

use serde_json::{json, Value};

/// A few short fables, written for Musketeer, for the word-count sample.
pub const SAMPLE_TEXT: &str = "\
The Lantern and the Moth

A moth lived in the rafters of a mill. Every evening the miller lit a \
lantern, and every evening the moth circled it, closer and closer, until \
its wings grew warm. \"Why do you follow the lantern?\" asked a spider \
from her corner. \"Because it shines brighter than anything else,\" said \
the moth. \"Brighter is not kinder,\" said the spider. The moth laughed \
and flew closer still, and that night it lost the tips of both wings. \
After that it rested by the window and watched the moonlight instead, \
which was quieter, and which never burned anyone.

The Heron Who Counted Fish

A heron stood in the shallows counting the fish that swam past. \"Seven, \
eight, nine,\" she said, \"and when there are twenty I shall eat.\" The \
fish heard her counting and swam past in a hurry, and the heron began \
again from one each time she lost her place. By sunset she had counted \
hundreds of fish and eaten none. A frog on a stone said, \"Neighbour, \
a small supper today is better than a great supper tomorrow.\" The heron \
did not answer, because she was counting.

The Three Builders

Three beavers built a dam together. The first worked quickly and carried \
the largest branches. The second worked slowly and chose every branch \
with care. The third talked a great deal about how dams should be built \
and carried almost nothing. When the spring flood came, the quick part \
of the dam bent, the careful part held, and the talking part was not \
there at all. Afterwards the three beavers agreed that the dam had been \
a shared success, although they did not agree about why.

The Patient Seed

A seed fell between two stones on a mountain path. Rain came, and wind, \
and the boots of travellers, and still the seed waited. \"Grow,\" said the \
wind, \"or you will never grow at all.\" \"Not yet,\" said the seed. When \
the warm weeks came it sent down one root, then another, and by summer a \
small green plant stood between the stones, holding them together, so \
that the travellers walked more safely than before.
";

/// One sample job body per kernel, named: a Fibonacci list, 20000!, a small
/// random matrix product and a word count of [`SAMPLE_TEXT`] split on white
/// space with `min_len` 5, as the original Celery demo counted.
pub fn sample_jobs() -> Vec<(&'static str, Value)> {
    vec![
        (
            "fibonacci",
            json!({"kernel": "fibonacci", "n": [10, 20, 30, 50, 90, 100, 187, 300, 1000]}),
        ),
        ("factorial", json!({"kernel": "factorial", "n": 20000})),
        (
            "matmul",
            json!({"kernel": "matmul", "random": {"m": 6, "k": 4, "n": 5, "seed": 42}}),
        ),
        (
            "wordcount",
            json!({
                "kernel": "wordcount",
                "text": SAMPLE_TEXT,
                "split": "whitespace",
                "min_len": 5,
                "top": 10
            }),
        ),
    ]
}

/// The job result, shortened for a terminal.
pub fn summary(kernel: &str, result: &Value) -> String {
    match kernel {
        "fibonacci" => {
            let values: Vec<&str> = result["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            format!("{} values: {}", values.len(), values.join(", "))
        }
        "factorial" => {
            let value = result["value"].as_str().unwrap_or("");
            format!(
                "{}! has {} digits: {}...{}",
                result["n"],
                result["digits"],
                &value[..value.len().min(24)],
                &value[value.len().saturating_sub(12)..]
            )
        }
        "matmul" => {
            let rows = result["c"].as_array().map(Vec::len).unwrap_or(0);
            let cols = result["c"][0].as_array().map(Vec::len).unwrap_or(0);
            format!(
                "C is {rows}x{cols}; C[0][0] = {}, C[{}][{}] = {}",
                result["c"][0][0],
                rows - 1,
                cols - 1,
                result["c"][rows - 1][cols - 1]
            )
        }
        "wordcount" => format!(
            "{} words, {} distinct; top: {}",
            result["total_words"], result["distinct"], result["top"]
        ),
        _ => {
            let text = result.to_string();
            match text.char_indices().nth(80) {
                Some((cut, _)) => format!("{}...", &text[..cut]),
                None => text,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::parse_job;

    #[test]
    fn every_sample_parses_plans_runs_and_renders() {
        let samples = sample_jobs();
        let kernels: Vec<_> = samples.iter().map(|(k, _)| *k).collect();
        assert_eq!(kernels, ["fibonacci", "factorial", "matmul", "wordcount"]);
        for (kernel, body) in samples {
            let (spec, _) = parse_job(body.to_string().as_bytes()).unwrap();
            assert_eq!(spec.kernel(), kernel);
            let plan = spec.plan().unwrap();
            let outputs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
            let result = plan.reduce.reduce(outputs).unwrap();
            let (json, ty) = result.render("json").unwrap();
            assert_eq!(ty, "application/json");
            let v: Value = serde_json::from_slice(&json).unwrap();
            assert!(v.is_object(), "{kernel}: {v}");
        }
    }

    #[test]
    fn sample_text_is_a_few_hundred_words() {
        let words = SAMPLE_TEXT.split_whitespace().count();
        assert!((250..800).contains(&words), "{words}");
    }
}
