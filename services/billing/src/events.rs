//! `POST /v1/events`: usage from the company's own services, as CloudEvents 1.0 JSON (one, or
//! a batch), checked one by one, and durable in the event log before the answer
//! (docs/events.md).

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::Utc;
use http::{header, HeaderMap};
use peage_core::usage_event::{parse_cloud_event, TimeWindow};
use peage_core::{PartnerId, UsageEvent};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use crate::{ApiError, ControlApi};

/// Where accepted usage events go: the event log (the embedded log in `peage up`, the spool
/// to Kafka in distributed mode). `Ok` means durable.
#[async_trait]
pub trait UsageEventSink: Send + Sync + 'static {
    async fn append(&self, events: &[UsageEvent]) -> Result<(), SinkRefused>;
}

/// Why the log did not take events: the caller answers 503 and the client retries.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkRefused(pub String);

/// The events API's settings and where its events go.
pub struct EventsIntake {
    pub sink: Arc<dyn UsageEventSink>,
    pub window: TimeWindow,
    /// The most events one request may carry.
    pub max_events: usize,
    /// The most bytes one request body may have.
    pub max_bytes: usize,
}

/// The hard bound on a request body; `events.max_batch_bytes` is checked against it.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// One rejected event of a request.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectedEvent {
    /// Its position in the batch (0 for a single event).
    pub index: usize,
    /// Its `id`, when it has a readable one.
    pub id: Option<String>,
    pub reason: String,
}

/// What became of a request's events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsOutcome {
    /// Events stored (durable in the log).
    pub accepted: usize,
    /// Events already received with the same content (by partner, `source` and `id`): not
    /// stored again.
    pub duplicates: usize,
    /// Events refused, each with its reason; the others were taken.
    pub rejected: Vec<RejectedEvent>,
}

/// How the body holds its events.
enum Mode {
    Single,
    Batch,
    Either,
}

fn mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/cloudevents+json" => Ok(Mode::Single),
        "application/cloudevents-batch+json" => Ok(Mode::Batch),
        "application/json" => Ok(Mode::Either),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "content-type {ct:?} is not one of application/cloudevents+json (one event), \
             application/cloudevents-batch+json (an array) or application/json (either)"
        ))),
    }
}

/// The events of a body, each still raw, or one problem for a body that is not CloudEvents
/// JSON at all.
fn split_body(body: &[u8], mode: Mode, max_events: usize) -> Result<Vec<Box<RawValue>>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("the body is not UTF-8 JSON".into()))?;
    let starts_array = text.trim_start().starts_with('[');
    let events: Vec<Box<RawValue>> = match (mode, starts_array) {
        (Mode::Single, true) => {
            return Err(ApiError::BadRequest(
                "application/cloudevents+json holds one event (an object); send an array as \
                 application/cloudevents-batch+json"
                    .into(),
            ))
        }
        (Mode::Batch, false) => {
            return Err(ApiError::BadRequest(
                "application/cloudevents-batch+json holds an array of events".into(),
            ))
        }
        (_, true) => serde_json::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?,
        (_, false) => {
            let one: Box<RawValue> = serde_json::from_str(text)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            if !one.get().starts_with('{') {
                return Err(ApiError::BadRequest(
                    "the body must be a CloudEvent (an object) or an array of them".into(),
                ));
            }
            vec![one]
        }
    };
    if events.is_empty() {
        return Err(ApiError::BadRequest("the batch holds no event".into()));
    }
    if events.len() > max_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} events in one request; at most {max_events} (events.max_batch_events)",
            events.len()
        )));
    }
    Ok(events)
}

/// The intake, or 503 when this server takes no usage events.
fn configured(api: &ControlApi) -> Result<&EventsIntake, ApiError> {
    api.events.get().ok_or_else(|| {
        ApiError::Unavailable(
            "this server does not take usage events (no event log is configured for them)".into(),
        )
    })
}

impl EventsIntake {
    /// 413 for a body over `events.max_batch_bytes`.
    fn check_size(&self, body: &[u8]) -> Result<(), ApiError> {
        if body.len() > self.max_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "the body has {} bytes; at most {} (events.max_batch_bytes)",
                body.len(),
                self.max_bytes
            )));
        }
        Ok(())
    }
}

