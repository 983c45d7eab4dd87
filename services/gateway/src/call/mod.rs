//! A call through the gateway, as a pipeline of small stages over one call context:
//!
//! 1. [`route`]: which API version, and the normalized path below its base;
//! 2. [`authenticate`]: which key (or token), so which partner;
//! 3. [`admit`] (access): scope, lifecycle, sandbox, the key's rate limit;
//! 4. [`operation`]: the operation's name and weight (a GraphQL body is read here);
//! 5. [`admit`] (quotas): the quota leases spent locally;
//! 6. [`forward`]: the upstream request and its answer;
//! 7. [`meter`]: one call event when the answer ends.
//!
//! A stage that refuses returns a [`refusal::Refusal`]; [`handle`] renders it once (problem+json,
//! or a gRPC status for gRPC callers) and meters it when the rule says so.

pub(crate) mod admit;
pub(crate) mod authenticate;
pub(crate) mod cors;
pub(crate) mod forward;
pub(crate) mod meter;
pub(crate) mod operation;
pub mod path;
pub mod refusal;
pub(crate) mod route;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use peage_core::catalog::Protocol;
use peage_core::CallEvent;

use crate::body::{CountingBody, MeteredBody, ResponseBody};
use crate::quota::Taken;
use crate::trace::TraceContext;
use crate::worker::Worker;
use meter::{GrpcCall, PendingCall};
use refusal::Refusal;

/// Who is on the other end of a connection, as upstreams are told.
#[derive(Clone)]
pub(crate) struct Peer {
    /// The address, as `X-Forwarded-For` carries it.
    pub ip: HeaderValue,
    /// The same address, to count wrong credentials against.
    pub addr: std::net::IpAddr,
    /// One of `gateway.trusted_proxies`: its forwarding headers are believed.
    pub trusted: bool,
    /// The connection is TLS: upstreams are told `X-Forwarded-Proto: https`.
    pub https: bool,
}

/// Answers one request: a probe, or a call through the pipeline.
pub(crate) async fn handle(
    worker: &Arc<Worker>,
    peer: &Peer,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    match req.uri().path() {
        "/healthz" => return text(StatusCode::OK, "ok"),
        "/readyz" => {
            let (ready, checks) = worker.gateway.readiness();
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let body = serde_json::json!({ "ready": ready, "checks": checks }).to_string();
            let mut r = text(status, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return r;
        }
        _ => {}
    }
    let grpc = crate::grpc::is_grpc(req.headers());
    let access_log = worker.gateway.config.access_log.as_ref();
    let logged = access_log.map(|_| (req.method().clone(), req.uri().path().to_string()));
    let mut call = Call {
        started: Instant::now(),
        version: None,
        pending: None,
        origin: req.headers().get(header::ORIGIN).cloned(),
        trace: TraceContext::of(req.headers()),
        who: None,
    };
    let mut response = match pipeline(worker, &mut call, peer, grpc, req).await {
        Ok(r) => r,
        Err(refusal) => {
            worker.metrics.refused(refusal.kind);
            let r = refusal.render(grpc);
            if refusal.kind.recorded() {
                if let Some(p) = call.pending.take() {
                    p.refused(&refusal, r.body().len());
                }
            }
            r
        }
    };
    if let Some(v) = &call.version {
        v.add_lifecycle_headers(response.headers_mut());
        if let Some(origin) = &call.origin {
            cors::decorate(v, origin, response.headers_mut());
        }
    }
    if let (Some(log), Some((method, path))) = (access_log, logged) {
        let who = call.who.as_ref();
        log.write(
            crate::access_log::Entry {
                time: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                trace_id: call.trace.trace_id_hex(),
                span_id: call.trace.span_id_hex(),
                method: method.as_str(),
                path: &path,
                status: response.status().as_u16(),
                ms: call.started.elapsed().as_secs_f64() * 1000.0,
                peer: peer.ip.to_str().unwrap_or_default(),
                api: call.version.as_ref().map(|v| v.api.as_str()),
                version: call.version.as_ref().map(|v| v.spec.id.as_str()),
                partner_id: who.map(|w| w.0.as_str()),
                key_id: who.map(|w| w.1.as_str()),
                gateway_id: &worker.gateway.config.gateway_id,
            }
            .line(),
        );
    }
    response
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.into()));
    *r.status_mut() = status;
    r
}

