//! What the operator asks of a pooler through the supervisor: pause before a switchover,
//! and follow the roles after one.
//!
//! PgBouncer drops a server connection that is still logging in when its database is
//! marked for reconnection (`RECONNECT`, or a `RELOAD` that changes the host), records
//! that as a failed login, and then fails every waiting client with it ("server login has
//! been failing") until a login succeeds. So the supervisor never does either while a
//! login may be under way: it does them paused (a finished `PAUSE` leaves no server
//! connection), or, for the repeats that catch kube-proxy's delay, only when no server is
//! logging in.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use tokio::sync::Mutex;

use super::console::{command, rows};
use super::upstream::Upstream;
use crate::runtime::exposition::number;

/// When a reconnect to the Services is repeated: kube-proxy applies a Service's new
/// endpoints a moment after the labels change, and a connection opened in between may
/// still reach the old instance.
const AGAIN_AFTER: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];
/// How long `/pause` waits for transactions under way to finish before answering 504
/// (the pause goes on: the switchover decides).
const PAUSE_WAIT: Duration = Duration::from_secs(5);
/// How long a repin outside a switchover waits for its pause to complete. The pause
/// stops new server logins at once; the transactions it would wait for run on the old
/// primary (fenced, or cut off and never answering), so they are not waited out.
const REPIN_PAUSE_WAIT: Duration = Duration::from_millis(500);
/// How long a reconnect waits for server logins under way to finish.
const QUIET_WAIT: Duration = Duration::from_secs(1);
/// A pause nobody ended (an operator lost in the middle of a switchover) ends by itself
/// after this: clients wait, they do not wait forever.
const PAUSE_LIMIT: Duration = Duration::from_secs(30);

/// What the control endpoint's handlers share.
pub struct Control {
    port: u16,
    upstream: Arc<Upstream>,
    /// Counts pauses and resumes: a pause's own timer resumes only if nothing came after.
    turns: AtomicU64,
    /// Counts role changes told: a repeated reconnect stops once a newer one came.
    told: AtomicU64,
    paused: AtomicBool,
    /// One role change at a time, in the order they came.
    serial: Mutex<()>,
}

impl Control {
    pub fn new(port: u16, upstream: Arc<Upstream>) -> Self {
        Self {
            port,
            upstream,
            turns: AtomicU64::new(0),
            told: AtomicU64::new(0),
            paused: AtomicBool::new(false),
            serial: Mutex::new(()),
        }
    }

    async fn console(&self, sql: &str) {
        if let Err(e) = command(self.port, sql).await {
            tracing::warn!(error = %e, command = sql, "PgBouncer's console");
        }
    }

    async fn resume(&self) {
        self.console("RESUME").await;
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Whether a server connection is logging in (unknown counts as yes).
    async fn logging_in(&self) -> bool {
        match rows(self.port, &["SHOW POOLS"]).await {
            Ok(answers) => answers
                .iter()
                .flatten()
                .any(|pool| number(pool, "sv_login").is_none_or(|n| n > 0.0)),
            Err(_) => true,
        }
    }

    /// Wait, briefly, until no server connection is logging in.
    async fn quiet(&self) {
        let deadline = Instant::now() + QUIET_WAIT;
        while self.logging_in().await && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pin (or unpin) the upstream and make PgBouncer read it; whether the host changed.
    async fn repin(&self, host: Option<String>) -> bool {
        match self.upstream.pin(host) {
            Ok(true) => {
                self.console("RELOAD").await;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "writing PgBouncer's configuration");
                false
            }
        }
    }
}

/// What the token of the control endpoint is derived from the lookup role's password
/// with: the token opens the endpoint, and does not give the password away.
const TOKEN_CONTEXT: &[u8] = b"geodb pooler control";

fn token_key(password: &str) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, password.as_bytes())
}

