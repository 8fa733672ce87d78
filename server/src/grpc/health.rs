//! The standard `grpc.health.v1.Health` service (Check and Watch) with statuses the node
//! sets: the overall status under the empty service name, and optionally one per service.
//! Shard-local: a node with several shards sets the status on each shard's instance.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use conclave_proto::grpc::health::v1::health_check_response::ServingStatus;
use conclave_proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};

use super::router::Router;
use super::status::Status;
use super::stream::{OverflowPolicy, StreamLimits, StreamSink};

/// Path of `Health/Check`.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// Path of `Health/Watch`.
pub const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// Shared health statuses and their watchers. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HealthService {
    state: Rc<RefCell<HealthState>>,
}

#[derive(Debug, Default)]
struct HealthState {
    statuses: BTreeMap<String, ServingStatus>,
    watchers: Vec<(String, StreamSink)>,
}

impl HealthService {
    /// Health with the overall status (service `""`) set to `NOT_SERVING`.
    pub fn new() -> HealthService {
        let health = HealthService::default();
        health.set_status("", ServingStatus::NotServing);
        health
    }

    /// Sets `service`'s status (`""` is the whole server) and tells its watchers.
    pub fn set_status(&self, service: &str, status: ServingStatus) {
        let mut state = self.state.borrow_mut();
        let previous = state.statuses.insert(service.to_owned(), status);
        if previous == Some(status) {
            return;
        }
        state.watchers.retain(|(_, sink)| !sink.is_closed());
        for (watched, sink) in &state.watchers {
            if watched == service {
                // KeepLatest never overflows; a closed sink is pruned on the next update.
                let _ = sink.try_send_message(&response(status));
            }
        }
    }

    /// The status of `service`, if it was ever set.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.state.borrow().statuses.get(service).copied()
    }

    /// Registers `Check` and `Watch` on `router`.
    pub fn register(&self, router: &mut Router) {
        let health = self.clone();
        router.unary_message(CHECK_PATH, move |request: HealthCheckRequest, _ctx| {
            let status = health.status(&request.service);
            async move {
                match status {
                    Some(status) => Ok(response(status)),
                    None => Err(Status::not_found(format!("unknown service {:?}: no health status is registered for it", request.service))),
                }
            }
        });
        let health = self.clone();
        let limits = StreamLimits { max_queued_messages: 4, max_queued_bytes: 64, overflow: OverflowPolicy::KeepLatest };
        router.server_streaming_message(WATCH_PATH, limits, move |request: HealthCheckRequest, _ctx, sink| {
            let current = health.status(&request.service).unwrap_or(ServingStatus::ServiceUnknown);
            let registered = sink.try_send_message(&response(current));
            {
                let mut state = health.state.borrow_mut();
                // Pruned here too, so watches that come and go never accumulate.
                state.watchers.retain(|(_, sink)| !sink.is_closed());
                state.watchers.push((request.service, sink.clone()));
            }
            async move {
                registered.map_err(|error| Status::internal(format!("health watch: {error}")))?;
                sink.closed().await;
                Ok(())
            }
        });
    }

    /// Watch streams currently registered (closed ones are pruned on the next update).
    pub fn watcher_count(&self) -> usize {
        self.state.borrow().watchers.iter().filter(|(_, sink)| !sink.is_closed()).count()
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status as i32 }
}
