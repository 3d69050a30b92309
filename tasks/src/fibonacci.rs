//! Fibonacci: exact F(n) by fast doubling, as decimal strings.

use num_bigint::BigUint;
use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{
    Cost, JobPlan, KernelError, ReducePlan, TaskInput, TaskOutput, TARGET_TASK_WORK,
};
use crate::result::JobResult;

/// The job body: `{"kernel":"fibonacci","n":[..]}` or `{"kernel":"fibonacci","range":{"start":a,"end":b}}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FibonacciJob {
    /// Indices to compute, in the order results are wanted.
    pub n: Option<Vec<u64>>,
    /// Or a range of indices, end exclusive.
    pub range: Option<IndexRange>,
}

/// A half-open range of indices.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IndexRange {
    /// First index.
    pub start: u64,
    /// One past the last index.
    pub end: u64,
}

/// One task: a slice of the job's indices.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum FibonacciTask {
    /// These indices.
    List(Vec<u64>),
    /// Every index of the range.
    Range(IndexRange),
}

/// One task's values: decimal digits back to back, and where each ends.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciOutput {
    /// All values' digits, concatenated (one allocation, not one per value).
    pub digits: String,
    /// `digits[ends[i-1]..ends[i]]` is the i-th value.
    pub ends: Vec<u64>,
}

/// How to reduce: concatenate the tasks' values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciReduce {
    /// How many values the job has.
    pub count: u64,
}

/// The result: every value, in input order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FibonacciResult {
    /// Same layout as [`FibonacciOutput`].
    pub values: FibonacciOutput,
}

/// Largest single index: F(1,000,000) already has 208,988 digits and takes
/// tens of milliseconds; beyond that one value dwarfs any sensible batch and
/// its decimal form grows faster than its usefulness.
pub const MAX_N: u64 = 1_000_000;

/// Most indices in one job: ten times the one-million-index benchmark, and a
/// bound on the `ends` table (8 bytes per value) the coordinator holds.
pub const MAX_ITEMS: u64 = 10_000_000;

/// Most decimal digits one job may produce (estimated before running): the
/// result is held, stored and rendered as JSON in one piece, so it must stay
/// in the hundreds of megabytes. `range` 0..1,000,000 would be ~100 GB.
pub const MAX_OUTPUT_DIGITS: u64 = 256 << 20;

/// Largest index whose value fits in a u128 (F(187) does not).
pub const U128_MAX_N: u64 = 186;

/// log10 of the golden ratio: F(n) has about `n * LOG10_PHI` digits.
const LOG10_PHI: f64 = 0.208_987_640_249_978_73;

/// F(0..=186), built at compile time: the whole small-index fast path is a
/// table lookup and an integer-to-decimal conversion.
const FIB_U128: [u128; (U128_MAX_N + 1) as usize] = {
    let mut t = [0u128; (U128_MAX_N + 1) as usize];
    t[1] = 1;
    let mut i = 2;
    while i < t.len() {
        t[i] = t[i - 1] + t[i - 2];
        i += 1;
    }
    t
};

// Cost model, calibrated in release mode on the reference machine (see
// `benches/kernels.rs`): work units are nanoseconds on one core.
/// Per value of the u128 path (table lookup, decimal conversion, copy).
const SMALL_ITEM_WORK: f64 = 10.0;
/// Fixed part of one big value.
const BIG_ITEM_BASE_WORK: f64 = 120.0;
/// One big value by fast doubling plus its decimal conversion, per
/// digit^[`POW`]; the conversion dominates.
const BIG_ITEM_DIGIT_WORK: f64 = 0.26;
/// Fixed part of one big value of a range (one addition from the previous two).
const RANGE_ITEM_BASE_WORK: f64 = 90.0;
/// A range value per digit^[`POW`]: mostly its decimal conversion, so about
/// three quarters of a value made by fast doubling.
const RANGE_ITEM_POW_WORK: f64 = 0.19;
/// The measured growth of num-bigint's multiplication and divide-and-conquer
/// decimal conversion with the number of digits.
const POW: f64 = 1.52;
/// Fixed per-task work (allocation, dispatch); keeps tiny tasks from costing 0.
const TASK_BASE_WORK: f64 = 2_000.0;

