//! Logs and traces of a fleet process. Logs go to stderr as before; when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are
//! also exported over OTLP (HTTP/protobuf) under the process's `service.name`, and each span
//! that starts from a message takes that message's W3C `traceparent` as its parent, so one
//! trace follows a job: submit -> intake -> shard -> dispatch -> task (S3 reads and writes)
//! -> report.
//!
//! Messages carry the context of the span that sent them ([`traceparent_of`]); without an
//! exporter there is no span context, and the sender keeps its old random child id.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The header and field name of the W3C trace context.
const TRACEPARENT: &str = "traceparent";

/// Keeps the span exporter; dropping it sends the spans still buffered.
#[must_use = "spans still buffered are lost if the guard is dropped early"]
pub struct TracingGuard(Option<SdkTracerProvider>);

impl Drop for TracingGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("spans not all exported at exit: {e}");
            }
        }
    }
}

/// Whether the environment asks for an OTLP exporter.
fn otlp_wanted() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()))
}

/// Starts logging to stderr at `RUST_LOG` (or `default_filter`) and, where the environment
/// names an OTLP endpoint, exporting spans as `service`. Errors setting up the exporter are
/// printed and the process goes on with logs only.
pub fn init(service: &'static str, default_filter: &str) -> TracingGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter.into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = if otlp_wanted() {
        // Made on a thread of its own: the blocking HTTP client must not start inside an
        // async runtime.
        match std::thread::spawn(move || provider(service)).join().expect("the exporter thread does not panic") {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("OTLP span exporter not started, logs only: {e}");
                None
            }
        }
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    TracingGuard(provider)
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build().map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Makes the span a child of the remote span `traceparent` names (a message's header); a
/// missing or malformed one leaves the span a root.
pub fn follow(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(parent);
}

/// The `traceparent` naming `span`, for a message it sends; `None` where no span is exported
/// (no OTLP endpoint), so the caller keeps its own.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}
