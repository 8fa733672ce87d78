//! The driver API an Atomix multi-raft driver speaks: `atomix.multiraft.v1.Partition`
//! (OpenSession, KeepAlive, CloseSession), `atomix.multiraft.v1.Session` (CreatePrimitive,
//! ClosePrimitive) and `atomix.multiraft.election.v1.LeaderElection`. Partitions, sessions,
//! primitive ids and sequence numbers are explicit in every request.
//!
//! Errors: a command or query the state machine refused is answered with gRPC OK and the
//! Atomix status in `OperationResponseHeaders` (`status`, `message`), as the driver expects;
//! a request the node cannot run at all (no leader, overload, unknown partition, deadline) is
//! a gRPC error status.
//!
//! KeepAlive follows the Atomix driver: `input_filter` is the JSON of a Go
//! `bits-and-blooms/bloom/v3` filter of the commands the client still has open
//! ([`conclave_engine::sm::bloom`]); one that does not decode is refused with
//! INVALID_ARGUMENT before anything is proposed. `last_output_sequence_nums` acknowledges
//! streamed outputs of open commands; every command here has a single output, kept while
//! its command is open, so the map changes nothing. Watch responses carry the log index of
//! the change (the first state: the index it was read at), and a query's `sequence_num`
//! makes it wait for the session's commands numbered below it that are in the log.

use std::rc::Rc;

use conclave_engine::shard::{Committed, TermQuery};
use conclave_engine::sm::bloom::BloomFilter;
use conclave_engine::sm::{command, ElectionOp, ElectionTerm, Output, PrimitiveRef, SmError};
use conclave_proto::atomix::multiraft::election::v1 as el;
use conclave_proto::atomix::multiraft::v1 as mr;
use mr::operation_response_headers::Status as AtomixStatus;

use crate::grpc::{Router, Status, StreamSink};
use crate::node::Dispatch;

use super::client::WATCH_LIMITS;
use super::status::from_shard;

pub struct DriverApi {
    pub dispatch: Rc<Dispatch>,
    pub partitions: u32,
}

/// The fields every command request carries, unpacked from the nested headers.
struct CommandTarget {
    partition: u32,
    session_id: u64,
    primitive_id: u64,
    sequence_num: u64,
}

fn partition_header(index: u64) -> mr::PartitionResponseHeaders {
    mr::PartitionResponseHeaders { index }
}

fn operation_headers(index: u64, error: Option<&SmError>) -> mr::OperationResponseHeaders {
    mr::OperationResponseHeaders {
        session: Some(mr::PrimitiveResponseHeaders {
            session: Some(mr::SessionResponseHeaders { partition: Some(mr::PartitionResponseHeaders { index }) }),
        }),
        status: error.map_or(AtomixStatus::Ok, SmError::status) as i32,
        message: error.map(ToString::to_string).unwrap_or_default(),
    }
}

fn command_headers(index: u64, sequence_num: u64, error: Option<&SmError>) -> mr::CommandResponseHeaders {
    mr::CommandResponseHeaders { operation: Some(operation_headers(index, error)), output_sequence_num: sequence_num }
}

impl DriverApi {
    fn check_partition(&self, partition: u32) -> Result<u32, Status> {
        if partition == 0 || partition > self.partitions {
            return Err(Status::not_found(format!(
                "partition {partition} does not exist: this cluster has partitions 1..={}",
                self.partitions
            )));
        }
        Ok(partition)
    }

    fn command_target(&self, headers: Option<&mr::CommandRequestHeaders>) -> Result<CommandTarget, Status> {
        let headers = headers.ok_or_else(|| Status::invalid_argument("the request has no headers"))?;
        let primitive = headers.operation.as_ref().and_then(|o| o.session.as_ref());
        let session = primitive.and_then(|p| p.session.as_ref());
        let partition = session.and_then(|s| s.partition.as_ref()).map_or(0, |p| p.partition_id);
        Ok(CommandTarget {
            partition: self.check_partition(partition)?,
            session_id: session.map_or(0, |s| s.session_id),
            primitive_id: primitive.map_or(0, |p| p.primitive_id),
            sequence_num: headers.sequence_num,
        })
    }

    async fn propose(&self, partition: u32, cmd: command::Command) -> Result<Committed, Status> {
        self.dispatch.propose(partition, cmd).await.map_err(|e| from_shard(&e))
    }