/// Estimated decimal digits of F(n).
pub fn digits_estimate(n: u64) -> f64 {
    (n as f64 * LOG10_PHI).max(0.0) + 1.0
}

/// Estimated work of one value computed on its own (a list item).
fn item_work(n: u64) -> f64 {
    if n <= U128_MAX_N {
        SMALL_ITEM_WORK
    } else {
        BIG_ITEM_BASE_WORK + BIG_ITEM_DIGIT_WORK * digits_estimate(n).powf(POW)
    }
}

/// Estimated work of the big values of `start..end` when each follows from
/// the previous two by addition; integrates the per-value model in closed form.
fn big_range_work(start: u64, end: u64) -> f64 {
    let (s, e) = (start.max(U128_MAX_N + 1), end);
    if s >= e {
        return 0.0;
    }
    let count = (e - s) as f64;
    // Integral of (x * LOG10_PHI)^POW: close enough for an estimate.
    let prim = |x: f64| (x * LOG10_PHI).powf(POW + 1.0) / (LOG10_PHI * (POW + 1.0));
    let pow = prim(e as f64) - prim(s as f64);
    RANGE_ITEM_BASE_WORK * count + RANGE_ITEM_POW_WORK * pow
        // The first big value comes from fast doubling.
        + item_work(s)
}

/// Estimated work of the whole range `start..end`.
fn range_work(start: u64, end: u64) -> f64 {
    let small = end.min(U128_MAX_N + 1).saturating_sub(start);
    small as f64 * SMALL_ITEM_WORK + big_range_work(start, end)
}

/// Estimated total digits of the values of `start..end`.
fn range_digits(start: u64, end: u64) -> f64 {
    if start >= end {
        return 0.0;
    }
    let count = (end - start) as f64;
    LOG10_PHI * (start + end - 1) as f64 * count / 2.0 + count
}

/// Memory for `values` values of `digits` digits in total, plus the largest
/// value's working set: a dozen big integers of its size (fast doubling's
/// operands and products, the conversion's powers of ten) and its decimal
/// digits twice (the conversion's buffer and the String).
fn output_mem(values: u64, digits: f64, largest: u64) -> u64 {
    let d = digits_estimate(largest);
    let big = d * 0.42 + 64.0; // bytes of one big integer
    (digits + values as f64 * 8.0 + big * 12.0 + d * 2.0 + 4096.0) as u64
}

/// Both the estimate of one list task and the memory it needs.
fn list_cost(ns: &[u64]) -> Cost {
    let work: f64 = ns.iter().map(|&n| item_work(n)).sum::<f64>() + TASK_BASE_WORK;
    let digits: f64 = ns.iter().map(|&n| digits_estimate(n)).sum();
    let largest = ns.iter().copied().max().unwrap_or(0);
    Cost {
        work: work as u64,
        mem_bytes: output_mem(ns.len() as u64, digits, largest),
    }
}

/// Both the estimate of one range task and the memory it needs.
fn range_cost(r: IndexRange) -> Cost {
    Cost {
        work: (range_work(r.start, r.end) + TASK_BASE_WORK) as u64,
        mem_bytes: output_mem(
            r.end.saturating_sub(r.start),
            range_digits(r.start, r.end),
            r.end.saturating_sub(1),
        ),
    }
}

fn too_many_digits(digits: f64) -> JobError {
    JobError::TooLarge(format!(
        "the values would have about {:.3e} decimal digits ({:.1} MiB); the limit is {} MiB: \
         ask for fewer or smaller indices",
        digits,
        digits / (1u64 << 20) as f64,
        MAX_OUTPUT_DIGITS >> 20
    ))
}

impl FibonacciJob {
    /// Validates the body and splits it into tasks of about [`TARGET_TASK_WORK`].
    pub fn plan(&self) -> Result<JobPlan, JobError> {
        self.plan_in_chunks(None)
    }

    /// How many indices the body asks for (0 when it gives neither form).
    pub fn item_count(&self) -> u64 {
        match (&self.n, &self.range) {
            (Some(ns), _) => ns.len() as u64,
            (None, Some(r)) => r.end.saturating_sub(r.start),
            (None, None) => 0,
        }
    }

