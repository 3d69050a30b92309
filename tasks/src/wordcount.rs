//! Word count: a map over chunks of text, a combiner per chunk, and a merge.
//!
//! The text is cut into chunks only right after a byte that ends a word
//! under both rules and never sits inside a UTF-8 sequence, so counting the
//! chunks separately and merging the counts equals counting the whole text.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{Cost, JobPlan, KernelError, ReducePlan, TaskInput, TaskOutput};
use crate::result::JobResult;

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
///
/// `min_len` 0 means the same as 1 (every word has at least one character);
/// `top` 0 is allowed and gives an empty `top` list (the TSV rendering still
/// lists every word).
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

/// The chunk size the planner and the streamed upload aim for: at the map's
/// speed (see the cost model) about 20 ms of one core, near a task's target
/// work, and small enough that a task's conservative memory estimate stays
/// near 100 MiB, which a Raspberry Pi can hold.
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;

/// The longest stretch of text without a place to cut. Longer means one
/// "word" of more than 64 MiB (no white space at all, or under the
/// alphanumeric rule no punctuation either): surely not prose, and a chunk
/// that large would not fit a small agent.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;

// Cost model, calibrated in release mode on the reference machine (see
// `benches/kernels.rs`); work units are nanoseconds on one core.
/// Per byte of text, ASCII prose with a large vocabulary (scan, hash, count).
const BYTE_WORK: f64 = 4.5;
/// Extra per non-ASCII byte (char decoding, Unicode classes, lower-casing).
const NON_ASCII_BYTE_WORK: f64 = 16.0;
/// Fixed per-task work (the map's set-up, the final sort of a small chunk).
const TASK_BASE_WORK: f64 = 20_000.0;
/// Worst-case bytes of memory per byte of text: a chunk of short distinct
/// words costs about 80 bytes per word in the hash map, its sorted copy and
/// the encoded output, plus the lossy-decoded copy of the text.
const MEM_PER_BYTE: u64 = 24;

/// The cost of counting `text`: linear in its bytes, more for non-ASCII.
pub fn chunk_cost(text: &[u8]) -> Cost {
    let non_ascii = text.iter().filter(|&&b| b >= 0x80).count();
    Cost {
        work: (TASK_BASE_WORK
            + BYTE_WORK * text.len() as f64
            + NON_ASCII_BYTE_WORK * non_ascii as f64) as u64,
        mem_bytes: MEM_PER_BYTE * text.len() as u64 + (1 << 20),
    }
}

/// A byte after which a chunk may always be cut: ASCII white space, which
/// ends a word under both rules and never sits inside a UTF-8 sequence.
fn is_cut_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// A byte after which the alphanumeric rule may cut when the text has no
/// white space: ASCII, not alphanumeric and not an apostrophe, so it ends a
/// word and cannot join two.
fn is_fallback_cut_byte(b: u8) -> bool {
    b.is_ascii() && !b.is_ascii_alphanumeric() && b != b'\''
}

/// Where to cut a chunk that starts at `data[0]`: right after the last
/// white space of the first `target` bytes; failing that (alphanumeric rule
/// only), after the last other ASCII separator; failing that, after the
/// first place to cut beyond `target`. `None` when `data` has no place to
/// cut at all.
fn find_cut(data: &[u8], target: usize, split: SplitRule) -> Option<usize> {
    let head = &data[..target.min(data.len())];
    if let Some(p) = head.iter().rposition(|&b| is_cut_byte(b)) {
        return Some(p + 1);
    }
    let fallback = split == SplitRule::Alphanumeric;
    if fallback {
        if let Some(p) = head.iter().rposition(|&b| is_fallback_cut_byte(b)) {
            return Some(p + 1);
        }
    }
    first_cut(&data[head.len()..], split).map(|p| head.len() + p + 1)
}

/// The first place to cut in `data` (white space, or under the
/// alphanumeric rule any ASCII separator), as the index of the byte to cut after.
fn first_cut(data: &[u8], split: SplitRule) -> Option<usize> {
    match split {
        SplitRule::Alphanumeric => data.iter().position(|&b| is_fallback_cut_byte(b)),
        SplitRule::Whitespace => data.iter().position(|&b| is_cut_byte(b)),
    }
}

fn word_too_long() -> JobError {
    JobError::TooLarge(format!(
        "a single word is longer than {} MiB (the text has no white space or punctuation to \
         split it at): add line breaks or spaces",
        MAX_CHUNK_BYTES >> 20
    ))
}

fn text_empty() -> JobError {
    JobError::Invalid("text is empty: give at least one byte of text".into())
}

