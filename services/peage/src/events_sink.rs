//! Where `POST /v1/events` writes: the embedded log in `peage up`, the spool to Kafka in the
//! distributed control API. Both encode UsageEvent v1 JSON (schemas/events/usage_event.v1.json)
//! and answer only once the records are durable.

use async_trait::async_trait;
use bytes::Bytes;
use peage_billing::service::events::{SinkRefused, UsageEventSink};
use peage_core::UsageEvent;
use peage_eventlog::kafka::SpooledKafkaLog;
use peage_eventlog::EmbeddedLog;

fn encode(events: &[UsageEvent]) -> Result<Vec<Bytes>, SinkRefused> {
    events
        .iter()
        .map(|e| {
            // The CloudEvent plus the attributes beside it: one allocation, no regrowing.
            let mut buf = Vec::with_capacity(e.cloudevent.get().len() + 384);
            serde_json::to_writer(&mut buf, e)
                .map(|()| Bytes::from(buf))
                .map_err(|err| SinkRefused(format!("cannot encode event {}: {err}", e.id)))
        })
        .collect()
}

/// The embedded log of usage events (synced on every append: durable before the answer).
pub struct EmbeddedEvents(pub EmbeddedLog);

#[async_trait]
impl UsageEventSink for EmbeddedEvents {
    async fn append(&self, events: &[UsageEvent]) -> Result<(), SinkRefused> {
        let payloads = encode(events)?;
        self.0
            .append_payloads(&payloads)
            .await
            .map(|_| ())
            .map_err(|e| SinkRefused(e.to_string()))
    }
}

/// The control API's spool of usage events, forwarded to the usage topic; keyed by partner so
/// a partner's events stay in order on one partition.
pub struct SpooledEvents(pub std::sync::Arc<SpooledKafkaLog>);

#[async_trait]
impl UsageEventSink for SpooledEvents {
    async fn append(&self, events: &[UsageEvent]) -> Result<(), SinkRefused> {
        let payloads = encode(events)?;
        let keys = events
            .iter()
            .map(|e| Bytes::copy_from_slice(e.partner_id.as_bytes()))
            .collect();
        self.0
            .append_records(keys, payloads)
            .await
            .map_err(|e| SinkRefused(e.to_string()))
    }
}
