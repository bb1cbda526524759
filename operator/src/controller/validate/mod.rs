//! Validate step: what the schema accepts but the operator cannot run. Each problem is a
//! sentence a user can act on that names its field; any problem stops the reconcile
//! before anything is applied. `parameters` judges `spec.postgresql.parameters`,
//! `resources` container resources as the API server would.

mod parameters;
mod resources;

use crate::api::GeoDatabaseSpec;
use crate::pod_contract::{CA_CERT, TLS_CERT, TLS_KEY};
use crate::quantity::{parse_pg_memory, parse_quantity};

/// Connections PostgreSQL keeps for superusers and replication, beyond the pooler's.
const RESERVED_CONNECTIONS: i64 = 10;

pub fn validate(spec: &GeoDatabaseSpec, storage_class_exists: Option<bool>) -> Vec<String> {
    let params = &spec.postgresql.parameters;
    let mut problems = parameters::problems(params);

    let max_connections: i64 = params
        .get("max_connections")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(100);
    if spec.pooler.enabled {
        let per_pod =
            i64::from(spec.pooler.default_pool_size) + i64::from(spec.pooler.reserve_pool_size);
        let pooled = i64::from(spec.pooler.instances) * per_pod;
        if pooled > max_connections - RESERVED_CONNECTIONS {
            problems.push(format!(
                "the pooler may open {pooled} server connections (pooler.instances {} x (pooler.defaultPoolSize {} + pooler.reservePoolSize {})), \
                 but max_connections is {max_connections} with {RESERVED_CONNECTIONS} kept for superusers and replication; \
                 lower pooler.defaultPoolSize or raise postgresql.parameters.max_connections",
                spec.pooler.instances, spec.pooler.default_pool_size, spec.pooler.reserve_pool_size
            ));
        }
        if let Some(resources) = &spec.pooler.resources {
            problems.extend(resources::problems("pooler.resources", resources));
        }
    }

    if let Some(resources) = &spec.resources {
        problems.extend(resources::problems("resources", resources));
        let memory_limit = resources
            .limits
            .as_ref()
            .and_then(|l| l.get("memory"))
            .and_then(|q| parse_quantity(&q.0));
        let shared_buffers = params
            .get("shared_buffers")
            .and_then(|v| parse_pg_memory(v, 8192));
        if let (Some(limit), Some(buffers)) = (memory_limit, shared_buffers) {
            if buffers as f64 >= limit {
                problems.push(format!(
                    "postgresql.parameters.shared_buffers ({}) does not fit in resources.limits.memory; \
                     keep it well below the limit (a quarter is usual)",
                    params.get("shared_buffers").map(String::as_str).unwrap_or_default()
                ));
            }
        }
    }

    // The schema checks it too, but not in an object stored before that rule.
    if parse_quantity(&spec.storage.size).is_none() {
        problems.push(format!(
            "storage.size is {:?}; it must be a quantity such as 10Gi",
            spec.storage.size
        ));
    }
    if storage_class_exists == Some(false) {
        problems.push(format!(
            "storage.storageClassName {:?} does not exist; create it or name an existing StorageClass",
            spec.storage.storage_class_name.as_deref().unwrap_or_default()
        ));
    }
    problems
}

/// The keys of the Secrets the spec names, as read (`None`: no such Secret).
pub type SecretKeys = std::collections::BTreeMap<String, Option<Vec<String>>>;

/// The Secrets that `spec.backup` names exist and hold the keys it names: a pod that
/// mounts a missing one never starts.
pub fn validate_backup(spec: &GeoDatabaseSpec, secrets: &SecretKeys) -> Vec<String> {
    let mut problems = Vec::new();
    for (field, store) in spec.object_stores() {
        let c = &store.credentials;
        let mut wanted = vec![
            (
                format!("{field}.credentials"),
                &c.secret_name,
                &c.access_key_id_key,
            ),
            (
                format!("{field}.credentials"),
                &c.secret_name,
                &c.secret_access_key_key,
            ),
        ];
        if let Some(ca) = &store.ca {
            wanted.push((format!("{field}.ca"), &ca.secret_name, &ca.key));
        }
        for (field, secret, key) in wanted {
            match secrets.get(secret.as_str()) {
                Some(Some(keys)) if keys.iter().any(|k| k == key) => {}
                Some(Some(_)) => {
                    problems.push(format!("{field}: the Secret {secret:?} has no key {key:?}"))
                }
                _ => problems.push(format!(
                    "{field}: the Secret {secret:?} does not exist in this namespace"
                )),
            }
        }
    }
    problems.dedup();
    problems
}

