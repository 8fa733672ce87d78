//! The election commands on the client API (`atomix.runtime.election.v1`): `leader`
//! (GetTerm), `watch` (every change), `elect` (campaign and hold a candidacy) and the
//! single operations `anoint`, `promote`, `demote`, `evict` and `withdraw`.
use std::time::Duration;

use conclave_proto::atomix::runtime::election::v1 as pb;
use conclave_proto::atomix::runtime::v1::PrimitiveId;
use serde_json::Value;
use tonic::transport::Channel;

use super::endpoints::Endpoints;
use super::error::CliError;
use super::output::{term_fields, Printer};
use super::rpc::atomix::runtime::election::v1::leader_election_client::LeaderElectionClient;
use super::rpc::atomix::runtime::election::v1::leader_elections_client::LeaderElectionsClient;
use super::signals::StopSignals;
use crate::grpc::Code;

/// Pause before a stream is opened again after its endpoint failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// An operation on one candidate that answers the election's new state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Anoint,
    Promote,
    Demote,
    Evict,
    Withdraw,
}

fn id(name: &str) -> Option<PrimitiveId> {
    Some(PrimitiveId { name: name.to_owned() })
}

fn bounded<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn answered_term(method: &str, term: Option<pb::Term>) -> Result<pb::Term, CliError> {
    term.ok_or_else(|| CliError::status(Code::Internal, format!("{method} answered no term")))
}

/// `conclave leader NAME`: the election's term, leader and candidates (a linearizable read).
pub async fn leader(endpoints: &Endpoints, name: &str, printer: Printer) -> Result<(), CliError> {
    let timeout = endpoints.call_timeout;
    let term = endpoints
        .call(true, |channel| async move {
            let response = LeaderElectionClient::new(channel)
                .get_term(bounded(pb::GetTermRequest { id: id(name) }, timeout))
                .await
                .map_err(|status| CliError::from_call("GetTerm", &status))?;
            answered_term("GetTerm", response.into_inner().term)
        })
        .await?;
    printer.line("", term_fields(&term));
    Ok(())
}

/// `conclave anoint|promote|demote|evict|withdraw NAME CANDIDATE`: one command, then the
/// election's new state.
pub async fn operate(endpoints: &Endpoints, operation: Operation, name: &str, candidate: &str, printer: Printer) -> Result<(), CliError> {
    let timeout = endpoints.call_timeout;
    let term = endpoints
        .call(false, |channel| async move {
            let mut client = LeaderElectionClient::new(channel);
            let (id, candidate) = (id(name), candidate.to_owned());
            let (method, answer) = match operation {
                Operation::Anoint => {
                    ("Anoint", client.anoint(bounded(pb::AnointRequest { id, candidate }, timeout)).await.map(|r| r.into_inner().term))
                }
                Operation::Promote => {
                    ("Promote", client.promote(bounded(pb::PromoteRequest { id, candidate }, timeout)).await.map(|r| r.into_inner().term))
                }
                Operation::Demote => {
                    ("Demote", client.demote(bounded(pb::DemoteRequest { id, candidate }, timeout)).await.map(|r| r.into_inner().term))
                }
                Operation::Evict => {
                    ("Evict", client.evict(bounded(pb::EvictRequest { id, candidate }, timeout)).await.map(|r| r.into_inner().term))
                }
                Operation::Withdraw => (
                    "Withdraw",
                    client.withdraw(bounded(pb::WithdrawRequest { id, candidate }, timeout)).await.map(|r| r.into_inner().term),
                ),
            };
            answered_term(method, answer.map_err(|status| CliError::from_call(method, &status))?)
        })
        .await?;
    printer.line("", term_fields(&term));
    Ok(())
}

/// Whether a stream that failed with `error` is worth opening again (through the next
/// endpoint): everything but a refusal of the request itself.
fn worth_retrying(error: &CliError) -> bool {
    !matches!(
        error.code,
        None | Some(
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated
        )
    )
}

/// Counts consecutive stream failures; gives up after every endpoint failed a few times
/// in a row (a message received in between resets the count).
struct Retries {
    failures: usize,
    limit: usize,
}

impl Retries {
    fn new(endpoints: &Endpoints) -> Retries {
        Retries { failures: 0, limit: 3 * endpoints.len() }
    }

    /// Whether to open the stream again after `error` on `endpoint`; says so on stderr.
    async fn again(&mut self, error: &CliError, endpoint: &str, what: &str) -> bool {
        self.failures += 1;
        if !worth_retrying(error) || self.failures > self.limit {
            return false;
        }
        eprintln!("conclave: lost {endpoint} ({error}); {what} through the next endpoint");
        tokio::time::sleep(RETRY_PAUSE).await;
        true
    }
}

/// Follows a Watch stream, handing each state to `report`, until it fails or ends.
async fn follow(mut stream: tonic::Streaming<pb::WatchResponse>, retries: &mut Retries, mut report: impl FnMut(&pb::Term)) -> CliError {
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                retries.failures = 0;
                match response.term {
                    Some(term) => report(&term),
                    None => return CliError::status(Code::Internal, "Watch sent a message with no term"),
                }
            }
            Ok(None) => return CliError::status(Code::Unavailable, "the server ended the watch"),
            Err(status) => return CliError::from_call("Watch", &status),
        }
    }
}

