//! Primes in a range: item k counts the primes in [k * BLOCK, (k + 1) * BLOCK)
//! by trial division, so `"range":{"start":0,"end":100}` with
//! `"reduce":"sum"` gives pi(1,000,000) = 78498.

/// Numbers per item.
pub const BLOCK: u64 = 10_000;

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// The kernel: how many primes block `k` holds.
pub fn primes_in_block(k: u64) -> u64 {
    (k * BLOCK..(k + 1) * BLOCK)
        .filter(|&n| is_prime(n))
        .count() as u64
}

musketeer_guest::map!(primes_in_block);