/// The Secret `spec.tls.serverSecret` names exists with the keys PostgreSQL and
/// PgBouncer read (what it holds is checked once the instances' names are known).
pub fn validate_tls(spec: &GeoDatabaseSpec, secrets: &SecretKeys) -> Vec<String> {
    let Some(tls) = &spec.tls else {
        return Vec::new();
    };
    let secret = &tls.server_secret;
    match secrets.get(secret.as_str()) {
        Some(Some(keys)) => [TLS_CERT, TLS_KEY, CA_CERT]
            .into_iter()
            .filter(|wanted| !keys.iter().any(|k| k == wanted))
            .map(|missing| {
                format!("tls.serverSecret: the Secret {secret:?} has no key {missing:?}")
            })
            .collect(),
        _ => vec![format!(
            "tls.serverSecret: the Secret {secret:?} does not exist in this namespace"
        )],
    }
}

/// The ConfigMap of custom metric queries must exist and hold a `queries.yaml` the
/// exporter can run.
pub fn custom_queries_problem(
    name: Option<&str>,
    data: Option<&Option<std::collections::BTreeMap<String, String>>>,
) -> Option<String> {
    use crate::agent::exporter::{parse, CUSTOM_QUERIES_FILE};
    let (name, data) = (name?, data?);
    let Some(data) = data else {
        return Some(format!(
            "monitoring.customQueries: the ConfigMap {name:?} does not exist in this namespace"
        ));
    };
    let Some(text) = data.get(CUSTOM_QUERIES_FILE) else {
        return Some(format!(
            "monitoring.customQueries: the ConfigMap {name:?} has no key {CUSTOM_QUERIES_FILE:?}"
        ));
    };
    parse(text)
        .err()
        .map(|e| format!("monitoring.customQueries: the ConfigMap {name:?}: {e}"))
}

