//! Independent references: the obvious, slow way to compute what each
//! kernel computes, written without looking at the kernels' code.

use std::collections::HashMap;

use musketeer_tasks::matmul::{random_a_rows, random_b, RandomMatrices};
use num_bigint::BigUint;

/// F(n) for each n, by plain iteration up to the largest one.
pub fn fibonacci(ns: &[u64]) -> Vec<String> {
    let max = ns.iter().copied().max().unwrap_or(0);
    let mut wanted: HashMap<u64, String> = ns.iter().map(|&n| (n, String::new())).collect();
    let (mut a, mut b) = (BigUint::from(0u32), BigUint::from(1u32));
    for i in 0..=max {
        if let Some(slot) = wanted.get_mut(&i) {
            *slot = a.to_string();
        }
        let next = &a + &b;
        a = std::mem::replace(&mut b, next);
    }
    ns.iter().map(|n| wanted[n].clone()).collect()
}

/// n! by a left fold.
pub fn factorial(n: u64) -> String {
    (1..=n)
        .fold(BigUint::from(1u32), |acc, k| acc * BigUint::from(k))
        .to_string()
}

/// C = A × B by the textbook triple loop.
pub fn matmul(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let (m, k, n) = (a.len(), b.len(), b[0].len());
    let mut c = vec![vec![0.0; n]; m];
    for i in 0..m {
        for p in 0..k {
            for j in 0..n {
                c[i][j] += a[i][p] * b[p][j];
            }
        }
    }
    c
}

/// Whether two results agree to a relative 1e-9 (summation order differs).
pub fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * (1.0 + x.abs().max(y.abs()))
}

fn is_apostrophe(c: char) -> bool {
    c == '\'' || c == '\u{2019}'
}

/// Word counts by the rules of SPEC.md, one character at a time: the sorted
/// list of (word, count) and the total.
pub fn wordcount(
    text: &[u8],
    min_len: usize,
    case_sensitive: bool,
    whitespace: bool,
) -> (u64, Vec<(String, u64)>) {
    let text = String::from_utf8_lossy(text);
    let mut words: Vec<String> = Vec::new();
    if whitespace {
        let cleaned: String = text.chars().filter(|&c| c != ',' && c != '.').collect();
        words.extend(cleaned.split_whitespace().map(str::to_string));
    } else {
        let chars: Vec<char> = text.chars().collect();
        let mut cur = String::new();
        for i in 0..chars.len() {
            let c = chars[i];
            // An apostrophe joins only when letters stand on both sides.
            let joins = is_apostrophe(c)
                && !cur.is_empty()
                && i + 1 < chars.len()
                && chars[i + 1].is_alphanumeric();
            if c.is_alphanumeric() || joins {
                cur.push(c);
            } else if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        }
        if !cur.is_empty() {
            words.push(cur);
        }
    }
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for w in words {
        if w.chars().count() < min_len.max(1) {
            continue;
        }
        let w = if case_sensitive || whitespace {
            w
        } else {
            w.to_lowercase()
        };
        total += 1;
        *counts.entry(w).or_default() += 1;
    }
    let mut list: Vec<(String, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    (total, list)
}

/// Checks C against the seeded operands: Freivalds' check of every entry
/// (C·x = A·(B·x) for a random ±1 vector x), and the textbook product of the
/// harness's reference for one row in every 64.
pub fn check_random_product(spec: &RandomMatrices, result: &serde_json::Value) {
    let (m, k, n) = (spec.m as usize, spec.k as usize, spec.n as usize);
    let c: Vec<Vec<f64>> = result["c"]
        .as_array()
        .expect("a matrix")
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(c.len(), m);
    assert!(c.iter().all(|r| r.len() == n));

    let x: Vec<f64> = (0..n)
        .map(|j| if (j * 7919 + 13) % 5 < 2 { -1.0 } else { 1.0 })
        .collect();
    let mut bx = vec![0.0; k];
    for (p, slot) in bx.iter_mut().enumerate() {
        *slot = (0..n)
            .map(|j| random_b(spec, p as u64, j as u64) * x[j])
            .sum();
    }
    let a = random_a_rows(spec, 0, spec.m);
    for i in 0..m {
        let abx: f64 = (0..k).map(|p| a[i * k + p] * bx[p]).sum();
        let cx: f64 = (0..n).map(|j| c[i][j] * x[j]).sum();
        let scale: f64 = (0..n).map(|j| c[i][j].abs()).sum::<f64>() + 1.0;
        assert!(
            (abx - cx).abs() <= 1e-9 * scale,
            "row {i}: C·x = {cx}, A·(B·x) = {abx}"
        );
    }

    // The reference product of the sampled rows, over blocks of k so that
    // B is never held whole.
    const BLOCK: usize = 4096;
    let rows: Vec<usize> = (0..m).step_by(64).map(|i| i + (i / 64) % 64).collect();
    let mut want = vec![vec![0.0; n]; rows.len()];
    for start in (0..k).step_by(BLOCK) {
        let b: Vec<Vec<f64>> = (start..start + BLOCK)
            .map(|p| (0..n).map(|j| random_b(spec, p as u64, j as u64)).collect())
            .collect();
        let a_rows: Vec<Vec<f64>> = rows
            .iter()
            .map(|&i| a[i * k + start..i * k + start + BLOCK].to_vec())
            .collect();
        for (acc, part) in want.iter_mut().zip(matmul(&a_rows, &b)) {
            for (x, y) in acc.iter_mut().zip(part) {
                *x += y;
            }
        }
    }
    for (r, &i) in rows.iter().enumerate() {
        for j in 0..n {
            assert!(
                close(c[i][j], want[r][j]),
                "C[{i}][{j}] = {}, want {}",
                c[i][j],
                want[r][j]
            );
        }
    }
}

/// The `values` of a Fibonacci result, as strings in input order.
pub fn values(result: &serde_json::Value) -> Vec<String> {
    result["values"]
        .as_array()
        .expect("a values array")
        .iter()
        .map(|s| s.as_str().expect("decimal strings").to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_know_small_cases() {
        assert_eq!(fibonacci(&[10, 0, 1, 20]), vec!["55", "0", "1", "6765"]);
        assert_eq!(factorial(5), "120");
        assert_eq!(
            matmul(&[vec![1.0, 2.0]], &[vec![3.0], vec![4.0]]),
            vec![vec![11.0]]
        );
        let (total, list) = wordcount(b"Don't stop, don't. rock''n", 1, false, false);
        assert_eq!(total, 5);
        assert_eq!(list[0], ("don't".to_string(), 2));
    }
}