/// The readable `id` of an event that failed its checks, for the answer.
fn id_of(raw: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<serde_json::Value>,
    }
    serde_json::from_str::<Id>(raw.get())
        .ok()
        .and_then(|i| i.id)
        .and_then(|v| v.as_str().map(str::to_string))
}

#[utoipa::path(post,
    path = "/v1/events",
    tag = "events",
    request_body(description = "One CloudEvent 1.0 in JSON (`application/cloudevents+json`), an array of them (`application/cloudevents-batch+json`), or either as `application/json`. `subject` names the partner by id or external_id; `data` holds what meters read.",
        content((Object = "application/cloudevents+json"), (Vec<Object> = "application/cloudevents-batch+json"), (Object = "application/json"))),
    responses(
        (status = 200, description = "What became of each event: accepted ones are durable", body = EventsOutcome),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 415, response = crate::openapi::UnsupportedMediaType),
        (status = 503, response = crate::openapi::Unavailable)),
    security(("admin" = [])))]
pub async fn post_events(
    State(api): State<Arc<ControlApi>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let intake = configured(&api)?;
    let mode = mode(&headers)?;
    intake.check_size(&body)?;
    let raws = split_body(&body, mode, intake.max_events)?;
    let outcome = take(&api, intake, raws).await?;
    Ok(Json(outcome).into_response())
}

/// Checks, resolves and stores a request's events.
async fn take(
    api: &ControlApi,
    intake: &EventsIntake,
    raws: Vec<Box<RawValue>>,
) -> Result<EventsOutcome, ApiError> {
    let now = Utc::now();
    let mut rejected = Vec::new();
    let mut candidates: Vec<(usize, UsageEvent)> = Vec::with_capacity(raws.len());
    let mut partners: HashMap<String, Option<String>> = HashMap::new();
    for (index, raw) in raws.iter().enumerate() {
        let reject = |reason: String| RejectedEvent {
            index,
            id: id_of(raw),
            reason,
        };
        let event = match parse_cloud_event(raw) {
            Ok(e) => e,
            Err(reason) => {
                rejected.push(reject(reason.to_string()));
                continue;
            }
        };
        let partner = resolve_subject(api, &mut partners, &event.subject).await?;
        let Some(partner) = partner else {
            rejected.push(reject(format!(
                "subject {:?} is neither a partner id nor a partner's external_id",
                event.subject
            )));
            continue;
        };
        match event.into_usage_event(&partner, now, &intake.window) {
            Ok(u) => candidates.push((index, u)),
            Err(reason) => rejected.push(reject(reason.to_string())),
        }
    }
    // Events already stored, or twice in this request: the same content is a duplicate, other
    // content under the same id is refused (the first one counts).
    let events: Vec<UsageEvent> = candidates.iter().map(|(_, e)| e.clone()).collect();
    let mut known = if events.is_empty() {
        HashMap::new()
    } else {
        api.usage.stored_usage_digests(&events).await?
    };
    let mut fresh = Vec::with_capacity(events.len());
    let mut duplicates = 0;
    for (index, e) in candidates {
        match known.get(&(e.partner_id.clone(), e.key)) {
            None => {
                known.insert((e.partner_id.clone(), e.key), e.digest.clone());
                fresh.push(e);
            }
            Some(d) if *d == e.digest => duplicates += 1,
            Some(_) => rejected.push(RejectedEvent {
                index,
                id: Some(e.id.clone()),
                reason: format!(
                    "id {:?} from source {:?} was already received with other content; the first one counts",
                    e.id, e.source
                ),
            }),
        }
    }
    if !fresh.is_empty() {
        intake
            .sink
            .append(&fresh)
            .await
            .map_err(|e| ApiError::Unavailable(format!("the event log refused the events: {e}")))?;
    }
    rejected.sort_by_key(|r| r.index);
    Ok(EventsOutcome {
        accepted: fresh.len(),
        duplicates,
        rejected,
    })
}

/// The partner a `subject` names: by id when it has the form of one, else by external id;
/// each subject looked up once a request (`seen`).
async fn resolve_subject(
    api: &ControlApi,
    seen: &mut HashMap<String, Option<String>>,
    subject: &str,
) -> Result<Option<String>, ApiError> {
    if let Some(p) = seen.get(subject) {
        return Ok(p.clone());
    }
    let p = lookup_subject(api, subject).await?;
    seen.insert(subject.to_string(), p.clone());
    Ok(p)
}

