//! Webhook endpoints as finance manages them: added (the URL checked against the outbound
//! policy, the secret shown once), listed, and their delivery log.

use chrono::{DateTime, Utc};
use peage_billing_store::{WebhookDelivery, WebhookEndpoint};

use super::billing::Billing;
use super::error::ServiceError;
use super::secrets::webhook_row;
use super::webhooks::{new_secret, EVENT_TYPES};

/// `POST /v1/webhooks`: where to send which event types (`*`: every one).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointRequest {
    pub url: String,
    pub events: Vec<String>,
}

/// An endpoint just added, with its signing secret shown this once.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct CreatedEndpoint {
    pub id: peage_core::WebhookEndpointId,
    pub url: String,
    pub events: Vec<String>,
    /// `whsec_…`: verifies the `webhook-signature` of each message.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

impl Billing {
    /// Adds an endpoint; its URL must pass the outbound policy, its event types be known.
    pub async fn add_webhook_endpoint(
        &self,
        req: EndpointRequest,
    ) -> Result<CreatedEndpoint, ServiceError> {
        self.check_outbound_url("url", &req.url).await?;
        if req.events.is_empty() {
            return Err(ServiceError::Invalid(
                "events must name at least one event type".into(),
            ));
        }
        for e in &req.events {
            if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
                return Err(ServiceError::Invalid(format!(
                    "unknown event type {e:?}; known: {}",
                    EVENT_TYPES.join(", ")
                )));
            }
        }
        let id = peage_core::WebhookEndpointId::from_random(rand::random());
        let secret = new_secret();
        let ep = WebhookEndpoint {
            secret: self.secrets.seal(&webhook_row(id.as_str()), &secret),
            id,
            url: req.url,
            events: req.events,
            created_at: Utc::now(),
            disabled_at: None,
        };
        self.store.add_webhook_endpoint(&ep).await?;
        Ok(CreatedEndpoint {
            id: ep.id,
            url: ep.url,
            events: ep.events,
            secret,
            created_at: ep.created_at,
        })
    }

    pub async fn webhook_endpoints(&self) -> Result<Vec<WebhookEndpoint>, ServiceError> {
        Ok(self.store.webhook_endpoints().await?)
    }

    /// The latest `limit` deliveries, newest first.
    pub async fn webhook_deliveries(
        &self,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, ServiceError> {
        Ok(self.store.webhook_deliveries(limit).await?)
    }
}
