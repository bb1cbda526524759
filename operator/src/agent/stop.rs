//! The kubelet's stop: the image's stop signal (SIGINT, PostgreSQL's "fast shutdown")
//! or SIGTERM (the Kubernetes default). The agent handles both the same way.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::error::{AgentError, Result};

/// SIGINT or SIGTERM, whichever comes.
pub struct Stop {
    interrupt: Signal,
    terminate: Signal,
}

impl Stop {
    pub fn new() -> Result<Self> {
        let listen = |kind| signal(kind).map_err(|e| AgentError::command("signal", e));
        Ok(Self {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// Wait for the next stop signal.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
