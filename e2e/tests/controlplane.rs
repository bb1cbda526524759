//! The local control plane works: garbage collection by kube-controller-manager,
//! the identities of the client certificates and of a ServiceAccount token, and
//! RBAC for the `geodb-operator` identity.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use geodb_e2e::controlplane::{ControlPlane, ADMIN_USER, OPERATOR_USER};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, UserInfo};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::Api;

#[tokio::test]
async fn control_plane_garbage_collects_and_enforces_rbac() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let t0 = Instant::now();
    let cp = ControlPlane::start().await.expect("start control plane");
    eprintln!(
        "control plane started in {:.2}s at {}",
        t0.elapsed().as_secs_f64(),
        cp.server_url()
    );
    if let Err(e) = scenario(&cp).await {
        panic!("{e:#}\n{}", cp.logs_tail_all(40));
    }
    let t1 = Instant::now();
    drop(cp);
    eprintln!(
        "control plane stopped in {:.2}s",
        t1.elapsed().as_secs_f64()
    );
}

async fn scenario(cp: &ControlPlane) -> anyhow::Result<()> {
    let admin = cp.client()?;
    let operator = cp.client_for_operator()?;

    // No RBAC granted yet: the operator identity may not list secrets.
    let secrets: Api<Secret> = Api::all(operator);
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => anyhow::bail!("geodb-operator listing secrets: expected 403, got {other:?}"),
    }

    // The kubeconfig file (what kubectl and `make up` users get) works too,
    // with TLS verified against the apiserver's CA.
    let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig_path())?;
    let from_file = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    anyhow::ensure!(
        !from_file.accept_invalid_certs,
        "kubeconfig skips TLS verification"
    );
    let from_file = kube::Client::try_from(from_file)?;
    Api::<Namespace>::all(from_file).get("kube-system").await?;

    let ns_name = "gc-test";
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(ns_name.into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;

    // Who the API server takes each client for: the client certificates' subjects,
    // and a ServiceAccount token through config_for_token.
    let admin_user = whoami(&admin).await?;
    anyhow::ensure!(
        admin_user.username.as_deref() == Some(ADMIN_USER)
            && admin_user
                .groups
                .iter()
                .flatten()
                .any(|g| g == "system:masters"),
        "admin is {admin_user:?}"
    );
    let operator_user = whoami(&cp.client_for_operator()?).await?;
    anyhow::ensure!(
        operator_user.username.as_deref() == Some(OPERATOR_USER)
            && operator_user.groups.as_deref() == Some(&["system:authenticated".to_string()]),
        "geodb-operator is {operator_user:?}"
    );
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns_name);
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("probe".into());
    sas.create(&PostParams::default(), &sa).await?;
    let token = sas
        .create_token_request("probe", &PostParams::default(), &TokenRequest::default())
        .await?
        .status
        .ok_or_else(|| anyhow::anyhow!("TokenRequest without status"))?
        .token;
    let sa_user = whoami(&kube::Client::try_from(cp.config_for_token(&token))?).await?;
    let expected = format!("system:serviceaccount:{ns_name}:probe");
    anyhow::ensure!(
        sa_user.username.as_deref() == Some(expected.as_str()),
        "the ServiceAccount token is {sa_user:?}"
    );

    let cms: Api<ConfigMap> = Api::namespaced(admin, ns_name);
    let owner = cms
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    cms.create(
        &PostParams::default(),
        &config_map("child", Some(owner_ref)),
    )
    .await?;
    cms.delete("owner", &DeleteParams::default()).await?;

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    loop {
        if cms.get_opt("child").await?.is_none() {
            eprintln!(
                "child garbage-collected {:.2}s after deleting its owner",
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("ConfigMap child was not garbage-collected within 60s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The user the API server authenticates `client` as.
async fn whoami(client: &kube::Client) -> anyhow::Result<UserInfo> {
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    Ok(review.status.and_then(|s| s.user_info).unwrap_or_default())
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("k".to_string(), "v".to_string())])),
        ..Default::default()
    }
}
