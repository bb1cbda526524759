//! Which base backup a restore starts from, for a recovery target.

use crate::postgres::lsn;

use super::catalog::Catalog;
pub use super::error::SelectError;
use super::manifest::Manifest;
use super::time;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    Latest,
    /// RFC 3339 (`recovery_target_time`).
    Time(String),
    /// PostgreSQL's text form (`recovery_target_lsn`).
    Lsn(String),
    /// A restore point (`recovery_target_name`): where it lies is unknown, so the oldest
    /// backup, whose WAL reaches back furthest.
    Name(String),
}

/// Time: the newest backup finished strictly before the target, which must lie in the
/// recoverable range. LSN: the newest whose end is at or before it. Latest: the newest.
/// Name: the oldest, since where a restore point lies is unknown and only the oldest
/// backup reaches every one the archive holds.
pub fn select<'a>(catalog: &'a Catalog, target: &Target) -> Result<&'a Manifest, SelectError> {
    let newest = catalog.backups.last().ok_or(SelectError::NoBackups)?;
    let (start, end) = catalog.recoverable_range().ok_or(SelectError::NoBackups)?;
    match target {
        Target::Latest => Ok(newest),
        Target::Name(_) => catalog.backups.first().ok_or(SelectError::NoBackups),
        Target::Time(text) => {
            let at =
                time::parse_rfc3339(text).ok_or_else(|| SelectError::InvalidTime(text.clone()))?;
            // The range's own strings were formatted from parsed times: they parse.
            let last = time::parse_rfc3339(&end).unwrap_or(i64::MAX);
            if at > last {
                return Err(SelectError::AfterRange {
                    target: text.clone(),
                    last: end.clone(),
                    start,
                    end,
                });
            }
            newest_where(catalog, |m| m.finished_secs().is_some_and(|f| f < at)).ok_or(
                SelectError::BeforeRange {
                    target: text.clone(),
                    first: start.clone(),
                    start,
                    end,
                },
            )
        }
        Target::Lsn(text) => {
            let at = lsn::parse(text).ok_or_else(|| SelectError::InvalidLsn(text.clone()))?;
            newest_where(catalog, |m| m.stop_lsn_value().is_some_and(|s| s <= at)).ok_or_else(
                || SelectError::LsnBeforeFirst {
                    target: text.clone(),
                    first: catalog
                        .backups
                        .iter()
                        .filter_map(Manifest::stop_lsn_value)
                        .min()
                        .map(lsn::format)
                        .unwrap_or_default(),
                    start,
                    end,
                },
            )
        }
    }
}

fn newest_where(catalog: &Catalog, keep: impl Fn(&Manifest) -> bool) -> Option<&Manifest> {
    catalog.backups.iter().rev().find(|m| keep(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::catalog::WalObject;
    use crate::backup::manifest::sample;

    fn backup(id: &str, finished_at: &str, stop_lsn: &str) -> Manifest {
        Manifest {
            id: id.into(),
            finished_at: finished_at.into(),
            stop_lsn: stop_lsn.into(),
            ..sample()
        }
    }

    fn catalog() -> Catalog {
        Catalog {
            dumps: vec![],
            backups: vec![
                backup("a", "2026-12-01T11:02:03Z", "0/3000100"),
                backup("b", "2026-12-01T11:30:00Z", "0/8000100"),
                backup("c", "2026-12-01T11:45:00Z", "1/100"),
            ],
            incomplete: vec!["d".into()],
            wal: vec![WalObject {
                name: "000000010000000100000002".into(),
                key: "k".into(),
                size: 1,
                last_modified: "2026-12-01T12:00:00Z".into(),
            }],
        }
    }

    fn pick(target: Target) -> Result<String, SelectError> {
        let catalog = catalog();
        select(&catalog, &target).map(|m| m.id.clone())
    }

    #[test]
    fn latest_takes_the_newest_and_names_the_oldest() {
        assert_eq!(pick(Target::Latest), Ok("c".into()));
        assert_eq!(
            pick(Target::Name("before-migration".into())),
            Ok("a".into())
        );
        let err = select(&Catalog::default(), &Target::Latest).unwrap_err();
        assert_eq!(err, SelectError::NoBackups);
    }

    #[test]
    fn times_take_the_newest_finished_strictly_before() {
        let at = |t: &str| pick(Target::Time(t.into()));
        assert_eq!(at("2026-12-01T11:02:04Z"), Ok("a".into()));
        assert_eq!(at("2026-12-01T11:30:00Z"), Ok("a".into()));
        assert_eq!(at("2026-12-01T11:30:01Z"), Ok("b".into()));
        assert_eq!(at("2026-12-01T13:59:00+02:00"), Ok("c".into()));
        assert_eq!(at("2026-12-01T12:00:00Z"), Ok("c".into()));
    }

    #[test]
    fn times_outside_the_range_are_refused_with_the_range() {
        let err = pick(Target::Time("2026-12-01T10:00:00Z".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "recovery target 2026-12-01T10:00:00Z is before the first recoverable point \
             2026-12-01T11:02:03Z (the archive covers 2026-12-01T11:02:03Z to 2026-12-01T12:00:00Z)"
        );
        // The first backup's own end is not after it.
        let err = pick(Target::Time("2026-12-01T11:02:03Z".into())).unwrap_err();
        assert!(matches!(err, SelectError::BeforeRange { .. }), "{err}");
        let err = pick(Target::Time("2026-12-01T12:00:01Z".into()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "recovery target 2026-12-01T12:00:01Z is after the last recoverable point \
             2026-12-01T12:00:00Z (the archive covers 2026-12-01T11:02:03Z to 2026-12-01T12:00:00Z)"
        );
        assert_eq!(
            pick(Target::Time("yesterday".into())),
            Err(SelectError::InvalidTime("yesterday".into()))
        );
    }

    #[test]
    fn lsns_take_the_newest_ended_at_or_before() {
        let at = |l: &str| pick(Target::Lsn(l.into()));
        assert_eq!(at("0/3000100"), Ok("a".into()));
        assert_eq!(at("0/80000FF"), Ok("a".into()));
        assert_eq!(at("0/8000100"), Ok("b".into()));
        assert_eq!(at("5/0"), Ok("c".into()));
        let err = at("0/1000000").unwrap_err().to_string();
        assert!(
            err.contains("before the end of the first backup, 0/3000100")
                && err.contains("covers 2026-12-01T11:02:03Z to 2026-12-01T12:00:00Z"),
            "{err}"
        );
        assert_eq!(at("x"), Err(SelectError::InvalidLsn("x".into())));
    }
}
