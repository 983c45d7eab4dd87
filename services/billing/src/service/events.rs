//! `POST /v1/events`: usage from the company's own services, as CloudEvents 1.0 JSON (one, or
//! a batch), checked one by one, and durable in the event log before the answer
//! (docs/events.md).

use std::collections::HashMap;

use chrono::Utc;
use peage_core::usage_event::parse_cloud_event;
use peage_core::{PartnerId, UsageEvent};
use peage_usage_store::UsageKey;
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::billing::Billing;
use super::error::ServiceError;

pub use super::intake::{EventsIntake, KnownKeys, SinkRefused, UsageEventSink, MAX_BODY_BYTES};

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

/// How a body holds its events (from its content type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyForm {
    /// `application/cloudevents+json`: one event.
    Single,
    /// `application/cloudevents-batch+json`: an array.
    Batch,
    /// `application/json`: either.
    Either,
}

/// The events of a body, each still raw (slices of the body: an accepted event is copied once,
/// when checked), or one problem for a body that is not CloudEvents JSON at all.
fn split_body(
    body: &[u8],
    mode: BodyForm,
    max_events: usize,
) -> Result<Vec<&RawValue>, ServiceError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ServiceError::Invalid("the body is not UTF-8 JSON".into()))?;
    let starts_array = text.trim_start().starts_with('[');
    let events: Vec<&RawValue> = match (mode, starts_array) {
        (BodyForm::Single, true) => {
            return Err(ServiceError::Invalid(
                "application/cloudevents+json holds one event (an object); send an array as \
                 application/cloudevents-batch+json"
                    .into(),
            ))
        }
        (BodyForm::Batch, false) => {
            return Err(ServiceError::Invalid(
                "application/cloudevents-batch+json holds an array of events".into(),
            ))
        }
        (_, true) => serde_json::from_str(text)
            .map_err(|e| ServiceError::Invalid(format!("invalid JSON body: {e}")))?,
        (_, false) => {
            let one: &RawValue = serde_json::from_str(text)
                .map_err(|e| ServiceError::Invalid(format!("invalid JSON body: {e}")))?;
            if !one.get().starts_with('{') {
                return Err(ServiceError::Invalid(
                    "the body must be a CloudEvent (an object) or an array of them".into(),
                ));
            }
            vec![one]
        }
    };
    if events.is_empty() {
        return Err(ServiceError::Invalid("the batch holds no event".into()));
    }
    if events.len() > max_events {
        return Err(ServiceError::TooLarge(format!(
            "{} events in one request; at most {max_events} (events.max_batch_events)",
            events.len()
        )));
    }
    Ok(events)
}

