//! The exact sum of JSON numbers, for `"reduce":"sum"`.
//!
//! JSON numbers are decimals, and a sum of decimals is a decimal: each is
//! read as an integer times a power of ten and they are added as big
//! integers, so `0.1 + 0.2` is `0.3`, integers of any size stay exact, and
//! the result does not depend on the order of the items. Nothing goes
//! through a float.

use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{Pow, Zero};

/// Numbers whose decimal exponent (after moving the point to the end of
/// the digits) is beyond this are refused: `1e1000000` would otherwise ask
/// for a million-digit integer. f64 spans about 10^±324.
pub const MAX_EXPONENT: i64 = 1_000;
/// Longest number text accepted.
pub const MAX_NUMBER_CHARS: usize = 4_096;

/// Why a text is not a number that can be summed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SumError {
    /// Not a JSON number.
    #[error(
        "is not a number ({0}): \"sum\" adds numbers; use \"reduce\":\"values\" or \"module\""
    )]
    NotANumber(String),
    /// A number too large or too small to sum exactly.
    #[error("is a number of more than {MAX_NUMBER_CHARS} characters or an exponent beyond ±{MAX_EXPONENT}, too large to sum exactly")]
    TooLarge,
}

/// A decimal: `mantissa × 10^exponent`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Decimal {
    mantissa: BigInt,
    exponent: i64,
}

/// Reads one JSON number (`-12.5e3`, white space around it allowed).
fn parse(text: &str) -> Result<Decimal, SumError> {
    let t = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    let shown = || t.chars().take(40).collect::<String>();
    if t.len() > MAX_NUMBER_CHARS {
        return Err(SumError::TooLarge);
    }
    let (negative, rest) = match t.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, t),
    };
    let int_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (int, rest) = rest.split_at(int_end);
    if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
        return Err(SumError::NotANumber(shown()));
    }
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(r) => {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            if end == 0 {
                return Err(SumError::NotANumber(shown()));
            }
            r.split_at(end)
        }
        None => ("", rest),
    };
    let exp: i64 = match rest.strip_prefix(['e', 'E']) {
        Some(r) => {
            let digits = r.strip_prefix(['+', '-']).unwrap_or(r);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(SumError::NotANumber(shown()));
            }
            // Far beyond the limit is simply too large.
            let magnitude: i64 = digits.parse().map_err(|_| SumError::TooLarge)?;
            if r.starts_with('-') {
                -magnitude
            } else {
                magnitude
            }
        }
        None if rest.is_empty() => 0,
        None => return Err(SumError::NotANumber(shown())),
    };
    let exponent = exp - frac.len() as i64;
    if exponent.abs() > MAX_EXPONENT {
        return Err(SumError::TooLarge);
    }
    let digits = format!("{int}{frac}");
    let magnitude = BigUint::parse_bytes(digits.as_bytes(), 10).expect("only digits");
    let sign = if negative { Sign::Minus } else { Sign::Plus };
    Ok(Decimal {
        mantissa: BigInt::from_biguint(sign, magnitude),
        exponent,
    })
}

/// The exact sum of JSON numbers, as the shortest JSON number text: an
/// integer when the sum is one (`3`, not `3.0`), else a plain decimal with
/// no trailing zeros (`0.3`). Errors name the offending text's index.
pub fn exact_sum<'a>(
    numbers: impl IntoIterator<Item = &'a str>,
) -> Result<String, (usize, SumError)> {
    let mut parsed = Vec::new();
    for (i, text) in numbers.into_iter().enumerate() {
        parsed.push(parse(text).map_err(|e| (i, e))?);
    }
    let min_exp = parsed.iter().map(|d| d.exponent).min().unwrap_or(0).min(0);
    let ten = BigInt::from(10u32);
    let mut total = BigInt::zero();
    for d in parsed {
        let shift = (d.exponent - min_exp) as u64;
        total += d.mantissa * Pow::pow(&ten, shift);
    }
    Ok(render(total, min_exp))
}

/// `mantissa × 10^exponent` (exponent ≤ 0) as a plain decimal.
fn render(mantissa: BigInt, exponent: i64) -> String {
    let negative = mantissa.sign() == Sign::Minus;
    let digits = mantissa.magnitude().to_str_radix(10);
    let scale = (-exponent) as usize;
    let (int, frac) = if scale == 0 {
        (digits, String::new())
    } else if digits.len() > scale {
        let (i, f) = digits.split_at(digits.len() - scale);
        (i.to_string(), f.to_string())
    } else {
        (
            "0".to_string(),
            format!("{}{digits}", "0".repeat(scale - digits.len())),
        )
    };
    let frac = frac.trim_end_matches('0');
    let mut out = String::with_capacity(int.len() + frac.len() + 2);
    if negative {
        out.push('-');
    }
    out.push_str(&int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_of_any_size_add_exactly() {
        assert_eq!(exact_sum(["1", "2", "3"]).unwrap(), "6");
        assert_eq!(exact_sum(Vec::<&str>::new()).unwrap(), "0");
        assert_eq!(exact_sum(["-5", "2"]).unwrap(), "-3");
        assert_eq!(
            exact_sum(["18446744073709551615", "18446744073709551615", "1"]).unwrap(),
            "36893488147419103231"
        );
        assert_eq!(exact_sum(["1e3", "1E+2", "0"]).unwrap(), "1100");
    }

    #[test]
    fn decimals_add_exactly_not_as_floats() {
        assert_eq!(exact_sum(["0.1", "0.2"]).unwrap(), "0.3");
        assert_eq!(exact_sum(["0.5", "0.5"]).unwrap(), "1");
        assert_eq!(exact_sum(["1.25e-2", "-0.0125"]).unwrap(), "0");
        assert_eq!(exact_sum(["-0.001", "0"]).unwrap(), "-0.001");
        assert_eq!(exact_sum(["3.14159", "2"]).unwrap(), "5.14159");
        assert_eq!(exact_sum(["-0"]).unwrap(), "0");
    }

    #[test]
    fn non_numbers_and_monsters_are_named() {
        let (i, e) = exact_sum(["1", "\"2\""]).unwrap_err();
        assert_eq!(i, 1);
        assert!(e.to_string().contains("not a number"), "{e}");
        for bad in [
            "", "-", "01", "1.", ".5", "1e", "1e+", "+1", "1x", "null", "[1]", "NaN",
        ] {
            assert!(
                matches!(parse(bad), Err(SumError::NotANumber(_))),
                "{bad:?}"
            );
        }
        assert_eq!(parse("1e1000000"), Err(SumError::TooLarge));
        assert_eq!(parse("1e99999999999999999999999"), Err(SumError::TooLarge));
        assert_eq!(parse(&"9".repeat(5000)), Err(SumError::TooLarge));
        assert!(parse("1e999").is_ok());
    }
}
