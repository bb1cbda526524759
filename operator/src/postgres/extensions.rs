//! The extensions of the application database: which to create, which to update (the
//! image brought newer versions) and which the image lacks; then the check that PostGIS
//! answers.

use super::connect::PgError;
use super::sql::ident;

/// One row of `pg_available_extensions`.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub name: String,
    pub default_version: Option<String>,
    pub installed: Option<String>,
}

/// What to do (pure result of [`plan`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub create: Vec<String>,
    /// Name, installed version, the image's version.
    pub update: Vec<(String, String, String)>,
    pub missing: Vec<String>,
}

/// From the wanted names and what the image offers.
pub fn plan(wanted: &[String], available: &[Available], auto_update: bool) -> Plan {
    let mut out = Plan::default();
    for name in wanted {
        match available.iter().find(|a| a.name == *name) {
            None => out.missing.push(name.clone()),
            Some(Available {
                installed: None, ..
            }) => out.create.push(name.clone()),
            Some(Available {
                installed: Some(have),
                default_version: Some(image),
                ..
            }) if auto_update && have != image => {
                out.update.push((name.clone(), have.clone(), image.clone()))
            }
            Some(_) => {}
        }
    }
    out
}

/// What [`ensure`] did and found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub created: Vec<String>,
    pub updated: Vec<(String, String, String)>,
    pub missing: Vec<String>,
    /// The first failure, naming the extension.
    pub failure: Option<String>,
    pub installed: Vec<(String, String)>,
    pub full_version: Option<String>,
}

fn failed(what: &str, error: tokio_postgres::Error) -> String {
    let detail = error
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| error.to_string());
    format!("{what}: {detail}")
}

/// Statements that update `name` to the image's version. PostGIS updates itself and its
/// companions (raster, topology, tiger) in one call.
fn update_sql(name: &str) -> String {
    match name {
        "postgis" => "SELECT postgis_extensions_upgrade()".to_owned(),
        _ => format!("ALTER EXTENSION {} UPDATE", ident(name)),
    }
}

/// Create and update the `wanted` extensions in the database `client` is connected to,
/// then check that PostGIS answers.
pub async fn ensure(
    client: &tokio_postgres::Client,
    wanted: &[String],
    auto_update: bool,
) -> Result<Outcome, PgError> {
    let query = |e: tokio_postgres::Error| PgError::Query(e.to_string());
    let rows = client
        .query(
            "SELECT name::text, default_version, installed_version FROM pg_catalog.pg_available_extensions WHERE name = ANY($1)",
            &[&wanted],
        )
        .await
        .map_err(query)?;
    let available: Vec<Available> = rows
        .iter()
        .map(|r| Available {
            name: r.get(0),
            default_version: r.get(1),
            installed: r.get(2),
        })
        .collect();
    let plan = plan(wanted, &available, auto_update);
    let mut outcome = Outcome {
        missing: plan.missing,
        ..Outcome::default()
    };
    for name in plan.create {
        let sql = format!("CREATE EXTENSION IF NOT EXISTS {} CASCADE", ident(&name));
        match client.batch_execute(&sql).await {
            Ok(()) => outcome.created.push(name),
            Err(e) => {
                outcome.failure = Some(failed(&format!("creating {name}"), e));
                break;
            }
        }
    }
    for (name, from, to) in plan.update {
        if outcome.failure.is_some() {
            break;
        }
        match client.batch_execute(&update_sql(&name)).await {
            Ok(()) => outcome.updated.push((name, from, to)),
            Err(e) => outcome.failure = Some(failed(&format!("updating {name} from {from}"), e)),
        }
    }
    let installed = client
        .query(
            "SELECT extname::text, extversion FROM pg_catalog.pg_extension WHERE extname = ANY($1) ORDER BY extname",
            &[&wanted],
        )
        .await
        .map_err(query)?;
    outcome.installed = installed.iter().map(|r| (r.get(0), r.get(1))).collect();
    if outcome.failure.is_none() {
        // A real answer, not an assumption: the library loads and a geometry round-trips.
        match client
            .query_one(
                "SELECT postgis_full_version(), ST_AsText('SRID=4326;POINT(106.7 10.8)'::geometry)",
                &[],
            )
            .await
        {
            Ok(row) if row.get::<_, String>(1) == "POINT(106.7 10.8)" => {
                outcome.full_version = Some(row.get(0))
            }
            Ok(row) => {
                outcome.failure = Some(format!(
                    "a geometry cast answered {:?}",
                    row.get::<_, String>(1)
                ))
            }
            Err(e) => outcome.failure = Some(failed("checking PostGIS", e)),
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, default: &str, installed: Option<&str>) -> Available {
        Available {
            name: name.into(),
            default_version: Some(default.into()),
            installed: installed.map(Into::into),
        }
    }

    #[test]
    fn creates_updates_and_names_what_the_image_lacks() {
        let wanted = ["postgis", "postgis_topology", "pg_trgm", "no_such"].map(String::from);
        let available = [
            row("postgis", "3.5.2", Some("3.5.1")),
            row("postgis_topology", "3.5.2", None),
            row("pg_trgm", "1.6", Some("1.6")),
        ];
        let p = plan(&wanted, &available, true);
        assert_eq!(p.create, ["postgis_topology"]);
        assert_eq!(
            p.update,
            [("postgis".into(), "3.5.1".into(), "3.5.2".into())]
        );
        assert_eq!(p.missing, ["no_such"]);
        assert!(plan(&wanted, &available, false).update.is_empty());
    }

    #[test]
    fn postgis_updates_its_companions_too() {
        assert_eq!(update_sql("postgis"), "SELECT postgis_extensions_upgrade()");
        assert_eq!(update_sql("pg_trgm"), "ALTER EXTENSION \"pg_trgm\" UPDATE");
    }
}
