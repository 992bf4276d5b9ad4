//! Prometheus metrics for the scheduler and the workers, served as text on `GET /metrics`
//! from `--metrics-addr` (off unless set: several workers share a host).
//!
//! ```text
//! scheduler: fleet_jobs_total{outcome}  fleet_tasks_total{event}  fleet_placements_total{model}
//!            fleet_queue_depth{queue}  fleet_backlog_tasks{tenant,priority}
//!            fleet_backlog_drain_seconds{priority}  (the leader only: KEDA scales on these)
//! worker:    fleet_worker_tasks_total{priority,outcome}  fleet_worker_images_total{outcome}
//!            (the scheduler's counters cover retries, stale reports and dead letters)
//!            fleet_worker_task_seconds{priority} (histogram)  fleet_worker_model_{loads,evictions}_total
//!            DCGM_FI_DEV_{GPU_UTIL,MEM_COPY_UTIL,FB_USED,FB_FREE,GPU_TEMP,POWER_USAGE,SM_CLOCK}
//!            {gpu,UUID,Hostname,modelName} (dcgm-exporter's names and labels, read through NVML)
//!            fleet_gpu_throttled{gpu,UUID,Hostname,reason}
//!            fleet_finetune_{loss{fine_tune,phase},learning_rate{fine_tune},step{fine_tune}}
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
/// Tasks not yet ended per tenant and priority, sampled from the store by the leading
/// scheduler (the figure KEDA scales worker pools on).
pub static BACKLOG_TASKS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new("fleet_backlog_tasks", "Tasks waiting or running in unfinished jobs"),
            &["tenant", "priority"],
        )
        .expect("valid"),
    )
});
/// Time to drain each priority's backlog at the fleet's task rate over the last minute;
/// 0 when empty, `+Inf` when tasks wait and none ended in that minute.
pub static BACKLOG_DRAIN_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(
        GaugeVec::new(
            Opts::new("fleet_backlog_drain_seconds", "Seconds to drain the backlog at the recent task rate"),
            &["priority"],
        )
        .expect("valid"),
    )
});

/// The labels of the GPU gauges: dcgm-exporter's, so one dashboard reads either source.
pub const GPU_LABELS: [&str; 4] = ["gpu", "UUID", "Hostname", "modelName"];

/// One GPU gauge under dcgm-exporter's name.
fn dcgm(name: &str, help: &str) -> GaugeVec {
    register(GaugeVec::new(Opts::new(name, help), &GPU_LABELS).expect("valid"))
}

/// GPU utilisation, %.
pub static GPU_UTIL: LazyLock<GaugeVec> = LazyLock::new(|| dcgm("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)"));
/// Memory (copy engine) utilisation, %.
pub static GPU_MEM_COPY_UTIL: LazyLock<GaugeVec> =
    LazyLock::new(|| dcgm("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %)"));
/// Frame buffer memory used, MiB.
pub static GPU_FB_USED: LazyLock<GaugeVec> =
    LazyLock::new(|| dcgm("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB)"));
/// Frame buffer memory free, MiB.
pub static GPU_FB_FREE: LazyLock<GaugeVec> =
    LazyLock::new(|| dcgm("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB)"));
/// GPU temperature, °C.
pub static GPU_TEMP: LazyLock<GaugeVec> = LazyLock::new(|| dcgm("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)"));
/// Power draw, W.
pub static GPU_POWER: LazyLock<GaugeVec> = LazyLock::new(|| dcgm("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)"));
/// SM clock, MHz.
pub static GPU_SM_CLOCK: LazyLock<GaugeVec> =
    LazyLock::new(|| dcgm("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz)"));
/// 1 for each clock throttle reason NVML reports active, by reason.
pub static GPU_THROTTLED: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(
        GaugeVec::new(
            Opts::new("fleet_gpu_throttled", "1 while NVML reports this clock throttle reason"),
            &["gpu", "UUID", "Hostname", "reason"],
        )
        .expect("valid"),
    )
});

/// A fine-tune's latest loss, by fine-tune (`<tenant>/<job>`) and phase (`1`: all the data, `2`:
/// the best).
pub static FINETUNE_LOSS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(
        GaugeVec::new(Opts::new("fleet_finetune_loss", "Latest training loss"), &["fine_tune", "phase"])
            .expect("valid"),
    )
});
/// A fine-tune's learning rate at its latest step.
pub static FINETUNE_LEARNING_RATE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(Opts::new("fleet_finetune_learning_rate", "Learning rate"), &["fine_tune"]).expect("valid"))
});
/// A fine-tune's latest step.
pub static FINETUNE_STEP: LazyLock<GaugeVec> = LazyLock::new(|| {
    register(GaugeVec::new(Opts::new("fleet_finetune_step", "Latest training step"), &["fine_tune"]).expect("valid"))
});

/// The name of every metric the scheduler and the workers export (histograms by their base
/// name): what a dashboard or a scaler may ask for.
pub fn names() -> Vec<String> {
    use prometheus::core::Collector;
    let all: [&dyn Collector; 22] = [
        &*JOBS,
        &*TASKS,
        &*PLACEMENTS,
        &*QUEUE_DEPTH,
        &*BACKLOG_TASKS,
        &*BACKLOG_DRAIN_SECONDS,
        &*WORKER_TASKS,
        &*WORKER_IMAGES,
        &*WORKER_TASK_SECONDS,
        &*MODEL_LOADS,
        &*MODEL_EVICTIONS,
        &*GPU_UTIL,
        &*GPU_MEM_COPY_UTIL,
        &*GPU_FB_USED,
        &*GPU_FB_FREE,
        &*GPU_TEMP,
        &*GPU_POWER,
        &*GPU_SM_CLOCK,
        &*GPU_THROTTLED,
        &*FINETUNE_LOSS,
        &*FINETUNE_LEARNING_RATE,
        &*FINETUNE_STEP,
    ];
    all.iter().flat_map(|c| c.desc()).map(|d| d.fq_name.clone()).collect()
}

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
        GPU_TEMP.with_label_values(&["0", "GPU-x", "host", "H100"]).set(41.0);
        let text = render();
        assert!(text.contains("fleet_jobs_total{outcome=\"accepted\"} 3"), "{text}");
        assert!(
            text.contains("DCGM_FI_DEV_GPU_TEMP{Hostname=\"host\",UUID=\"GPU-x\",gpu=\"0\",modelName=\"H100\"} 41"),
            "{text}"
        );
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
