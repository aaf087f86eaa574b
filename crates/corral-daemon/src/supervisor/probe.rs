//! HTTP health probes: readiness (poll until 200, within a startup budget) and liveness
//! (periodic, restart after N consecutive failures). Probes run as their own tokio tasks
//! and report to the task actor; they never touch the process themselves.

use super::HealthCheck;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug)]
pub enum ProbeMsg {
    Ready { run_id: String },
    NotReady { run_id: String, reason: String },
    Dead { run_id: String, reason: String },
}

/// One `GET url`; Ok(()) on 200, else why not.
pub async fn check(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<(), String> {
    match client.get(url).timeout(timeout).send().await {
        Ok(r) if r.status().as_u16() == 200 => Ok(()),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            Err(format!("GET {url} answered {status}: {}", body.trim()))
        }
        Err(e) if e.is_timeout() => Err(format!("GET {url} timed out after {timeout:?}")),
        Err(e) if e.is_connect() => Err(format!("GET {url}: connection refused")),
        Err(e) => Err(format!("GET {url}: {e}")),
    }
}

/// Readiness then liveness for one run; ends when the receiver is gone or it reported
/// `NotReady`/`Dead`. With `ready_already` (an adopted server) it starts with liveness.
pub fn spawn(
    hc: HealthCheck,
    run_id: String,
    ready_already: bool,
    tx: mpsc::UnboundedSender<ProbeMsg>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let timeout = Duration::from_millis(hc.timeout_ms.max(1));
        if !ready_already {
            let mut last = String::new();
            let mut ready = false;
            for attempt in 0..hc.attempts.max(1) {
                if attempt > 0 {
                    tokio::time::sleep(Duration::from_millis(hc.interval_ms)).await;
                }
                match check(&client, &hc.url, timeout).await {
                    Ok(()) => {
                        ready = true;
                        break;
                    }
                    Err(e) => last = e,
                }
                if tx.is_closed() {
                    return;
                }
            }
            if !ready {
                let reason = format!(
                    "not ready after {} health checks ({} apart): {last}",
                    hc.attempts.max(1),
                    super::task::human_ms(hc.interval_ms)
                );
                let _ = tx.send(ProbeMsg::NotReady { run_id, reason });
                return;
            }
            if tx
                .send(ProbeMsg::Ready {
                    run_id: run_id.clone(),
                })
                .is_err()
            {
                return;
            }
        }
        let mut failures = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(hc.liveness_interval_ms.max(10))).await;
            match check(&client, &hc.url, timeout).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures >= hc.liveness_failures.max(1) {
                        let reason =
                            format!("liveness check failed {failures} times in a row: {e}");
                        let _ = tx.send(ProbeMsg::Dead { run_id, reason });
                        return;
                    }
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    })
}
