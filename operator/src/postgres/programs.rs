//! Where PostgreSQL's programs are: the directory of `pg_ctl` on PATH, else the newest
//! `/usr/lib/postgresql/<major>/bin` (Debian's layout, as in the geodb image).

use std::path::PathBuf;

/// The directory, or `None` when no PostgreSQL is installed.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pg_ctl").exists() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, e.path().join("bin")))
        })
        .filter(|(_, p)| p.join("pg_ctl").exists())
        .collect();
    // By number: 9.6 < 10 < 15 < 17, which a sort of names would not give.
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}
