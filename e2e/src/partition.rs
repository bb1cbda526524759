//! The partial-partition drill: the primary and one replica cut off from everything but
//! each other. The old primary must stop taking writes by itself before another instance
//! is promoted, and take none after; the replica that followed it must come back too.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::Service;
use kube::Api;

use crate::drill::{
    missing_ids, pod_ip, postmaster_pid, primary_of, superuser_password, wait_failed_over,
    wait_healthy, Ack, Endpoint, Target, Watcher, Writer,
};
use crate::kube_util::wait_for;

/// Allow only loopback and `peers` in the network namespace of `pid` (`false` heals).
fn isolate(pid: i32, peers: &[String], cut: bool) -> anyhow::Result<()> {
    let ns = |args: &[&str]| -> anyhow::Result<bool> {
        let status = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "iptables", "-w"])
            .args(args)
            .status()
            .context("running nsenter iptables")?;
        Ok(status.success())
    };
    if !cut {
        ns(&["-D", "INPUT", "-j", "GEODB-PARTITION"])?;
        ns(&["-D", "OUTPUT", "-j", "GEODB-PARTITION"])?;
        ns(&["-F", "GEODB-PARTITION"])?;
        ns(&["-X", "GEODB-PARTITION"])?;
        return Ok(());
    }
    let mut ok = ns(&["-N", "GEODB-PARTITION"])?;
    ok &= ns(&["-A", "GEODB-PARTITION", "-i", "lo", "-j", "RETURN"])?;
    ok &= ns(&["-A", "GEODB-PARTITION", "-o", "lo", "-j", "RETURN"])?;
    for peer in peers {
        ok &= ns(&["-A", "GEODB-PARTITION", "-s", peer, "-j", "RETURN"])?;
        ok &= ns(&["-A", "GEODB-PARTITION", "-d", peer, "-j", "RETURN"])?;
    }
    ok &= ns(&["-A", "GEODB-PARTITION", "-j", "DROP"])?;
    ok &= ns(&["-I", "INPUT", "-j", "GEODB-PARTITION"])?;
    ok &= ns(&["-I", "OUTPUT", "-j", "GEODB-PARTITION"])?;
    if !ok {
        bail!("iptables rules in the netns of {pid} failed");
    }
    Ok(())
}

/// A writer that runs inside the network namespace of `pid` (the old primary's pod),
/// connected to its PostgreSQL over loopback: it writes on the cut-off side.
struct InsideWriter {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl InsideWriter {
    fn start(pid: i32, endpoint: Endpoint, first_id: i64) -> anyhow::Result<Self> {
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (acks2, stop2) = (acks.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on this thread only, with an open namespace file.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return;
            }
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let writer = Writer::start(endpoint, "drill", first_id, Duration::from_millis(20));
                while !stop2.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let done = writer.stop().await;
                *acks2.lock().unwrap_or_else(|e| e.into_inner()) = done;
            });
        });
        Ok(Self { acks, stop, thread })
    }

    fn stop(self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        self.acks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the drill saw.
#[derive(Debug)]
pub struct PartitionReport {
    pub old_primary: String,
    pub new_primary: String,
    /// Writes the old primary acknowledged on the cut-off side, and after the new
    /// primary was first seen taking writes (must be 0).
    pub cut_side_acks: usize,
    pub cut_side_acks_after_promotion: usize,
    /// Acknowledged cut-side writes discarded when the old primary rejoined (all of them
    /// acknowledged before it stopped).
    pub cut_side_discarded: usize,
    /// Writes through `-rw` that went missing (must be 0: they reached the primary that
    /// held the Lease, or failed).
    pub rw_missing: usize,
    pub violations: Vec<String>,
}

pub async fn partial_partition(
    target: &Target,
    id_base: i64,
    timeout: Duration,
) -> anyhow::Result<PartitionReport> {
    let (client, ns, name) = (&target.client, target.ns.as_str(), target.name.as_str());
    let before = wait_healthy(client, ns, name, target.instances, timeout).await?;
    let old = primary_of(&before).context("no primary")?;
    let status = before.status.clone().unwrap_or_default();
    let buddy = status
        .instances
        .iter()
        .find(|i| i.name != old)
        .map(|i| i.name.clone())
        .context("no replica")?;
    let (old_pod, buddy_pod) = (format!("{old}-0"), format!("{buddy}-0"));
    let (_, old_pid) = postmaster_pid(ns, &old_pod)?;
    let (_, buddy_pid) = postmaster_pid(ns, &buddy_pod)?;
    let (old_ip, buddy_ip) = (
        pod_ip(client, ns, &old_pod).await?,
        pod_ip(client, ns, &buddy_pod).await?,
    );
    let rw_ip = Api::<Service>::namespaced(client.clone(), ns)
        .get(&format!("{name}-rw"))
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("no ClusterIP")?;
    let password = superuser_password(client, ns, name).await?;
    let rw = Endpoint::of(client, ns, &format!("{name}-app-rw"), &format!("{name}-rw")).await?;
    let local = Endpoint {
        host: "127.0.0.1".into(),
        ..rw.clone()
    };
    let watcher = Watcher::start(client.clone(), ns, name, password);
    let writer = Writer::start(rw.clone(), "drill", id_base, Duration::from_millis(20));
    let inside = InsideWriter::start(old_pid, local, id_base + 5_000_000)?;
    wait_for("writes flowing", Duration::from_secs(60), || async {
        (writer.acks().len() >= 20).then_some(())
    })
    .await?;

    isolate(old_pid, std::slice::from_ref(&buddy_ip), true)?;
    isolate(buddy_pid, &[old_ip.clone(), rw_ip.clone()], true)?;
    let outcome = async {
        let db = wait_for("another instance promoted", timeout, || async {
            let db = crate::drill::geodatabase(client, ns, name).await.ok()?;
            let s = db.status.as_ref()?;
            (s.current_primary.as_deref() != Some(old.as_str())
                && s.target_primary == s.current_primary)
                .then_some(db)
        })
        .await?;
        let new = primary_of(&db).context("no new primary")?;
        // Keep the cut a while longer: the old primary must take nothing meanwhile.
        let promoted = watcher
            .first_writable(&format!("{new}-0"))
            .unwrap_or_else(Instant::now);
        let until = promoted + Duration::from_secs(5);
        wait_for("a few seconds after the promotion", timeout, || async {
            (Instant::now() >= until).then_some(())
        })
        .await?;
        Ok::<_, anyhow::Error>((new, promoted))
    }
    .await;
    let healed = isolate(old_pid, &[], false).and(isolate(buddy_pid, &[], false));
    let (new, promoted) = outcome?;
    healed?;
    wait_failed_over(client, ns, name, &old, target.instances, timeout).await?;
    let inside_acks = inside.stop();
    let mut acks = writer.stop().await;
    let (violations, _) = watcher.stop().await;
    let rw_missing = missing_ids(&rw, "drill", &acks).await?.len();
    let discarded = missing_ids(&rw, "drill", &inside_acks).await?.len();
    acks.clear();
    Ok(PartitionReport {
        old_primary: old,
        new_primary: new,
        cut_side_acks: inside_acks.len(),
        cut_side_acks_after_promotion: inside_acks.iter().filter(|a| a.at >= promoted).count(),
        cut_side_discarded: discarded,
        rw_missing,
        violations,
    })
}
