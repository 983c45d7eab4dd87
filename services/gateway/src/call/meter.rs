//! Stage 6, meter: one call event per call, completed when the response body ends (or the
//! client goes away), emitted without waiting on the event log; quotas are settled with what
//! the call really added; the latency histogram is updated.
//!
//! A refusal the rule records ([`RefusalKind::recorded`]) is metered the moment it is
//! answered: its status, `units` 0 (nothing was served) unless the call was forwarded, and
//! `attributes.refusal` naming the problem type when it never reached the upstream.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use peage_core::CallEvent;
use rust_decimal::Decimal;

use super::refusal::Refusal;
use crate::body::{Finished, OnFinish, RequestTally};
use crate::quota::Taken;
use crate::worker::Worker;

/// Everything the call's event needs, completed when the response body ends.
pub(crate) struct PendingCall {
    pub worker: Arc<Worker>,
    /// The catalog the call started on: its meters settle the call's quotas.
    pub catalog: Arc<peage_core::Catalog>,
    pub version_index: usize,
    pub started: Instant,
    pub event: CallEvent,
    pub request: Arc<RequestTally>,
    pub taken: Taken,
    /// gRPC calls: their status and message counts go on the event.
    pub grpc: Option<GrpcCall>,
}

pub(crate) struct GrpcCall {
    /// The catalog weight of the method; a call is charged it once per message of its
    /// busier direction (a unary call once), unless the upstream sends `Peage-Units`.
    pub weight: Decimal,
    pub units_from_upstream: bool,
    /// A trailers-only answer carries its status in the headers.
    pub header_status: Option<String>,
}

impl PendingCall {
    fn emit(
        self,
        outcome: Option<&'static str>,
        response_bytes: u64,
        messages: u64,
        grpc_status: Option<String>,
    ) {
        let PendingCall {
            worker,
            catalog,
            version_index,
            started,
            mut event,
            request,
            taken,
            grpc,
        } = self;
        event.latency_us = started.elapsed().as_micros() as u64;
        event.request_bytes = request.bytes.load(Ordering::Relaxed);
        event.response_bytes = response_bytes;
        if let Some(outcome) = outcome {
            event.attributes.insert("outcome".into(), outcome.into());
        }
        if let Some(g) = grpc {
            let sent = request.messages.load(Ordering::Relaxed);
            let a = &mut event.attributes;
            a.insert("grpc_request_messages".into(), sent.to_string());
            a.insert("grpc_response_messages".into(), messages.to_string());
            if let Some(status) = grpc_status.or(g.header_status) {
                a.insert("grpc_status".into(), status);
            }
            if !g.units_from_upstream {
                event.units = g
                    .weight
                    .saturating_mul(Decimal::from(sent.max(messages).max(1)));
            }
        }
        if !taken.is_empty() {
            taken.settle(|meter| {
                catalog
                    .meter(meter)
                    .map_or(Decimal::ZERO, |m| m.contribution(&event))
            });
        }
        worker
            .metrics
            .observe(version_index, event.status, event.latency_us);
        worker.emitter.emit(event);
    }

    /// Meters a call the gateway answered itself, now.
    pub fn refused(mut self, refusal: &Refusal, response_bytes: u64) {
        let kind = refusal.kind;
        self.event.status = kind.status().as_u16();
        if !kind.forwarded() {
            // Nothing was served: what the call took of its quotas goes back whole.
            std::mem::replace(&mut self.taken, Taken::none()).settle(|_| Decimal::ZERO);
            self.event.units = Decimal::ZERO;
            self.event
                .attributes
                .insert("refusal".into(), kind.slug().into());
            if let Some(g) = &mut self.grpc {
                g.units_from_upstream = true;
            }
        }
        if let Some(g) = &mut self.grpc {
            g.header_status = Some(crate::grpc::code_for(kind.status()).to_string());
        }
        self.emit(None, response_bytes, 0, None);
    }
}

impl OnFinish for PendingCall {
    fn finish(self: Box<Self>, finished: Finished) {
        let outcome = (finished.outcome != "complete").then_some(finished.outcome);
        (*self).emit(
            outcome,
            finished.bytes,
            finished.messages,
            finished.grpc_status,
        );
    }
}
