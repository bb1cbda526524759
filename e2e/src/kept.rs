//! Drills for data that must never be removed: a rejoin whose pg_rewind fails, and a
//! replica down past the primary's WAL retention. Both end with the instance streaming
//! again from a fresh copy and its old data directory kept aside on its volume, named by
//! the `KeptData` condition.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use geodb::api::GeoDatabase;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};

use crate::drill::{
    geodatabase, network_cut, pod_ip, postmaster_pid, primary_of, superuser, superuser_password,
    wait_healthy, Target,
};
use crate::kube_util::wait_for;

/// The host directory of an instance's data volume (the local provisioner's path).
pub async fn volume_dir(client: &Client, ns: &str, instance: &str) -> anyhow::Result<PathBuf> {
    let pvc = Api::<PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .get(&format!("pgdata-{instance}-0"))
        .await?;
    let pv = pvc
        .spec
        .and_then(|s| s.volume_name)
        .context("unbound claim")?;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&pv)
        .await?;
    Ok(PathBuf::from(
        pv.spec
            .and_then(|s| s.local)
            .context("not a local volume")?
            .path,
    ))
}

/// Kept data directories on a volume.
fn kept_on(volume: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(volume)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("pgdata.kept-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `KeptData` names `instance`, and an Event of `reason` was published.
async fn wait_kept(
    client: &Client,
    ns: &str,
    name: &str,
    instance: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let message = wait_for(&format!("KeptData naming {instance}"), timeout, || async {
        let db = geodatabase(client, ns, name).await.ok()?;
        let c = db
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "KeptData")?;
        (c.status == "True"
            && c.message
                .contains(&format!("{instance} keeps pgdata.kept-")))
        .then_some(c.message)
    })
    .await?;
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    if !events.items.iter().any(|e| {
        e.reason.as_deref() == Some("DataDirectoryKept")
            && e.note.as_deref().is_some_and(|n| n.contains(instance))
    }) {
        bail!("no DataDirectoryKept Event about {instance}");
    }
    Ok(message)
}

/// Remove what a drill left on `volume` (a human's job in production) and wait for the
/// condition to clear.
async fn clear(
    client: &Client,
    ns: &str,
    name: &str,
    volume: &std::path::Path,
    timeout: Duration,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(volume.join("geodb-failpoints"));
    for kept in kept_on(volume) {
        std::fs::remove_dir_all(volume.join(kept))?;
    }
    wait_for("KeptData False", timeout, || async {
        let db = geodatabase(client, ns, name).await.ok()?;
        let c = db
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "KeptData")?;
        (c.status == "False").then_some(())
    })
    .await
}

/// pg_rewind forced to fail on a demoted primary: its data is moved aside, never removed.
pub async fn rewind_fails(target: &Target, timeout: Duration) -> anyhow::Result<String> {
    let (client, ns, name) = (&target.client, target.ns.as_str(), target.name.as_str());
    let db = wait_healthy(client, ns, name, target.instances, timeout).await?;
    let old = primary_of(&db).context("no primary")?;
    let next = db
        .status
        .as_ref()
        .and_then(|s| s.instances.iter().find(|i| i.name != old))
        .map(|i| i.name.clone())
        .context("no replica")?;
    let volume = volume_dir(client, ns, &old).await?;
    std::fs::write(volume.join("geodb-failpoints"), "rewind-fails\n")?;
    Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"primary": next}})),
        )
        .await?;
    let message = wait_kept(client, ns, name, &old, timeout).await?;
    if kept_on(&volume).is_empty() {
        bail!("no kept data directory on {}", volume.display());
    }
    wait_healthy(client, ns, name, target.instances, timeout).await?;
    // A second failed rewind while a directory is kept: nothing more is set aside, the
    // instance is parked and says so, until the kept directory is discarded.
    switch_to(target, &old, timeout).await?;
    let kept_before = kept_on(&volume);
    switch_to(target, &next, timeout).await?;
    let parked = wait_degraded(target, "InstanceParked", &old, timeout).await?;
    if kept_on(&volume) != kept_before {
        bail!(
            "the parked instance changed what is kept: {:?} then {:?}",
            kept_before,
            kept_on(&volume)
        );
    }
    clear(client, ns, name, &volume, timeout).await?;
    wait_healthy(client, ns, name, target.instances, timeout).await?;
    Ok(format!("{message}; then parked: {parked}"))
}

/// Ask for `instance` as the primary and wait until it is the confirmed one.
async fn switch_to(target: &Target, instance: &str, timeout: Duration) -> anyhow::Result<()> {
    let (client, ns, name) = (&target.client, target.ns.as_str(), target.name.as_str());
    wait_healthy(client, ns, name, target.instances, timeout).await?;
    Api::<GeoDatabase>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"primary": instance}})),
        )
        .await?;
    wait_for(
        &format!("{instance} the confirmed primary"),
        timeout,
        || async {
            let db = geodatabase(client, ns, name).await.ok()?;
            let status = db.status?;
            (status.current_primary.as_deref() == Some(instance)
                && status.target_primary.as_deref() == Some(instance))
            .then_some(())
        },
    )
    .await
}

/// Wait for `Degraded` with `reason`, its message naming `instance`.
async fn wait_degraded(
    target: &Target,
    reason: &str,
    instance: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let (client, ns, name) = (&target.client, target.ns.as_str(), target.name.as_str());
    wait_for(
        &format!("Degraded {reason} naming {instance}"),
        timeout,
        || async {
            let db = geodatabase(client, ns, name).await.ok()?;
            let c = db
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Degraded")?;
            (c.status == "True" && c.reason == reason && c.message.contains(instance))
                .then_some(c.message)
        },
    )
    .await
}

/// A replica cut off while the primary writes more WAL than `max_slot_wal_keep_size`:
/// its slot is invalidated; once back it copies the primary afresh (its data kept aside).
pub async fn replica_past_wal_bound(target: &Target, timeout: Duration) -> anyhow::Result<String> {
    let (client, ns, name) = (&target.client, target.ns.as_str(), target.name.as_str());
    let db = wait_healthy(client, ns, name, target.instances, timeout).await?;
    let primary = primary_of(&db).context("no primary")?;
    let replica = db
        .status
        .as_ref()
        .and_then(|s| s.instances.iter().find(|i| i.name != primary))
        .map(|i| i.name.clone())
        .context("no replica")?;
    let (_, replica_pid) = postmaster_pid(ns, &format!("{replica}-0"))?;
    let password = superuser_password(client, ns, name).await?;
    let sql = superuser(
        &pod_ip(client, ns, &format!("{primary}-0")).await?,
        &password,
    )
    .await?;
    network_cut(replica_pid, true)?;
    let written = tokio::time::timeout(timeout, async {
        sql.batch_execute("CREATE TABLE IF NOT EXISTS ballast (id bigint, pad text)").await?;
        for _ in 0..3 {
            sql.batch_execute("INSERT INTO ballast SELECT g, repeat(md5(g::text), 12) FROM generate_series(1, 150000) g; CHECKPOINT").await?;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await;
    network_cut(replica_pid, false)?;
    written.context("writing past the WAL bound timed out")??;
    // The slot was invalidated at a checkpoint (the operator may already have made it
    // again); the replica, back, finds the WAL it needs gone and copies the primary.
    let message = wait_kept(client, ns, name, &replica, timeout).await?;
    wait_healthy(client, ns, name, target.instances, timeout).await?;
    let volume = volume_dir(client, ns, &replica).await?;
    clear(client, ns, name, &volume, timeout).await?;
    Ok(message)
}