    /// [`FibonacciJob::plan`], but with exactly `items_per_task` indices per
    /// task (the last one takes the rest) when given.
    pub fn plan_in_chunks(&self, items_per_task: Option<u64>) -> Result<JobPlan, JobError> {
        let target = TARGET_TASK_WORK as f64;
        let (tasks, count) = match (&self.n, &self.range) {
            (Some(_), Some(_)) | (None, None) => return Err(JobError::Invalid(
                "give exactly one of `n` (a list of indices) or `range` ({\"start\":a,\"end\":b})"
                    .into(),
            )),
            (Some(ns), None) => {
                if ns.is_empty() {
                    return Err(JobError::Invalid(
                        "`n` is empty: list at least one index".into(),
                    ));
                }
                if ns.len() as u64 > MAX_ITEMS {
                    return Err(JobError::TooLarge(format!(
                        "`n` lists {} indices; the limit is {MAX_ITEMS}: split the job",
                        ns.len()
                    )));
                }
                if let Some(&big) = ns.iter().find(|&&n| n > MAX_N) {
                    return Err(JobError::TooLarge(format!(
                        "index {big} is above the limit {MAX_N}: use indices up to {MAX_N}"
                    )));
                }
                let digits: f64 = ns.iter().map(|&n| digits_estimate(n)).sum();
                if digits > MAX_OUTPUT_DIGITS as f64 {
                    return Err(too_many_digits(digits));
                }
                let mut tasks = Vec::new();
                if let Some(k) = items_per_task {
                    let k = usize::try_from(k).unwrap_or(usize::MAX).max(1);
                    tasks.extend(ns.chunks(k).map(|c| FibonacciTask::List(c.to_vec())));
                    return Ok(plan_of(tasks, ns.len() as u64));
                }
                let mut from = 0;
                let mut acc = 0.0;
                for (i, &n) in ns.iter().enumerate() {
                    let w = item_work(n);
                    if i > from && acc + w > target {
                        tasks.push(FibonacciTask::List(ns[from..i].to_vec()));
                        from = i;
                        acc = 0.0;
                    }
                    acc += w;
                }
                tasks.push(FibonacciTask::List(ns[from..].to_vec()));
                (tasks, ns.len() as u64)
            }
            (None, Some(r)) => {
                if r.start >= r.end {
                    return Err(JobError::Invalid(format!(
                        "`range` {}..{} is empty: `end` is exclusive and must be above `start`",
                        r.start, r.end
                    )));
                }
                if r.end - 1 > MAX_N {
                    return Err(JobError::TooLarge(format!(
                        "`range` reaches index {}, above the limit {MAX_N}: use `end` up to {}",
                        r.end - 1,
                        MAX_N + 1
                    )));
                }
                if r.end - r.start > MAX_ITEMS {
                    return Err(JobError::TooLarge(format!(
                        "`range` holds {} indices; the limit is {MAX_ITEMS}: split the job",
                        r.end - r.start
                    )));
                }
                let digits = range_digits(r.start, r.end);
                if digits > MAX_OUTPUT_DIGITS as f64 {
                    return Err(too_many_digits(digits));
                }
                let mut tasks = Vec::new();
                let mut start = r.start;
                while let Some(k) = items_per_task.filter(|_| start < r.end) {
                    let end = start.saturating_add(k.max(1)).min(r.end);
                    tasks.push(FibonacciTask::Range(IndexRange { start, end }));
                    start = end;
                }
                while start < r.end {
                    // The largest end whose work stays within the target, by
                    // bisection on the closed-form estimate; at least one index.
                    let (mut lo, mut hi) = (start + 1, r.end);
                    while lo < hi {
                        let mid = lo + (hi - lo).div_ceil(2);
                        if range_work(start, mid) <= target {
                            lo = mid;
                        } else {
                            hi = mid - 1;
                        }
                    }
                    tasks.push(FibonacciTask::Range(IndexRange { start, end: lo }));
                    start = lo;
                }
                (tasks, r.end - r.start)
            }
        };
        Ok(plan_of(tasks, count))
    }
}

/// The plan of these tasks, `count` values in all.
fn plan_of(tasks: Vec<FibonacciTask>, count: u64) -> JobPlan {
    JobPlan {
        tasks: tasks
            .into_iter()
            .map(|t| {
                let cost = t.cost();
                (TaskInput::Fibonacci(t), cost)
            })
            .collect(),
        reduce: ReducePlan::Fibonacci(FibonacciReduce { count }),
    }
}

