//! The client API (`atomix.runtime.election.v1`): `LeaderElections` (Create, Close) and
//! `LeaderElection` (its deprecated Create/Close, Enter, Withdraw, Anoint, Promote, Demote,
//! Evict, GetTerm, Watch). Every election name maps to a partition by the documented hash
//! (`routing`), and every command runs in the calling connection's session there.

use std::rc::Rc;

use conclave_engine::shard::TermQuery;
use conclave_engine::sm::{command, validate_name, ElectionOp, ElectionTerm, NameField, Output, PrimitiveRef};
use conclave_proto::atomix::runtime::election::v1 as pb;
use conclave_proto::atomix::runtime::v1::PrimitiveId as PrimitiveIdProto;

use crate::grpc::{CallContext, OverflowPolicy, Router, Status, StreamLimits, StreamSink};
use crate::node::Dispatch;
use crate::routing::partition_of;

use super::sessions::{ClientSessions, Sequenced};
use super::status::{from_shard, from_sm};

/// What the client API's handlers share on one shard.
pub struct ClientApi {
    pub dispatch: Rc<Dispatch>,
    pub sessions: Rc<ClientSessions>,
    pub partitions: u32,
}

const ELECTION: &str = "/atomix.runtime.election.v1.LeaderElection/";
const ELECTIONS: &str = "/atomix.runtime.election.v1.LeaderElections/";

/// Limits of a Watch stream: every change must reach the watcher in order, so a watcher
/// that falls this far behind is ended with RESOURCE_EXHAUSTED rather than skipped.
pub const WATCH_LIMITS: StreamLimits =
    StreamLimits { max_queued_messages: 4096, max_queued_bytes: 4 << 20, overflow: OverflowPolicy::EndStream };

fn election_name(id: &Option<PrimitiveIdProto>) -> Result<&str, Status> {
    let name = id.as_ref().map(|id| id.name.as_str()).unwrap_or("");
    validate_name(NameField::Election, name).map_err(|e| from_sm(&e))?;
    Ok(name)
}

fn candidate_name(candidate: &str) -> Result<&str, Status> {
    validate_name(NameField::Candidate, candidate).map_err(|e| from_sm(&e))?;
    Ok(candidate)
}

/// One sequenced command of a connection's session, marked done when dropped.
struct InFlight<'a> {
    sessions: &'a ClientSessions,
    ctx: &'a CallContext,
    partition: u32,
    seq: Sequenced,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.sessions.done(self.ctx.connection(), self.partition, self.seq);
    }
}