/// What a call has gathered so far, for the answer when a stage refuses it.
struct Call {
    started: Instant,
    /// Once routed: its lifecycle headers go on every answer.
    version: Option<Arc<route::VersionRoute>>,
    /// Once the partner is known: the event a refusal is metered with.
    pending: Option<PendingCall>,
    /// A browser's `Origin`: the answer gets the version's CORS headers.
    origin: Option<HeaderValue>,
    /// Its trace (`traceparent`), continued or started here.
    trace: TraceContext,
    /// Partner and key, kept for the access log when there is one.
    who: Option<(String, String)>,
}

async fn pipeline(
    worker: &Arc<Worker>,
    call: &mut Call,
    peer: &Peer,
    grpc: bool,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Refusal> {
    let gw = &worker.gateway;
    let now = Utc::now();
    let time = peage_core::event::truncate_to_micros(now);
    let (mut head, body) = req.into_parts();

    // The catalog this call starts with is the one it finishes on, whatever reload happens.
    let loaded = gw.loaded();
    let routed = route::route(&loaded.routes, &head, grpc, gw.config.encoded_slashes)?;
    let version = Arc::clone(&routed.version);
    call.version = Some(Arc::clone(&version));
    if cors::is_preflight(&head) {
        // Answered from the catalog: no key, never forwarded or metered.
        let answer = cors::preflight(&version, &head.headers);
        worker.metrics.preflight(answer.is_ok());
        // The preflight's own headers are complete; no others are added to it.
        call.origin = None;
        return answer;
    }

    let key = authenticate::authenticate(gw, &worker.keys, peer, &head.headers).await?;
    if gw.config.access_log.is_some() {
        call.who = Some((key.partner_id.clone(), key.key_id.clone()));
    }
    if !gw.emitter.accepting() {
        // The metering spool is full and the operator chose fail_closed: a call that could
        // not be metered is not served.
        return Err(Refusal::new(
            refusal::RefusalKind::MeteringUnavailable,
            "the gateway cannot record calls right now; retry shortly",
        )
        .retry_after(5));
    }
    let method = head.method.as_str().to_string();
    let is_grpc = version.spec.protocol == Protocol::Grpc;
    call.pending = Some(PendingCall {
        worker: Arc::clone(worker),
        catalog: Arc::clone(&loaded.catalog),
        version_index: version.index,
        started: call.started,
        event: CallEvent {
            // From the call's own time (one clock read), random below the millisecond.
            id: uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
                uuid::NoContext,
                now.timestamp().max(0) as u64,
                now.timestamp_subsec_nanos(),
            )),
            time,
            partner_id: key.partner_id.clone(),
            key_id: key.key_id.clone(),
            env: key.env,
            api: version.api.clone(),
            version: version.spec.id.clone(),
            operation: String::new(),
            method,
            status: 0,
            latency_us: 0,
            request_bytes: 0,
            response_bytes: 0,
            units: rust_decimal::Decimal::ONE,
            gateway_id: gw.config.gateway_id.clone(),
            attributes: Default::default(),
        },
        request: Arc::default(),
        taken: Taken::none(),
        grpc: is_grpc.then_some(GrpcCall {
            weight: rust_decimal::Decimal::ONE,
            units_from_upstream: false,
            header_status: None,
        }),
    });
    let pending = call.pending.as_mut().expect("just set");
    // Until the operation is named, a refused call is recorded under its path's default name.
    let unnamed = |pending: &mut PendingCall, r: Refusal| {
        pending.event.operation = operation::default_operation(&pending.event.method, &routed.rest);
        r
    };

    let access = admit::access(&loaded, &key, &version).map_err(|r| unnamed(pending, r))?;
    if access.rate_limit_shadow_exceeded {
        worker.metrics.rate_limit_shadow_exceeded();
    }

    let op = operation::name(
        &version,
        &head,
        &routed.rest,
        body,
        gw.config.max_request_body_bytes,
    )
    .await
    .map_err(|r| unnamed(pending, r))?;
    // Refused here, the call is recorded under the operation it asked for.
    if let Err(r) = admit::entitled_operation(
        &access,
        &key.plan_id,
        &version.api,
        &version.spec.id,
        &op.name,
    ) {
        pending.event.operation = op.name;
        return Err(r);
    }
    pending.event.operation = op.name;
    pending.event.units = op.weight;
    pending.event.attributes = op.attributes;
    if access.rate_limit_shadow_exceeded {
        pending
            .event
            .attributes
            .insert("rate_limit_shadow_exceeded".into(), "true".into());
    }
    if let Some(g) = &mut pending.grpc {
        g.weight = op.weight;
    }

    pending.taken = admit::quotas(
        gw,
        &loaded,
        &worker.quota_entries,
        &key.partner_id,
        key.env,
        &key.plan_id,
        &pending.event,
    )
    .await?;
    let soft_exceeded = pending.taken.soft_exceeded.join(",");
    let near_limit = pending.taken.near_limit.join(",");
    for (name, meters) in [
        ("quota_soft_exceeded", &soft_exceeded),
        (
            "quota_shadow_exceeded",
            &pending.taken.shadow_exceeded.join(","),
        ),
        ("quota_near_limit", &near_limit),
    ] {
        if !meters.is_empty() {
            pending.event.attributes.insert(name.into(), meters.clone());
        }
    }

    let tally = Arc::clone(&pending.request);
    let body = CountingBody::new(op.body, tally, is_grpc);
    // The upstream continues the call's trace, the gateway's span as its parent.
    head.headers
        .insert(crate::trace::TRACEPARENT, call.trace.upstream_header());
    let (upstream, checkin) = forward::forward(
        worker,
        &loaded,
        head,
        body,
        &version,
        access.base,
        &routed.rest,
        peer,
        &key,
        is_grpc,
    )
    .await?;

    let mut pending = call.pending.take().expect("set above");
    let (mut parts, body) = upstream.into_parts();
    forward::strip_hop_by_hop(&mut parts.headers);
    match forward::take_units(&mut parts.headers) {
        Ok(None) => {}
        Ok(Some(u)) => {
            pending.event.units = u;
            if let Some(g) = &mut pending.grpc {
                g.units_from_upstream = true;
            }
        }
        Err(forward::BadUnits(raw)) => {
            tracing::warn!(api = %version.api, version = %version.spec.id, value = %raw,
                "gateway: ignored an invalid Peage-Units header from the upstream");
            pending
                .event
                .attributes
                .insert("invalid_units_header".into(), raw);
        }
    }
    pending.event.status = parts.status.as_u16();
    if let Some(g) = &mut pending.grpc {
        g.header_status = crate::grpc::status_of(&parts.headers);
    }
    for (header, meters) in [
        ("peage-quota-exceeded", &soft_exceeded),
        ("peage-quota-near-limit", &near_limit),
    ] {
        if !meters.is_empty() {
            if let Ok(v) = HeaderValue::from_str(meters) {
                parts.headers.insert(header, v);
            }
        }
    }
    let grpc_upstream = pending.grpc.is_some();
    Ok(Response::from_parts(
        parts,
        ResponseBody::upstream(
            MeteredBody::new(body, Box::new(pending), grpc_upstream),
            checkin,
        ),
    ))
}
