//! Prometheus metrics for the scheduler and the workers, served as text on `GET /metrics`
//! from `--metrics-addr` (off unless set: several workers share a host).
//!
//! ```text
//! scheduler: fleet_jobs_total{outcome}  fleet_tasks_total{event}  fleet_queue_depth{queue}
//! worker:    fleet_worker_tasks_total{priority,outcome}  fleet_worker_images_total{outcome}
//!            (the scheduler's counters cover retries, stale reports and dead letters)
//!            fleet_worker_task_seconds{priority} (histogram)  fleet_worker_model_{loads,evictions}_total
//!            fleet_gpu_{memory_used_mib,memory_total_mib,utilization_pct,temperature_c,power_w}{gpu}
//! ```

use std::net::SocketAddr;
use std::sync::LazyLock;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every metric of this process.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    REGISTRY.register(Box::new(metric.clone())).expect("metric names are unique");
    metric
}

/// Jobs by intake outcome: `accepted`, `duplicate`, `rejected`.
pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(Opts::new("fleet_jobs_total", "Jobs by intake outcome"), &["outcome"]).expect("valid"))
});
/// Task events the scheduler recorded: `dispatched`, `started`, `completed`, `retried`,
/// `dead_lettered`, `skipped`, `stale_report`.
pub static TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(Opts::new("fleet_tasks_total", "Task events recorded by the scheduler"), &["event"])
            .expect("valid"),
    )
});
/// Tasks placed by the dispatcher, by whether their model was already warm on the device.
pub static PLACEMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("fleet_placements_total", "Tasks placed on a device, by whether the model was warm there"),
            &["model"],
        )
        .expect("valid"),
    )
});
/// Messages waiting per queue, sampled by the scheduler.
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(Opts::new("fleet_queue_depth", "Messages waiting per queue"), &["queue"]).expect("valid"))
});
/// Tasks a worker ended, by priority and outcome: `ended` (done, or skipped for a cancelled
/// job) or `failed_attempt` (handed back for a retry).
pub static WORKER_TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("fleet_worker_tasks_total", "Tasks ended by this worker"),
            &["priority", "outcome"],
        )
        .expect("valid"),
    )
});
/// Images a worker processed: `ok` or `failed`.
pub static WORKER_IMAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(Opts::new("fleet_worker_images_total", "Images processed"), &["outcome"]).expect("valid"),
    )
});
/// Task wall time on the worker, by priority.
pub static WORKER_TASK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let opts = HistogramOpts::new("fleet_worker_task_seconds", "Task wall time on the worker")
        .buckets(vec![0.005, 0.02, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0]);
    register(HistogramVec::new(opts, &["priority"]).expect("valid"))
});
/// Models loaded onto a device.
pub static MODEL_LOADS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("fleet_worker_model_loads_total", "Models loaded onto a device").expect("valid"))
});
/// Models evicted from a device to make room for another.
pub static MODEL_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register(IntCounter::new("fleet_worker_model_evictions_total", "Models evicted to make room").expect("valid"))
});
/// NVML gauges per GPU: `memory_used_mib`, `memory_total_mib`, `utilization_pct`,
/// `temperature_c`, `power_w`.
pub static GPU: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(Opts::new("fleet_gpu", "NVML readings per GPU"), &["gpu", "reading"]).expect("valid"))
});

/// The metrics as Prometheus text.
pub fn render() -> String {
    let mut out = Vec::new();
    TextEncoder::new().encode(&REGISTRY.gather(), &mut out).expect("text encoding cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}

/// Whether this process is ready for work: the scheduler once its broker session consumes,
/// a worker once it is registered and consuming its queue. Served as `GET /readyz`.
static READY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks the process ready (or not) for `GET /readyz`.
pub fn set_ready(ready: bool) {
    READY.store(ready, std::sync::atomic::Ordering::SeqCst);
}

/// Ready for as long as it lives: marks the process ready when made, not ready when dropped
/// (a broker session that ends takes readiness with it).
#[must_use = "readiness ends when the guard drops"]
pub struct ReadyGuard(());

impl ReadyGuard {
    /// Marks the process ready.
    pub fn new() -> Self {
        set_ready(true);
        ReadyGuard(())
    }
}

impl Default for ReadyGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        set_ready(false);
    }
}

/// Whether [`set_ready`] last said ready.
pub fn is_ready() -> bool {
    READY.load(std::sync::atomic::Ordering::SeqCst)
}

/// The response to one request line: `/metrics`, `/readyz` (200 once ready, 503 before),
/// `/livez` (200 while the process serves); 404 otherwise.
fn respond(head: &str) -> String {
    let (status, content_type, body) = if head.starts_with("GET /metrics ") {
        ("200 OK", "text/plain; version=0.0.4", render())
    } else if head.starts_with("GET /readyz ") {
        if is_ready() {
            ("200 OK", "text/plain", "ready\n".to_string())
        } else {
            ("503 Service Unavailable", "text/plain", "not ready\n".to_string())
        }
    } else if head.starts_with("GET /livez ") {
        ("200 OK", "text/plain", "alive\n".to_string())
    } else {
        ("404 Not Found", "text/plain", String::new())
    };
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `GET /metrics`, `/readyz` and `/livez` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on /metrics, readiness on /readyz");
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&request[..n]);
            let response = respond(&head);
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_show_up_in_the_text_format() {
        JOBS.with_label_values(&["accepted"]).inc_by(3);
        GPU.with_label_values(&["0", "temperature_c"]).set(41.0);
        let text = render();
        assert!(text.contains("fleet_jobs_total{outcome=\"accepted\"} 3"), "{text}");
        assert!(text.contains("fleet_gpu{gpu=\"0\",reading=\"temperature_c\"} 41"), "{text}");
    }

    #[test]
    fn readiness_follows_the_flag() {
        set_ready(false);
        assert!(respond("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 503 "));
        assert!(respond("GET /livez HTTP/1.1").starts_with("HTTP/1.1 200 "));
        set_ready(true);
        assert!(respond("GET /readyz HTTP/1.1").starts_with("HTTP/1.1 200 "));
        assert!(respond("GET /nowhere HTTP/1.1").starts_with("HTTP/1.1 404 "));
        set_ready(false);
    }
}
