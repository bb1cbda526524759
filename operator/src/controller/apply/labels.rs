//! Role labels on instance pods: the Services select on them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::ResourceExt;
use serde_json::json;

use super::applier::Applier;
use crate::api::Role;
use crate::controller::topology::InstanceRole;
use crate::error::{Error, Result};
use crate::names::{Names, LABEL_ROLE, LABEL_SERVING_READS};

impl Applier<'_> {
    /// Set the role and serving-reads labels the Services select on; whether any moved.
    pub async fn label_roles(
        &self,
        roles: &BTreeMap<String, InstanceRole>,
        pods: &[Pod],
    ) -> Result<bool> {
        let mut moved = false;
        for (instance, wanted) in roles {
            let Some(pod) = pods.iter().find(|p| p.name_any() == Names::pod(instance)) else {
                continue;
            };
            let serving = wanted.serving_reads.to_string();
            let labels = pod.labels();
            if labels.get(LABEL_ROLE).map(String::as_str) == Some(wanted.role.as_str())
                && labels.get(LABEL_SERVING_READS) == Some(&serving)
            {
                continue;
            }
            self.api::<Pod>()
                .patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {
                        LABEL_ROLE: wanted.role.as_str(),
                        LABEL_SERVING_READS: serving,
                    }}})),
                )
                .await
                .map_err(Error::kube("labelling an instance pod"))?;
            let note = if wanted.role == Role::Replica {
                format!("{} as replica (serving reads: {serving})", pod.name_any())
            } else {
                format!("{} as primary", pod.name_any())
            };
            self.record(|c| c.relabelled.push(note));
            moved = true;
        }
        Ok(moved)
    }
}
