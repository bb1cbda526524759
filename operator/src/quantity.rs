//! Parsing of Kubernetes quantities (`500m`, `1Gi`, `2e3`) and PostgreSQL memory settings
//! (`64MB`), for validations the schema cannot express.

/// Value of a Kubernetes quantity in base units (bytes, cores). `None` unless it is one
/// by the API server's grammar: an optionally signed decimal number (`1`, `1.5`, `.5`),
/// then a binary suffix (`Ki`..`Ei`), a decimal one (`n`, `u`, `m`, `k`, `M`..`E`) or an
/// integer exponent (`e3`, `E-2`). No spaces.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let (sign, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, text.strip_prefix('+').unwrap_or(text)),
    };
    let split = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    // Digits with at most one point; f64 parsing alone would take `inf` or `1e3` here.
    if number.matches('.').count() > 1 || !number.contains(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let power = &exp[1..];
            let digits = power.strip_prefix(['+', '-']).unwrap_or(power);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(power.parse().ok()?)
        }
        _ => return None,
    };
    Some(sign * number * factor)
}

/// Bytes of a PostgreSQL memory setting. A bare number counts in the setting's own unit
/// (`unit_bytes`, e.g. 8 kB pages for `shared_buffers`). `None` if malformed.
pub fn parse_pg_memory(text: &str, unit_bytes: u64) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" => unit_bytes,
        "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("1.5Mi"), Some(1.5 * 1048576.0));
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity("1Zi"), None);
        assert_eq!(parse_quantity(".5"), Some(0.5));
        assert_eq!(parse_quantity("+2"), Some(2.0));
        assert_eq!(parse_quantity("-1"), Some(-1.0));
        assert_eq!(parse_quantity("100u"), Some(100.0 * 1e-6));
        assert_eq!(parse_quantity("1E-3"), Some(1e-3));
        for malformed in [
            "fast", "", " 1", "1 ", "1.2.3", "1e", "1e1.5", "1e+", "inf", "NaN", ".", "-", "1Gb",
            "1mi", "--1", "1e3Mi",
        ] {
            assert_eq!(parse_quantity(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn postgres_memory() {
        assert_eq!(parse_pg_memory("64MB", 1024), Some(64 << 20));
        assert_eq!(parse_pg_memory("128", 8192), Some(128 * 8192));
        assert_eq!(parse_pg_memory("1GB", 8192), Some(1 << 30));
        assert_eq!(parse_pg_memory("64 MB", 1024), Some(64 << 20));
        assert_eq!(parse_pg_memory("64mb", 1024), None);
        assert_eq!(parse_pg_memory("lots", 1024), None);
    }
}
