//! Migration file names: `V<version>__<description>.sql`, the version a positive
//! integer or dotted integers (`1`, `1.2`, `2024.01.15`), ordered by number.

use std::cmp::Ordering;

/// A migration's version: compared part by part as numbers, trailing zeros ignored
/// (`1.0` is `1`, so the two are one version and may not both exist).
#[derive(Debug, Clone)]
pub struct Version {
    /// As written (what `geodb_migrations` records and the outcome reports).
    text: String,
    /// The numbers without trailing zeros.
    parts: Vec<u64>,
}

impl Version {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("the version is empty".into());
        }
        let mut parts = Vec::new();
        for part in text.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "version {text:?} is not a number or dotted numbers like 1.2"
                ));
            }
            let number = part
                .parse::<u64>()
                .map_err(|_| format!("version {text:?} has a part too large"))?;
            parts.push(number);
        }
        while parts.last() == Some(&0) {
            parts.pop();
        }
        if parts.is_empty() {
            return Err(format!("version {text:?} is not positive"));
        }
        Ok(Self {
            text: text.to_owned(),
            parts,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.parts == other.parts
    }
}

impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        // Slices compare part by part, a prefix first: 1 < 1.1 < 1.2 < 1.10 < 2.
        self.parts.cmp(&other.parts)
    }
}

/// What a migration file's name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub version: Version,
    /// Underscores read as spaces (`V2__add_locations.sql`: `add locations`).
    pub description: String,
}

/// The version and description of `file_name`, or why it is not a migration name.
pub fn parse_name(file_name: &str) -> Result<Name, String> {
    const FORM: &str = "expected V<version>__<description>.sql";
    let stem = file_name
        .strip_suffix(".sql")
        .ok_or_else(|| format!("not a .sql file ({FORM})"))?;
    let rest = stem
        .strip_prefix('V')
        .ok_or_else(|| format!("does not start with an upper-case V ({FORM})"))?;
    let (version, description) = rest
        .split_once("__")
        .ok_or_else(|| format!("no \"__\" after the version ({FORM})"))?;
    let version = Version::parse(version).map_err(|e| format!("{e} ({FORM})"))?;
    let description = description.replace('_', " ").trim().to_owned();
    if description.is_empty() {
        return Err(format!("the description is empty ({FORM})"));
    }
    Ok(Name {
        version,
        description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    #[test]
    fn versions_order_by_number() {
        let mut versions: Vec<Version> = ["10", "2", "1.10", "1.2", "1", "1.2.1", "1.9"]
            .iter()
            .map(|t| v(t))
            .collect();
        versions.sort();
        let order: Vec<&str> = versions.iter().map(Version::as_str).collect();
        assert_eq!(order, ["1", "1.2", "1.2.1", "1.9", "1.10", "2", "10"]);
        assert_eq!(v("1.0"), v("1"));
        assert_eq!(v("01"), v("1"));
        assert_eq!(v("1.0").as_str(), "1.0");
        assert!(v("1.0.1") > v("1"));
    }

    #[test]
    fn bad_versions() {
        for bad in [
            "", "0", "0.0", "1.", ".1", "1..2", "a", "1a", "-1", "1,2", " 1",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Version::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn names() {
        let name = parse_name("V2__add_locations.sql").unwrap();
        assert_eq!(name.version, v("2"));
        assert_eq!(name.description, "add locations");
        let name = parse_name("V1.2__a__b.sql").unwrap();
        assert_eq!(name.version.as_str(), "1.2");
        assert_eq!(name.description, "a  b");
    }

    #[test]
    fn bad_names_say_why() {
        for (name, why) in [
            ("V1__x.SQL", "not a .sql"),
            ("v1__x.sql", "upper-case V"),
            ("1__x.sql", "upper-case V"),
            ("V1_x.sql", "no \"__\""),
            ("V__x.sql", "empty"),
            ("Vx__y.sql", "not a number"),
            ("V0__zero.sql", "not positive"),
            ("V1__.sql", "description is empty"),
            ("V1_____.sql", "description is empty"),
        ] {
            let err = parse_name(name).unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
            assert!(
                err.contains("V<version>__<description>.sql"),
                "{name}: {err}"
            );
        }
    }
}
