//! What a run applies, from the files and what `geodb_migrations` records (pure): every
//! refusal is found here, before the first file runs.

use super::error::{MigrateError, Mismatch, Result};
use super::files::MigrationFile;
use super::name::Version;

/// One row of `geodb_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: Version,
    pub description: String,
    pub checksum: String,
}

#[derive(Debug)]
pub struct Plan<'a> {
    /// To apply, in this order.
    pub pending: Vec<&'a MigrationFile>,
    /// Applied earlier, its file no longer given (fine: it is logged).
    pub missing: Vec<Applied>,
    /// The highest version applied before this run.
    pub highest: Option<Version>,
}

/// The plan for `files` (sorted by version) against `applied`: an applied file whose
/// checksum changed is refused (all of them named), and so is a new file older than
/// the highest applied version (it would run after what it was meant to precede).
pub fn plan<'a>(files: &'a [MigrationFile], applied: &[Applied]) -> Result<Plan<'a>> {
    let mismatches: Vec<Mismatch> = files
        .iter()
        .filter_map(|file| {
            let record = applied.iter().find(|a| a.version == file.version)?;
            (record.checksum != file.checksum).then(|| Mismatch {
                file: file.file.clone(),
                version: record.version.to_string(),
                applied: record.checksum.clone(),
                found: file.checksum.clone(),
            })
        })
        .collect();
    if !mismatches.is_empty() {
        return Err(MigrateError::ChecksumMismatch(mismatches));
    }
    let highest = applied.iter().map(|a| &a.version).max().cloned();
    let pending: Vec<&MigrationFile> = files
        .iter()
        .filter(|f| !applied.iter().any(|a| a.version == f.version))
        .collect();
    if let (Some(first), Some(highest)) = (pending.first(), &highest) {
        if first.version < *highest {
            return Err(MigrateError::OutOfOrder {
                file: first.file.clone(),
                version: first.version.to_string(),
                highest: highest.to_string(),
            });
        }
    }
    let mut missing: Vec<Applied> = applied
        .iter()
        .filter(|a| !files.iter().any(|f| f.version == a.version))
        .cloned()
        .collect();
    missing.sort_by(|a, b| a.version.cmp(&b.version));
    Ok(Plan {
        pending,
        missing,
        highest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn file(version: &str, sql: &str) -> MigrationFile {
        MigrationFile {
            path: PathBuf::from(format!("/m/V{version}__x.sql")),
            file: format!("V{version}__x.sql"),
            version: v(version),
            description: "x".into(),
            checksum: crate::archive::checksum::sha256_hex(sql.as_bytes()),
            sql: sql.into(),
        }
    }

    fn applied(version: &str, sql: &str) -> Applied {
        Applied {
            version: v(version),
            description: "x".into(),
            checksum: crate::archive::checksum::sha256_hex(sql.as_bytes()),
        }
    }

    fn versions(plan: &Plan<'_>) -> Vec<String> {
        plan.pending.iter().map(|f| f.version.to_string()).collect()
    }

    #[test]
    fn everything_is_pending_on_a_new_database() {
        let files = [file("1", "a"), file("1.1", "b"), file("2", "c")];
        let plan = plan(&files, &[]).unwrap();
        assert_eq!(versions(&plan), ["1", "1.1", "2"]);
        assert_eq!(plan.highest, None);
        assert!(plan.missing.is_empty());
    }

    #[test]
    fn only_new_files_are_pending() {
        let files = [file("1", "a"), file("2", "b"), file("3", "c")];
        let plan = plan(&files, &[applied("1", "a"), applied("2", "b")]).unwrap();
        assert_eq!(versions(&plan), ["3"]);
        assert_eq!(plan.highest, Some(v("2")));

        let all = [applied("1", "a"), applied("2", "b"), applied("3", "c")];
        let plan = super::plan(&files, &all).unwrap();
        assert!(plan.pending.is_empty());
    }

    #[test]
    fn versions_match_by_number() {
        let files = [file("1.0", "a")];
        let plan = plan(&files, &[applied("1", "a")]).unwrap();
        assert!(plan.pending.is_empty());
    }

    #[test]
    fn a_changed_applied_file_is_refused_with_every_other() {
        let files = [
            file("1", "a"),
            file("2", "b changed"),
            file("3", "c changed"),
            file("4", "d"),
        ];
        let done = [applied("1", "a"), applied("2", "b"), applied("3", "c")];
        let err = plan(&files, &done).unwrap_err();
        assert_eq!(err.label(), "checksum_mismatch");
        let MigrateError::ChecksumMismatch(mismatches) = &err else {
            panic!("{err}")
        };
        let named: Vec<&str> = mismatches.iter().map(|m| m.file.as_str()).collect();
        assert_eq!(named, ["V2__x.sql", "V3__x.sql"]);
        let text = err.to_string();
        assert!(text.contains("V2__x.sql (version 2) changed"), "{text}");
        assert!(text.ends_with("nothing was applied"), "{text}");
    }

    #[test]
    fn a_missing_applied_file_is_fine() {
        let files = [file("3", "c")];
        let plan = plan(&files, &[applied("1", "a"), applied("2", "b")]).unwrap();
        assert_eq!(versions(&plan), ["3"]);
        let missing: Vec<String> = plan.missing.iter().map(|a| a.version.to_string()).collect();
        assert_eq!(missing, ["1", "2"]);
    }

    #[test]
    fn a_new_file_below_the_highest_applied_is_refused() {
        let files = [
            file("1", "a"),
            file("1.5", "late"),
            file("2", "b"),
            file("3", "c"),
        ];
        let err = plan(&files, &[applied("1", "a"), applied("2", "b")]).unwrap_err();
        assert_eq!(err.label(), "out_of_order");
        assert!(
            err.to_string().starts_with("V1.5__x.sql (version 1.5)"),
            "{err}"
        );
    }
}
