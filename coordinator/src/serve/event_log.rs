//! Accepted events, kept in JetStream until every target they affect holds them (`vss serve
//! --nats`): stream `VSS_EVENTS`, one message per event (its trigger and run request: target
//! and secret names, never a value). An event is recorded before it is acknowledged anywhere
//! (the API's 202, the audit listener's queue) and deleted once the run that carries it, or
//! its retries, brought every target up to date; a restarted `serve` runs what is left.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use vss_protocol::config::NatsSpec;

use super::runs::RunRequest;

/// The stream of accepted, unfinished events.
const EVENTS_STREAM: &str = "VSS_EVENTS";
/// Its subject.
const EVENTS_SUBJECT: &str = "vss.events";

/// One recorded event.
#[derive(Serialize, Deserialize)]
struct Recorded {
    trigger: String,
    request: RunRequest,
}

/// The event log.
pub(super) struct EventLog {
    js: jetstream::Context,
}

impl EventLog {
    /// Connects and creates the stream if needed.
    pub(super) async fn open(spec: &NatsSpec) -> anyhow::Result<Self> {
        let client = vss_transport::connect(spec, "vss-serve").await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: EVENTS_STREAM.into(),
            subjects: vec![EVENTS_SUBJECT.into()],
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create the {EVENTS_STREAM} stream"))?;
        Ok(Self { js })
    }

    /// Records an event; returns its sequence once JetStream stored it.
    pub(super) async fn record(&self, trigger: &str, request: &RunRequest) -> anyhow::Result<u64> {
        let recorded = Recorded { trigger: trigger.to_string(), request: request.clone() };
        let payload = serde_json::to_vec(&recorded).expect("events serialize");
        let ack = self
            .js
            .publish(EVENTS_SUBJECT, payload.into())
            .await
            .context("cannot record the event")?
            .await
            .context("JetStream did not store the event")?;
        Ok(ack.sequence)
    }

    /// Forgets events whose every target is up to date.
    pub(super) async fn done(&self, events: &BTreeSet<u64>) {
        let Ok(stream) = self.js.get_stream(EVENTS_STREAM).await else { return };
        for &sequence in events {
            if let Err(e) = stream.delete_message(sequence).await {
                tracing::warn!(sequence, error = %e, "cannot delete a finished event");
            }
        }
    }

    /// The events recorded and not finished (by an earlier `serve`), oldest first.
    pub(super) async fn pending(&self) -> anyhow::Result<Vec<(u64, String, RunRequest)>> {
        let mut stream = self.js.get_stream(EVENTS_STREAM).await?;
        let count = stream.info().await?.state.messages;
        if count == 0 {
            return Ok(Vec::new());
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut pending = Vec::new();
        for _ in 0..count {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next()).await;
            let Ok(Some(Ok(message))) = next else { break };
            let sequence = message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence;
            match serde_json::from_slice::<Recorded>(&message.payload) {
                Ok(event) => pending.push((sequence, event.trigger, event.request)),
                Err(e) => tracing::warn!(sequence, error = %e, "unreadable event skipped"),
            }
        }
        Ok(pending)
    }
}
