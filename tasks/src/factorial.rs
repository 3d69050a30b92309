//! Factorial: n! as range products that the coordinator multiplies in a tree.

use num_bigint::BigUint;
use serde::{Deserialize, Serialize};

use crate::job::JobError;
use crate::kernel::{
    Cost, JobPlan, KernelError, ReducePlan, TaskInput, TaskOutput, TARGET_TASK_WORK,
};
use crate::result::JobResult;

/// The job body: `{"kernel":"factorial","n":20000}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FactorialJob {
    /// The n of n!.
    pub n: u64,
}

/// One task: the product of `lo..hi` (end exclusive).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialTask {
    /// First factor.
    pub lo: u64,
    /// One past the last factor.
    pub hi: u64,
}

/// One task's product, as little-endian u64 limbs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialOutput {
    /// The product's magnitude.
    pub limbs: Vec<u64>,
}

/// How to reduce: a balanced product tree of the range products.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialReduce {
    /// The n of n!.
    pub n: u64,
}

/// The result: `{"n":..,"digits":..,"value":".."}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FactorialResult {
    /// The n of n!.
    pub n: u64,
    /// Decimal digits of n!.
    pub value: String,
}

/// Largest n. The coordinator does the last multiplications and the decimal
/// conversion on one core: for 500,000! (2,632,342 digits) that is about
/// 1.5 s in release mode on the reference machine (1,000,000! would take
/// about 4 s), so the reduce stays within a few seconds on a slower one.
pub const MAX_N: u64 = 500_000;

// Cost model of one range product, calibrated in release mode on the
// reference machine (see `benches/kernels.rs`); work units are nanoseconds.
/// Fixed per-task work.
const TASK_BASE_WORK: f64 = 2_000.0;
/// Per factor: packing factors into machine words.
const FACTOR_WORK: f64 = 3.0;
/// Per (64-bit limb of the product)^[`POW`]: the product tree's multiplications.
const LIMB_POW_WORK: f64 = 8.3;
/// The measured growth of the product tree's time with the product's size
/// (num-bigint switches from Karatsuba to Toom-3 on large operands).
const POW: f64 = 1.48;

/// log2(x!), exact for small x and by Stirling's series beyond (error < 1e-9).
pub fn log2_factorial(x: u64) -> f64 {
    if x < 32 {
        return (2..=x).map(|i| (i as f64).log2()).sum();
    }
    let x = x as f64;
    let ln = x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
        - 1.0 / (360.0 * x * x * x);
    ln / std::f64::consts::LN_2
}

/// Estimated bits of the product of `lo..hi`.
fn range_bits(lo: u64, hi: u64) -> f64 {
    if hi <= lo.max(1) {
        return 0.0;
    }
    (log2_factorial(hi - 1) - log2_factorial(lo.max(1) - 1)).max(0.0)
}

/// Estimated work of a product of `factors` factors with `bits` bits in all.
fn product_work(factors: u64, bits: f64) -> f64 {
    TASK_BASE_WORK + FACTOR_WORK * factors as f64 + LIMB_POW_WORK * (bits / 64.0).powf(POW)
}

/// The estimate of one range product: work, and the product tree's peak
/// (the product, its two halves, and the multiplication's scratch).
fn range_cost(lo: u64, hi: u64) -> Cost {
    let bits = range_bits(lo, hi);
    let bytes = bits / 8.0;
    Cost {
        work: product_work(hi.saturating_sub(lo), bits) as u64,
        mem_bytes: (bytes * 6.0 + (hi.saturating_sub(lo) as f64) * 8.0 / 16.0 + 4096.0) as u64,
    }
}

