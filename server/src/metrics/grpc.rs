//! Per-shard counts of the gRPC calls the shard served, by service, method and status
//! code, with a latency histogram per method: the gRPC layer reports each routed call to
//! [`GrpcCallStats`] (a [`CallObserver`]) when it ends.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use conclave_engine::shard::DurationHistogram;

use crate::grpc::{CallObserver, Code};

/// One method's calls on one shard (or, merged, on the node).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GrpcMethodStats {
    pub service: String,
    pub method: String,
    /// A server-streaming method (`grpc_type="server_stream"`), else unary.
    pub streaming: bool,
    /// Calls that ended with each status code, indexed by the code's wire number.
    pub codes: [u64; 17],
    /// From the call's headers to its end (a stream's whole life).
    pub latency: DurationHistogram,
}

impl GrpcMethodStats {
    pub fn merge(&mut self, other: &GrpcMethodStats) {
        for (mine, theirs) in self.codes.iter_mut().zip(other.codes.iter()) {
            *mine += theirs;
        }
        self.latency.merge(&other.latency);
    }

    /// The label value of `grpc_type`.
    pub fn grpc_type(&self) -> &'static str {
        if self.streaming {
            "server_stream"
        } else {
            "unary"
        }
    }
}

/// The calls of one shard, by full method path. Only routed methods are counted, so the
/// label set is bounded by the services the node registers.
#[derive(Debug, Default)]
pub struct GrpcCallStats {
    methods: RefCell<BTreeMap<Rc<str>, GrpcMethodStats>>,
}

impl GrpcCallStats {
    pub fn snapshot(&self) -> Vec<GrpcMethodStats> {
        self.methods.borrow().values().cloned().collect()
    }
}

/// Lets a shard's gRPC servers report to the shard's counters.
pub struct ShardCallObserver(pub Rc<super::ShardCounters>);

impl CallObserver for ShardCallObserver {
    fn call_finished(&self, method: &str, streaming: bool, code: Code, elapsed: Duration) {
        let mut methods = self.0.grpc.methods.borrow_mut();
        if !methods.contains_key(method) {
            let (service, name) = method.trim_start_matches('/').split_once('/').unwrap_or(("", method));
            let stats = GrpcMethodStats { service: service.to_owned(), method: name.to_owned(), streaming, ..GrpcMethodStats::default() };
            methods.insert(Rc::from(method), stats);
        }
        let stats = methods.get_mut(method).expect("inserted above");
        stats.codes[code as usize] += 1;
        stats.latency.observe(elapsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardCounters;

    #[test]
    fn calls_are_counted_by_method_and_code() {
        let counters = Rc::new(ShardCounters::default());
        let observer = ShardCallObserver(Rc::clone(&counters));
        observer.call_finished("/a.B/Enter", false, Code::Ok, Duration::from_millis(1));
        observer.call_finished("/a.B/Enter", false, Code::Unavailable, Duration::from_millis(2));
        observer.call_finished("/a.B/Watch", true, Code::Cancelled, Duration::from_secs(1));
        let calls = counters.grpc.snapshot();
        assert_eq!(calls.len(), 2);
        let enter = &calls[0];
        assert_eq!((enter.service.as_str(), enter.method.as_str(), enter.grpc_type()), ("a.B", "Enter", "unary"));
        assert_eq!((enter.codes[Code::Ok as usize], enter.codes[Code::Unavailable as usize], enter.latency.count), (1, 1, 2));
        assert_eq!((calls[1].grpc_type(), calls[1].codes[Code::Cancelled as usize]), ("server_stream", 1));
    }
}
