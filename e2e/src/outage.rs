//! The archive under stress: the S3 server unreachable from the pods for a while under
//! write load, then a failover while archiving, then a restore to the end of the archive
//! that must hold every acknowledged row (across the timeline switch).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use geodb::api::GeoDatabase;
use kube::{Api, Client};

use crate::archiving::keys;
use crate::drill::{
    delete_pod, geodatabase, missing_ids, pod_ip, primary_of, superuser, superuser_password,
    wait_failed_over, Ack, Endpoint, Writer,
};
use crate::kube_util::wait_for;

/// The pods' network and the S3 server's port on the node (the local cluster's).
const POD_CIDR: &str = "10.88.0.0/16";
const S3_PORT: &str = "9443";

/// Drop the pods' packets to the S3 server (`false` heals). Only the pods lose it: the
/// test itself still reads the bucket.
pub fn cut_s3(cut: bool) -> anyhow::Result<()> {
    let op = if cut { "-I" } else { "-D" };
    let status = std::process::Command::new("iptables")
        .args([
            "-w", op, "INPUT", "-s", POD_CIDR, "-p", "tcp", "--dport", S3_PORT,
        ])
        .args(["-j", "DROP"])
        .status()
        .context("running iptables")?;
    if !status.success() {
        bail!("iptables {op} INPUT ... --dport {S3_PORT} failed: {status}");
    }
    Ok(())
}

/// The `ContinuousArchiving` condition once its status is `want` (and its reason
/// `reason`, when given): (reason, message).
pub async fn archiving_condition(
    client: &Client,
    ns: &str,
    name: &str,
    want: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(String, String)> {
    wait_for(
        &format!(
            "{name}: ContinuousArchiving {want} {}",
            reason.unwrap_or("")
        ),
        timeout,
        || async {
            let db = geodatabase(client, ns, name).await.ok()?;
            let c = db
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "ContinuousArchiving")?;
            (c.status == want && reason.is_none_or(|r| r == c.reason))
                .then_some((c.reason, c.message))
        },
    )
    .await
}

/// The primary's superuser session (straight to its pod).
pub async fn primary_sql(
    client: &Client,
    ns: &str,
    name: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let db = geodatabase(client, ns, name).await?;
    let primary = primary_of(&db).context("no primary")?;
    let password = superuser_password(client, ns, name).await?;
    superuser(
        &pod_ip(client, ns, &format!("{primary}-0")).await?,
        &password,
    )
    .await
}

/// Segments the primary keeps for the archiver (`.ready` files) and its failures so far.
pub async fn waiting_segments(sql: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM pg_ls_dir('pg_wal/archive_status') f WHERE f LIKE '%.ready'), \
             (SELECT failed_count FROM pg_stat_archiver)",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Switch segments on the primary and wait until the archiver has archived that one.
pub async fn switch_and_drain(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let sql = primary_sql(client, ns, name).await?;
    let switched: String = sql
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await?
        .get(0);
    wait_for(&format!("{switched} archived"), timeout, || async {
        let row = sql
            .query_one("SELECT last_archived_wal FROM pg_stat_archiver", &[])
            .await
            .ok()?;
        let last: Option<String> = row.get(0);
        // Names of one timeline sort in WAL order.
        last.filter(|l| l.as_str() >= switched.as_str()).map(|_| ())
    })
    .await?;
    Ok(switched)
}

/// WAL positions (log * 256 + seg, across timelines) missing between the first and the
/// last segment in `keys`: a gap a restore could not cross.
pub fn gaps(keys: &[String]) -> Vec<u64> {
    let positions: BTreeSet<u64> = keys
        .iter()
        .filter_map(|k| {
            let name = k.rsplit('/').next()?.split('.').next()?;
            (name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit())).then_some(())?;
            let log = u64::from_str_radix(&name[8..16], 16).ok()?;
            let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
            Some(log * 256 + seg)
        })
        .collect();
    let (Some(first), Some(last)) = (positions.first(), positions.last()) else {
        return Vec::new();
    };
    (*first..=*last)
        .filter(|p| !positions.contains(p))
        .collect()
}