impl FactorialJob {
    /// Validates n and splits 1..=n into ranges whose products have about the
    /// same number of bits, so the tasks take about the same time.
    pub fn plan(&self) -> Result<JobPlan, JobError> {
        let n = self.n;
        if n > MAX_N {
            return Err(JobError::TooLarge(format!(
                "n is {n}; the limit is {MAX_N} ({n}! would have about {:.0} digits, and turning \
                 it into decimal would take the coordinator too long): use n up to {MAX_N}",
                log2_factorial(n) * std::f64::consts::LOG10_2 + 1.0
            )));
        }
        let total_bits = log2_factorial(n);
        let mut parts = 1u64;
        while parts < n
            && product_work(n / parts, total_bits / parts as f64) > TARGET_TASK_WORK as f64
        {
            parts += 1;
        }
        let mut bounds = vec![1u64];
        for j in 1..parts {
            // The smallest x with log2(x!) >= j/parts of the total: the range
            // 1..=x then holds j/parts of the bits.
            let want = total_bits * j as f64 / parts as f64;
            let (mut lo, mut hi) = (*bounds.last().unwrap_or(&1), n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if log2_factorial(mid) >= want {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            let b = lo + 1;
            if b > *bounds.last().unwrap_or(&1) && b <= n {
                bounds.push(b);
            }
        }
        bounds.push(n + 1);
        let tasks = bounds
            .windows(2)
            .map(|w| {
                let t = FactorialTask { lo: w[0], hi: w[1] };
                let cost = t.cost();
                (TaskInput::Factorial(t), cost)
            })
            .collect();
        Ok(JobPlan {
            tasks,
            reduce: ReducePlan::Factorial(FactorialReduce { n }),
        })
    }
}

/// Multiplies the values in a balanced tree, so that the big multiplications
/// are between operands of similar size (where Karatsuba pays off) instead of
/// a growing product times one small word.
pub fn product_tree(values: Vec<BigUint>) -> BigUint {
    let mut level = values;
    if level.is_empty() {
        return BigUint::from(1u32);
    }
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        let mut it = level.into_iter();
        while let Some(a) = it.next() {
            next.push(match it.next() {
                Some(b) => a * b,
                None => a,
            });
        }
        level = next;
    }
    level.pop().unwrap_or_else(|| BigUint::from(1u32))
}

/// The product of `lo..hi`: consecutive factors packed into u64 words while
/// they fit, then the words multiplied in a balanced tree.
pub fn range_product(lo: u64, hi: u64) -> BigUint {
    let mut words = Vec::new();
    let mut acc: u64 = 1;
    for i in lo.max(1)..hi {
        match acc.checked_mul(i) {
            Some(p) => acc = p,
            None => {
                words.push(BigUint::from(acc));
                acc = i;
            }
        }
    }
    words.push(BigUint::from(acc));
    product_tree(words)
}

/// Little-endian u64 limbs to a BigUint.
fn from_limbs(limbs: &[u64]) -> BigUint {
    BigUint::new(
        limbs
            .iter()
            .flat_map(|&l| [l as u32, (l >> 32) as u32])
            .collect(),
    )
}

/// The Mersenne prime 2^61 - 1, larger than any allowed n, so n! mod P is
/// never 0 and a missing, repeated or corrupted range product shows up.
const CHECK_PRIME: u64 = (1 << 61) - 1;

/// n! mod [`CHECK_PRIME`], in O(n) word operations.
fn factorial_mod_check(n: u64) -> u64 {
    (2..=n).fold(1u64, |acc, i| {
        ((acc as u128 * i as u128) % CHECK_PRIME as u128) as u64
    })
}

impl FactorialTask {
    /// Computes the range product.
    pub fn run(&self) -> Result<FactorialOutput, KernelError> {
        if self.lo == 0 || self.lo > self.hi || self.hi > MAX_N + 1 {
            return Err(KernelError::InvalidInput(format!(
                "factor range {}..{} is not within 1..={}",
                self.lo,
                self.hi,
                MAX_N + 1
            )));
        }
        Ok(FactorialOutput {
            limbs: range_product(self.lo, self.hi).to_u64_digits(),
        })
    }

