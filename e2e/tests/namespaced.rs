//! The namespaced install mode against a real kube-apiserver: the chart rendered with
//! `rbac.scope=namespaced` and two watched namespaces (`helm template`, the chart's own
//! RBAC applied as rendered), and the operator running in this process as the chart's
//! ServiceAccount (a TokenRequest token). It has no cluster-wide permission, reconciles
//! GeoDatabases in the watched namespaces (naming a StorageClass it may not read), and
//! leaves those elsewhere alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use geodb::api::GeoDatabase;
use geodb::controller::{self, Context};
use geodb::runtime::metrics::Metrics;
use geodb_e2e::controlplane::{ControlPlane, Options};
use geodb_e2e::kube_util::{apply_yaml, helm_binary, install_crds, repo_root, wait_for};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use prometheus_client::registry::Registry;
use serde_json::json;

const RELEASE_NAMESPACE: &str = "geodb-system";
const WATCHED: [&str; 2] = ["team-a", "team-b"];
const ELSEWHERE: &str = "team-c";
/// The chart's ServiceAccount for the release `geodb`.
const ACCOUNT: &str = "geodb-operator";
const CONVERGE: Duration = Duration::from_secs(60);

/// The chart's RBAC (and ServiceAccount) in namespaced mode, as `helm template` renders it.
fn rendered_rbac() -> String {
    let out = Command::new(helm_binary())
        .args(["template", "geodb", "charts/geodb", "-n", RELEASE_NAMESPACE])
        .args(["--set", "rbac.scope=namespaced"])
        .args([
            "--set",
            &format!("watchNamespaces={{{}}}", WATCHED.join(",")),
        ])
        .current_dir(repo_root())
        .output()
        .expect("running helm (make tools builds it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // Only what grants or holds identity: no operator Deployment runs here.
    text.split("\n---")
        .filter(|doc| {
            [
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
            ]
            .iter()
            .any(|kind| doc.contains(&format!("\nkind: {kind}\n")))
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Whether RBAC lets the chart's ServiceAccount `verb` `resource` ("group/resource" for
/// named API groups) in `namespace` ("" for all).
async fn may(admin: &Client, namespace: &str, verb: &str, resource: &str) -> bool {
    let (group, resource) = resource.split_once('/').unwrap_or(("", resource));
    let user = format!("system:serviceaccount:{RELEASE_NAMESPACE}:{ACCOUNT}");
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "user": user,
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{RELEASE_NAMESPACE}")],
        "resourceAttributes": {"namespace": namespace, "verb": verb, "group": group, "resource": resource},
    }}))
    .unwrap();
    Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap()
        .status
        .is_some_and(|s| s.allowed)
}

fn geodatabase(namespace: &str) -> GeoDatabase {
    let text =
        std::fs::read_to_string(repo_root().join("config/samples/geodatabase.yaml")).unwrap();
    let mut db: GeoDatabase = serde_yaml::from_str(&text).unwrap();
    db.metadata.namespace = Some(namespace.into());
    // A StorageClass is cluster-scoped: the operator may not read it in this mode.
    db.spec.storage.storage_class_name = Some("standard".into());
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_install_mode() {
    let mut cp = ControlPlane::start_with(Options {
        defer_controller_manager: true,
        ..Options::default()
    })
    .await
    .unwrap();
    let admin = cp.client().unwrap();
    install_crds(&admin).await.unwrap();
    cp.start_controller_manager().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    for ns in [RELEASE_NAMESPACE, WATCHED[0], WATCHED[1], ELSEWHERE] {
        let body: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        namespaces
            .create(&PostParams::default(), &body)
            .await
            .unwrap();
    }
    apply_yaml(&admin, &rendered_rbac(), Some(RELEASE_NAMESPACE))
        .await
        .unwrap();

    // Namespaced rights only.
    for ns in WATCHED {
        assert!(may(&admin, ns, "create", "apps/statefulsets").await, "{ns}");
        assert!(may(&admin, ns, "list", "secrets").await, "{ns}");
    }
    assert!(
        !may(&admin, "", "list", "secrets").await,
        "secrets in every namespace"
    );
    assert!(
        !may(&admin, ELSEWHERE, "get", "secrets").await,
        "secrets elsewhere"
    );
    assert!(!may(&admin, ELSEWHERE, "list", "geodb.io/geodatabases").await);
    assert!(!may(&admin, "", "get", "storage.k8s.io/storageclasses").await);

    // The operator as the chart's ServiceAccount, one controller per watched namespace.
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
    let token = Api::<ServiceAccount>::namespaced(admin.clone(), RELEASE_NAMESPACE)
        .create_token_request(ACCOUNT, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let mut registry = Registry::default();
    let metrics = Metrics::new(&mut registry);
    let client = Client::try_from(cp.config_for_token(&token)).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for ns in WATCHED {
        let ctx: Arc<Context> = Context::new(client.clone(), metrics.clone(), Some("t".into()));
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(controller::run(
            ctx,
            Some(ns.into()),
            async move {
                let _ = stopped.wait_for(|s| *s).await;
            },
        )));
    }

    for ns in [WATCHED[0], WATCHED[1], ELSEWHERE] {
        Api::<GeoDatabase>::namespaced(admin.clone(), ns)
            .create(&PostParams::default(), &geodatabase(ns))
            .await
            .unwrap();
    }
    for ns in WATCHED {
        let dbs = Api::<GeoDatabase>::namespaced(admin.clone(), ns);
        let sets = Api::<StatefulSet>::namespaced(admin.clone(), ns);
        let seen = wait_for(
            &format!("{ns}: the GeoDatabase reconciled"),
            CONVERGE,
            || async {
                let db = dbs.get("geo").await.ok()?;
                let status = db.status.clone()?;
                let made = sets.list(&ListParams::default()).await.ok()?.items.len();
                (status.observed_generation == db.metadata.generation && made == 3)
                    .then_some(status)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e}: {}", cp.logs_tail("kube-apiserver", 20)));
        let degraded = seen.conditions.iter().find(|c| c.type_ == "Degraded");
        assert!(
            degraded.is_none_or(|c| c.status == "False"),
            "{ns}: {degraded:?}"
        );
    }
    // Both watched namespaces converged; the other one was never touched.
    let other = Api::<GeoDatabase>::namespaced(admin.clone(), ELSEWHERE)
        .get("geo")
        .await
        .unwrap();
    assert!(other.status.is_none(), "{:?}", other.status);
    assert!(other.finalizers().is_empty(), "{:?}", other.finalizers());
    let made = Api::<StatefulSet>::namespaced(admin.clone(), ELSEWHERE)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(made.items.is_empty());

    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
}
