//! Byte sizes as people type them (`512M`, `1.5G`): the agent's `--memory`
//! and the coordinator's `--min-free-disk` read them the same way.

/// Parses a byte size: a number (fractions allowed) and an optional unit,
/// `B`, `K`, `M`, `G`, `T`, each also as `KB`/`KiB` and so on, any case.
///
/// Every unit is binary (`512M` is 512 MiB), as Docker's `--memory` reads
/// them: people type `M` and mean what `free -m` shows.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "unknown unit {unit:?}: use a number with B, K, M, G or T, e.g. 512M or 1.5G"
            ))
        }
    };
    if number.is_empty() {
        return Err("expected a number with an optional unit, e.g. 512M or 1.5G".into());
    }
    let scale = (1u64 << shift) as f64;
    let bytes = if let Ok(whole) = number.parse::<u64>() {
        whole
            .checked_mul(1u64 << shift)
            .ok_or_else(|| "too large".to_string())?
    } else {
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{number:?} is not a number"))?;
        let bytes = (value * scale).round();
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err("too large".into());
        }
        bytes as u64
    };
    if bytes == 0 {
        return Err("must be more than zero".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_docker_does() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("512b"), Ok(512));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512mb"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size(" 2 GiB "), Ok(2 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("0.5t"), Ok(1 << 39));
        assert_eq!(parse_size(".5K"), Ok(512));
    }

    #[test]
    fn bad_sizes_say_what_to_type() {
        assert!(parse_size("").unwrap_err().contains("number"));
        assert!(parse_size("G").unwrap_err().contains("number"));
        assert!(parse_size("12X").unwrap_err().contains("unit"));
        assert!(parse_size("1.2.3M").unwrap_err().contains("not a number"));
        assert!(parse_size("0").unwrap_err().contains("zero"));
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999999T")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("1e300T").is_err());
    }
}
