//! Small helpers over the Kubernetes API for tests and benchmarks: apply YAML files,
//! install the CRDs and the operator's RBAC, wait on conditions with a deadline.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use geodb::api::GeoDatabase;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::api::{ListParams, LogParams};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Api, Client, Discovery, ResourceExt};
use serde::Deserialize;

/// The repository root (this crate lives in `e2e/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Poll `probe` every 100 ms until it yields `Some`, or fail after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(anyhow!("timed out after {timeout:?} waiting for: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The helm binary that `e2e/tools/build-tools.sh helm` builds (its pinned version, in
/// `${GEODB_CACHE:-~/.cache/geodb}`).
pub fn helm_binary() -> PathBuf {
    let tools =
        std::fs::read_to_string(repo_root().join("e2e/tools/build-tools.sh")).unwrap_or_default();
    let version = tools
        .lines()
        .find_map(|l| l.strip_prefix("HELM_VERSION="))
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned();
    let cache = std::env::var_os("GEODB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/geodb")
        });
    cache.join(format!("helm-{version}/helm"))
}

/// Server-side apply every document of a YAML text.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    let discovery = Discovery::new(client.clone()).run().await?;
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let obj: DynamicObject = serde_yaml::from_value(value)?;
        let types = obj
            .types
            .clone()
            .context("document without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let (ar, caps) = discovery
            .resolve_gvk(&gvk)
            .with_context(|| format!("unknown kind {gvk:?}"))?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                obj.namespace()
                    .as_deref()
                    .or(namespace)
                    .unwrap_or("default"),
                &ar,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &obj.name_any(),
            &PatchParams::apply("geodb-tests").force(),
            &Patch::Apply(&obj),
        )
        .await
        .with_context(|| format!("applying {} {}", gvk.kind, obj.name_any()))?;
    }
    Ok(())
}

pub async fn apply_file(client: &Client, relative: &str) -> anyhow::Result<()> {
    let path = repo_root().join(relative);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    apply_yaml(client, &text, None).await
}

/// Apply `crds/` and wait until the GeoDatabase CRD is established.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let dir = repo_root().join("crds");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        apply_yaml(client, &std::fs::read_to_string(&path)?, None).await?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        "the GeoDatabase CRD to be established",
        Duration::from_secs(30),
        || {
            let crds = crds.clone();
            async move {
                let crd = crds.get("geodatabases.geodb.io").await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            }
        },
    )
    .await
}

/// Install the operator's RBAC from `config/` and bind it to the user `user`, so that an
/// operator authenticated as that user has exactly the rights it ships with.
pub async fn install_operator_rbac_for_user(client: &Client, user: &str) -> anyhow::Result<()> {
    apply_file(client, "config/manager/namespace.yaml").await?;
    apply_file(client, "config/rbac/role.yaml").await?;
    apply_file(client, "config/rbac/instance-role.yaml").await?;
    let bindings = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: geodb-operator-user-{user}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: geodb-operator}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: geodb-operator-user-{user}
  namespace: geodb-system
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: geodb-operator-leader}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]
"#
    );
    apply_yaml(client, &bindings, None).await
}

/// Print what a failed scenario leaves behind: GeoDatabases, pods with their logs,
/// Events, and the operator's log.
pub async fn dump_namespace(client: &Client, ns: &str) {
    eprintln!("==== diagnostics for namespace {ns} ====");
    for db in Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        eprintln!(
            "GeoDatabase {} status={}",
            db.name_any(),
            serde_json::to_string(&db.status).unwrap_or_default()
        );
    }
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    for pod in pods
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let status = pod.status.clone().unwrap_or_default();
        eprintln!(
            "Pod {} phase={:?} containers={}",
            pod.name_any(),
            status.phase,
            serde_json::to_string(&status.container_statuses).unwrap_or_default()
        );
        for previous in [false, true] {
            let params = LogParams {
                tail_lines: Some(40),
                previous,
                ..LogParams::default()
            };
            if let Ok(log) = pods.logs(&pod.name_any(), &params).await {
                eprintln!(
                    "---- logs of {}{} ----\n{log}",
                    pod.name_any(),
                    if previous { " (previous)" } else { "" }
                );
            }
        }
    }
    for e in Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        eprintln!(
            "Event {} {} {}: {}",
            e.type_.unwrap_or_default(),
            e.reason.unwrap_or_default(),
            e.regarding.and_then(|r| r.name).unwrap_or_default(),
            e.note.unwrap_or_default()
        );
    }
    let operators = Api::<Pod>::namespaced(client.clone(), "geodb-system");
    if let Ok(list) = operators.list(&ListParams::default()).await {
        for pod in list {
            let params = LogParams {
                tail_lines: Some(80),
                ..LogParams::default()
            };
            if let Ok(log) = operators.logs(&pod.name_any(), &params).await {
                eprintln!("---- operator log {} ----\n{log}", pod.name_any());
            }
        }
    }
}

/// Run a scenario in a namespace of its own: created first, deleted when the scenario
/// passes, kept and dumped (`dump_namespace`) when it panics. Returns whether it passed.
pub async fn run_in_namespace<F, Fut>(client: &Client, namespace: &str, scenario: F) -> bool
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let object = serde_json::json!({"metadata": {"name": namespace}});
    let created = match serde_json::from_value(object) {
        Ok(ns) => namespaces.create(&Default::default(), &ns).await.is_ok(),
        Err(_) => false,
    };
    if !created {
        eprintln!("could not create namespace {namespace}");
        return false;
    }
    let outcome = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(scenario(
        client.clone(),
        namespace.to_owned(),
    )))
    .await;
    if outcome.is_err() {
        dump_namespace(client, namespace).await;
        return false;
    }
    let _ = namespaces.delete(namespace, &Default::default()).await;
    true
}

/// Name, uid and the containers' restarts of each pod matching `selector`, by name:
/// equal before and after means no pod was replaced or restarted.
pub async fn incarnations(client: &Client, ns: &str, selector: &str) -> Vec<(String, String, i32)> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut out: Vec<_> = pods
        .iter()
        .map(|p| {
            let restarts = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|c| c.iter().map(|c| c.restart_count).sum())
                .unwrap_or_default();
            (
                kube::ResourceExt::name_any(p),
                p.metadata.uid.clone().unwrap_or_default(),
                restarts,
            )
        })
        .collect();
    out.sort();
    out
}