/// `conclave watch NAME`: the election's state, then every change, until Ctrl-C or
/// SIGTERM. A failed endpoint is replaced by the next one (a state already printed is not
/// printed again).
pub async fn watch(endpoints: &Endpoints, name: &str, printer: Printer, signals: &mut StopSignals) -> Result<(), CliError> {
    let mut last: Option<pb::Term> = None;
    let mut start = 0;
    let mut retries = Retries::new(endpoints);
    loop {
        let watched = async {
            let connected = endpoints.connect_from(start).await?;
            start = connected.index;
            let stream = LeaderElectionClient::new(connected.channel)
                .watch(pb::WatchRequest { id: id(name) })
                .await
                .map_err(|status| CliError::from_call("Watch", &status))?
                .into_inner();
            Err(follow(stream, &mut retries, |term| {
                if last.as_ref() != Some(term) {
                    printer.line("", term_fields(term));
                    last = Some(term.clone());
                }
            })
            .await)
        };
        let error = tokio::select! {
            _ = signals.recv() => return Ok(()),
            outcome = watched => match outcome {
                Ok(()) => return Ok(()),
                Err(error) => error,
            },
        };
        if !retries.again(&error, endpoints.name(start), "watching").await {
            return Err(error);
        }
        start += 1;
    }
}

/// `conclave elect NAME CANDIDATE`: creates the election if needed, enters the candidate,
/// prints every change of leader or term, and holds the candidacy (bound to this
/// connection's session) until Ctrl-C or SIGTERM; then withdraws and prints the state it
/// leaves. An endpoint that cannot be reached, or fails before the candidate is entered, is
/// replaced by the next one; once entered, losing the connection loses the session and with
/// it the candidacy, so the command fails (UNAVAILABLE) rather than campaign again unseen.
pub async fn elect(
    endpoints: &Endpoints,
    name: &str,
    candidate: &str,
    printer: Printer,
    signals: &mut StopSignals,
) -> Result<(), CliError> {
    let timeout = endpoints.call_timeout;
    let mut last: Option<(u64, String)> = None;
    let mut report = |term: &pb::Term| {
        let key = (term.term, term.leader.clone());
        if last.as_ref() != Some(&key) {
            let mut fields = term_fields(term);
            fields.insert("leading".into(), Value::Bool(term.leader == candidate));
            printer.line("", fields);
            last = Some(key);
        }
    };
    let mut start = 0;
    let mut retries = Retries::new(endpoints);
    loop {
        // The client holding the candidacy once it is entered, kept for the withdrawal.
        let mut holder: Option<LeaderElectionClient<Channel>> = None;
        let campaign = async {
            let connected = endpoints.connect_from(start).await?;
            start = connected.index;
            LeaderElectionsClient::new(connected.channel.clone())
                .create(bounded(pb::CreateRequest { id: id(name), tags: Vec::new() }, timeout))
                .await
                .map_err(|status| CliError::from_call("Create", &status))?;
            let mut client = LeaderElectionClient::new(connected.channel);
            let entered = client
                .enter(bounded(pb::EnterRequest { id: id(name), candidate: candidate.to_owned() }, timeout))
                .await
                .map_err(|status| CliError::from_call("Enter", &status))?;
            holder = Some(client.clone());
            report(&answered_term("Enter", entered.into_inner().term)?);
            let stream =
                client.watch(pb::WatchRequest { id: id(name) }).await.map_err(|status| CliError::from_call("Watch", &status))?.into_inner();
            Err::<(), _>(follow(stream, &mut retries, &mut report).await)
        };
        let error = tokio::select! {
            _ = signals.recv() => None,
            outcome = campaign => outcome.err(),
        };
        match (error, holder) {
            // Stopped before anything was entered: nothing to withdraw.
            (None, None) => return Ok(()),
            (None, Some(mut client)) => {
                let withdrawn = client
                    .withdraw(bounded(pb::WithdrawRequest { id: id(name), candidate: candidate.to_owned() }, timeout))
                    .await
                    .map_err(|status| CliError::from_call("Withdraw", &status))?;
                let term = answered_term("Withdraw", withdrawn.into_inner().term)?;
                let mut fields = serde_json::Map::new();
                fields.insert("candidate".into(), Value::String(candidate.to_owned()));
                fields.extend(term_fields(&term));
                printer.line("withdrawn", fields);
                return Ok(());
            }
            (Some(error), Some(_)) => {
                let message = format!(
                    "lost {} while holding the candidacy ({}); the candidacy ends with the connection's session",
                    endpoints.name(start),
                    error.message
                );
                // A transport failure is the endpoint becoming unavailable, whatever tonic
                // named it.
                let code = if worth_retrying(&error) { Some(Code::Unavailable) } else { error.code };
                return Err(CliError { code, message });
            }
            (Some(error), None) => {
                if !retries.again(&error, endpoints.name(start), "entering").await {
                    return Err(error);
                }
                start += 1;
            }
        }
    }
}