/// What the drill saw.
#[derive(Debug)]
pub struct OutageReport {
    pub failing_reason: String,
    pub failing_message: String,
    pub waiting_during_outage: i64,
    pub failures_during_outage: i64,
    pub caught_up_after: Duration,
    pub old_primary: String,
    pub new_primary: String,
    pub acknowledged: usize,
}

/// Writes at `table` all along; S3 cut for `outage`; healed; the primary's pod deleted.
/// Returns the acknowledged writes (all before the last switch, which is archived).
pub async fn outage_then_failover(
    client: &Client,
    ns: &str,
    name: &str,
    table: &str,
    outage: Duration,
) -> anyhow::Result<(OutageReport, Vec<Ack>)> {
    let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
    rw.connect(Duration::from_secs(5))
        .await?
        .batch_execute(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
        ))
        .await?;
    let writer = Writer::start(rw, table, 1, Duration::from_millis(50));
    let cut_at = Instant::now();
    cut_s3(true)?;
    let during = async {
        let (failing_reason, failing_message) = archiving_condition(
            client,
            ns,
            name,
            "False",
            Some("ArchiveFailing"),
            Duration::from_secs(150),
        )
        .await?;
        // The outage lasts its full length; the primary keeps every segment meanwhile.
        tokio::time::sleep_until((cut_at + outage).into()).await;
        let (waiting, failures) = waiting_segments(&primary_sql(client, ns, name).await?).await?;
        anyhow::Ok((failing_reason, failing_message, waiting, failures))
    }
    .await;
    cut_s3(false)?;
    let (failing_reason, failing_message, waiting, failures) = during?;
    let healed = Instant::now();
    switch_and_drain(client, ns, name, Duration::from_secs(300)).await?;
    archiving_condition(client, ns, name, "True", None, Duration::from_secs(120)).await?;
    let caught_up_after = healed.elapsed();
    let db: GeoDatabase = Api::namespaced(client.clone(), ns).get(name).await?;
    let old = primary_of(&db).context("no primary")?;
    delete_pod(client, ns, &format!("{old}-0")).await?;
    let db = wait_failed_over(client, ns, name, &old, 2, Duration::from_secs(300)).await?;
    let new = primary_of(&db).context("no primary after the failover")?;
    // Writes on the new timeline, then everything acknowledged reaches the archive.
    let more = writer.acks().len() + 40;
    wait_for(
        "40 writes on the new primary",
        Duration::from_secs(60),
        || async { (writer.acks().len() >= more).then_some(()) },
    )
    .await?;
    let acks = writer.stop().await;
    switch_and_drain(client, ns, name, Duration::from_secs(300)).await?;
    Ok((
        OutageReport {
            failing_reason,
            failing_message,
            waiting_during_outage: waiting,
            failures_during_outage: failures,
            caught_up_after,
            old_primary: old,
            new_primary: new,
            acknowledged: acks.len(),
        },
        acks,
    ))
}

/// The archived WAL of `prefix`, with any gap between its first and last segment.
pub async fn archived_wal(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<(Vec<String>, Vec<u64>)> {
    let wal = keys(s3, bucket, &format!("{prefix}/wal/")).await?;
    let gaps = gaps(&wal);
    Ok((wal, gaps))
}

/// Acknowledged ids the restored cluster's table lacks.
pub async fn missing_after_restore(
    client: &Client,
    ns: &str,
    restored: &str,
    table: &str,
    acks: &[Ack],
) -> anyhow::Result<Vec<i64>> {
    let rw = Endpoint::of(
        client,
        ns,
        &format!("{restored}-app-rw"),
        &format!("{restored}-rw"),
    )
    .await?;
    missing_ids(&rw, table, acks).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_across_timelines() {
        let k = |n: &str| format!("ns/db/wal/{n}.zst");
        let keys = vec![
            k("000000010000000000000005"),
            k("000000010000000000000006"),
            "ns/db/wal/00000002.history.zst".to_owned(),
            k("000000020000000000000007"),
            k("000000020000000000000009"),
        ];
        assert_eq!(gaps(&keys), vec![8]);
        assert!(gaps(&keys[..4]).is_empty());
    }
}
