//! The migration files of one or more directories (in a Job, mounted ConfigMaps), read
//! and checked before anything connects: names, duplicate versions, checksums, and no
//! statement that would end the file's transaction.

use std::path::{Path, PathBuf};

use tracing::info;

use super::error::{MigrateError, Result};
use super::name::{parse_name, Version};
use super::sqlscan;

/// One migration file, read.
#[derive(Debug, Clone)]
pub struct MigrationFile {
    pub path: PathBuf,
    /// The file name (what errors and logs name).
    pub file: String,
    pub version: Version,
    pub description: String,
    /// sha256 of the file's bytes, lower-case hex.
    pub checksum: String,
    /// The SQL sent to the server (without a byte-order mark).
    pub sql: String,
}

/// Every migration file of `dirs`, ordered by version. Hidden entries (a ConfigMap
/// volume's `..data`) and subdirectories are skipped, other files that are not `.sql`
/// are logged and skipped (a README); a `.sql` file with a bad name, two files of one
/// version, or a file that controls its own transaction is an error.
pub fn load(dirs: &[PathBuf]) -> Result<Vec<MigrationFile>> {
    let mut files = Vec::new();
    for dir in dirs {
        for path in sql_paths(dir)? {
            files.push(read(&path)?);
        }
    }
    files.sort_by(|a, b| a.version.cmp(&b.version));
    check_duplicates(&files)?;
    Ok(files)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The `.sql` files directly in `dir`, by name.
fn sql_paths(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows links: a ConfigMap's keys are links into its `..data`.
        if std::fs::metadata(&path).map_err(io(&path))?.is_dir() {
            continue;
        }
        if name.ends_with(".sql") {
            paths.push(path);
        } else {
            info!(file = %path.display(), "not a .sql file; skipped");
        }
    }
    paths.sort();
    Ok(paths)
}

fn read(path: &Path) -> Result<MigrationFile> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let invalid = |reason: String| MigrateError::InvalidFile {
        file: file.clone(),
        reason,
    };
    let name = parse_name(&file).map_err(invalid)?;
    let bytes = std::fs::read(path).map_err(io(path))?;
    let checksum = crate::archive::checksum::sha256_hex(&bytes);
    let text = String::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let sql = text.strip_prefix('\u{feff}').unwrap_or(&text).to_owned();
    if let Some((line, statement)) = sqlscan::transaction_control(&sql) {
        return Err(invalid(format!(
            "line {line}: {statement} would end the transaction the file is applied in; \
             remove it (each file runs in its own transaction)"
        )));
    }
    Ok(MigrationFile {
        path: path.to_path_buf(),
        file: file.clone(),
        version: name.version,
        description: name.description,
        checksum,
        sql,
    })
}

/// `files` is sorted: two of one version are neighbours.
fn check_duplicates(files: &[MigrationFile]) -> Result<()> {
    match files.windows(2).find(|w| w[0].version == w[1].version) {
        Some([first, second]) => Err(MigrateError::DuplicateVersion {
            first: first.path.clone(),
            second: second.path.clone(),
            version: second.version.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str, files: &[(&str, &str)]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("geodb-migrate-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, content) in files {
                std::fs::write(dir.join(name), content).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn loads_in_version_order_and_skips_other_files() {
        let dir = Dir::new(
            "order",
            &[
                ("V10__ten.sql", "SELECT 10;"),
                ("V2__two.sql", "\u{feff}SELECT 2;"),
                ("V1.5__one_and_a_half.sql", "SELECT 1.5;"),
                ("README.md", "not a migration"),
                (".hidden.sql", "skipped"),
            ],
        );
        std::fs::create_dir(dir.0.join("..data")).unwrap();
        std::fs::create_dir(dir.0.join("sub.sql")).unwrap();
        let files = load(std::slice::from_ref(&dir.0)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(
            names,
            ["V1.5__one_and_a_half.sql", "V2__two.sql", "V10__ten.sql"]
        );
        assert_eq!(files[0].description, "one and a half");
        assert_eq!(files[1].sql, "SELECT 2;");
        // The checksum is of the bytes, the mark included.
        assert_eq!(
            files[1].checksum,
            crate::archive::checksum::sha256_hex("\u{feff}SELECT 2;".as_bytes())
        );
        assert_eq!(files[2].checksum.len(), 64);
    }

    #[test]
    fn duplicates_across_directories_name_both_files() {
        let a = Dir::new("dup-a", &[("V1__a.sql", "SELECT 1;")]);
        let b = Dir::new("dup-b", &[("V1.0__b.sql", "SELECT 1;")]);
        let err = load(&[a.0.clone(), b.0.clone()]).unwrap_err();
        assert_eq!(err.label(), "duplicate_version");
        let text = err.to_string();
        assert!(
            text.contains("V1__a.sql") && text.contains("V1.0__b.sql"),
            "{text}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let dir = Dir::new("bad", &[("V1__ok.sql", "SELECT 1;"), ("V2-oops.sql", "")]);
        let err = load(std::slice::from_ref(&dir.0)).unwrap_err();
        assert_eq!(err.label(), "invalid_file");
        assert!(err.to_string().starts_with("V2-oops.sql: "), "{err}");

        let dir = Dir::new("commit", &[("V1__tx.sql", "CREATE TABLE a ();\nCOMMIT;\n")]);
        let err = load(std::slice::from_ref(&dir.0)).unwrap_err().to_string();
        assert!(err.starts_with("V1__tx.sql: line 2: COMMIT"), "{err}");

        let err = load(&[PathBuf::from("/nonexistent/geodb")]).unwrap_err();
        assert_eq!(err.label(), "io");
    }
}
