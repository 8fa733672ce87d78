//! The node commands on the admin API (`atomix.multiraft.v1.Node` and health, api.md §3):
//! `node status` (health and the groups the node hosts with their leaders), `node bootstrap`,
//! `node join`, `node leave` and `node events` (every event of the node until stopped).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use conclave_proto::atomix::multiraft::v1 as pb;
use conclave_proto::grpc::health::v1::health_check_response::ServingStatus;
use conclave_proto::grpc::health::v1::HealthCheckRequest;
use pb::event::Event as Kind;
use pb::member_config::Role;
use serde_json::{json, Map, Value};

use super::endpoints::Endpoints;
use super::error::CliError;
use super::output::Printer;
use super::rpc::atomix::multiraft::v1::node_client::NodeClient;
use super::rpc::grpc::health::v1::health_client::HealthClient;
use super::signals::StopSignals;
use crate::grpc::Code;

/// How long `node status` waits for the next event of the node's current state before it
/// takes the state as complete (the node sends it at once when the watch opens).
const STATE_SETTLE: Duration = Duration::from_millis(300);
/// Longest `node status` reads the current state.
const STATE_MAX: Duration = Duration::from_secs(3);

fn bounded<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Parses a member `ID=HOST:PORT[/ROLE]` (role `member`, `observer` or `witness`; member
/// by default), e.g. `2=10.0.0.2:7201/observer`.
pub fn parse_member(text: &str) -> Result<pb::MemberConfig, CliError> {
    let invalid = |why: &str| CliError::usage(format!("member {text:?}: {why}; expected ID=HOST:PORT[/member|observer|witness]"));
    let (id, rest) = text.split_once('=').ok_or_else(|| invalid("no '='"))?;
    let node_id: u32 = id.trim().parse().ok().filter(|&id| id != 0).ok_or_else(|| invalid("the node id is not a number from 1"))?;
    let (address, role) = match rest.rsplit_once('/') {
        Some((address, role)) => (address, role),
        None => (rest, "member"),
    };
    let role = match role.to_ascii_lowercase().as_str() {
        "member" => Role::Member,
        "observer" => Role::Observer,
        "witness" => Role::Witness,
        _ => return Err(invalid("unknown role")),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    let port: u16 = port.parse().ok().filter(|&port| port != 0).ok_or_else(|| invalid("the port is not in 1..=65535"))?;
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    Ok(pb::MemberConfig { node_id, host: host.to_owned(), port: i32::from(port), role: role as i32 })
}

/// The group of `node bootstrap|join GROUP MEMBER...`.
pub fn group_config(group_id: u32, members: &[String]) -> Result<pb::GroupConfig, CliError> {
    if group_id == 0 {
        return Err(CliError::usage("group 0 is not a group (group ids start at 1)"));
    }
    let members = members.iter().map(|member| parse_member(member)).collect::<Result<Vec<_>, _>>()?;
    Ok(pb::GroupConfig { group_id, members })
}

/// Bootstrap, Join and Leave act on the node they are sent to, so they are never sent on to
/// another endpoint.
fn single_node(endpoints: &Endpoints, command: &str) -> Result<(), CliError> {
    if endpoints.len() > 1 {
        return Err(CliError::usage(format!("node {command} acts on one node: give exactly one endpoint (its admin address)")));
    }
    Ok(())
}

/// A Node API change: `Bootstrap`, `Join` or `Leave`.
pub enum Change {
    Bootstrap(pb::GroupConfig),
    Join(pb::GroupConfig),
    Leave(u32),
}

/// `conclave node bootstrap|join|leave ...`: sends the change to the node and says it is done.
pub async fn change(endpoints: &Endpoints, change: Change, printer: Printer) -> Result<(), CliError> {
    let timeout = endpoints.call_timeout;
    let (method, group_id) = match &change {
        Change::Bootstrap(group) => ("Bootstrap", group.group_id),
        Change::Join(group) => ("Join", group.group_id),
        Change::Leave(group_id) => ("Leave", *group_id),
    };
    if group_id == 0 {
        return Err(CliError::usage("group 0 is not a group (group ids start at 1)"));
    }
    single_node(endpoints, &method.to_ascii_lowercase())?;
    let connected = endpoints.connect_from(0).await?;
    let mut client = NodeClient::new(connected.channel);
    let sent = match change {
        Change::Bootstrap(group) => client.bootstrap(bounded(pb::BootstrapRequest { group: Some(group) }, timeout)).await.map(drop),
        Change::Join(group) => client.join(bounded(pb::JoinRequest { group: Some(group) }, timeout)).await.map(drop),
        Change::Leave(group_id) => client.leave(bounded(pb::LeaveRequest { group_id }, timeout)).await.map(drop),
    };
    sent.map_err(|status| CliError::from_call(method, &status))?;
    let mut fields = Map::new();
    fields.insert("group".into(), json!(group_id));
    fields.insert("node".into(), json!(endpoints.name(connected.index)));
    printer.line(&method.to_ascii_lowercase(), fields);
    Ok(())
}

/// What the node said about one group in its current state.
#[derive(Default)]
struct GroupState {
    ready: bool,
    term: u64,
    leader: u64,
}

/// `conclave node status`: the node's health and, from the start of a Node Watch, every
/// group it hosts with the term and leader it knows.
pub async fn status(endpoints: &Endpoints, printer: Printer) -> Result<(), CliError> {
    let timeout = endpoints.call_timeout;
    let (health, groups) = endpoints
        .call(true, |channel| async move {
            let health = HealthClient::new(channel.clone())
                .check(bounded(HealthCheckRequest { service: String::new() }, timeout))
                .await
                .map_err(|status| CliError::from_call("Health.Check", &status))?
                .into_inner()
                .status();
            let health: ServingStatus = health;
            let mut stream = NodeClient::new(channel)
                .watch(pb::WatchRequest {})
                .await
                .map_err(|status| CliError::from_call("Watch", &status))?
                .into_inner();
            let mut groups: BTreeMap<u32, GroupState> = BTreeMap::new();
            let started = Instant::now();
            while started.elapsed() < STATE_MAX {
                let event = match tokio::time::timeout(STATE_SETTLE, stream.message()).await {
                    Err(_) => break,
                    Ok(Ok(Some(event))) => event,
                    Ok(Ok(None)) => break,
                    Ok(Err(status)) => return Err(CliError::from_call("Watch", &status)),
                };
                match event.event {
                    Some(Kind::MemberReady(ready)) => groups.entry(ready.group_id).or_default().ready = true,
                    Some(Kind::LeaderUpdated(update)) => {
                        let group = groups.entry(update.group_id).or_default();
                        (group.term, group.leader) = (update.term, update.leader);
                    }
                    _ => {}
                }
            }
            Ok((health, groups))
        })
        .await?;
    let health_name = health.as_str_name();
    let listed: Vec<Value> = groups
        .iter()
        .map(|(group, state)| json!({ "group": group, "ready": state.ready, "term": state.term, "leader": state.leader }))
        .collect();
    if printer.json {
        println!("{}", json!({ "health": health_name, "groups": listed }));
        return Ok(());
    }
    let mut summary = Map::new();
    summary.insert("health".into(), json!(health_name));
    summary.insert("groups".into(), json!(groups.len()));
    printer.line("", summary);
    for group in listed {
        let Value::Object(fields) = group else { unreachable!("each group is an object") };
        printer.line("", fields);
    }
    Ok(())
}

/// The name and fields of a node event, e.g. `leader_updated` with group, term and leader.
pub fn event_fields(event: &pb::Event) -> (&'static str, Map<String, Value>) {
    let mut fields = Map::new();
    if let Some(timestamp) = &event.timestamp {
        fields.insert("time".into(), json!(timestamp.to_string()));
    }
    let (name, details) = match &event.event {
        None => ("unknown", json!({})),
        Some(Kind::MemberReady(e)) => ("member_ready", json!({ "group": e.group_id, "node": e.node_id })),
        Some(Kind::LeaderUpdated(e)) => ("leader_updated", json!({ "group": e.group_id, "term": e.term, "leader": e.leader })),
        Some(Kind::MembershipChanged(e)) => ("membership_changed", json!({ "group": e.group_id, "node": e.node_id })),
        Some(Kind::SendSnapshotStarted(e)) => ("send_snapshot_started", json!({ "group": e.group_id, "index": e.index, "to": e.to })),
        Some(Kind::SendSnapshotCompleted(e)) => ("send_snapshot_completed", json!({ "group": e.group_id, "index": e.index, "to": e.to })),
        Some(Kind::SendSnapshotAborted(e)) => ("send_snapshot_aborted", json!({ "group": e.group_id, "index": e.index, "to": e.to })),
        Some(Kind::SnapshotReceived(e)) => ("snapshot_received", json!({ "group": e.group_id, "index": e.index, "from": e.from })),
        Some(Kind::SnapshotRecovered(e)) => ("snapshot_recovered", json!({ "group": e.group_id, "index": e.index })),
        Some(Kind::SnapshotCreated(e)) => ("snapshot_created", json!({ "group": e.group_id, "index": e.index })),
        Some(Kind::SnapshotCompacted(e)) => ("snapshot_compacted", json!({ "group": e.group_id, "index": e.index })),
        Some(Kind::LogCompacted(e)) => ("log_compacted", json!({ "group": e.group_id, "index": e.index })),
        Some(Kind::LogdbCompacted(e)) => ("logdb_compacted", json!({ "group": e.group_id, "index": e.index })),
        Some(Kind::ConnectionEstablished(e)) => ("connection_established", connection(e.info.as_ref())),
        Some(Kind::ConnectionFailed(e)) => ("connection_failed", connection(e.info.as_ref())),
    };
    if let Value::Object(details) = details {
        fields.extend(details);
    }
    (name, fields)
}

fn connection(info: Option<&pb::ConnectionInfo>) -> Value {
    let info = info.cloned().unwrap_or_default();
    json!({ "address": info.address, "snapshot": info.snapshot })
}

/// `conclave node events`: the node's current state, then every event, until Ctrl-C or
/// SIGTERM.
pub async fn events(endpoints: &Endpoints, printer: Printer, signals: &mut StopSignals) -> Result<(), CliError> {
    let connected = endpoints.connect_from(0).await?;
    let follow = async {
        let mut stream = NodeClient::new(connected.channel)
            .watch(pb::WatchRequest {})
            .await
            .map_err(|status| CliError::from_call("Watch", &status))?
            .into_inner();
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let (name, fields) = event_fields(&event);
                    printer.line(name, fields);
                }
                Ok(None) => return Err(CliError::status(Code::Unavailable, "the node ended the event stream")),
                Err(status) => return Err(CliError::from_call("Watch", &status)),
            }
        }
    };
    tokio::select! {
        _ = signals.recv() => Ok(()),
        outcome = follow => outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_with_roles_and_refuse_garbage() {
        let member = parse_member("2=10.0.0.2:7201/observer").expect("valid");
        assert_eq!((member.node_id, member.host.as_str(), member.port, member.role), (2, "10.0.0.2", 7201, Role::Observer as i32));
        let member = parse_member("1=[::1]:7101").expect("valid");
        assert_eq!((member.host.as_str(), member.port, member.role), ("[::1]", 7101, Role::Member as i32));
        assert_eq!(parse_member("3=h:1/WITNESS").expect("valid").role, Role::Witness as i32);
        for bad in ["", "1", "0=h:1", "x=h:1", "1=h", "1=:5", "1=h:0", "1=h:70000", "1=h:1/leader"] {
            assert!(parse_member(bad).is_err(), "{bad}");
        }
        assert!(group_config(0, &["1=h:1".into()]).is_err());
    }
}