    /// The planner's estimate for this task.
    pub fn cost(&self) -> Cost {
        range_cost(self.lo, self.hi)
    }
}

impl FactorialReduce {
    /// Multiplies the range products in a balanced tree and checks the
    /// result against n! modulo a prime, then converts it to decimal.
    pub fn reduce(&self, outputs: Vec<TaskOutput>) -> Result<JobResult, KernelError> {
        if self.n > MAX_N {
            return Err(KernelError::Reduce(format!(
                "n is {}, above the limit {MAX_N}",
                self.n
            )));
        }
        if outputs.is_empty() {
            return Err(KernelError::Reduce("no range product to multiply".into()));
        }
        let mut products = Vec::with_capacity(outputs.len());
        for (i, o) in outputs.into_iter().enumerate() {
            match o {
                TaskOutput::Factorial(f) => products.push(from_limbs(&f.limbs)),
                other => {
                    return Err(KernelError::Reduce(format!(
                        "output {i} is not a factorial output: {}",
                        other.kind()
                    )))
                }
            }
        }
        let residue = products.iter().fold(1u64, |acc, p| {
            let r = p.iter_u64_digits().rev().fold(0u128, |r, limb| {
                ((r << 64) | limb as u128) % CHECK_PRIME as u128
            });
            ((acc as u128 * r) % CHECK_PRIME as u128) as u64
        });
        if residue != factorial_mod_check(self.n) {
            return Err(KernelError::Reduce(format!(
                "the range products do not multiply to {}!: one is missing, repeated or wrong",
                self.n
            )));
        }
        let value = product_tree(products).to_str_radix(10);
        Ok(JobResult::Factorial(FactorialResult { n: self.n, value }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    fn naive(n: u64) -> BigUint {
        (1..=n).fold(BigUint::from(1u32), |acc, i| acc * i)
    }

    fn run_job(n: u64) -> FactorialResult {
        let plan = JobSpec::Factorial(FactorialJob { n }).plan().unwrap();
        let outs = plan.tasks.iter().map(|(t, _)| t.run().unwrap()).collect();
        match plan.reduce.reduce(outs).unwrap() {
            JobResult::Factorial(r) => r,
            other => panic!("{other:?}"),
        }
    }

    fn outputs(ranges: &[(u64, u64)]) -> Vec<TaskOutput> {
        ranges
            .iter()
            .map(|&(lo, hi)| TaskOutput::Factorial(FactorialTask { lo, hi }.run().unwrap()))
            .collect()
    }

    #[test]
    fn matches_a_left_fold_up_to_300() {
        for n in 0..=300 {
            let r = run_job(n);
            assert_eq!(r.n, n);
            assert_eq!(r.value, naive(n).to_string(), "{n}!");
        }
        assert_eq!(run_job(0).value, "1");
        assert_eq!(run_job(1).value, "1");
        assert_eq!(run_job(20).value, "2432902008176640000");
    }

    #[test]
    fn range_products_split_anywhere_multiply_to_n_factorial() {
        let n = 300;
        let r = FactorialReduce { n };
        let cuts = [(1, 2), (2, 77), (77, 78), (78, 250), (250, 301)];
        let JobResult::Factorial(res) = r.reduce(outputs(&cuts)).unwrap() else {
            panic!()
        };
        assert_eq!(res.value, naive(n).to_string());
        assert_eq!(range_product(5, 5), BigUint::from(1u32));
        assert_eq!(range_product(5, 8), BigUint::from(210u32));
    }

    #[test]
    fn twenty_thousand_factorial() {
        let r = run_job(20_000);
        assert_eq!(r.value.len(), 77_338);
        assert!(
            r.value.starts_with("18192063202303451348"),
            "{}",
            &r.value[..20]
        );
        assert!(r.value.ends_with(&"0".repeat(4999)));
        let (json, _) = JobResult::Factorial(r).render("json").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["n"], 20_000);
        assert_eq!(v["digits"], 77_338);
        assert_eq!(v["value"].as_str().unwrap().len(), 77_338);
    }

    #[test]
    fn the_largest_n_splits_into_contiguous_balanced_tasks() {
        let plan = JobSpec::Factorial(FactorialJob { n: MAX_N })
            .plan()
            .unwrap();
        assert!(plan.tasks.len() > 1, "{}", plan.tasks.len());
        let mut next = 1;
        let mut bits = Vec::new();
        for (t, cost) in &plan.tasks {
            let TaskInput::Factorial(t) = t else {
                panic!("{t:?}")
            };
            assert_eq!(t.lo, next);
            assert!(t.hi > t.lo);
            next = t.hi;
            bits.push(range_bits(t.lo, t.hi));
            assert!(cost.work <= TARGET_TASK_WORK, "{cost:?}");
            assert_eq!(*cost, t.cost());
        }
        assert_eq!(next, MAX_N + 1);
        let mean = bits.iter().sum::<f64>() / bits.len() as f64;
        assert!(
            bits.iter().all(|b| (b - mean).abs() < mean * 0.05),
            "{bits:?}"
        );
    }

    #[test]
    fn log2_factorial_is_accurate() {
        let mut exact = 0.0;
        for x in 1..=5000u64 {
            exact += (x as f64).log2();
            assert!(
                (log2_factorial(x) - exact).abs() < 1e-6 * exact.max(1.0),
                "{x}"
            );
        }
        assert_eq!(log2_factorial(0), 0.0);
    }

    #[test]
    fn reduce_catches_missing_repeated_and_foreign_outputs() {
        let r = FactorialReduce { n: 1000 };
        let good = [(1, 400), (400, 1001)];
        assert!(r.reduce(outputs(&good)).is_ok());
        let err = |o: Vec<TaskOutput>| matches!(r.reduce(o), Err(KernelError::Reduce(_)));
        assert!(err(outputs(&good[..1])));
        assert!(err(outputs(&[(1, 400), (400, 1001), (400, 1001)])));
        assert!(err(vec![]));
        let mut wrong = outputs(&good);
        if let TaskOutput::Factorial(f) = &mut wrong[1] {
            f.limbs[3] ^= 1;
        }
        assert!(err(wrong));
        let fib = TaskOutput::Fibonacci(crate::fibonacci::FibonacciOutput {
            digits: String::new(),
            ends: vec![],
        });
        assert!(err(vec![fib]));
        assert!(matches!(
            FactorialReduce { n: MAX_N + 1 }.reduce(outputs(&good)),
            Err(KernelError::Reduce(_))
        ));
    }

    #[test]
    fn bad_jobs_and_tasks_are_refused() {
        match JobSpec::Factorial(FactorialJob { n: MAX_N + 1 }).plan() {
            Err(JobError::TooLarge(m)) => assert!(m.contains(&MAX_N.to_string()), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(FactorialTask { lo: 0, hi: 5 }.run().is_err());
        assert!(FactorialTask { lo: 6, hi: 5 }.run().is_err());
        assert!(FactorialTask {
            lo: 1,
            hi: MAX_N + 2
        }
        .run()
        .is_err());
        let _ = FactorialTask {
            lo: 0,
            hi: u64::MAX,
        }
        .cost();
    }

    #[test]
    fn costs_grow_with_the_range() {
        let small = FactorialTask { lo: 1, hi: 1001 }.cost();
        let big = FactorialTask { lo: 1, hi: 100_001 }.cost();
        assert!(big.work > 1000 * small.work / 10, "{small:?} {big:?}");
        // The product of 1..=100000 is about 190 KiB; the estimate covers it.
        assert!(big.mem_bytes > 190_000 * 2);
    }
}
