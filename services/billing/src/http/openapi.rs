//! What the OpenAPI document says beyond the routes: title, security schemes, shared schemas.
//! The routes themselves come from the `#[utoipa::path]` of each handler, registered with the
//! router in `http::router`.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

/// An RFC 9457 problem: every error of the control API.
#[derive(ToSchema)]
#[schema(as = Problem)]
#[allow(dead_code)]
pub struct ProblemDoc {
    /// A URI naming the kind of problem.
    r#type: String,
    title: String,
    status: u16,
    detail: Option<String>,
}

/// The refusals most routes share, each a problem with its status; routes whose refusal says
/// more than these describe it in place.
macro_rules! problem_responses {
    ($($name:ident: $description:literal),* $(,)?) => {
        $(
            #[derive(ToResponse)]
            #[response(description = $description, content_type = "application/problem+json")]
            #[allow(dead_code)]
            pub struct $name(ProblemDoc);
        )*
    };
}

problem_responses! {
    BadRequest: "Invalid input",
    Unauthorized: "No admin token or session",
    Forbidden: "Not allowed for this session",
    NotFound: "Not found (or another partner's)",
    Conflict: "Conflicts with the current state",
    PayloadTooLarge: "Too many events or bytes in one request",
    UnsupportedMediaType: "Not a content type this route takes",
    Unavailable: "A store or the event log is unreachable; retry after `Retry-After` seconds",
    TooManyFailures: "Too many wrong credentials from this address; retry after `Retry-After` seconds",
}

/// One CloudEvent 1.0 in JSON, as `POST /v1/events` takes it (docs/events.md). Other
/// attributes are extensions, kept as sent.
#[derive(ToSchema, serde::Serialize)]
#[schema(as = CloudEvent)]
#[allow(dead_code)]
pub struct CloudEventDoc {
    /// `1.0`.
    specversion: String,
    /// Unique per `source`: a re-sent event with the same `source` and `id` counts once.
    id: String,
    source: String,
    /// The event type meters select on (`[[meter]] event_type`); not `peage.*`.
    r#type: String,
    /// The partner: its id or its `external_id`.
    subject: String,
    /// RFC 3339; when received if absent. At most the backfill window old, 5 minutes ahead.
    #[schema(format = DateTime)]
    time: Option<String>,
    datacontenttype: Option<String>,
    /// What meters read: properties by name (nested objects join with dots).
    #[schema(value_type = Option<Object>)]
    data: Option<()>,
}

/// One CloudEvent, or an array of them (`application/json` takes either).
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
#[allow(dead_code)]
#[schema(as = CloudEvents)]
pub enum CloudEventsDoc {
    One(CloudEventDoc),
    Batch(Vec<CloudEventDoc>),
}

/// An API version's OpenAPI document, as the catalog names it (JSON).
#[derive(ToSchema)]
#[schema(as = ApiDocument)]
#[allow(dead_code)]
pub struct ApiDocumentDoc {
    /// The OpenAPI version of the document (`3.0.3`, `3.1.0`).
    openapi: String,
}

/// RFC 6749 §5.2: how `POST /oauth/token` refuses, as OAuth clients expect.
#[derive(ToSchema)]
#[schema(as = OAuthError)]
#[allow(dead_code)]
pub struct OAuthErrorDoc {
    /// `invalid_request`, `invalid_client`, `unsupported_grant_type` or `invalid_scope`.
    error: String,
    error_description: String,
}

/// A CSV file (RFC 4180) with a header row, UTF-8.
pub struct Csv;

impl utoipa::PartialSchema for Csv {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("CSV (RFC 4180) with a header row, UTF-8"))
            .into()
    }
}

impl ToSchema for Csv {}

/// A PDF document.
pub struct Pdf;

impl utoipa::PartialSchema for Pdf {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A PDF document"))
            .into()
    }
}

impl ToSchema for Pdf {}

/// A catalog file, as uploaded for an invoice preview.
pub struct CatalogFile;