/// F(n) and F(n+1), by fast doubling from the most significant bit of n:
/// F(2k) = F(k)(2F(k+1) - F(k)), F(2k+1) = F(k)² + F(k+1)².
pub fn fib_pair(n: u64) -> (BigUint, BigUint) {
    if n < U128_MAX_N {
        return (
            BigUint::from(FIB_U128[n as usize]),
            BigUint::from(FIB_U128[n as usize + 1]),
        );
    }
    // Start from the largest prefix of n's bits that the table covers.
    let bits = 64 - n.leading_zeros();
    let mut shift = bits;
    while shift > 0 && (n >> (shift - 1)) < U128_MAX_N {
        shift -= 1;
    }
    let k = n >> shift;
    let mut a = BigUint::from(FIB_U128[k as usize]);
    let mut b = BigUint::from(FIB_U128[k as usize + 1]);
    for i in (0..shift).rev() {
        let two_b_minus_a = (&b << 1u32) - &a;
        let c = &a * &two_b_minus_a; // F(2k)
        let d = &a * &a + &b * &b; // F(2k+1)
        if (n >> i) & 1 == 0 {
            a = c;
            b = d;
        } else {
            b = &c + &d;
            a = d;
        }
    }
    (a, b)
}

/// F(n), exact.
pub fn fib(n: u64) -> BigUint {
    if n <= U128_MAX_N {
        BigUint::from(FIB_U128[n as usize])
    } else {
        fib_pair(n).0
    }
}

/// Appends F(n) in decimal and records where it ends.
fn push_value(out: &mut FibonacciOutput, n: u64, itoa_buf: &mut itoa::Buffer) {
    if n <= 93 {
        // F(93) is the last that fits a u64, whose formatting is faster.
        out.digits
            .push_str(itoa_buf.format(FIB_U128[n as usize] as u64));
    } else if n <= U128_MAX_N {
        out.digits.push_str(itoa_buf.format(FIB_U128[n as usize]));
    } else {
        push_big(out, &fib_pair(n).0);
        return;
    }
    out.ends.push(out.digits.len() as u64);
}

fn push_big(out: &mut FibonacciOutput, v: &BigUint) {
    out.digits.push_str(&v.to_str_radix(10));
    out.ends.push(out.digits.len() as u64);
}

