//! Container resources, as the API server's validation of a pod template judges them:
//! the schema takes any string for a quantity and any resource name, and a StatefulSet
//! or Deployment the API server refuses would leave the cluster half applied.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::parse_quantity;

/// Resources a container may name without a domain.
const STANDARD: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// A DNS-1123 label (lowercase letters, digits and inner '-').
fn dns_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

/// `example.com/gpu`: a device plugin's resource (an "extended resource").
fn extended(name: &str) -> bool {
    let Some((domain, resource)) = name.split_once('/') else {
        return false;
    };
    let domain_ok = domain.len() <= 253 && domain.split('.').all(dns_label);
    let resource_ok = !resource.is_empty()
        && resource.len() <= 63
        && resource
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && resource.starts_with(|c: char| c.is_ascii_alphanumeric())
        && resource.ends_with(|c: char| c.is_ascii_alphanumeric());
    let native = domain == "kubernetes.io" || domain.ends_with(".kubernetes.io");
    domain_ok && resource_ok && !native
}

fn hugepages(name: &str) -> bool {
    name.strip_prefix("hugepages-")
        .and_then(parse_quantity)
        .is_some_and(|size| size > 0.0)
}

/// Requests may be below limits (overcommitted) only for cpu, memory and
/// ephemeral-storage; huge pages and extended resources need request = limit.
fn overcommittable(name: &str) -> bool {
    STANDARD.contains(&name)
}

/// The problems of one list (`requests` or `limits`) on its own.
fn list_problems(field: &str, list: &BTreeMap<String, Quantity>) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, quantity) in list {
        let at = format!("{field}.{name}");
        if !(STANDARD.contains(&name.as_str()) || hugepages(name) || extended(name)) {
            problems.push(format!(
                "{at}: not a resource a container can ask for (cpu, memory, ephemeral-storage, hugepages-<size>, or a device plugin's such as example.com/gpu)"
            ));
            continue;
        }
        match parse_quantity(&quantity.0) {
            None => problems.push(format!(
                "{at} is {:?}; it must be a quantity such as 500m, 2 or 1Gi",
                quantity.0
            )),
            Some(value) if value < 0.0 => {
                problems.push(format!("{at} is {}; it must not be negative", quantity.0))
            }
            Some(value) if extended(name) && value.fract() != 0.0 => {
                problems.push(format!("{at} is {}; it must be a whole number", quantity.0))
            }
            Some(_) => {}
        }
    }
    problems
}

/// Every problem of the resources at `field` (e.g. `resources`), each naming its field.
pub fn problems(field: &str, resources: &ResourceRequirements) -> Vec<String> {
    let empty = BTreeMap::new();
    let requests = resources.requests.as_ref().unwrap_or(&empty);
    let limits = resources.limits.as_ref().unwrap_or(&empty);
    let mut problems = list_problems(&format!("{field}.requests"), requests);
    problems.extend(list_problems(&format!("{field}.limits"), limits));
    if !problems.is_empty() {
        return problems;
    }
    for (name, request) in requests {
        let limit = limits.get(name);
        match limit.map(|l| (parse_quantity(&request.0), parse_quantity(&l.0), l)) {
            Some((Some(r), Some(l), limit)) if !overcommittable(name) && r != l => {
                problems.push(format!(
                    "{field}.requests.{name} ({}) must equal {field}.limits.{name} ({}): it cannot be overcommitted",
                    request.0, limit.0
                ))
            }
            Some((Some(r), Some(l), limit)) if r > l => problems.push(format!(
                "{field}.requests.{name} ({}) exceeds {field}.limits.{name} ({})",
                request.0, limit.0
            )),
            None if !overcommittable(name) => problems.push(format!(
                "{field}.requests.{name} needs a limit equal to it in {field}.limits.{name}: it cannot be overcommitted"
            )),
            _ => {}
        }
    }
    let names = || requests.keys().chain(limits.keys());
    if names().any(|n| hugepages(n)) && !names().any(|n| n == "cpu" || n == "memory") {
        problems.push(format!(
            "{field}: huge pages need a cpu or memory request or limit beside them"
        ));
    }
    if resources.claims.as_ref().is_some_and(|c| !c.is_empty()) {
        problems.push(format!(
            "{field}.claims: the pods have no resource claims to use; remove it"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn of(v: serde_json::Value) -> Vec<String> {
        problems("resources", &serde_json::from_value(v).unwrap())
    }

    #[test]
    fn usual_resources_pass() {
        assert!(of(json!({"requests": {"cpu": "500m", "memory": "1Gi"},
            "limits": {"cpu": 2, "memory": "1Gi", "example.com/gpu": 1}}))
        .is_empty());
        assert!(of(
            json!({"requests": {"memory": "1Gi", "hugepages-2Mi": "64Mi"},
            "limits": {"hugepages-2Mi": "64Mi"}})
        )
        .is_empty());
    }

    #[test]
    fn every_quantity_and_name_is_checked() {
        assert_eq!(
            of(json!({"requests": {"cpu": "fast"}})),
            ["resources.requests.cpu is \"fast\"; it must be a quantity such as 500m, 2 or 1Gi"]
        );
        assert!(of(json!({"limits": {"memory": "-1Gi"}}))[0]
            .starts_with("resources.limits.memory is -1Gi; it must not be negative"));
        assert!(of(json!({"limits": {"gpu": "1"}}))[0]
            .starts_with("resources.limits.gpu: not a resource"));
        assert!(of(json!({"limits": {"kubernetes.io/gpu": "1"}}))[0].contains("not a resource"));
        assert!(of(json!({"limits": {"example.com/gpu": "500m"}}))[0].contains("whole number"));
    }

    #[test]
    fn requests_against_limits() {
        assert!(
            of(json!({"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}))[0]
                .contains("exceeds resources.limits.memory")
        );
        assert!(of(json!({"requests": {"example.com/gpu": 1}}))[0].contains("needs a limit"));
        assert!(
            of(json!({"requests": {"example.com/gpu": 1}, "limits": {"example.com/gpu": 2}}))[0]
                .contains("must equal")
        );
        assert!(of(json!({"limits": {"hugepages-2Mi": "64Mi"}}))[0].contains("huge pages need"));
        assert!(of(json!({"claims": [{"name": "gpu"}]}))[0].starts_with("resources.claims"));
    }
}