/// The byte ranges of `text`'s chunks, exactly as a [`Chunker`] fed the
/// whole text would cut them, without copying.
pub fn chunk_ranges(
    text: &[u8],
    split: SplitRule,
    target: usize,
) -> Result<Vec<std::ops::Range<usize>>, JobError> {
    let target = target.clamp(1, MAX_CHUNK_BYTES);
    let mut out = Vec::with_capacity(text.len() / target + 1);
    let mut start = 0;
    while start < text.len() {
        let rest = &text[start..];
        if rest.len() < target {
            out.push(start..text.len());
            break;
        }
        match find_cut(rest, target, split) {
            Some(c) if c <= MAX_CHUNK_BYTES => {
                out.push(start..start + c);
                start += c;
            }
            Some(_) => return Err(word_too_long()),
            None if rest.len() <= MAX_CHUNK_BYTES => {
                out.push(start..text.len());
                break;
            }
            None => return Err(word_too_long()),
        }
    }
    Ok(out)
}

/// Cuts a text that arrives in pieces (a streamed upload) into chunks, the
/// same chunks whatever the pieces' sizes, copying each byte once (the few
/// bytes of a word cut short move to the next chunk).
#[derive(Debug)]
pub struct Chunker {
    split: SplitRule,
    target: usize,
    buf: Vec<u8>,
    /// Set once `buf` reached `target` bytes with no place to cut in them:
    /// then the chunk ends at the first place to cut that arrives.
    overflowing: bool,
    seen: u64,
}

impl Chunker {
    /// A chunker for a job with these options, aiming at `target_chunk_bytes`
    /// (clamped to 1..=[`MAX_CHUNK_BYTES`]; [`DEFAULT_CHUNK_BYTES`] is the usual choice).
    pub fn new(options: WordcountOptions, target_chunk_bytes: usize) -> Chunker {
        let target = target_chunk_bytes.clamp(1, MAX_CHUNK_BYTES);
        Chunker {
            split: options.split,
            target,
            buf: Vec::new(),
            overflowing: false,
            seen: 0,
        }
    }

    /// Bytes pushed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Takes the next piece of the text; returns the chunks it completed.
    pub fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, JobError> {
        self.seen += data.len() as u64;
        let mut out = Vec::new();
        while !data.is_empty() {
            if !self.overflowing {
                if self.buf.capacity() < self.target {
                    self.buf.reserve_exact(self.target - self.buf.len());
                }
                let take = (self.target - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buf.len() < self.target {
                    break;
                }
                let head = &self.buf[..];
                let cut = head.iter().rposition(|&b| is_cut_byte(b)).or_else(|| {
                    (self.split == SplitRule::Alphanumeric)
                        .then(|| head.iter().rposition(|&b| is_fallback_cut_byte(b)))
                        .flatten()
                });
                match cut {
                    Some(p) => {
                        let mut next = Vec::with_capacity(self.target);
                        next.extend_from_slice(&self.buf[p + 1..]);
                        self.buf.truncate(p + 1);
                        out.push(std::mem::replace(&mut self.buf, next));
                    }
                    None => self.overflowing = true,
                }
                continue;
            }
            match first_cut(data, self.split) {
                Some(p) => {
                    if self.buf.len() + p + 1 > MAX_CHUNK_BYTES {
                        return Err(word_too_long());
                    }
                    self.buf.extend_from_slice(&data[..=p]);
                    data = &data[p + 1..];
                    out.push(std::mem::take(&mut self.buf));
                    self.overflowing = false;
                }
                None => {
                    if self.buf.len() + data.len() > MAX_CHUNK_BYTES {
                        return Err(word_too_long());
                    }
                    self.buf.extend_from_slice(data);
                    data = &[];
                }
            }
        }
        Ok(out)
    }

    /// Ends the text: the last chunk, if any bytes are left; an error if the
    /// text was empty.
    pub fn finish(self) -> Result<Option<Vec<u8>>, JobError> {
        if self.seen == 0 {
            return Err(text_empty());
        }
        Ok((!self.buf.is_empty()).then_some(self.buf))
    }
}

/// The task that counts one chunk, with its cost (the streamed path's planner).
pub fn task_for_chunk(options: &WordcountOptions, chunk: Vec<u8>) -> (TaskInput, Cost) {
    let cost = chunk_cost(&chunk);
    (
        TaskInput::Wordcount(WordcountTask {
            text: chunk,
            options: options.clone(),
        }),
        cost,
    )
}

/// The reduce plan of a word count with these options.
pub fn reduce_plan(options: &WordcountOptions) -> ReducePlan {
    ReducePlan::Wordcount(WordcountReduce {
        options: options.clone(),
    })
}

impl WordcountJob {
    /// Validates the body and cuts the text into chunks of about
    /// [`DEFAULT_CHUNK_BYTES`].
    pub fn plan(&self) -> Result<JobPlan, JobError> {
        if self.text.is_empty() {
            return Err(text_empty());
        }
        let mut chunker = Chunker::new(self.options.clone(), DEFAULT_CHUNK_BYTES);
        let mut chunks = chunker.push(self.text.as_bytes())?;
        chunks.extend(chunker.finish()?);
        Ok(JobPlan {
            tasks: chunks
                .into_iter()
                .map(|c| task_for_chunk(&self.options, c))
                .collect(),
            reduce: reduce_plan(&self.options),
        })
    }
}

/// A word as a hash-map key: short words (nearly all of them) live inside
/// the map's slot, so comparing a key during a lookup touches no other memory.
#[derive(Clone, Debug)]
enum Key {
    /// Up to [`INLINE`] bytes, in place.
    Inline(u8, [u8; INLINE]),
    /// A longer word.
    Heap(Box<[u8]>),
}

/// The longest word kept in place: the key stays 24 bytes, like a String.
const INLINE: usize = 22;

impl Key {
    fn new(word: &[u8]) -> Key {
        if word.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..word.len()].copy_from_slice(word);
            Key::Inline(word.len() as u8, buf)
        } else {
            Key::Heap(word.into())
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Key::Inline(len, buf) => &buf[..*len as usize],
            Key::Heap(b) => b,
        }
    }

    /// The word as a String; keys are only ever made from whole UTF-8 words.
    fn into_string(self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.bytes()
    }
}

