//! OpenTelemetry traces: one trace per run, a span per job (and per NATS delivery), exported
//! over OTLP/HTTP when the standard variables ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_EXPORTER_OTLP_PROTOCOL` `http/protobuf` (the
//! default) or `http/json`; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_BSP_SCHEDULE_DELAY`, …; `OTEL_SDK_DISABLED=true` turns it off). The SDK's own
//! warnings (an unreachable collector) go to the logs under `opentelemetry*` targets.
//!
//! The trace context crosses NATS as W3C `traceparent` / `tracestate` headers on each job, so
//! a worker's spans join the coordinator's run. Only vss's own spans are exported, at `info`
//! and above: they carry names, counts and ids, never values.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The OTLP protocol the environment names (traces' own setting first).
fn protocol_setting() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// Whether the environment asks for traces.
fn wanted() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The layer that exports vss's spans, when the environment asks for traces; `service` is
/// the default `service.name`. An exporter that cannot be built is reported and skipped.
/// Call it (and [`shutdown`]) on a multi-threaded Tokio runtime: the exporter's HTTP client
/// blocks.
pub fn layer<S>(service: &'static str) -> Option<impl Layer<S>>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if !wanted() {
        return None;
    }
    let protocol = match protocol_setting().as_deref() {
        Some("http/json") => Protocol::HttpJson,
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some(other) => {
            eprintln!("warning: OTLP protocol `{other}` is not supported; using http/protobuf");
            Protocol::HttpBinary
        }
    };
    // The exporter's HTTP client blocks; build it where blocking is allowed.
    let exporter = tokio::task::block_in_place(|| {
        opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(protocol).build()
    });
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("warning: traces are not exported: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named_in_attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES")
        .is_ok_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !named_in_attributes {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer("vss");
    let _ = PROVIDER.set(provider);
    let ours =
        filter_fn(|meta| meta.target().starts_with("vss") && *meta.level() <= tracing::Level::INFO);
    Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(ours))
}

/// Exports what is still buffered; call once, before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let flushed = tokio::task::block_in_place(|| provider.shutdown());
        if let Err(e) = flushed {
            eprintln!("warning: not every trace span was exported: {e}");
        }
    }
}

/// The current span's W3C `traceparent`, if a trace is being recorded (kept with a run, so a
/// resumed run continues its trace).
pub fn traceparent() -> Option<String> {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// Makes `span` a child of the span a `traceparent` names.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
}