/// The bearer token the operator sends to a pooler whose lookup role has `password`
/// (pure): HMAC-SHA-256 of a fixed context, in hex.
pub fn token(password: &str) -> String {
    ring::hmac::sign(&token_key(password), TOKEN_CONTEXT)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `headers` carry the token for `password` (compared in constant time) (pure).
pub fn authorized(headers: &HeaderMap, password: &str) -> bool {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(from_hex);
    presented
        .is_some_and(|tag| ring::hmac::verify(&token_key(password), TOKEN_CONTEXT, &tag).is_ok())
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The pause and reconnect requests need the operator's token: anyone else who can reach
/// the port (a NetworkPolicy may be off) could otherwise hold every client.
fn refused(headers: &HeaderMap) -> Option<StatusCode> {
    match super::primary::lookup_password() {
        Ok(password) if authorized(headers, &password) => None,
        Ok(_) => Some(StatusCode::UNAUTHORIZED),
        Err(e) => {
            tracing::warn!(error = %e, "no lookup password to check the control token against");
            Some(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// The `primary=` value of a query string.
pub fn primary_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("primary="))
        .filter(|v| !v.is_empty())
}

/// `POST /reconnect[?primary=<host>]`.
pub async fn reconnect(
    control: Arc<Control>,
    headers: HeaderMap,
    query: Option<String>,
) -> StatusCode {
    if let Some(status) = refused(&headers) {
        return status;
    }
    let Some(host) = primary_of(query.as_deref()).map(str::to_owned) else {
        tokio::spawn(follow_services(control));
        return StatusCode::ACCEPTED;
    };
    let service = control.upstream.fallback().unwrap_or_default();
    if !super::primary::is_instance_of(&service, &host) {
        tracing::warn!(%host, %service, "refused to pin a host that is not an instance of this database");
        return StatusCode::BAD_REQUEST;
    }
    let turn = control.turns.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::spawn(follow_primary(control, host, turn));
    StatusCode::ACCEPTED
}

/// No primary is confirmed (a failover or switchover under way), or this pooler serves
/// replicas: new server connections follow the Services again, and those open now close
/// once released; a paused pooler stays paused.
async fn follow_services(control: Arc<Control>) {
    let turn = {
        let _serial = control.serial.lock().await;
        let turn = control.told.fetch_add(1, Ordering::SeqCst) + 1;
        if !control.paused.load(Ordering::SeqCst) {
            control.quiet().await;
        }
        if !control.repin(None).await {
            control.console("RECONNECT").await;
        }
        tracing::info!(
            event = "reconnect",
            "server connections close once released"
        );
        turn
    };
    for wait in AGAIN_AFTER {
        tokio::time::sleep(wait).await;
        let _serial = control.serial.lock().await;
        if control.told.load(Ordering::SeqCst) != turn {
            return;
        }
        if control.logging_in().await {
            tracing::info!("a server is logging in: this repeated reconnect is skipped");
            continue;
        }
        control.console("RECONNECT").await;
    }
}

/// A confirmed primary: pin PgBouncer to its Service once a login there is writable,
/// then resume, unless a pause came after this request (`turn`): that one is a new
/// switchover's, which its own end resumes. Told again what it already follows, it does
/// nothing.
async fn follow_primary(control: Arc<Control>, host: String, turn: u64) {
    let _serial = control.serial.lock().await;
    control.told.fetch_add(1, Ordering::SeqCst);
    let started = Instant::now();
    let mut paused = control.paused.load(Ordering::SeqCst);
    if !paused && control.upstream.pinned().as_deref() == Some(host.as_str()) {
        return;
    }
    let reached = super::primary::wait_writable(&host).await;
    let pin = match &reached {
        Ok(_) => Some(host.clone()),
        Err(e) => {
            tracing::warn!(primary = %host, error = %e, "the primary does not answer as one through its Service: following the -rw Service");
            None
        }
    };
    if !paused && control.upstream.pinned() != pin {
        // A host change outside a switchover (a failover): pause first, so no login is
        // under way when the change drops them.
        paused = true;
        control.paused.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(REPIN_PAUSE_WAIT, command(control.port, "PAUSE")).await;
        control.quiet().await;
    }
    let changed = control.repin(pin).await;
    let resumed = paused && control.turns.load(Ordering::SeqCst) == turn;
    if resumed {
        control.resume().await;
    }
    tracing::info!(
        event = "reconnect",
        primary = %host,
        changed,
        resumed,
        waited_ms = reached.map(|d| d.as_millis() as u64).unwrap_or_default(),
        took_ms = started.elapsed().as_millis() as u64,
        "new server connections go to the primary's Service"
    );
}

/// `POST /pause`.
pub async fn pause(control: Arc<Control>, headers: HeaderMap) -> StatusCode {
    if let Some(status) = refused(&headers) {
        return status;
    }
    let port = control.port;
    let turn = control.turns.fetch_add(1, Ordering::SeqCst) + 1;
    control.paused.store(true, Ordering::SeqCst);
    let timer = control.clone();
    tokio::spawn(async move {
        tokio::time::sleep(PAUSE_LIMIT).await;
        if timer.turns.load(Ordering::SeqCst) == turn {
            timer.resume().await;
            tracing::warn!(event = "resume", "a pause nobody ended: resumed");
        }
    });
    match tokio::time::timeout(PAUSE_WAIT, command(port, "PAUSE")).await {
        Ok(Ok(())) => {
            tracing::info!(event = "pause", "paused: no server connection left");
            StatusCode::OK
        }
        // Already paused (a repeated request): nothing more to wait for.
        Ok(Err(e)) if e.to_string().contains("already") => StatusCode::OK,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "PAUSE on PgBouncer's console");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(_) => {
            tracing::warn!(
                event = "pause",
                "transactions still under way after the wait"
            );
            StatusCode::GATEWAY_TIMEOUT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_token_of_the_password_opens_the_endpoint() {
        let token = token("s3cret");
        assert_eq!(token.len(), 64);
        assert!(!token.contains("s3cret"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            headers
        };
        assert!(authorized(&with(&format!("Bearer {token}")), "s3cret"));
        assert!(!authorized(&with(&format!("Bearer {token}")), "other"));
        assert!(!authorized(&with(&token), "s3cret"));
        assert!(!authorized(&with("Bearer "), "s3cret"));
        assert!(!authorized(&with("Bearer zz"), "s3cret"));
        assert!(!authorized(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn the_primary_is_read_from_the_query() {
        assert_eq!(
            primary_of(Some("primary=geo-2.ns.svc")),
            Some("geo-2.ns.svc")
        );
        assert_eq!(
            primary_of(Some("x=1&primary=geo-2.ns.svc")),
            Some("geo-2.ns.svc")
        );
        assert_eq!(primary_of(Some("primary=")), None);
        assert_eq!(primary_of(None), None);
    }
}