// Hash and Eq exactly as `[u8]` does, as `Borrow` requires.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.bytes().hash(state)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.bytes() == other.bytes()
    }
}

impl Eq for Key {}

/// Counts per word; ahash is several times faster than SipHash on short
/// keys, and its per-process random keys still resist crafted collisions.
type Counts = HashMap<Key, u64, ahash::RandomState>;

fn new_counts() -> Counts {
    HashMap::with_hasher(ahash::RandomState::new())
}

/// Adds `from` into `into`, reusing the larger map.
fn merge_counts(into: &mut Counts, mut from: Counts) {
    if from.len() > into.len() {
        std::mem::swap(into, &mut from);
    }
    for (w, c) in from {
        *into.entry(w).or_insert(0) += c;
    }
}

/// The first 8 bytes of a word as a big-endian number (zero-padded): words
/// compare like their prefixes whenever the prefixes differ, so sorting by
/// prefix first rarely has to follow a pointer to compare whole words.
fn prefix(word: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = word.len().min(8);
    b[..n].copy_from_slice(&word[..n]);
    u64::from_be_bytes(b)
}

/// Sorts by word ascending (byte order of UTF-8 is code point order).
fn sort_by_word(counts: Counts) -> Vec<(String, u64)> {
    let mut keyed: Vec<(u64, Key, u64)> = counts
        .into_iter()
        .map(|(w, c)| (prefix(w.bytes()), w, c))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.bytes().cmp(b.1.bytes())));
    keyed
        .into_iter()
        .map(|(_, w, c)| (w.into_string(), c))
        .collect()
}

/// Sorts into the result's order: count descending, then word ascending.
fn sort_by_count(counts: impl IntoIterator<Item = (String, u64)>) -> Vec<(String, u64)> {
    let mut keyed: Vec<(std::cmp::Reverse<u64>, u64, String)> = counts
        .into_iter()
        .map(|(w, c)| (std::cmp::Reverse(c), prefix(w.as_bytes()), w))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(c, _, w)| (w, c.0)).collect()
}

/// ASCII bytes that are letters or digits.
const ASCII_ALNUM: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        t[i] = (i as u8).is_ascii_alphanumeric();
        i += 1;
    }
    t
};

/// A chunk's running counts, with the scratch buffer for lower-casing.
struct Counter {
    counts: Counts,
    total: u64,
    min_len: usize,
    lower: bool,
    scratch: Vec<u8>,
}

impl Counter {
    fn new(options: &WordcountOptions) -> Counter {
        Counter {
            counts: new_counts(),
            total: 0,
            min_len: options.min_len.max(1),
            lower: !options.case_sensitive && options.split == SplitRule::Alphanumeric,
            scratch: Vec::new(),
        }
    }

    /// Counts one word; allocates only for a word not seen before.
    fn add(&mut self, word: &[u8]) {
        self.total += 1;
        if let Some(c) = self.counts.get_mut(word) {
            *c += 1;
        } else {
            self.counts.insert(Key::new(word), 1);
        }
    }

