//! The servers a run measures: the one the environment names ("direct"), or each
//! `--target NAME=HOST:PORT[:SERVERNAME]` with the environment's user, password,
//! database and TLS (pure, given the environment).

use super::error::BenchError;
use crate::jobs::connection::Target;
use crate::pod_contract::env;

/// The name of the environment's own target.
pub const DIRECT: &str = "direct";

/// One `--target`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The name verify-full checks while dialling `host`.
    pub server_name: Option<String>,
}

/// `NAME=HOST:PORT[:SERVERNAME]`. NAME goes into the figures' keys: letters, digits and
/// `-` only. HOST is a name, an IPv4 address or a socket directory.
pub fn parse(spec: &str) -> Result<Spec, BenchError> {
    let invalid = |reason: &str| BenchError::InvalidTarget {
        spec: spec.to_owned(),
        reason: reason.to_owned(),
    };
    let (name, address) = spec
        .split_once('=')
        .ok_or_else(|| invalid("expected NAME=HOST:PORT[:SERVERNAME]"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(invalid("NAME is letters, digits and - only"));
    }
    let mut parts = address.splitn(3, ':');
    let host = parts.next().unwrap_or_default();
    let port = parts.next().unwrap_or_default();
    let server_name = parts.next();
    if host.is_empty() {
        return Err(invalid("HOST is empty"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid("PORT is not a port number"))?;
    if server_name.is_some_and(|s| s.is_empty() || s.contains(':')) {
        return Err(invalid("SERVERNAME is empty or has a ':'"));
    }
    Ok(Spec {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        server_name: server_name.map(str::to_owned),
    })
}

/// The named targets of `specs` (the environment's as "direct" when none), each from
/// the environment `lookup` with its own host and port.
pub fn resolve(
    specs: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Target)>, BenchError> {
    if specs.is_empty() {
        return Ok(vec![(DIRECT.to_owned(), Target::from_lookup(lookup)?)]);
    }
    let mut targets: Vec<(String, Target)> = Vec::new();
    for text in specs {
        let spec = parse(text)?;
        if targets.iter().any(|(name, _)| *name == spec.name) {
            return Err(BenchError::InvalidTarget {
                spec: text.clone(),
                reason: format!("{} is given twice", spec.name),
            });
        }
        let port = spec.port.to_string();
        let mut target = Target::from_lookup(|var| match var {
            env::PGHOST => Some(spec.host.clone()),
            env::PGPORT => Some(port.clone()),
            // The spec names the address and the server name itself.
            env::PGHOSTADDR => None,
            _ => lookup(var),
        })?;
        target.server_name = spec.server_name.filter(|_| !spec.host.starts_with('/'));
        targets.push((spec.name, target));
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::connection::Tls;

    fn lookup(var: &str) -> Option<String> {
        match var {
            env::PGHOST => Some("geo-rw.maps.svc".into()),
            env::PGHOSTADDR => Some("10.96.0.7".into()),
            env::DATABASE => Some("app".into()),
            env::PGSSLROOTCERT => Some("/ca.pem".into()),
            _ => None,
        }
    }

    #[test]
    fn the_environment_alone_is_direct() {
        let targets = resolve(&[], lookup).unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].0, "direct");
        // PGHOSTADDR dialled, PGHOST verified, as libpq does.
        assert_eq!(
            targets[0].1.to_string(),
            "postgres@10.96.0.7:5432/app (verifying geo-rw.maps.svc)"
        );
    }

    #[test]
    fn targets_share_the_rest_of_the_environment() {
        let specs = [
            "direct=10.0.0.7:5432:geo-rw.maps.svc".to_owned(),
            "pooler=geo-pooler-rw:6432".to_owned(),
            "socket=/run/pg:5433:ignored".to_owned(),
        ];
        let targets = resolve(&specs, lookup).unwrap();
        let (name, direct) = &targets[0];
        assert_eq!(name, "direct");
        assert_eq!((direct.host.as_str(), direct.port), ("10.0.0.7", 5432));
        assert_eq!(direct.server_name.as_deref(), Some("geo-rw.maps.svc"));
        assert_eq!(direct.tls, Tls::VerifyFull("/ca.pem".into()));
        assert_eq!(direct.database, "app");
        assert_eq!(
            direct.to_string(),
            "postgres@10.0.0.7:5432/app (verifying geo-rw.maps.svc)"
        );
        let pooler = &targets[1].1;
        assert_eq!((pooler.port, pooler.server_name.as_deref()), (6432, None));
        // The environment's PGHOSTADDR is not every target's address.
        assert_eq!(pooler.host, "geo-pooler-rw");
        // A socket has neither TLS nor a name to check.
        let socket = &targets[2].1;
        assert_eq!(
            (&socket.tls, socket.server_name.as_deref()),
            (&Tls::Disable, None)
        );
    }

    #[test]
    fn refuses_bad_specs() {
        for (spec, reason) in [
            ("direct", "expected NAME=HOST:PORT[:SERVERNAME]"),
            ("a b=h:1", "NAME is letters, digits and - only"),
            ("a_b=h:1", "NAME is letters, digits and - only"),
            ("a=:5432", "HOST is empty"),
            ("a=h", "PORT is not a port number"),
            ("a=h:0", "PORT is not a port number"),
            ("a=h:1:", "SERVERNAME is empty or has a ':'"),
            ("a=h:1:x:y", "SERVERNAME is empty or has a ':'"),
        ] {
            let e = parse(spec).unwrap_err();
            assert_eq!(e.label(), "invalid_target");
            assert_eq!(e.to_string(), format!("--target {spec}: {reason}"));
        }
        let twice = ["a=h:1".to_owned(), "a=g:2".to_owned()];
        assert!(resolve(&twice, lookup)
            .unwrap_err()
            .to_string()
            .ends_with("a is given twice"));
    }
}
