//! Word count: a map over chunks of text, a combiner per chunk, and a merge.

use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{Cost, JobPlan, KernelError};

/// How words are found.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SplitRule {
    /// Maximal runs of alphanumeric characters, joined across one apostrophe.
    #[default]
    Alphanumeric,
    /// Remove `,` and `.`, split on white space, keep case (the Celery demo).
    Whitespace,
}

/// Word count options, in a JSON body or as query parameters of the streamed form.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct WordcountOptions {
    /// Words shorter than this many characters are dropped.
    pub min_len: usize,
    /// How many of the most frequent words the JSON result lists.
    pub top: usize,
    /// Keep case instead of lower-casing (alphanumeric rule only).
    pub case_sensitive: bool,
    /// How words are found.
    pub split: SplitRule,
}

impl Default for WordcountOptions {
    fn default() -> Self {
        WordcountOptions {
            min_len: 1,
            top: 10,
            case_sensitive: false,
            split: SplitRule::Alphanumeric,
        }
    }
}

/// The JSON job body: `{"kernel":"wordcount","text":"...", options..}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WordcountJob {
    /// The text.
    pub text: String,
    /// The options, beside `text` in the body.
    #[serde(flatten)]
    pub options: WordcountOptions,
}

/// One task: one chunk of the text, cut where no word can straddle the cut.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordcountTask {
    /// The chunk's bytes (invalid UTF-8 is replaced by U+FFFD when counted).
    #[serde(with = "serde_bytes")]
    pub text: Vec<u8>,
    /// The job's options.
    pub options: WordcountOptions,
}

/// One chunk's counts, combined (one entry per distinct word).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordcountOutput {
    /// Words kept in the chunk, with repeats.
    pub total_words: u64,
    /// Each distinct kept word and its count, in no particular order.
    pub counts: Vec<(String, u64)>,
}

/// How to reduce: merge, sort, cut.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordcountReduce {
    /// The job's options (`top` is applied when rendering JSON).
    pub options: WordcountOptions,
}

/// The result: every word, count descending then word ascending by code point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordcountResult {
    /// Words kept, with repeats.
    pub total_words: u64,
    /// How many of the first `counts` the JSON rendering lists.
    pub top: usize,
    /// Every distinct word and its count, sorted.
    pub counts: Vec<(String, u64)>,
}