async fn lookup_subject(api: &ControlApi, subject: &str) -> Result<Option<String>, ApiError> {
    if PartnerId::parse(subject).is_ok() {
        if let Some(p) = api.store.partner(subject).await? {
            return Ok(Some(p.id));
        }
    }
    Ok(api
        .store
        .partner_by_external_id(subject)
        .await?
        .map(|p| p.id))
}

/// An event to cancel: the partner it was for, and its `source` and `id`.
#[derive(Debug, serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    /// The partner's id or external_id, as in the event's `subject`.
    pub subject: String,
    pub source: String,
    pub id: String,
}

#[utoipa::path(post,
    path = "/v1/events/cancellations",
    tag = "events",
    request_body(description = "One cancellation `{subject, source, id}` or an array of them: the events meters and invoices must leave out. Raw events stay; a cancellation record is added.",
        content((Vec<Cancellation> = "application/json"))),
    responses(
        (status = 200, description = "What became of each cancellation: `accepted` are recorded, `duplicates` were already", body = EventsOutcome),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 401, response = crate::openapi::Unauthorized),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 503, response = crate::openapi::Unavailable)),
    security(("admin" = [])))]
pub async fn cancel_events(
    State(api): State<Arc<ControlApi>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let intake = configured(&api)?;
    intake.check_size(&body)?;
    let items: Vec<Cancellation> = if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
    {
        crate::routes::body(&body)?
    } else {
        vec![crate::routes::body(&body)?]
    };
    if items.is_empty() {
        return Err(ApiError::BadRequest("no cancellation given".into()));
    }
    if items.len() > intake.max_events {
        return Err(ApiError::PayloadTooLarge(format!(
            "{} cancellations in one request; at most {} (events.max_batch_events)",
            items.len(),
            intake.max_events
        )));
    }
    let now = Utc::now();
    let mut rejected = Vec::new();
    let mut records: Vec<(usize, UsageEvent)> = Vec::new();
    let mut partners: HashMap<String, Option<String>> = HashMap::new();
    for (index, c) in items.iter().enumerate() {
        let reject = |reason: String| RejectedEvent {
            index,
            id: Some(c.id.clone()),
            reason,
        };
        let partner = resolve_subject(&api, &mut partners, &c.subject).await?;
        let Some(partner) = partner else {
            rejected.push(reject(format!(
                "subject {:?} is neither a partner id nor a partner's external_id",
                c.subject
            )));
            continue;
        };
        let key = UsageEvent::key_of(&partner, &c.source, &c.id);
        let Some(event) = api.usage.stored_usage_event(&partner, key).await? else {
            rejected.push(reject(format!(
                "no stored event {:?} from source {:?} for this partner (one accepted moments ago may still be on its way: retry shortly)",
                c.id, c.source
            )));
            continue;
        };
        if event.event_type == peage_core::usage_event::CANCELLATION_TYPE {
            rejected.push(reject("a cancellation cannot be cancelled".into()));
            continue;
        }
        if event.time < now - intake.window.backfill {
            rejected.push(reject(format!(
                "the event is older than the backfill window of {} days; it can no longer be cancelled",
                intake.window.backfill.num_days()
            )));
            continue;
        }
        records.push((index, UsageEvent::cancellation_of(&event, now)));
    }
    let all: Vec<UsageEvent> = records.iter().map(|(_, r)| r.clone()).collect();
    let mut known = if all.is_empty() {
        HashMap::new()
    } else {
        api.usage.stored_usage_digests(&all).await?
    };
    let mut fresh = Vec::new();
    let mut duplicates = 0;
    for (_, r) in records {
        match known.entry((r.partner_id.clone(), r.key)) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(r.digest.clone());
                fresh.push(r);
            }
        }
    }
    if !fresh.is_empty() {
        intake.sink.append(&fresh).await.map_err(|e| {
            ApiError::Unavailable(format!("the event log refused the cancellations: {e}"))
        })?;
    }
    Ok(Json(EventsOutcome {
        accepted: fresh.len(),
        duplicates,
        rejected,
    })
    .into_response())
}