    /// A word of the alphanumeric rule, as it appears in the text.
    fn add_alnum(&mut self, word: &str, ascii: bool) {
        let chars = if ascii {
            word.len()
        } else {
            word.chars().count()
        };
        if chars < self.min_len {
            return;
        }
        if !self.lower || (ascii && !word.bytes().any(|b| b.is_ascii_uppercase())) {
            self.add(word.as_bytes());
        } else if ascii {
            let mut s = std::mem::take(&mut self.scratch);
            s.clear();
            s.extend(word.bytes().map(|b| b.to_ascii_lowercase()));
            self.add(&s);
            self.scratch = s;
        } else if word.contains('Σ') {
            // Final sigma depends on context: only the whole word says.
            let s = word.to_lowercase();
            self.add(s.as_bytes());
        } else {
            // Char by char is `str::to_lowercase` for words without Σ, and
            // needs no allocation.
            let mut s = std::mem::take(&mut self.scratch);
            s.clear();
            let mut utf8 = [0u8; 4];
            for c in word.chars().flat_map(char::to_lowercase) {
                s.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
            self.add(&s);
            self.scratch = s;
        }
    }

    /// Counts the words of `text` under the alphanumeric rule.
    fn count_alnum(&mut self, text: &str) {
        let b = text.as_bytes();
        let n = b.len();
        let mut i = 0;
        // The char at `i` (a char boundary): its length, and whether it is alphanumeric.
        let at = |i: usize| -> (usize, bool) {
            let c = b[i];
            if c < 0x80 {
                (1, ASCII_ALNUM[c as usize])
            } else {
                let ch = text[i..].chars().next().unwrap_or('\u{FFFD}');
                (ch.len_utf8(), ch.is_alphanumeric())
            }
        };
        while i < n {
            let c = b[i];
            if c < 0x80 && !ASCII_ALNUM[c as usize] {
                i += 1;
                continue;
            }
            let (len, alnum) = at(i);
            if !alnum {
                i += len;
                continue;
            }
            let start = i;
            let mut ascii = c < 0x80;
            i += len;
            loop {
                // The rest of the alphanumeric run, ASCII first.
                while i < n {
                    let c = b[i];
                    if c < 0x80 {
                        if ASCII_ALNUM[c as usize] {
                            i += 1;
                            continue;
                        }
                        break;
                    }
                    let (len, alnum) = at(i);
                    if !alnum {
                        break;
                    }
                    ascii = false;
                    i += len;
                }
                // One apostrophe between two alphanumeric chars joins.
                let apos = if i < n && b[i] == b'\'' {
                    1
                } else if b[i..].starts_with("\u{2019}".as_bytes()) {
                    3
                } else {
                    0
                };
                if apos > 0 && i + apos < n && at(i + apos).1 {
                    ascii &= apos == 1;
                    i += apos;
                    continue;
                }
                break;
            }
            self.add_alnum(&text[start..i], ascii);
        }
    }

    /// Counts the tokens of `text` under the white-space rule.
    fn count_whitespace(&mut self, text: &str) {
        let b = text.as_bytes();
        let n = b.len();
        let mut i = 0;
        while i < n {
            // Skip white space.
            let c = b[i];
            if c < 0x80 {
                if is_cut_byte(c) {
                    i += 1;
                    continue;
                }
            } else {
                let ch = text[i..].chars().next().unwrap_or('\u{FFFD}');
                if ch.is_whitespace() {
                    i += ch.len_utf8();
                    continue;
                }
            }
            // A token: up to the next white space.
            let start = i;
            let mut ascii = true;
            let mut punct = false;
            while i < n {
                let c = b[i];
                if c < 0x80 {
                    if is_cut_byte(c) {
                        break;
                    }
                    punct |= c == b',' || c == b'.';
                    i += 1;
                } else {
                    let ch = text[i..].chars().next().unwrap_or('\u{FFFD}');
                    if ch.is_whitespace() {
                        break;
                    }
                    ascii = false;
                    i += ch.len_utf8();
                }
            }
            let token = &text[start..i];
            if !punct {
                let chars = if ascii {
                    token.len()
                } else {
                    token.chars().count()
                };
                if chars >= self.min_len {
                    self.add(token.as_bytes());
                }
            } else {
                let mut s = std::mem::take(&mut self.scratch);
                s.clear();
                // Dropping ASCII bytes keeps UTF-8 whole.
                s.extend(token.bytes().filter(|&b| b != b',' && b != b'.'));
                let chars = if ascii {
                    s.len()
                } else {
                    s.iter().filter(|&&b| (b as i8) >= -0x40).count()
                };
                if chars >= self.min_len {
                    self.add(&s);
                }
                self.scratch = s;
            }
        }
    }

    /// Counts `text`, replacing invalid UTF-8 as `String::from_utf8_lossy` does.
    fn count(&mut self, text: &[u8], split: SplitRule) {
        // Valid UTF-8 (the usual case) is borrowed, not copied.
        let text: Cow<'_, str> = String::from_utf8_lossy(text);
        match split {
            SplitRule::Alphanumeric => self.count_alnum(&text),
            SplitRule::Whitespace => self.count_whitespace(&text),
        }
    }
}

/// Counts the words of one chunk, sorted by word so that the output is the
/// same on every machine (redundant runs must agree byte for byte).
pub fn count_chunk(text: &[u8], options: &WordcountOptions) -> WordcountOutput {
    let mut counter = Counter::new(options);
    counter.count(text, options.split);
    WordcountOutput {
        total_words: counter.total,
        counts: sort_by_word(counter.counts),
    }
}

impl WordcountTask {
    /// Counts the chunk.
    pub fn run(&self) -> Result<WordcountOutput, KernelError> {
        if self.text.len() > MAX_CHUNK_BYTES {
            return Err(KernelError::InvalidInput(format!(
                "a chunk of {} bytes is above the limit {MAX_CHUNK_BYTES}",
                self.text.len()
            )));
        }
        Ok(count_chunk(&self.text, &self.options))
    }

