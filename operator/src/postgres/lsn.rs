//! WAL positions (LSNs): `16/B374D848` as text, a byte offset as a number.

/// `16/B374D848` -> byte position.
pub fn parse(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Bytes from `behind` to `ahead` (0 when `behind` is not behind), as a status field.
pub fn distance(ahead: u64, behind: u64) -> i64 {
    i64::try_from(ahead.saturating_sub(behind)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(parse("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse("0/0"), Some(0));
        assert_eq!(parse("nonsense"), None);
        assert_eq!(distance(10, 4), 6);
        assert_eq!(distance(4, 10), 0);
    }
}