impl utoipa::PartialSchema for CatalogFile {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, SchemaFormat};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .description(Some("A catalog file (catalog.toml), UTF-8"))
            .into()
    }
}

impl ToSchema for CatalogFile {}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`control.admin_token`): every route. Service tokens (`pst_…`) go here too, each limited to its scope's routes (`events:write`: `POST /v1/events`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::auth::SESSION_COOKIE,
                "A dashboard session from a sign-in link made for one person or one partner. \
                 A staff member's session reaches what their role does (viewer: every staff \
                 GET; finance: every staff route but staff, service tokens and the audit log; \
                 admin: everything); partner sessions only the partner routes, on their own \
                 partner. Writes must carry the `X-Peage-Csrf: 1` header.",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Péage control API",
        description = "Partners, keys, usage, quotas, invoices and the dashboard's sessions. \
                       Errors are `application/problem+json`.",
        license(name = "Apache-2.0")
    ),
    components(
        schemas(ProblemDoc),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unavailable,
            TooManyFailures
        )
    ),
    modifiers(&Security),
    tags(
        (name = "catalog", description = "APIs and plans as loaded"),
        (name = "partners", description = "Partners, plans and API keys"),
        (name = "usage", description = "Usage and quotas"),
        (name = "events", description = "Usage events from the company's own services (CloudEvents)"),
        (name = "invoices", description = "Invoices, billing profiles, credits"),
        (name = "alerts", description = "Spend and usage alerts on a partner's billing period"),
        (name = "webhooks", description = "Webhook endpoints and deliveries"),
        (name = "oauth", description = "OAuth client credentials and JWT issuers"),
        (name = "dashboard", description = "Dashboard sign-in and sessions"),
        (name = "operations", description = "Health")
    )
)]
struct Base;

pub(crate) fn base() -> utoipa::openapi::OpenApi {
    let mut doc = Base::openapi();
    // The crate's version would make the committed document change with every release bump.
    doc.info.version = "1".into();
    doc
}

/// A record that flattens a request body (`CouponRecord` over `Coupon`, `AlertRecord` over
/// `AlertRule`) is an `allOf` of the body's schema and its own fields; the body refuses unknown
/// fields (`additionalProperties: false`), which inside an `allOf` would refuse the record's
/// own. Each such part is inlined without that restriction, so requests stay strict and
/// answers valid.
pub(crate) fn open_flattened_bodies(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::schema::Schema;
    use utoipa::openapi::RefOr;
    let Some(components) = doc.components.as_mut() else {
        return;
    };
    let strict: std::collections::BTreeMap<String, Schema> = components
        .schemas
        .iter()
        .filter_map(|(name, s)| match s {
            RefOr::T(Schema::Object(o)) if o.additional_properties.is_some() => {
                let mut open = o.clone();
                open.additional_properties = None;
                Some((format!("#/components/schemas/{name}"), Schema::Object(open)))
            }
            _ => None,
        })
        .collect();
    for schema in components.schemas.values_mut() {
        let RefOr::T(Schema::AllOf(all)) = schema else {
            continue;
        };
        for item in all.items.iter_mut() {
            if let RefOr::Ref(r) = item {
                if let Some(open) = strict.get(&r.ref_location) {
                    *item = RefOr::T(open.clone());
                }
            }
        }
    }
}

/// Adds the optional `Idempotency-Key` header (crate::idempotency) to every `/v1` POST.
pub(crate) fn document_idempotency(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    for (path, item) in doc.paths.paths.iter_mut() {
        let Some(post) = item.post.as_mut().filter(|_| path.starts_with("/v1/")) else {
            continue;
        };
        let parameter = ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Makes a retry safe: the first answer to this key is replayed for 24 hours \
                 (`Idempotent-Replayed: true`); the key with another request is a 409.",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(255))
                    .pattern(Some("^[!-~]+$")),
            ))
            .build();
        post.parameters.get_or_insert_with(Vec::new).push(parameter);
    }
}