    /// The planner's estimate for this task.
    pub fn cost(&self) -> Cost {
        chunk_cost(&self.text)
    }
}

impl WordcountReduce {
    /// Merges the chunks' counts and sorts them.
    pub fn reduce(&self, outputs: Vec<TaskOutput>) -> Result<JobResult, KernelError> {
        let mut merged: HashMap<String, u64, ahash::RandomState> = HashMap::default();
        let mut total = 0u64;
        for (i, o) in outputs.into_iter().enumerate() {
            let o = match o {
                TaskOutput::Wordcount(o) => o,
                other => {
                    return Err(KernelError::Reduce(format!(
                        "output {i} is not a wordcount output: {}",
                        other.kind()
                    )))
                }
            };
            let sum = o
                .counts
                .iter()
                .try_fold(0u64, |s, (_, c)| s.checked_add(*c).filter(|_| *c > 0));
            if sum != Some(o.total_words) {
                return Err(KernelError::Reduce(format!(
                    "output {i}: its counts do not add up to its {} words",
                    o.total_words
                )));
            }
            total = total
                .checked_add(o.total_words)
                .ok_or_else(|| KernelError::Reduce("the word counts overflow".into()))?;
            for (w, c) in o.counts {
                *merged.entry(w).or_insert(0) += c;
            }
        }
        Ok(JobResult::Wordcount(WordcountResult {
            total_words: total,
            top: self.options.top,
            counts: sort_by_count(merged),
        }))
    }
}

/// Counts `text` in this process: the same chunks as the cluster would get,
/// counted on `threads` threads and merged. The reference a benchmark
/// compares the cluster against.
pub fn count_in_process(
    text: &[u8],
    options: &WordcountOptions,
    threads: usize,
) -> WordcountResult {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // In process nothing needs shipping, so a text with no place to cut is
    // simply counted whole.
    let ranges = chunk_ranges(text, options.split, DEFAULT_CHUNK_BYTES)
        .unwrap_or_else(|_| std::iter::once(0..text.len()).collect());
    let next = AtomicUsize::new(0);
    let threads = threads.clamp(1, ranges.len().max(1));
    let partials: Vec<(Counts, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut counts = new_counts();
                    let mut total = 0;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(r) = ranges.get(i) else { break };
                        let mut counter = Counter::new(options);
                        counter.count(&text[r.clone()], options.split);
                        total += counter.total;
                        merge_counts(&mut counts, counter.counts);
                    }
                    (counts, total)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a counting thread panicked"))
            .collect()
    });
    let mut merged = new_counts();
    let mut total = 0;
    for (counts, t) in partials {
        total += t;
        merge_counts(&mut merged, counts);
    }
    WordcountResult {
        total_words: total,
        top: options.top,
        counts: sort_by_count(merged.into_iter().map(|(w, c)| (w.into_string(), c))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The rules as the spec states them, char by char over the lossy
    /// decoding: slow, and obviously right.
    fn naive(text: &[u8], o: &WordcountOptions) -> (u64, BTreeMap<String, u64>) {
        let s = String::from_utf8_lossy(text);
        let min = o.min_len.max(1);
        let words: Vec<String> = match o.split {
            SplitRule::Whitespace => s
                .replace([',', '.'], "")
                .split(char::is_whitespace)
                .filter(|t| !t.is_empty() && t.chars().count() >= min)
                .map(str::to_string)
                .collect(),
            SplitRule::Alphanumeric => {
                let cs: Vec<char> = s.chars().collect();
                let mut words = Vec::new();
                let mut cur = String::new();
                for (i, &c) in cs.iter().enumerate() {
                    let joins = (c == '\'' || c == '\u{2019}')
                        && i > 0
                        && cs[i - 1].is_alphanumeric()
                        && cs.get(i + 1).is_some_and(|n| n.is_alphanumeric());
                    if c.is_alphanumeric() || joins {
                        cur.push(c);
                    } else if !cur.is_empty() {
                        words.push(std::mem::take(&mut cur));
                    }
                }
                if !cur.is_empty() {
                    words.push(cur);
                }
                words
                    .into_iter()
                    .filter(|w| w.chars().count() >= min)
                    .map(|w| {
                        if o.case_sensitive {
                            w
                        } else {
                            w.to_lowercase()
                        }
                    })
                    .collect()
            }
        };
        let mut counts = BTreeMap::new();
        for w in &words {
            *counts.entry(w.clone()).or_insert(0) += 1;
        }
        (words.len() as u64, counts)
    }

    fn as_map(counts: &[(String, u64)]) -> BTreeMap<String, u64> {
        let map: BTreeMap<_, _> = counts.iter().cloned().collect();
        assert_eq!(map.len(), counts.len(), "a word appears twice");
        map
    }

    fn reduce(options: &WordcountOptions, outs: Vec<WordcountOutput>) -> WordcountResult {
        let outs = outs.into_iter().map(TaskOutput::Wordcount).collect();
        match reduce_plan(options).reduce(outs).unwrap() {
            JobResult::Wordcount(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn assert_result_order(r: &WordcountResult) {
        for w in r.counts.windows(2) {
            assert!(
                w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0),
                "{:?} before {:?}",
                w[0],
                w[1]
            );
        }
    }

    /// Pieces of text that exercise every rule: ASCII letters and digits of
    /// both cases, separators, both apostrophes, letters whose lower case is
    /// longer or context-dependent, CJK, emoji, non-ASCII white space, and
    /// invalid UTF-8 (alone, and a truncated apostrophe).
    fn atoms() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => prop::sample::select(vec!["a", "B", "z", "Q", "don", "t", "7", "0"]).prop_map(|s| s.as_bytes().to_vec()),
            3 => prop::sample::select(vec![" ", "\n", "\t", "\r", "\x0b", "\x0c", ",", ".", "-", "!"]).prop_map(|s| s.as_bytes().to_vec()),
            3 => prop::sample::select(vec!["'", "\u{2019}", "''"]).prop_map(|s| s.as_bytes().to_vec()),
            3 => prop::sample::select(vec!["É", "é", "ß", "İ", "Σ", "ς", "σ", "中", "文", "😀", "\u{3000}", "\u{a0}", "\u{85}", "\u{301}"]).prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::sample::select(vec![vec![0xffu8], vec![0xe2, 0x80], vec![0xc3], vec![0x80], vec![0xf0, 0x9f, 0x98]]),
        ]
    }

    fn text() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(atoms(), 0..60).prop_map(|v| v.concat())
    }

    fn options() -> impl Strategy<Value = WordcountOptions> {
        (0usize..4, any::<bool>(), any::<bool>()).prop_map(|(min_len, cs, ws)| WordcountOptions {
            min_len,
            top: 10,
            case_sensitive: cs,
            split: if ws {
                SplitRule::Whitespace
            } else {
                SplitRule::Alphanumeric
            },
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        #[test]
        fn counts_match_the_naive_reference(text in text(), o in options()) {
            let out = count_chunk(&text, &o);
            let (total, want) = naive(&text, &o);
            prop_assert_eq!(out.total_words, total);
            prop_assert_eq!(as_map(&out.counts), want);
            // The task's output is sorted by word, so it is the same everywhere.
            prop_assert!(out.counts.windows(2).all(|w| w[0].0 < w[1].0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn chunks_merge_to_the_whole(text in text(), o in options(), target in 1usize..40) {
            let ranges = chunk_ranges(&text, o.split, target).unwrap();
            // The ranges tile the text, none empty.
            let mut next = 0;
            for r in &ranges {
                prop_assert_eq!(r.start, next);
                prop_assert!(r.end > r.start);
                next = r.end;
            }
            prop_assert_eq!(next, text.len());
            let outs = ranges.iter().map(|r| count_chunk(&text[r.clone()], &o)).collect();
            let merged = reduce(&o, outs);
            let (total, want) = naive(&text, &o);
            prop_assert_eq!(merged.total_words, total);
            prop_assert_eq!(as_map(&merged.counts), want);
            assert_result_order(&merged);
        }

        #[test]
        fn the_chunker_cuts_the_same_whatever_the_pieces(
            text in text(),
            o in options(),
            target in 1usize..40,
            cuts in prop::collection::vec(0usize..200, 0..10),
        ) {
            let mut chunker = Chunker::new(o.clone(), target);
            let mut chunks = Vec::new();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
            cuts.sort_unstable();
            let mut from = 0;
            for c in cuts.into_iter().chain([text.len()]) {
                chunks.extend(chunker.push(&text[from..c]).unwrap());
                from = c;
            }
            match chunker.finish() {
                Ok(last) => chunks.extend(last),
                Err(e) => {
                    prop_assert!(text.is_empty());
                    prop_assert_eq!(e, text_empty());
                    return Ok(());
                }
            }
            let ranges = chunk_ranges(&text, o.split, target).unwrap();
            let want: Vec<&[u8]> = ranges.iter().map(|r| &text[r.clone()]).collect();
            prop_assert_eq!(chunks.iter().map(|c| c.as_slice()).collect::<Vec<_>>(), want);
        }

        #[test]
        fn in_process_count_equals_the_reference(text in text(), o in options(), threads in 1usize..4) {
            let r = count_in_process(&text, &o, threads);
            let (total, want) = naive(&text, &o);
            prop_assert_eq!(r.total_words, total);
            prop_assert_eq!(as_map(&r.counts), want);
            assert_result_order(&r);
        }
    }

    #[test]
    fn apostrophes_join_only_between_two_alphanumerics() {
        let o = WordcountOptions::default();
        let words = |t: &str| -> Vec<String> {
            let mut v: Vec<String> = count_chunk(t.as_bytes(), &o)
                .counts
                .into_iter()
                .map(|(w, _)| w)
                .collect();
            v.sort();
            v
        };
        assert_eq!(words("Don't"), ["don't"]);
        assert_eq!(words("don\u{2019}t"), ["don\u{2019}t"]);
        assert_eq!(words("rock''n"), ["n", "rock"]);
        assert_eq!(words("'quoted' rock'"), ["quoted", "rock"]);
        assert_eq!(words("a'b'c"), ["a'b'c"]);
        assert_eq!(words("l'été"), ["l'été"]);
        assert_eq!(words("x' y"), ["x", "y"]);
    }

    #[test]
    fn unicode_lower_casing_is_by_whole_word() {
        let o = WordcountOptions::default();
        let r = count_chunk("ΟΔΟΣ Straße İstanbul".as_bytes(), &o);
        let words: Vec<&str> = r.counts.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(words, ["i̇stanbul", "straße", "οδος"]);
        // min_len counts the characters as written: İ is one, its lower case two.
        let o = WordcountOptions {
            min_len: 9,
            ..Default::default()
        };
        assert_eq!(count_chunk("İstanbul".as_bytes(), &o).total_words, 0);
    }

    #[test]
    fn whitespace_rule_is_the_celery_demo() {
        let o = WordcountOptions {
            split: SplitRule::Whitespace,
            min_len: 5,
            ..Default::default()
        };
        let r = count_chunk(b"Hello, hello world. Hello\tWorld... worlds x,y,z", &o);
        assert_eq!(
            as_map(&r.counts),
            [
                ("Hello", 2),
                ("hello", 1),
                ("world", 1),
                ("World", 1),
                ("worlds", 1)
            ]
            .iter()
            .map(|&(w, c)| (w.to_string(), c))
            .collect()
        );
        // Invalid bytes stay inside tokens as U+FFFD.
        let o = WordcountOptions {
            split: SplitRule::Whitespace,
            ..Default::default()
        };
        let r = count_chunk(b"ab\xffcd ab", &o);
        assert_eq!(
            as_map(&r.counts),
            [("ab".into(), 1), ("ab\u{fffd}cd".into(), 1)].into()
        );
    }

    #[test]
    fn ties_order_by_word_in_code_point_order() {
        let o = WordcountOptions {
            case_sensitive: true,
            top: 3,
            ..Default::default()
        };
        let job = WordcountJob {
            text: "b a c a b c d é Z z é".into(),
            options: o,
        };
        let plan = JobSpec::Wordcount(job).plan().unwrap();
        let outs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        let JobResult::Wordcount(r) = plan.reduce.reduce(outs).unwrap() else {
            panic!()
        };
        let order: Vec<(&str, u64)> = r.counts.iter().map(|(w, c)| (w.as_str(), *c)).collect();
        assert_eq!(
            order,
            [
                ("a", 2),
                ("b", 2),
                ("c", 2),
                ("é", 2),
                ("Z", 1),
                ("d", 1),
                ("z", 1)
            ]
        );
        let (json, ty) = JobResult::Wordcount(r.clone()).render("json").unwrap();
        assert_eq!(ty, "application/json");
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"total_words":11,"distinct":7,"top":[["a",2],["b",2],["c",2]]}"#
        );
        let (tsv, ty) = JobResult::Wordcount(r).render("tsv").unwrap();
        assert_eq!(ty, "text/tab-separated-values; charset=utf-8");
        assert_eq!(
            std::str::from_utf8(&tsv).unwrap(),
            "a\t2\nb\t2\nc\t2\né\t2\nZ\t1\nd\t1\nz\t1\n"
        );
    }

    #[test]
    fn json_escapes_words() {
        let r = WordcountResult {
            total_words: 1,
            top: 10,
            counts: vec![("a\"\\b".into(), 1)],
        };
        let (json, _) = JobResult::Wordcount(r).render("json").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["top"][0][0], "a\"\\b");
        let empty = WordcountResult {
            total_words: 0,
            top: 0,
            counts: vec![("x".into(), 1)],
        };
        let (json, _) = JobResult::Wordcount(empty).render("json").unwrap();
        assert_eq!(json, br#"{"total_words":0,"distinct":1,"top":[]}"#);
    }

    #[test]
    fn empty_text_is_refused() {
        let job = WordcountJob {
            text: String::new(),
            options: WordcountOptions::default(),
        };
        assert_eq!(job.plan(), Err(text_empty()));
        assert!(text_empty().to_string().contains("text is empty"));
        let chunker = Chunker::new(WordcountOptions::default(), 10);
        assert_eq!(chunker.finish(), Err(text_empty()));
        let mut chunker = Chunker::new(WordcountOptions::default(), 10);
        assert!(chunker.push(b"").unwrap().is_empty());
        assert_eq!(chunker.finish(), Err(text_empty()));
        // White space alone is a text with no words, not an error.
        let job = WordcountJob {
            text: "  \n".into(),
            options: WordcountOptions::default(),
        };
        assert_eq!(job.plan().unwrap().tasks.len(), 1);
    }

    #[test]
    fn a_word_longer_than_the_cap_is_too_large() {
        let o = WordcountOptions::default();
        let long = vec![b'a'; MAX_CHUNK_BYTES + 1];
        assert_eq!(
            chunk_ranges(&long, o.split, DEFAULT_CHUNK_BYTES),
            Err(word_too_long())
        );
        let mut c = Chunker::new(o.clone(), DEFAULT_CHUNK_BYTES);
        let mut result = Ok(Vec::new());
        for piece in long.chunks(1 << 20) {
            result = c.push(piece);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(word_too_long()));
        assert!(word_too_long()
            .to_string()
            .contains("single word is longer than 64 MiB"));
        // A word just under the cap is one chunk; in process it is counted whole.
        let mut at_cap = vec![b'a'; MAX_CHUNK_BYTES - 1];
        at_cap.extend_from_slice(b" b");
        let ranges = chunk_ranges(&at_cap, o.split, DEFAULT_CHUNK_BYTES).unwrap();
        assert_eq!(
            ranges,
            [0..MAX_CHUNK_BYTES, MAX_CHUNK_BYTES..MAX_CHUNK_BYTES + 1]
        );
        let r = count_in_process(&long, &o, 2);
        assert_eq!((r.total_words, r.counts.len()), (1, 1));
    }

    #[test]
    fn falls_back_to_punctuation_without_white_space() {
        let alnum = WordcountOptions::default();
        let ws = WordcountOptions {
            split: SplitRule::Whitespace,
            ..Default::default()
        };
        let text = b"aaaa-bbbb'cccc-dd";
        let r = chunk_ranges(text, alnum.split, 6).unwrap();
        assert_eq!(r, [0..5, 5..15, 15..17]);
        // The white-space rule has no fallback: one chunk.
        assert_eq!(chunk_ranges(text, ws.split, 6).unwrap(), vec![(0..17)]);
        // White space is preferred to punctuation within the target.
        assert_eq!(
            chunk_ranges(b"ab c-defgh", alnum.split, 5).unwrap(),
            [0..3, 3..5, 5..10]
        );
    }

    #[test]
    fn big_text_plans_chunks_near_the_target() {
        let text = "lorem ipsum dolor sit amet, consectetur\n".repeat(300_000);
        let job = WordcountJob {
            text,
            options: WordcountOptions::default(),
        };
        let plan = job.plan().unwrap();
        assert_eq!(
            plan.tasks.len(),
            job.text.len().div_ceil(DEFAULT_CHUNK_BYTES)
        );
        let mut total = 0;
        for (t, cost) in &plan.tasks {
            let TaskInput::Wordcount(w) = t else { panic!() };
            assert!(w.text.len() <= DEFAULT_CHUNK_BYTES);
            assert!(
                w.text.last().is_some_and(|&b| is_cut_byte(b))
                    || total + w.text.len() == job.text.len()
            );
            assert_eq!(*cost, t.cost());
            assert!(cost.work > 0 && cost.mem_bytes > w.text.len() as u64);
            total += w.text.len();
        }
        assert_eq!(total, job.text.len());
        let outs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        let JobResult::Wordcount(r) = plan.reduce.reduce(outs).unwrap() else {
            panic!()
        };
        assert_eq!(r.total_words, 1_800_000);
        assert_eq!(r.counts[0].1, 300_000);
        assert_eq!(r.counts[0].0, "amet");
    }

    #[test]
    fn reduce_refuses_foreign_or_inconsistent_outputs() {
        let o = WordcountOptions::default();
        let plan = reduce_plan(&o);
        let fib = TaskOutput::Fibonacci(crate::fibonacci::FibonacciOutput {
            digits: String::new(),
            ends: vec![],
        });
        assert!(matches!(
            plan.reduce(vec![fib]),
            Err(KernelError::Reduce(_))
        ));
        let lying = WordcountOutput {
            total_words: 3,
            counts: vec![("a".into(), 1)],
        };
        assert!(matches!(
            plan.reduce(vec![TaskOutput::Wordcount(lying)]),
            Err(KernelError::Reduce(_))
        ));
        let zero = WordcountOutput {
            total_words: 0,
            counts: vec![("a".into(), 0)],
        };
        assert!(matches!(
            plan.reduce(vec![TaskOutput::Wordcount(zero)]),
            Err(KernelError::Reduce(_))
        ));
        let oversized = WordcountTask {
            text: vec![b'a'; MAX_CHUNK_BYTES + 1],
            options: o,
        };
        assert!(matches!(oversized.run(), Err(KernelError::InvalidInput(_))));
    }

    #[test]
    fn long_words_and_min_len() {
        let long = "x".repeat(100);
        let text = format!("{long} {long} ab abc");
        let o = WordcountOptions {
            min_len: 3,
            ..Default::default()
        };
        let r = count_chunk(text.as_bytes(), &o);
        assert_eq!(as_map(&r.counts), [(long, 2), ("abc".into(), 1)].into());
        assert_eq!(r.total_words, 3);
        let zero = WordcountOptions {
            min_len: 0,
            ..Default::default()
        };
        assert_eq!(count_chunk(b"a b", &zero).total_words, 2);
    }

    #[test]
    fn task_encoding_round_trips() {
        let (t, cost) = task_for_chunk(&WordcountOptions::default(), b"some text\xff".to_vec());
        assert_eq!(TaskInput::decode(&t.encode()).unwrap(), t);
        assert_eq!(t.cost(), cost);
        let out = TaskOutput::Wordcount(count_chunk(b"some text", &WordcountOptions::default()));
        assert_eq!(TaskOutput::decode(&out.encode()).unwrap(), out);
    }
}
