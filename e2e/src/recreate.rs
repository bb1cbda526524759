//! The recreate drill: a GeoDatabase deleted with `deletionPolicy: Retain` after a
//! switchover, and created again with the same name, must come back with the same data,
//! the same primary and the same working credentials.

use std::time::Duration;

use anyhow::{bail, Context as _};
use geodb::api::{GeoDatabase, Phase};
use geodb::names::{ANNOTATION_LAST_PRIMARY, ANNOTATION_LAST_TIMELINE};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};

use crate::drill::{primary_of, wait_healthy, Endpoint};
use crate::kube_util::wait_for;

/// How long a Service may take to route to a server its GeoDatabase calls healthy.
const SERVED: Duration = Duration::from_secs(60);

/// Row count and a checksum of a table, through the read-write Service.
async fn fingerprint(endpoint: &Endpoint, table: &str) -> anyhow::Result<(i64, String)> {
    let client = endpoint.connect_served(SERVED).await?;
    let row = client
        .query_one(
            &format!("SELECT count(*), md5(coalesce(string_agg(id::text || ':' || payload, ',' ORDER BY id), '')) FROM {table}"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

async fn insert(endpoint: &Endpoint, from: i64, to: i64) -> anyhow::Result<()> {
    endpoint
        .connect_served(SERVED)
        .await?
        .batch_execute(&format!(
            "INSERT INTO recreate SELECT g, md5(g::text) FROM generate_series({from}, {to}) g"
        ))
        .await?;
    Ok(())
}

/// What the drill saw.
#[derive(Debug)]
pub struct RecreateReport {
    pub primary_before: String,
    pub primary_after: String,
    pub before: (i64, String),
    pub after: (i64, String),
}

/// Switch over, write, delete the GeoDatabase (volumes kept), create it again from
/// `spec`, and compare.
///
/// With `forget_record`, the PVCs lose what the deletion recorded on them (the last
/// primary and timeline) before the GeoDatabase comes back, as when it was removed without
/// the operator: the volumes' own contents must choose the primary.
pub async fn recreate_after_switchover(
    client: &Client,
    ns: &str,
    db: &GeoDatabase,
    forget_record: bool,
    timeout: Duration,
) -> anyhow::Result<RecreateReport> {
    let name = db.metadata.name.clone().context("no name")?;
    let api = Api::<GeoDatabase>::namespaced(client.clone(), ns);
    let instances = usize::try_from(db.spec.instances)?;
    let ready = wait_healthy(client, ns, &name, instances, timeout).await?;
    let first = primary_of(&ready).context("no primary")?;
    let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
    rw.connect_served(SERVED)
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS recreate (id bigint PRIMARY KEY, payload text NOT NULL); TRUNCATE recreate",
        )
        .await?;
    insert(&rw, 1, 1000).await?;
    let target = ready
        .status
        .as_ref()
        .and_then(|s| s.instances.iter().find(|i| i.name != first))
        .map(|i| i.name.clone())
        .context("no replica")?;
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"primary": target}})),
    )
    .await?;
    wait_for("the switchover", timeout, || async {
        let db = api.get(&name).await.ok()?;
        (primary_of(&db).as_deref() == Some(target.as_str())
            && crate::drill::healthy(&db, instances))
        .then_some(())
    })
    .await?;
    // Rows only the new primary's history has.
    insert(&rw, 1001, 2000).await?;
    let before = fingerprint(&rw, "recreate").await?;

    api.delete(&name, &DeleteParams::default()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("geodb.io/cluster={name},app.kubernetes.io/component=database");
    wait_for("the GeoDatabase and its pods gone", timeout, || async {
        let gone = api.get_opt(&name).await.ok()?.is_none();
        let pods = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .ok()?;
        (gone && pods.items.is_empty()).then_some(())
    })
    .await?;
    if forget_record {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let selector = format!("geodb.io/cluster={name}");
        for pvc in pvcs.list(&ListParams::default().labels(&selector)).await? {
            let forget = serde_json::json!({"metadata": {"annotations": {
                ANNOTATION_LAST_PRIMARY: null, ANNOTATION_LAST_TIMELINE: null}}});
            pvcs.patch(
                &pvc.name_any(),
                &PatchParams::default(),
                &Patch::Merge(forget),
            )
            .await?;
        }
    }

    let mut again = db.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some(name.clone()),
        ..Default::default()
    };
    again.spec.primary = None;
    again.status = None;
    api.create(&PostParams::default(), &again).await?;
    let back = wait_for(
        "the GeoDatabase Ready again",
        Duration::from_secs(600),
        || async {
            let db = api.get(&name).await.ok()?;
            let s = db.status.as_ref()?;
            (s.phase == Some(Phase::Ready) && crate::drill::healthy(&db, instances)).then_some(db)
        },
    )
    .await?;
    // The application's credentials are the ones it had: the kept Secret was adopted.
    let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
    let after = fingerprint(&rw, "recreate").await?;
    let report = RecreateReport {
        primary_before: target,
        primary_after: primary_of(&back).unwrap_or_default(),
        before,
        after,
    };
    if report.after != report.before {
        bail!("the data differs after the recreate: {report:?}");
    }
    Ok(report)
}