impl EventsIntake {
    /// A body over `events.max_batch_bytes` is refused whole.
    fn check_size(&self, body: &[u8]) -> Result<(), ServiceError> {
        if body.len() > self.max_bytes {
            return Err(ServiceError::TooLarge(format!(
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

impl Billing {
    /// Takes the usage events of a `POST /v1/events` body: each is checked on its own; the
    /// accepted ones are durable in the event log before this returns.
    pub async fn post_events(
        &self,
        form: BodyForm,
        body: &[u8],
    ) -> Result<EventsOutcome, ServiceError> {
        let intake = self.intake()?;
        intake.check_size(body)?;
        let raws = split_body(body, form, intake.max_events)?;
        take(self, intake, raws).await
    }

    /// Records cancellations of stored usage events (one `{subject, source, id}` or an array):
    /// meters and invoices leave the events out from then on.
    pub async fn cancel_events(&self, body: &[u8]) -> Result<EventsOutcome, ServiceError> {
        let intake = self.intake()?;
        intake.check_size(body)?;
        let items: Vec<Cancellation> =
            if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
                json_body(body)?
            } else {
                vec![json_body(body)?]
            };
        cancel(self, intake, items).await
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ServiceError> {
    serde_json::from_slice(body)
        .map_err(|e| ServiceError::Invalid(format!("invalid JSON body: {e}")))
}

/// Checks, resolves and stores a request's events.
async fn take(
    api: &Billing,
    intake: &EventsIntake,
    raws: Vec<&RawValue>,
) -> Result<EventsOutcome, ServiceError> {
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
    let (fresh, duplicates, conflicts) =
        sort_out(api, intake, candidates, Conflicts::Refused).await?;
    rejected.extend(conflicts);
    rejected.sort_by_key(|r| r.index);
    let accepted = append(intake, fresh, "events").await?;
    Ok(EventsOutcome {
        accepted,
        duplicates,
        rejected,
    })
}

/// What an id already stored with other content is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conflicts {
    /// Refused: the first content counts (events).
    Refused,
    /// A duplicate: a cancellation's record differs only in when it was asked for.
    Duplicates,
}

/// Sorts `candidates` against the stored events and each other: the new ones to append, how
/// many were duplicates, and the refusals of ids reused with other content.
async fn sort_out(
    api: &Billing,
    intake: &EventsIntake,
    candidates: Vec<(usize, UsageEvent)>,
    conflicts: Conflicts,
) -> Result<(Vec<UsageEvent>, usize, Vec<RejectedEvent>), ServiceError> {
    let mut keys: Vec<UsageKey> = candidates
        .iter()
        .map(|(_, e)| (e.partner_id.clone(), e.key))
        .collect();
    // Keys never seen need no look-up (none, when the store answers for every key).
    if let Some(known) = &intake.known_keys {
        known.keep_maybe_stored(&mut keys);
    }
    let stored = api.digests.stored(&api.usage, keys).await?;
    // What this request holds so far, for an id it carries twice.
    let mut here: HashMap<UsageKey, String> = HashMap::new();
    let mut fresh = Vec::with_capacity(candidates.len());
    let mut duplicates = 0;
    let mut refused = Vec::new();
    for (index, e) in candidates {
        let key = (e.partner_id.clone(), e.key);
        match stored.get(&key).or_else(|| here.get(&key)) {
            None => {
                here.insert(key, e.digest.clone());
                fresh.push(e);
            }
            Some(d) if *d == e.digest || conflicts == Conflicts::Duplicates => duplicates += 1,
            Some(_) => refused.push(RejectedEvent {
                index,
                id: Some(e.id.clone()),
                reason: format!(
                    "id {:?} from source {:?} was already received with other content; the first one counts",
                    e.id, e.source
                ),
            }),
        }
    }
    Ok((fresh, duplicates, refused))
}

/// Appends `fresh` to the event log, durably; how many were appended.
async fn append(
    intake: &EventsIntake,
    fresh: Vec<UsageEvent>,
    what: &'static str,
) -> Result<usize, ServiceError> {
    if !fresh.is_empty() {
        if let Some(known) = &intake.known_keys {
            known.appending(&mut fresh.iter().map(|e| e.key));
        }
        intake
            .sink
            .append(&fresh)
            .await
            .map_err(|source| ServiceError::EventLog { what, source })?;
    }
    Ok(fresh.len())
}

/// The partner a `subject` names: by id when it has the form of one, else by external id;
/// each subject looked up once a request (`seen`).
async fn resolve_subject(
    api: &Billing,
    seen: &mut HashMap<String, Option<String>>,
    subject: &str,
) -> Result<Option<String>, ServiceError> {
    if let Some(p) = seen.get(subject) {
        return Ok(p.clone());
    }
    let p = lookup_subject(api, subject).await?;
    seen.insert(subject.to_string(), p.clone());
    Ok(p)
}

async fn lookup_subject(api: &Billing, subject: &str) -> Result<Option<String>, ServiceError> {
    let now = std::time::Instant::now();
    if let Some(p) = api.subjects.get(subject, now) {
        return Ok(Some(p));
    }
    let found = lookup_subject_in_store(api, subject).await?;
    if let Some(p) = &found {
        api.subjects.put(subject, p, now);
    }
    Ok(found)
}

async fn lookup_subject_in_store(
    api: &Billing,
    subject: &str,
) -> Result<Option<String>, ServiceError> {
    if let Ok(id) = PartnerId::parse(subject) {
        if let Some(p) = api.store.partner(&id).await? {
            return Ok(Some(p.id.to_string()));
        }
    }
    Ok(api
        .store
        .partner_by_external_id(subject)
        .await?
        .map(|p| p.id.to_string()))
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

/// Checks and records cancellations.
async fn cancel(
    api: &Billing,
    intake: &EventsIntake,
    items: Vec<Cancellation>,
) -> Result<EventsOutcome, ServiceError> {
    if items.is_empty() {
        return Err(ServiceError::Invalid("no cancellation given".into()));
    }
    if items.len() > intake.max_events {
        return Err(ServiceError::TooLarge(format!(
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
        let partner = resolve_subject(api, &mut partners, &c.subject).await?;
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
    let (fresh, duplicates, _) = sort_out(api, intake, records, Conflicts::Duplicates).await?;
    let accepted = append(intake, fresh, "cancellations").await?;
    Ok(EventsOutcome {
        accepted,
        duplicates,
        rejected,
    })
}