impl ClientApi {
    pub fn register(self: &Rc<Self>, router: &mut Router) {
        for service in [ELECTION, ELECTIONS] {
            let api = Rc::clone(self);
            router.unary_message(&format!("{service}Create"), move |req: pb::CreateRequest, ctx| {
                let api = Rc::clone(&api);
                async move { api.create(req, ctx).await }
            });
            let api = Rc::clone(self);
            router.unary_message(&format!("{service}Close"), move |req: pb::CloseRequest, ctx| {
                let api = Rc::clone(&api);
                async move { api.close(req, ctx).await }
            });
        }
        macro_rules! op {
            ($method:literal, $req:ty, $resp:ident, $op:expr) => {{
                let api = Rc::clone(self);
                router.unary_message(&format!("{ELECTION}{}", $method), move |req: $req, ctx| {
                    let api = Rc::clone(&api);
                    async move {
                        let term = api.election_op(&req.id, &req.candidate, $op, ctx).await?;
                        Ok(pb::$resp { term: Some(term.to_runtime_term()) })
                    }
                });
            }};
        }
        op!("Enter", pb::EnterRequest, EnterResponse, ElectionOp::Enter);
        op!("Withdraw", pb::WithdrawRequest, WithdrawResponse, ElectionOp::Withdraw);
        op!("Anoint", pb::AnointRequest, AnointResponse, ElectionOp::Anoint);
        op!("Promote", pb::PromoteRequest, PromoteResponse, ElectionOp::Promote);
        op!("Demote", pb::DemoteRequest, DemoteResponse, ElectionOp::Demote);
        op!("Evict", pb::EvictRequest, EvictResponse, ElectionOp::Evict);
        let api = Rc::clone(self);
        router.unary_message(&format!("{ELECTION}GetTerm"), move |req: pb::GetTermRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let term = api.get_term(&req.id).await?;
                Ok(pb::GetTermResponse { term: Some(term.to_runtime_term()) })
            }
        });
        let api = Rc::clone(self);
        router.server_streaming_message(&format!("{ELECTION}Watch"), WATCH_LIMITS, move |req: pb::WatchRequest, _ctx, sink| {
            let api = Rc::clone(&api);
            async move { api.watch(req, sink).await }
        });
    }

    /// Runs a command in the connection's session of `partition`.
    async fn run(&self, ctx: &CallContext, partition: u32, build: impl FnOnce(u64, u64) -> command::Command) -> Result<Output, Status> {
        let seq = self.sessions.next(ctx.connection(), partition).await?;
        // Marks the command done however the call ends: a call dropped at its deadline or
        // by its client would otherwise stay in flight forever, and the session's keep-alives
        // could never release any later output.
        let _in_flight = InFlight { sessions: &self.sessions, ctx, partition, seq };
        let outcome = self.dispatch.propose(partition, build(seq.session_id, seq.sequence_num)).await;
        match outcome {
            Ok(committed) => committed.result.map_err(|e| from_sm(&e)),
            Err(e) => Err(from_shard(&e)),
        }
    }

    async fn create(&self, req: pb::CreateRequest, ctx: CallContext) -> Result<pb::CreateResponse, Status> {
        let name = election_name(&req.id)?;
        let partition = partition_of(name, self.partitions);
        match self.run(&ctx, partition, |s, q| command::create_primitive(0, s, q, name)).await? {
            Output::PrimitiveCreated { primitive_id } => {
                self.sessions.remember_primitive(ctx.connection(), partition, name, primitive_id);
                Ok(pb::CreateResponse { config: Some(pb::Config { cache: Some(pb::CacheConfig { enabled: false }) }) })
            }
            other => Err(Status::internal(format!("CreatePrimitive answered {other:?}"))),
        }
    }

    /// Releases this connection's handle on the election (its candidates there withdraw).
    /// A connection that never created the election holds nothing to release: the call
    /// only checks that the election exists.
    async fn close(&self, req: pb::CloseRequest, ctx: CallContext) -> Result<pb::CloseResponse, Status> {
        let name = election_name(&req.id)?;
        let partition = partition_of(name, self.partitions);
        match self.sessions.primitive(ctx.connection(), partition, name) {
            Some(id) => {
                self.run(&ctx, partition, |s, q| command::close_primitive(0, s, q, id)).await?;
            }
            None => {
                self.get_term(&req.id).await?;
            }
        }
        Ok(pb::CloseResponse {})
    }

    async fn election_op(
        &self,
        id: &Option<PrimitiveIdProto>,
        candidate: &str,
        op: ElectionOp,
        ctx: CallContext,
    ) -> Result<ElectionTerm, Status> {
        let name = election_name(id)?;
        let candidate = candidate_name(candidate)?;
        let partition = partition_of(name, self.partitions);
        let primitive = PrimitiveRef::Name(name.to_owned());
        match self.run(&ctx, partition, |s, q| command::election(0, s, q, primitive, op, candidate)).await? {
            Output::Term(term) => Ok(term),
            other => Err(Status::internal(format!("an election command answered {other:?}"))),
        }
    }

    async fn get_term(&self, id: &Option<PrimitiveIdProto>) -> Result<ElectionTerm, Status> {
        let name = election_name(id)?;
        let partition = partition_of(name, self.partitions);
        let query = TermQuery { session_id: None, primitive: PrimitiveRef::Name(name.to_owned()), min_index: 0, sequence_num: 0 };
        let read = self.dispatch.read(partition, query).await.map_err(|e| from_shard(&e))?;
        read.result.map_err(|e| from_sm(&e))
    }

    /// Streams the election's current state, then every change, until the client leaves.
    async fn watch(&self, req: pb::WatchRequest, sink: StreamSink) -> Result<(), Status> {
        let name = election_name(&req.id)?;
        let partition = partition_of(name, self.partitions);
        let query = TermQuery { session_id: None, primitive: PrimitiveRef::Name(name.to_owned()), min_index: 0, sequence_num: 0 };
        let to_client = sink.clone();
        let on_change = Box::new(move |_index: u64, term: ElectionTerm| {
            to_client.try_send_message(&pb::WatchResponse { term: Some(term.to_runtime_term()) }).is_ok()
        });
        let (read, watching) = self.dispatch.watch(partition, query, on_change).await.map_err(|e| from_shard(&e))?;
        read.result.map_err(|e| from_sm(&e))?;
        watching.until_closed(&sink).await
    }
}
