//! Mandelbrot rows: item y is row y of a WIDTH x HEIGHT picture of the
//! plane from -2-1.5i to 1+1.5i; its output is each pixel's escape count
//! (at most MAX_ITER). Floating point all the way, and byte-identical on
//! every architecture: WebAssembly's floats are IEEE 754 with one rounding.

/// Pixels per row.
pub const WIDTH: u32 = 256;
/// Rows.
pub const HEIGHT: u32 = 256;
/// Iterations before a point counts as inside.
pub const MAX_ITER: u32 = 500;

/// The kernel: row `y`'s escape counts, left to right.
pub fn row(y: u32) -> Vec<u32> {
    let ci = -1.5 + 3.0 * y as f64 / HEIGHT as f64;
    (0..WIDTH)
        .map(|x| {
            let cr = -2.0 + 3.0 * x as f64 / WIDTH as f64;
            let (mut zr, mut zi) = (0.0f64, 0.0f64);
            let mut n = 0;
            while n < MAX_ITER && zr * zr + zi * zi <= 4.0 {
                let t = zr * zr - zi * zi + cr;
                zi = 2.0 * zr * zi + ci;
                zr = t;
                n += 1;
            }
            n
        })
        .collect()
}

musketeer_guest::map!(row);