impl FibonacciTask {
    /// Computes the task's values.
    pub fn run(&self) -> Result<FibonacciOutput, KernelError> {
        self.check()?;
        let mut out = FibonacciOutput {
            // The memory estimate is a sound upper bound for the digits.
            digits: String::with_capacity(match self {
                FibonacciTask::List(ns) => ns.iter().map(|&n| digits_estimate(n)).sum::<f64>(),
                FibonacciTask::Range(r) => range_digits(r.start, r.end),
            } as usize),
            ends: Vec::with_capacity(self.len() as usize),
        };
        let mut buf = itoa::Buffer::new();
        match self {
            FibonacciTask::List(ns) => {
                for &n in ns {
                    push_value(&mut out, n, &mut buf);
                }
            }
            FibonacciTask::Range(r) => {
                let small_end = r.end.min(U128_MAX_N + 1);
                for n in r.start..small_end {
                    push_value(&mut out, n, &mut buf);
                }
                let big_start = r.start.max(U128_MAX_N + 1);
                if big_start < r.end {
                    let (mut a, mut b) = fib_pair(big_start);
                    for n in big_start..r.end {
                        push_big(&mut out, &a);
                        if n + 1 < r.end {
                            // (a, b) = (b, a + b) without a fresh allocation.
                            a += &b;
                            std::mem::swap(&mut a, &mut b);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The planner's estimate for this task.
    pub fn cost(&self) -> Cost {
        match self {
            FibonacciTask::List(ns) => list_cost(ns),
            FibonacciTask::Range(r) => range_cost(*r),
        }
    }

    /// How many values the task yields.
    pub fn len(&self) -> u64 {
        match self {
            FibonacciTask::List(ns) => ns.len() as u64,
            FibonacciTask::Range(r) => r.end.saturating_sub(r.start),
        }
    }

    /// Whether the task yields no value (never true for a planned task).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses inputs the planner would never make, so a forged task cannot
    /// make an agent allocate without bound.
    fn check(&self) -> Result<(), KernelError> {
        let bad = |m: String| Err(KernelError::InvalidInput(m));
        let digits = match self {
            FibonacciTask::List(ns) => {
                if ns.len() as u64 > MAX_ITEMS {
                    return bad(format!("{} indices, above {MAX_ITEMS}", ns.len()));
                }
                if let Some(n) = ns.iter().find(|&&n| n > MAX_N) {
                    return bad(format!("index {n} is above {MAX_N}"));
                }
                ns.iter().map(|&n| digits_estimate(n)).sum()
            }
            FibonacciTask::Range(r) => {
                if r.start >= r.end || r.end - 1 > MAX_N || r.end - r.start > MAX_ITEMS {
                    return bad(format!(
                        "range {}..{} is empty or too large",
                        r.start, r.end
                    ));
                }
                range_digits(r.start, r.end)
            }
        };
        if digits > MAX_OUTPUT_DIGITS as f64 {
            return bad(format!(
                "about {digits:.3e} digits, above {MAX_OUTPUT_DIGITS}"
            ));
        }
        Ok(())
    }
}

impl FibonacciReduce {
    /// Concatenates the tasks' values, checking that there are `count`.
    pub fn reduce(&self, outputs: Vec<TaskOutput>) -> Result<JobResult, KernelError> {
        let mut outs = Vec::with_capacity(outputs.len());
        for (i, o) in outputs.into_iter().enumerate() {
            match o {
                TaskOutput::Fibonacci(f) => {
                    f.check()
                        .map_err(|m| KernelError::Reduce(format!("output {i}: {m}")))?;
                    outs.push(f);
                }
                other => {
                    return Err(KernelError::Reduce(format!(
                        "output {i} is not a fibonacci output: {}",
                        other.kind()
                    )))
                }
            }
        }
        let total: u64 = outs.iter().map(|o| o.ends.len() as u64).sum();
        if total != self.count {
            return Err(KernelError::Reduce(format!(
                "the outputs hold {total} values; the job has {}",
                self.count
            )));
        }
        let mut outs = outs.into_iter();
        // The first output becomes the result, so a one-task job (the usual
        // case for short lists) is not copied at all.
        let Some(mut values) = outs.next() else {
            return Err(KernelError::Reduce("no output to reduce".into()));
        };
        let rest: Vec<FibonacciOutput> = outs.collect();
        values
            .digits
            .reserve(rest.iter().map(|o| o.digits.len()).sum());
        values.ends.reserve(rest.iter().map(|o| o.ends.len()).sum());
        for o in rest {
            let base = values.digits.len() as u64;
            values.ends.extend(o.ends.iter().map(|&e| base + e));
            values.digits.push_str(&o.digits);
        }
        Ok(JobResult::Fibonacci(FibonacciResult { values }))
    }
}

impl FibonacciOutput {
    /// Checks that the ends rise strictly to the end of the digits, and that
    /// the digits are decimal: what the reduce and the renderings rely on.
    fn check(&self) -> Result<(), String> {
        let mut prev = 0;
        for &e in &self.ends {
            if e <= prev || e > self.digits.len() as u64 {
                return Err(format!(
                    "a value ends at {e}, not after the previous one ({prev}) within {} digits",
                    self.digits.len()
                ));
            }
            prev = e;
        }
        if prev != self.digits.len() as u64 || !self.digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("it holds bytes that are not its values' digits".into());
        }
        Ok(())
    }
}

impl FibonacciOutput {
    /// The i-th value's digits, if there is one.
    pub fn get(&self, i: usize) -> Option<&str> {
        let end = *self.ends.get(i)? as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.digits.get(start..end)
    }

    /// Every value's digits, in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.ends.len()).map(|i| self.get(i).unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    /// F(0..count) by plain addition: obviously right, independent of fast doubling.
    fn naive(count: usize) -> Vec<BigUint> {
        let mut v = vec![BigUint::from(0u32), BigUint::from(1u32)];
        while v.len() < count {
            let next = &v[v.len() - 1] + &v[v.len() - 2];
            v.push(next);
        }
        v.truncate(count);
        v
    }

    fn run_job(job: FibonacciJob) -> FibonacciResult {
        let plan = JobSpec::Fibonacci(job).plan().unwrap();
        let outs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        match plan.reduce.reduce(outs).unwrap() {
            JobResult::Fibonacci(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn list(ns: Vec<u64>) -> FibonacciJob {
        FibonacciJob {
            n: Some(ns),
            range: None,
        }
    }

    fn range(start: u64, end: u64) -> FibonacciJob {
        FibonacciJob {
            n: None,
            range: Some(IndexRange { start, end }),
        }
    }

    #[test]
    fn matches_naive_addition_below_300() {
        let reference = naive(300);
        for (n, want) in reference.iter().enumerate() {
            assert_eq!(&fib(n as u64), want, "F({n})");
            assert_eq!(&fib_pair(n as u64).0, want, "fib_pair({n})");
        }
        let ns: Vec<u64> = (0..300).rev().collect();
        let r = run_job(list(ns.clone()));
        let got: Vec<&str> = r.values.iter().collect();
        let want: Vec<String> = ns
            .iter()
            .map(|&n| reference[n as usize].to_string())
            .collect();
        assert_eq!(got, want);
        let r = run_job(range(0, 300));
        let want: Vec<String> = reference.iter().map(|v| v.to_string()).collect();
        assert_eq!(r.values.iter().collect::<Vec<_>>(), want);
    }

    #[test]
    fn known_values() {
        assert_eq!(fib(0).to_string(), "0");
        assert_eq!(fib(1).to_string(), "1");
        assert_eq!(fib(10).to_string(), "55");
        assert_eq!(fib(20).to_string(), "6765");
        assert_eq!(fib(100).to_string(), "354224848179261915075");
        assert_eq!(
            fib(186).to_string(),
            "332825110087067562321196029789634457848"
        );
        assert_eq!(fib(1000).to_string().len(), 209);
        let r = run_job(list(vec![10, 20, 30]));
        assert_eq!(
            r.values.iter().collect::<Vec<_>>(),
            ["55", "6765", "832040"]
        );
    }

    #[test]
    fn u128_fast_path_and_big_path_agree_at_the_boundary() {
        let reference = naive(400);
        // Ranges that start below, at and above the boundary, so a range
        // crosses from the table to additions of big integers.
        for (s, e) in [(150, 220), (185, 188), (186, 187), (187, 190), (0, 400)] {
            let r = run_job(range(s, e));
            let want: Vec<String> = reference[s as usize..e as usize]
                .iter()
                .map(|v| v.to_string())
                .collect();
            assert_eq!(r.values.iter().collect::<Vec<_>>(), want, "range {s}..{e}");
        }
        for n in 180..200u64 {
            let (a, b) = fib_pair(n);
            assert_eq!(
                (&a, &b),
                (&reference[n as usize], &reference[n as usize + 1]),
                "{n}"
            );
        }
        assert_eq!(BigUint::from(FIB_U128[186]), reference[186]);
    }

    #[test]
    fn benchmark_list_is_few_tasks_and_exact() {
        let ns: Vec<u64> = (0..1_000_000u64).map(|i| 20 + i % 11).collect();
        let plan = JobSpec::Fibonacci(list(ns.clone())).plan().unwrap();
        assert!(plan.tasks.len() <= 2, "{} tasks", plan.tasks.len());
        let outs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        let JobResult::Fibonacci(r) = plan.reduce.reduce(outs).unwrap() else {
            panic!()
        };
        assert_eq!(r.values.ends.len(), 1_000_000);
        let reference = naive(31);
        for i in [0usize, 1, 10, 11, 999_999] {
            assert_eq!(
                r.values.get(i).unwrap(),
                reference[ns[i] as usize].to_string()
            );
        }
    }

    #[test]
    fn tasks_are_ranges_of_items_near_the_target() {
        let plan = JobSpec::Fibonacci(range(0, 20_000)).plan().unwrap();
        assert!(plan.tasks.len() > 1);
        let mut next = 0;
        for (t, cost) in &plan.tasks {
            let TaskInput::Fibonacci(FibonacciTask::Range(r)) = t else {
                panic!("{t:?}")
            };
            assert_eq!(r.start, next);
            assert!(r.end > r.start);
            next = r.end;
            assert!(cost.work <= TARGET_TASK_WORK + TARGET_TASK_WORK / 2 || r.end - r.start == 1);
            assert_eq!(*cost, t.cost());
        }
        assert_eq!(next, 20_000);
        let ns: Vec<u64> = (0..3000).map(|i| 10_000 + i).collect();
        let plan = JobSpec::Fibonacci(list(ns)).plan().unwrap();
        assert!(plan.tasks.len() > 1);
        assert_eq!(
            plan.reduce,
            ReducePlan::Fibonacci(FibonacciReduce { count: 3000 })
        );
    }

    #[test]
    fn bad_jobs_say_what_to_change() {
        let invalid = |j: FibonacciJob| match JobSpec::Fibonacci(j).plan() {
            Err(JobError::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        let too_large = |j: FibonacciJob| match JobSpec::Fibonacci(j).plan() {
            Err(JobError::TooLarge(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(invalid(FibonacciJob {
            n: None,
            range: None
        })
        .contains("exactly one"));
        let both = FibonacciJob {
            n: Some(vec![1]),
            range: Some(IndexRange { start: 0, end: 1 }),
        };
        assert!(invalid(both).contains("exactly one"));
        assert!(invalid(list(vec![])).contains("empty"));
        assert!(invalid(range(5, 5)).contains("empty"));
        assert!(invalid(range(6, 5)).contains("empty"));
        assert!(too_large(list(vec![MAX_N + 1])).contains(&MAX_N.to_string()));
        let m = too_large(range(0, 1_000_000));
        assert!(m.contains("digits") && m.contains("256 MiB"), "{m}");
        assert!(too_large(range(0, MAX_N + 2)).contains("limit"));
        // Just inside the limits is fine to plan.
        JobSpec::Fibonacci(list(vec![MAX_N])).plan().unwrap();
    }

    #[test]
    fn reduce_checks_kernel_and_count() {
        let out = FibonacciTask::List(vec![1, 2]).run().unwrap();
        let r = FibonacciReduce { count: 3 };
        assert!(matches!(
            r.reduce(vec![TaskOutput::Fibonacci(out.clone())]),
            Err(KernelError::Reduce(_))
        ));
        let f = TaskOutput::Factorial(crate::factorial::FactorialOutput { limbs: vec![1] });
        assert!(matches!(
            FibonacciReduce { count: 2 }.reduce(vec![f]),
            Err(KernelError::Reduce(_))
        ));
        let mut forged = out.clone();
        forged.ends = vec![5, 1];
        assert!(matches!(
            FibonacciReduce { count: 2 }.reduce(vec![TaskOutput::Fibonacci(forged)]),
            Err(KernelError::Reduce(_))
        ));
        let ok = FibonacciReduce { count: 4 }
            .reduce(vec![
                TaskOutput::Fibonacci(out.clone()),
                TaskOutput::Fibonacci(out),
            ])
            .unwrap();
        let JobResult::Fibonacci(r) = ok else {
            panic!()
        };
        assert_eq!(r.values.iter().collect::<Vec<_>>(), ["1", "1", "1", "1"]);
    }

    #[test]
    fn forged_tasks_are_refused() {
        assert!(FibonacciTask::List(vec![MAX_N + 1]).run().is_err());
        assert!(FibonacciTask::Range(IndexRange { start: 3, end: 3 })
            .run()
            .is_err());
        assert!(FibonacciTask::Range(IndexRange {
            start: 0,
            end: u64::MAX
        })
        .run()
        .is_err());
        // The cost of a forged task is computed without overflow or panic.
        let _ = FibonacciTask::Range(IndexRange {
            start: 0,
            end: u64::MAX,
        })
        .cost();
    }

    #[test]
    fn json_rendering() {
        let r = run_job(list(vec![10, 20, 0]));
        let (json, ty) = JobResult::Fibonacci(r).render("json").unwrap();
        assert_eq!(ty, "application/json");
        assert_eq!(json, br#"{"values":["55","6765","0"]}"#);
    }

    #[test]
    fn costs_grow_with_the_indices() {
        let small = FibonacciTask::List(vec![100; 10]).cost();
        let big = FibonacciTask::List(vec![100_000; 10]).cost();
        assert!(big.work > 100 * small.work);
        assert!(big.mem_bytes > 10 * 20_899);
        let r = FibonacciTask::Range(IndexRange {
            start: 1000,
            end: 2000,
        })
        .cost();
        assert!(r.work > 0 && r.mem_bytes > 1000 * 209);
    }
}