/// A restored cluster archives on its own: never into the archive it restores from,
/// whose history would fork.
pub fn validate_recovery(spec: &GeoDatabaseSpec, namespace: &str, name: &str) -> Vec<String> {
    let (Some(backup), Some(recovery)) = (
        &spec.backup,
        spec.bootstrap.as_ref().and_then(|b| b.recovery.as_ref()),
    ) else {
        return Vec::new();
    };
    let (own, source) = (&backup.object_store, &recovery.source);
    let same = own.endpoint.trim_end_matches('/') == source.endpoint.trim_end_matches('/')
        && own.bucket == source.bucket
        && own.path_for(namespace, name) == source.path_for(namespace, name);
    if same {
        vec![format!(
            "backup.objectStore.path: {:?} in bucket {:?} is the archive bootstrap.recovery.source restores from; a restored cluster must archive elsewhere",
            own.path_for(namespace, name),
            own.bucket
        )]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn custom_queries_must_name_an_existing_configmap_with_a_valid_file() {
        use std::collections::BTreeMap;
        assert_eq!(custom_queries_problem(None, None), None);
        let missing = custom_queries_problem(Some("q"), Some(&None)).unwrap();
        assert!(
            missing.starts_with("monitoring.customQueries:") && missing.contains("does not exist")
        );
        let no_key = custom_queries_problem(Some("q"), Some(&Some(BTreeMap::new()))).unwrap();
        assert!(no_key.contains("queries.yaml"));
        let bad = BTreeMap::from([("queries.yaml".to_owned(), "- {name: x}".to_owned())]);
        let error = custom_queries_problem(Some("q"), Some(&Some(bad))).unwrap();
        assert!(error.contains("monitoring.customQueries") && error.contains("queries.yaml"));
        let good = BTreeMap::from([(
            "queries.yaml".to_owned(),
            "- {name: x, query: SELECT 1 AS a, metrics: [{column: a, type: gauge}]}".to_owned(),
        )]);
        assert_eq!(custom_queries_problem(Some("q"), Some(&Some(good))), None);
    }

    #[test]
    fn a_named_certificate_secret_must_hold_its_three_keys() {
        let s: GeoDatabaseSpec = serde_json::from_value(serde_json::json!({
            "storage": {"size": "1Gi"}, "tls": {"serverSecret": "geo-cert"}}))
        .unwrap();
        let mut secrets = SecretKeys::new();
        assert_eq!(
            validate_tls(&s, &secrets),
            ["tls.serverSecret: the Secret \"geo-cert\" does not exist in this namespace"]
        );
        secrets.insert(
            "geo-cert".into(),
            Some(vec!["tls.crt".into(), "tls.key".into()]),
        );
        assert_eq!(
            validate_tls(&s, &secrets),
            ["tls.serverSecret: the Secret \"geo-cert\" has no key \"ca.crt\""]
        );
        secrets.insert(
            "geo-cert".into(),
            Some(vec!["tls.crt".into(), "tls.key".into(), "ca.crt".into()]),
        );
        assert!(validate_tls(&s, &secrets).is_empty());
    }

    #[test]
    fn backup_secrets_must_exist_with_their_keys() {
        let s = spec(
            json!({"storage": {"size": "1Gi"}, "backup": {"objectStore": {
            "endpoint": "https://s3:8333", "bucket": "bkt", "credentials": {"secretName": "s3"},
            "ca": {"secretName": "ca", "key": "ca.crt"}}}}),
        );
        let mut secrets = SecretKeys::new();
        let problems = validate_backup(&s, &secrets);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("backup.objectStore.credentials")
                && problems[0].contains("\"s3\" does not exist")
        );
        secrets.insert("s3".into(), Some(vec!["accessKeyId".into()]));
        secrets.insert("ca".into(), Some(vec!["ca.crt".into()]));
        let problems = validate_backup(&s, &secrets);
        assert_eq!(
            problems,
            ["backup.objectStore.credentials: the Secret \"s3\" has no key \"secretAccessKey\""]
        );
        secrets.insert(
            "s3".into(),
            Some(vec!["accessKeyId".into(), "secretAccessKey".into()]),
        );
        assert!(validate_backup(&s, &secrets).is_empty());
    }

    fn spec(v: serde_json::Value) -> GeoDatabaseSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn default_spec_is_valid() {
        assert!(validate(&spec(json!({"storage": {"size": "1Gi"}})), None).is_empty());
    }

    #[test]
    fn pooler_must_fit_max_connections() {
        let s = spec(json!({"storage": {"size": "1Gi"},
            "pooler": {"instances": 3, "defaultPoolSize": 40},
            "postgresql": {"parameters": {"max_connections": "100"}}}));
        let problems = validate(&s, None);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("120 server connections"));
    }

    #[test]
    fn bad_values_are_named() {
        let s = spec(json!({"storage": {"size": "1Gi"},
            "postgresql": {"parameters": {"max_connections": "many", "work_mem": "64mb"}}}));
        let problems = validate(&s, None);
        assert!(problems.iter().any(|p| p.contains("max_connections")));
        assert!(problems.iter().any(|p| p.contains("work_mem")));
    }

    #[test]
    fn what_the_api_server_would_refuse_is_named_first() {
        let s = spec(json!({"storage": {"size": "1Gi"},
            "resources": {"requests": {"cpu": "fast"}},
            "postgresql": {"parameters": {"recovery_end_command": "sh -c id"}}}));
        let problems = validate(&s, None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("postgresql.parameters.recovery_end_command may not be set")
        );
        assert!(problems[1].starts_with("resources.requests.cpu is \"fast\""));
    }

    #[test]
    fn requests_above_limits() {
        let s = spec(json!({"storage": {"size": "1Gi"},
            "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}));
        assert!(validate(&s, None)[0].contains("exceeds"));
    }

    #[test]
    fn shared_buffers_over_memory_limit() {
        let s = spec(json!({"storage": {"size": "1Gi"},
            "resources": {"limits": {"memory": "512Mi"}},
            "postgresql": {"parameters": {"shared_buffers": "1GB"}}}));
        assert!(validate(&s, None)[0].contains("shared_buffers"));
    }

    #[test]
    fn missing_storage_class() {
        let s = spec(json!({"storage": {"size": "1Gi", "storageClassName": "gold"}}));
        assert!(validate(&s, Some(false))[0].contains("\"gold\" does not exist"));
        assert!(validate(&s, Some(true)).is_empty());
    }
}
