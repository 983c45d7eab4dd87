//! Stage 4, name the operation: what the call does, in the terms meters and weights use.
//!
//! - HTTP: the catalog's route template the request matches (`GET /forecast/{city}`), else the
//!   method and path with ids folded (`GET /users/{id}/orders`).
//! - gRPC: the method path, `/pkg.Service/Method`.
//! - GraphQL: the operation a GraphQL server would run, read from the request document (the
//!   body is read whole, within the size limit, and forwarded byte for byte).
//!
//! The request body's size limit is checked here: from `Content-Length` at once, and while the
//! body streams otherwise (that one ends as a 413 in the forward stage).

use std::collections::BTreeMap;

use bytes::Bytes;
use http::header;
use http::request::Parts;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use peage_core::catalog::Protocol;
use rust_decimal::Decimal;

use super::refusal::{Refusal, RefusalKind};
use super::route::VersionRoute;
use crate::graphql;

/// The named operation of a call, and the body to forward.
pub(crate) struct Operation {
    pub name: String,
    /// Billable units of the call unless the upstream says otherwise (`Peage-Units`).
    pub weight: Decimal,
    pub attributes: BTreeMap<String, String>,
    pub body: Either<Limited<Incoming>, Full<Bytes>>,
}

pub(crate) fn too_large(limit: u64) -> Refusal {
    Refusal::new(
        RefusalKind::RequestTooLarge,
        format!("request bodies are limited to {limit} bytes"),
    )
}

/// `GET /users/42/orders` → `GET /users/{id}/orders`: ids would make every call its own operation.
pub(crate) fn default_operation(method: &str, rest: &str) -> String {
    let looks_like_id = |s: &str| {
        s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() >= 16 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    };
    let mut name = String::with_capacity(method.len() + rest.len() + 2);
    name.push_str(method);
    name.push(' ');
    let mut any = false;
    for s in rest.split('/').filter(|s| !s.is_empty()) {
        name.push('/');
        name.push_str(if looks_like_id(s) { "{id}" } else { s });
        any = true;
    }
    if !any {
        name.push('/');
    }
    name
}

/// Names the operation of a call to `version` with path `rest`, reading a GraphQL body.
pub(crate) async fn name(
    version: &VersionRoute,
    head: &Parts,
    rest: &str,
    body: Incoming,
    limit: u64,
) -> Result<Operation, Refusal> {
    let declared = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large(limit));
    }
    let spec = &version.spec;
    let method = head.method.as_str();
    match spec.protocol {
        Protocol::Http => {
            let op = spec.operation_for(method, rest);
            Ok(Operation {
                name: op.map_or_else(|| default_operation(method, rest), |o| o.name.clone()),
                weight: weight(op),
                attributes: BTreeMap::new(),
                body: Either::Left(Limited::new(body, limit as usize)),
            })
        }
        Protocol::Grpc => Ok(Operation {
            name: rest.to_string(),
            weight: weight(spec.operation_named(rest)),
            attributes: BTreeMap::new(),
            body: Either::Left(Limited::new(body, limit as usize)),
        }),
        // Boxed: reading a whole body is GraphQL's alone, and its future is large.
        Protocol::Graphql => Box::pin(graphql_operation(version, head, body, limit)).await,
    }
}

/// A GraphQL call's operation, from its document (the body, read whole).
async fn graphql_operation(
    version: &VersionRoute,
    head: &Parts,
    body: Incoming,
    limit: u64,
) -> Result<Operation, Refusal> {
    let bytes = match Limited::new(body, limit as usize).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return Err(too_large(limit)),
        Err(e) => return Err(Refusal::new(RefusalKind::BadRequestBody, e.to_string())),
    };
    let content_type = head
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let call = graphql::read(&head.method, content_type, head.uri.query(), &bytes)
        .map_err(|why| Refusal::new(RefusalKind::BadGraphql, why.to_string()))?;
    let mut attributes = BTreeMap::new();
    attributes.insert("graphql_operation_type".to_string(), call.kind.to_string());
    attributes.insert(
        "graphql_root_fields".to_string(),
        call.root_fields.join(","),
    );
    Ok(Operation {
        weight: weight(version.spec.operation_named(&call.operation)),
        name: call.operation,
        attributes,
        body: Either::Right(Full::new(bytes)),
    })
}

fn weight(op: Option<&peage_core::catalog::Operation>) -> Decimal {
    op.map_or(Decimal::ONE, |o| o.units)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_operations_fold_ids() {
        assert_eq!(
            default_operation("GET", "/users/42/orders"),
            "GET /users/{id}/orders"
        );
        assert_eq!(default_operation("GET", "/"), "GET /");
        assert_eq!(
            default_operation("DELETE", "/k/0190f3c2-7a41-7d3e-9b8c-4f1a6e01aaaa"),
            "DELETE /k/{id}"
        );
        assert_eq!(default_operation("GET", "/hello"), "GET /hello");
    }
}
