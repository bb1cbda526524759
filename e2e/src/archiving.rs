//! WAL archiving on the local cluster: a GeoDatabase with `spec.backup` pointed at the
//! cluster's S3 server (the Secret `kube-system/geodb-test-s3`), its segments checked in
//! the bucket.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use geodb::api::GeoDatabase;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::PostParams;
use kube::{Api, Client};

use crate::drill::{geodatabase, pod_ip, primary_of, superuser, superuser_password};
use crate::kube_util::wait_for;

/// The cluster's S3 server as `cluster.sh` publishes it.
pub struct ClusterStore {
    pub endpoint: String,
    access_key: String,
    secret_key: String,
    ca_pem: Vec<u8>,
}

impl ClusterStore {
    pub async fn read(client: &Client) -> anyhow::Result<Self> {
        let secret = Api::<Secret>::namespaced(client.clone(), "kube-system")
            .get("geodb-test-s3")
            .await
            .context("the Secret kube-system/geodb-test-s3 (cluster.sh up publishes it)")?;
        let data = secret.data.context("geodb-test-s3 without data")?;
        let field = |k: &str| -> anyhow::Result<Vec<u8>> {
            Ok(data
                .get(k)
                .with_context(|| format!("geodb-test-s3 has no {k}"))?
                .0
                .clone())
        };
        Ok(Self {
            endpoint: String::from_utf8(field("endpoint")?)?,
            access_key: String::from_utf8(field("accessKeyId")?)?,
            secret_key: String::from_utf8(field("secretAccessKey")?)?,
            ca_pem: field("ca.crt")?,
        })
    }

    /// A client that trusts the cluster CA.
    pub fn client(&self) -> aws_sdk_s3::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(
                TlsContext::builder()
                    .with_trust_store(
                        TrustStore::empty().with_pem_certificate(self.ca_pem.as_slice()),
                    )
                    .build()
                    .unwrap_or_default(),
            )
            .build_https();
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                &self.access_key,
                &self.secret_key,
                None,
                None,
                "geodb-test-s3",
            ))
            .force_path_style(true)
            .http_client(http)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// The key and CA as a Secret `name` in `ns`, for `spec.backup`.
    pub async fn copy_secret(&self, client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
        let data = BTreeMap::from([
            (
                "accessKeyId".to_owned(),
                ByteString(self.access_key.clone().into_bytes()),
            ),
            (
                "secretAccessKey".to_owned(),
                ByteString(self.secret_key.clone().into_bytes()),
            ),
            ("ca.crt".to_owned(), ByteString(self.ca_pem.clone())),
        ]);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(data),
            ..Secret::default()
        };
        Api::<Secret>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(())
    }
}

/// Create `bucket` (it may exist already).
pub async fn ensure_bucket(s3: &aws_sdk_s3::Client, bucket: &str) -> anyhow::Result<()> {
    match s3.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
            if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists") {
                Ok(())
            } else {
                Err(anyhow!("creating bucket {bucket}: {text}"))
            }
        }
    }
}

/// Every key under `prefix`.
pub async fn keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.context("listing objects")?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
    }
    keys.sort();
    Ok(keys)
}

/// What one archiving check saw.
#[derive(Debug)]
pub struct Archived {
    pub segments: Vec<String>,
    pub condition: String,
}

/// Write on the primary, switch segments three times, and wait until each switched-out
/// segment is in the bucket under `prefix/wal/` and `ContinuousArchiving` is True.
pub async fn switch_and_wait(
    client: &Client,
    ns: &str,
    name: &str,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<Archived> {
    let db: GeoDatabase = geodatabase(client, ns, name).await?;
    let primary = primary_of(&db).context("no primary")?;
    let password = superuser_password(client, ns, name).await?;
    let sql = superuser(
        &pod_ip(client, ns, &format!("{primary}-0")).await?,
        &password,
    )
    .await?;
    sql.batch_execute("CREATE TABLE IF NOT EXISTS archived (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        .await?;
    let mut switched = Vec::new();
    for _ in 0..3 {
        sql.batch_execute("INSERT INTO archived DEFAULT VALUES")
            .await?;
        let row = sql
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await?;
        switched.push(row.get::<_, String>(0));
    }
    let wal = format!("{prefix}/wal/");
    let segments = wait_for(
        &format!("segments {switched:?} under s3://{bucket}/{wal}"),
        timeout,
        || async {
            let present = keys(s3, bucket, &wal).await.ok()?;
            let stem = |k: &String| {
                k.trim_start_matches(&wal)
                    .split('.')
                    .next()
                    .map(String::from)
            };
            let names: Vec<String> = present.iter().filter_map(stem).collect();
            switched
                .iter()
                .all(|s| names.contains(s))
                .then_some(present)
        },
    )
    .await?;
    let condition = wait_for("ContinuousArchiving True", timeout, || async {
        let db = geodatabase(client, ns, name).await.ok()?;
        let c = db
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "ContinuousArchiving")?;
        (c.status == "True").then_some(c.message)
    })
    .await?;
    Ok(Archived {
        segments,
        condition,
    })
}
