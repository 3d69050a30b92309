//! N-queens: item n is a board size; its output is how many ways n queens
//! sit on an n x n board with no two attacking, by plain backtracking over
//! one queen per row.

/// Larger boards take minutes even natively.
pub const MAX_N: usize = 14;

fn place(n: usize, row: usize, cols: &mut [usize; MAX_N]) -> u64 {
    if row == n {
        return 1;
    }
    let mut found = 0;
    for c in 0..n {
        let safe = (0..row).all(|r| {
            let rc = cols[r];
            rc != c && rc.abs_diff(c) != row - r
        });
        if safe {
            cols[row] = c;
            found += place(n, row + 1, cols);
        }
    }
    found
}

/// The kernel: the number of solutions on an n x n board (0 past MAX_N).
pub fn solutions(n: usize) -> u64 {
    if n > MAX_N {
        return 0;
    }
    place(n, 0, &mut [0; MAX_N])
}

musketeer_guest::map!(solutions);
