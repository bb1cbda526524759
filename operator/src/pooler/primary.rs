//! Where a read-write pooler's new server connections go once the operator has confirmed
//! a primary. The `-rw` Service follows the role labels only after the endpoint
//! controller and kube-proxy catch up (seconds, measured up to 1.8 s here): a connection
//! opened in between fails or reaches the demoted instance. So the operator names the
//! primary's own (headless) Service, whose address does not move in a switchover, and
//! the supervisor pins PgBouncer to it once a login there, as the lookup role (its
//! password is PgBouncer's userlist), reaches a server out of recovery.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::builders::pooler::{AUTH_DIR, TLS_DIR, USERLIST};
use crate::names::{POOLER_USER, POSTGRES_PORT};
use crate::pod_contract::CA_CERT;
use crate::postgres::tls::{client_config, VerifyFull};

/// How long a resume waits for the Service to reach the primary.
pub const WAIT: Duration = Duration::from_secs(8);

/// Whether `host` names an instance's Service of the same GeoDatabase as the mounted
/// `-rw` Service `service` (`<cluster>-<n>.<namespace>.svc` beside
/// `<cluster>-rw.<namespace>.svc`): nothing else may be pinned (pure).
pub fn is_instance_of(service: &str, host: &str) -> bool {
    let (Some((rw, domain)), Some((instance, host_domain))) =
        (service.split_once('.'), host.split_once('.'))
    else {
        return false;
    };
    let Some(cluster) = rw.strip_suffix("-rw") else {
        return false;
    };
    domain == host_domain
        && instance
            .strip_prefix(cluster)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The lookup role's password from a userlist (`"user" "password"` lines) (pure).
pub fn password_in(userlist: &str, user: &str) -> Option<String> {
    userlist.lines().find_map(|line| {
        let mut fields = line.split('"').skip(1).step_by(2);
        (fields.next()? == user).then(|| fields.next().map(str::to_owned))?
    })
}

/// The lookup role's password, from the mounted userlist.
pub fn lookup_password() -> Result<String, String> {
    let userlist = std::fs::read_to_string(Path::new(AUTH_DIR).join(USERLIST))
        .map_err(|e| format!("reading the userlist: {e}"))?;
    password_in(&userlist, POOLER_USER).ok_or_else(|| format!("no {POOLER_USER} in the userlist"))
}

async fn writable(host: &str, password: &str, tls: &VerifyFull) -> Result<bool, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(u16::try_from(POSTGRES_PORT).unwrap_or(5432))
        .user(POOLER_USER)
        .password(password)
        .dbname("postgres")
        .application_name("geodb-pooler")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .connect_timeout(Duration::from_secs(1));
    let (client, connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let answer = client
        .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
        .await
        .map_err(|e| e.to_string())
        .map(|row| !row.get::<_, bool>(0));
    drop(client);
    let _ = driver.await;
    answer
}

/// Wait until a login through `host` reaches a server out of recovery; whether one did
/// within [`WAIT`] (and the last error when not).
pub async fn wait_writable(host: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let password = lookup_password()?;
    let ca = std::fs::read_to_string(Path::new(TLS_DIR).join(CA_CERT))
        .map_err(|e| format!("reading the CA: {e}"))?;
    let tls = VerifyFull(client_config(&ca)?);
    let mut last = String::new();
    while started.elapsed() < WAIT {
        match writable(host, &password, &tls).await {
            Ok(true) => return Ok(started.elapsed()),
            Ok(false) => last = format!("{host} still reaches a server in recovery"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_instance_of_the_same_database_is_pinned() {
        let rw = "geo-rw.prod.svc";
        assert!(is_instance_of(rw, "geo-2.prod.svc"));
        assert!(is_instance_of(rw, "geo-12.prod.svc"));
        assert!(!is_instance_of(rw, "geo-2.other.svc"));
        assert!(!is_instance_of(rw, "geo-x.prod.svc"));
        assert!(!is_instance_of(rw, "geo-.prod.svc"));
        assert!(!is_instance_of(rw, "other-2.prod.svc"));
        assert!(!is_instance_of(rw, "evil.example.com"));
        assert!(!is_instance_of("geo-ro.prod.svc", "geo-2.prod.svc"));
        assert!(!is_instance_of(rw, "geo-2"));
    }

    #[test]
    fn the_lookup_password_is_read_from_the_userlist() {
        let list = "\"geodb_pooler\" \"s3cret\"\n\"postgres\" \"\"\n";
        assert_eq!(password_in(list, "geodb_pooler").as_deref(), Some("s3cret"));
        assert_eq!(password_in(list, "postgres").as_deref(), Some(""));
        assert_eq!(password_in(list, "app"), None);
    }
}