    pub fn register(self: &Rc<Self>, router: &mut Router) {
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.v1.Partition/OpenSession", move |req: mr::OpenSessionRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let partition = api.check_partition(req.headers.map_or(0, |h| h.partition_id))?;
                let timeout = req.input.and_then(|i| i.timeout).unwrap_or_default();
                if timeout.seconds < 0 || timeout.nanos < 0 || (timeout.seconds == 0 && timeout.nanos == 0) {
                    return Err(Status::invalid_argument("OpenSession needs a positive session timeout"));
                }
                let timeout_ms = (timeout.seconds as u64).saturating_mul(1000).saturating_add(timeout.nanos as u64 / 1_000_000).max(1);
                let c = api.propose(partition, command::open_session(0, timeout_ms)).await?;
                match c.result {
                    Ok(Output::SessionOpened { session_id }) => Ok(mr::OpenSessionResponse {
                        headers: Some(partition_header(c.index)),
                        output: Some(mr::OpenSessionOutput { session_id }),
                    }),
                    Ok(other) => Err(Status::internal(format!("OpenSession answered {other:?}"))),
                    Err(e) => Err(super::status::from_sm(&e)),
                }
            }
        });
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.v1.Partition/KeepAlive", move |req: mr::KeepAliveRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let partition = api.check_partition(req.headers.map_or(0, |h| h.partition_id))?;
                let input = req.input.unwrap_or_default();
                let open_inputs = BloomFilter::from_json(&input.input_filter)
                    .map_err(|e| Status::invalid_argument(format!("KeepAlive of session {}: input_filter: {e}", input.session_id)))?;
                let keep_alive = command::driver_keep_alive(0, input.session_id, input.last_input_sequence_num, &open_inputs);
                let c = api.propose(partition, keep_alive).await?;
                c.result.map_err(|e| super::status::from_sm(&e))?;
                Ok(mr::KeepAliveResponse { headers: Some(partition_header(c.index)), output: Some(mr::KeepAliveOutput {}) })
            }
        });
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.v1.Partition/CloseSession", move |req: mr::CloseSessionRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let partition = api.check_partition(req.headers.map_or(0, |h| h.partition_id))?;
                let session_id = req.input.map_or(0, |i| i.session_id);
                let c = api.propose(partition, command::close_session(0, session_id)).await?;
                c.result.map_err(|e| super::status::from_sm(&e))?;
                Ok(mr::CloseSessionResponse { headers: Some(partition_header(c.index)), output: Some(mr::CloseSessionOutput {}) })
            }
        });
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.v1.Session/CreatePrimitive", move |req: mr::CreatePrimitiveRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let t = api.command_target(req.headers.as_ref())?;
                let name = req.input.and_then(|i| i.spec).map(|s| s.name).unwrap_or_default();
                let c = api.propose(t.partition, command::create_primitive(0, t.session_id, t.sequence_num, &name)).await?;
                let (primitive_id, error) = match &c.result {
                    Ok(Output::PrimitiveCreated { primitive_id }) => (*primitive_id, None),
                    Ok(other) => return Err(Status::internal(format!("CreatePrimitive answered {other:?}"))),
                    Err(e) => (0, Some(e)),
                };
                Ok(mr::CreatePrimitiveResponse {
                    headers: Some(command_headers(c.index, t.sequence_num, error)),
                    output: error.is_none().then_some(mr::CreatePrimitiveOutput { primitive_id }),
                })
            }
        });
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.v1.Session/ClosePrimitive", move |req: mr::ClosePrimitiveRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let t = api.command_target(req.headers.as_ref())?;
                let id = req.input.map_or(t.primitive_id, |i| i.primitive_id);
                let c = api.propose(t.partition, command::close_primitive(0, t.session_id, t.sequence_num, id)).await?;
                let error = c.result.as_ref().err();
                Ok(mr::ClosePrimitiveResponse {
                    headers: Some(command_headers(c.index, t.sequence_num, error)),
                    output: error.is_none().then_some(mr::ClosePrimitiveOutput {}),
                })
            }
        });
        self.register_elections(router);
    }

    fn register_elections(self: &Rc<Self>, router: &mut Router) {
        macro_rules! op {
            ($method:literal, $req:ty, $resp:ident, $out:ident, $op:expr) => {{
                let api = Rc::clone(self);
                router.unary_message(concat!("/atomix.multiraft.election.v1.LeaderElection/", $method), move |req: $req, _ctx| {
                    let api = Rc::clone(&api);
                    async move {
                        let t = api.command_target(req.headers.as_ref())?;
                        let candidate = req.input.map(|i| i.candidate).unwrap_or_default();
                        let cmd = command::election(0, t.session_id, t.sequence_num, PrimitiveRef::Id(t.primitive_id), $op, &candidate);
                        let c = api.propose(t.partition, cmd).await?;
                        let (term, error) = match &c.result {
                            Ok(Output::Term(term)) => (Some(term.to_multiraft_term()), None),
                            Ok(other) => return Err(Status::internal(format!("an election command answered {other:?}"))),
                            Err(e) => (None, Some(e)),
                        };
                        Ok(el::$resp {
                            headers: Some(command_headers(c.index, t.sequence_num, error)),
                            output: term.map(|term| el::$out { term: Some(term) }),
                        })
                    }
                });
            }};
        }
        op!("Enter", el::EnterRequest, EnterResponse, EnterOutput, ElectionOp::Enter);
        op!("Withdraw", el::WithdrawRequest, WithdrawResponse, WithdrawOutput, ElectionOp::Withdraw);
        op!("Anoint", el::AnointRequest, AnointResponse, AnointOutput, ElectionOp::Anoint);
        op!("Promote", el::PromoteRequest, PromoteResponse, PromoteOutput, ElectionOp::Promote);
        op!("Demote", el::DemoteRequest, DemoteResponse, DemoteOutput, ElectionOp::Demote);
        op!("Evict", el::EvictRequest, EvictResponse, EvictOutput, ElectionOp::Evict);
        let api = Rc::clone(self);
        router.unary_message("/atomix.multiraft.election.v1.LeaderElection/GetTerm", move |req: el::GetTermRequest, _ctx| {
            let api = Rc::clone(&api);
            async move {
                let (partition, query) = api.query(req.headers.as_ref())?;
                let read = api.dispatch.read(partition, query).await.map_err(|e| from_shard(&e))?;
                let error = read.result.as_ref().err();
                Ok(el::GetTermResponse {
                    headers: Some(mr::QueryResponseHeaders { operation: Some(operation_headers(read.index, error)) }),
                    output: read.result.as_ref().ok().map(|t| el::GetTermOutput { term: Some(t.to_multiraft_term()) }),
                })
            }
        });
        let api = Rc::clone(self);
        router.server_streaming_message(
            "/atomix.multiraft.election.v1.LeaderElection/Watch",
            WATCH_LIMITS,
            move |req: el::WatchRequest, _ctx, sink: StreamSink| {
                let api = Rc::clone(&api);
                async move {
                    let (partition, query) = api.query(req.headers.as_ref())?;
                    let to_client = sink.clone();
                    let on_change = Box::new(move |index: u64, term: ElectionTerm| {
                        let response = el::WatchResponse {
                            headers: Some(mr::QueryResponseHeaders { operation: Some(operation_headers(index, None)) }),
                            output: Some(el::WatchOutput { term: Some(term.to_multiraft_term()) }),
                        };
                        to_client.try_send_message(&response).is_ok()
                    });
                    let (read, watching) = api.dispatch.watch(partition, query, on_change).await.map_err(|e| from_shard(&e))?;
                    if let Err(e) = &read.result {
                        let response = el::WatchResponse {
                            headers: Some(mr::QueryResponseHeaders { operation: Some(operation_headers(read.index, Some(e))) }),
                            output: None,
                        };
                        let _ = sink.try_send_message(&response);
                        return Ok(());
                    }
                    watching.until_closed(&sink).await
                }
            },
        );
    }

    fn query(&self, headers: Option<&mr::QueryRequestHeaders>) -> Result<(u32, TermQuery), Status> {
        let headers = headers.ok_or_else(|| Status::invalid_argument("the request has no headers"))?;
        let primitive = headers.operation.as_ref().and_then(|o| o.session.as_ref());
        let session = primitive.and_then(|p| p.session.as_ref());
        let partition = self.check_partition(session.and_then(|s| s.partition.as_ref()).map_or(0, |p| p.partition_id))?;
        let query = TermQuery {
            session_id: Some(session.map_or(0, |s| s.session_id)),
            primitive: PrimitiveRef::Id(primitive.map_or(0, |p| p.primitive_id)),
            min_index: headers.max_received_index,
            sequence_num: headers.sequence_num,
        };
        Ok((partition, query))
    }
}
