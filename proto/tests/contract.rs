//! Pins the public API contract of `shared/spec/api.md`: every package, service, method
//! (with its streaming), message, field number, type and label, and every enum value that
//! existing Atomix clients were generated from. A renumbering, a rename or a type change in
//! `proto/proto/` fails here.
//!
//! The expectation is written as a small table in the notation of api.md and compared with
//! the descriptor set the build really compiled; a few messages are also decoded from
//! hand-encoded bytes, so the generated Rust types are pinned as well.

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::collections::BTreeMap;

/// `message-name: field=number:type ...` where type is a scalar name, a fully qualified
/// message or enum name, and may be prefixed with `repeated `/`*` (written `*type`).
const MESSAGES: &str = r#"
atomix.runtime.v1.PrimitiveID: name=1:string
atomix.runtime.election.v1.Term: term=1:uint64 leader=2:string candidates=3:*string
atomix.runtime.election.v1.EnterRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.WithdrawRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.AnointRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.PromoteRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.DemoteRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.EvictRequest: id=1:.atomix.runtime.v1.PrimitiveID candidate=2:string
atomix.runtime.election.v1.GetTermRequest: id=1:.atomix.runtime.v1.PrimitiveID
atomix.runtime.election.v1.WatchRequest: id=1:.atomix.runtime.v1.PrimitiveID
atomix.runtime.election.v1.EnterResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.WithdrawResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.AnointResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.PromoteResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.DemoteResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.EvictResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.GetTermResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.WatchResponse: term=1:.atomix.runtime.election.v1.Term
atomix.runtime.election.v1.CreateRequest: id=1:.atomix.runtime.v1.PrimitiveID tags=2:*string
atomix.runtime.election.v1.CreateResponse: config=1:.atomix.runtime.election.v1.Config
atomix.runtime.election.v1.CloseRequest: id=1:.atomix.runtime.v1.PrimitiveID
atomix.runtime.election.v1.CloseResponse:
atomix.runtime.election.v1.Config: cache=1:.atomix.runtime.election.v1.CacheConfig
atomix.runtime.election.v1.CacheConfig: enabled=1:bool
atomix.multiraft.v1.PartitionRequestHeaders: partition_id=1:uint32
atomix.multiraft.v1.PartitionResponseHeaders: index=1:uint64
atomix.multiraft.v1.SessionRequestHeaders: partition=1:.atomix.multiraft.v1.PartitionRequestHeaders session_id=2:uint64
atomix.multiraft.v1.SessionResponseHeaders: partition=1:.atomix.multiraft.v1.PartitionResponseHeaders
atomix.multiraft.v1.PrimitiveRequestHeaders: session=1:.atomix.multiraft.v1.SessionRequestHeaders primitive_id=2:uint64
atomix.multiraft.v1.PrimitiveResponseHeaders: session=1:.atomix.multiraft.v1.SessionResponseHeaders
atomix.multiraft.v1.OperationRequestHeaders: session=1:.atomix.multiraft.v1.PrimitiveRequestHeaders
atomix.multiraft.v1.OperationResponseHeaders: session=1:.atomix.multiraft.v1.PrimitiveResponseHeaders status=2:.atomix.multiraft.v1.OperationResponseHeaders.Status message=3:string
atomix.multiraft.v1.CommandRequestHeaders: operation=1:.atomix.multiraft.v1.OperationRequestHeaders sequence_num=2:uint64
atomix.multiraft.v1.CommandResponseHeaders: operation=1:.atomix.multiraft.v1.OperationResponseHeaders output_sequence_num=2:uint64
atomix.multiraft.v1.QueryRequestHeaders: operation=1:.atomix.multiraft.v1.OperationRequestHeaders sequence_num=2:uint64 max_received_index=3:uint64
atomix.multiraft.v1.QueryResponseHeaders: operation=1:.atomix.multiraft.v1.OperationResponseHeaders
atomix.multiraft.v1.OpenSessionRequest: headers=1:.atomix.multiraft.v1.PartitionRequestHeaders input=2:.atomix.multiraft.v1.OpenSessionInput
atomix.multiraft.v1.OpenSessionResponse: headers=1:.atomix.multiraft.v1.PartitionResponseHeaders output=2:.atomix.multiraft.v1.OpenSessionOutput
atomix.multiraft.v1.OpenSessionInput: timeout=1:.google.protobuf.Duration
atomix.multiraft.v1.OpenSessionOutput: session_id=1:uint64
atomix.multiraft.v1.KeepAliveRequest: headers=1:.atomix.multiraft.v1.PartitionRequestHeaders input=2:.atomix.multiraft.v1.KeepAliveInput
atomix.multiraft.v1.KeepAliveResponse: headers=1:.atomix.multiraft.v1.PartitionResponseHeaders output=2:.atomix.multiraft.v1.KeepAliveOutput
atomix.multiraft.v1.KeepAliveInput: session_id=1:uint64 input_filter=2:bytes last_input_sequence_num=3:uint64 last_output_sequence_nums=4:*.atomix.multiraft.v1.KeepAliveInput.LastOutputSequenceNumsEntry
atomix.multiraft.v1.KeepAliveInput.LastOutputSequenceNumsEntry: key=1:uint64 value=2:uint64
atomix.multiraft.v1.KeepAliveOutput:
atomix.multiraft.v1.CloseSessionRequest: headers=1:.atomix.multiraft.v1.PartitionRequestHeaders input=2:.atomix.multiraft.v1.CloseSessionInput
atomix.multiraft.v1.CloseSessionResponse: headers=1:.atomix.multiraft.v1.PartitionResponseHeaders output=2:.atomix.multiraft.v1.CloseSessionOutput
atomix.multiraft.v1.CloseSessionInput: session_id=1:uint64
atomix.multiraft.v1.CloseSessionOutput:
atomix.multiraft.v1.CreatePrimitiveRequest: headers=1:.atomix.multiraft.v1.CommandRequestHeaders input=2:.atomix.multiraft.v1.CreatePrimitiveInput
atomix.multiraft.v1.CreatePrimitiveResponse: headers=1:.atomix.multiraft.v1.CommandResponseHeaders output=2:.atomix.multiraft.v1.CreatePrimitiveOutput
atomix.multiraft.v1.CreatePrimitiveInput: spec=1:.atomix.multiraft.v1.PrimitiveSpec
atomix.multiraft.v1.CreatePrimitiveOutput: primitive_id=1:uint64
atomix.multiraft.v1.ClosePrimitiveRequest: headers=1:.atomix.multiraft.v1.CommandRequestHeaders input=2:.atomix.multiraft.v1.ClosePrimitiveInput
atomix.multiraft.v1.ClosePrimitiveResponse: headers=1:.atomix.multiraft.v1.CommandResponseHeaders output=2:.atomix.multiraft.v1.ClosePrimitiveOutput
atomix.multiraft.v1.ClosePrimitiveInput: primitive_id=1:uint64
atomix.multiraft.v1.ClosePrimitiveOutput:
atomix.multiraft.v1.PrimitiveSpec: service=1:string namespace=2:string name=3:string profile=4:string
atomix.multiraft.election.v1.Term: leader=1:string candidates=2:*string index=3:uint64
atomix.multiraft.election.v1.EnterInput: candidate=1:string
atomix.multiraft.election.v1.WithdrawInput: candidate=1:string
atomix.multiraft.election.v1.AnointInput: candidate=1:string
atomix.multiraft.election.v1.PromoteInput: candidate=2:string
atomix.multiraft.election.v1.DemoteInput: candidate=2:string
atomix.multiraft.election.v1.EvictInput: candidate=1:string
atomix.multiraft.election.v1.GetTermInput:
atomix.multiraft.election.v1.WatchInput:
atomix.multiraft.v1.BootstrapRequest: group=1:.atomix.multiraft.v1.GroupConfig
atomix.multiraft.v1.BootstrapResponse:
atomix.multiraft.v1.JoinRequest: group=1:.atomix.multiraft.v1.GroupConfig
atomix.multiraft.v1.JoinResponse:
atomix.multiraft.v1.LeaveRequest: group_id=1:uint32
atomix.multiraft.v1.LeaveResponse:
atomix.multiraft.v1.WatchRequest:
atomix.multiraft.v1.GroupConfig: group_id=1:uint32 members=2:*.atomix.multiraft.v1.MemberConfig
atomix.multiraft.v1.MemberConfig: node_id=1:uint32 host=2:string port=3:int32 role=4:.atomix.multiraft.v1.MemberConfig.Role
atomix.multiraft.v1.Event: timestamp=1:.google.protobuf.Timestamp member_ready=2:.atomix.multiraft.v1.MemberReadyEvent leader_updated=3:.atomix.multiraft.v1.LeaderUpdatedEvent membership_changed=4:.atomix.multiraft.v1.MembershipChangedEvent send_snapshot_started=5:.atomix.multiraft.v1.SendSnapshotStartedEvent send_snapshot_completed=6:.atomix.multiraft.v1.SendSnapshotCompletedEvent send_snapshot_aborted=7:.atomix.multiraft.v1.SendSnapshotAbortedEvent snapshot_received=8:.atomix.multiraft.v1.SnapshotReceivedEvent snapshot_recovered=9:.atomix.multiraft.v1.SnapshotRecoveredEvent snapshot_created=10:.atomix.multiraft.v1.SnapshotCreatedEvent snapshot_compacted=11:.atomix.multiraft.v1.SnapshotCompactedEvent log_compacted=12:.atomix.multiraft.v1.LogCompactedEvent logdb_compacted=13:.atomix.multiraft.v1.LogDBCompactedEvent connection_established=14:.atomix.multiraft.v1.ConnectionEstablishedEvent connection_failed=15:.atomix.multiraft.v1.ConnectionFailedEvent
atomix.multiraft.v1.MemberReadyEvent: group_id=1:uint32 node_id=2:uint64
atomix.multiraft.v1.MembershipChangedEvent: group_id=1:uint32 node_id=2:uint64
atomix.multiraft.v1.LeaderUpdatedEvent: group_id=1:uint32 term=2:uint64 leader=3:uint64
atomix.multiraft.v1.SendSnapshotStartedEvent: group_id=1:uint32 index=2:uint64 to=3:uint64
atomix.multiraft.v1.SendSnapshotCompletedEvent: group_id=1:uint32 index=2:uint64 to=3:uint64
atomix.multiraft.v1.SendSnapshotAbortedEvent: group_id=1:uint32 index=2:uint64 to=3:uint64
atomix.multiraft.v1.SnapshotReceivedEvent: group_id=1:uint32 index=2:uint64 from=3:uint64
atomix.multiraft.v1.SnapshotRecoveredEvent: group_id=1:uint32 index=2:uint64
atomix.multiraft.v1.SnapshotCreatedEvent: group_id=1:uint32 index=2:uint64
atomix.multiraft.v1.SnapshotCompactedEvent: group_id=1:uint32 index=2:uint64
atomix.multiraft.v1.LogCompactedEvent: group_id=1:uint32 index=2:uint64
atomix.multiraft.v1.LogDBCompactedEvent: group_id=1:uint32 index=2:uint64
atomix.multiraft.v1.ConnectionEstablishedEvent: info=1:.atomix.multiraft.v1.ConnectionInfo
atomix.multiraft.v1.ConnectionFailedEvent: info=1:.atomix.multiraft.v1.ConnectionInfo
atomix.multiraft.v1.ConnectionInfo: address=1:string snapshot=2:bool
grpc.health.v1.HealthCheckRequest: service=1:string
grpc.health.v1.HealthCheckResponse: status=1:.grpc.health.v1.HealthCheckResponse.ServingStatus
grpc.reflection.v1.ServerReflectionRequest: host=1:string file_by_filename=3:string file_containing_symbol=4:string file_containing_extension=5:.grpc.reflection.v1.ExtensionRequest all_extension_numbers_of_type=6:string list_services=7:string
grpc.reflection.v1.ExtensionRequest: containing_type=1:string extension_number=2:int32
grpc.reflection.v1.ServerReflectionResponse: valid_host=1:string original_request=2:.grpc.reflection.v1.ServerReflectionRequest file_descriptor_response=4:.grpc.reflection.v1.FileDescriptorResponse all_extension_numbers_response=5:.grpc.reflection.v1.ExtensionNumberResponse list_services_response=6:.grpc.reflection.v1.ListServiceResponse error_response=7:.grpc.reflection.v1.ErrorResponse
grpc.reflection.v1.FileDescriptorResponse: file_descriptor_proto=1:*bytes
grpc.reflection.v1.ExtensionNumberResponse: base_type_name=1:string extension_number=2:*int32
grpc.reflection.v1.ListServiceResponse: service=1:*.grpc.reflection.v1.ServiceResponse
grpc.reflection.v1.ServiceResponse: name=1:string
grpc.reflection.v1.ErrorResponse: error_code=1:int32 error_message=2:string
grpc.reflection.v1alpha.ServerReflectionRequest: host=1:string file_by_filename=3:string file_containing_symbol=4:string file_containing_extension=5:.grpc.reflection.v1alpha.ExtensionRequest all_extension_numbers_of_type=6:string list_services=7:string
grpc.reflection.v1alpha.ExtensionRequest: containing_type=1:string extension_number=2:int32
grpc.reflection.v1alpha.ServerReflectionResponse: valid_host=1:string original_request=2:.grpc.reflection.v1alpha.ServerReflectionRequest file_descriptor_response=4:.grpc.reflection.v1alpha.FileDescriptorResponse all_extension_numbers_response=5:.grpc.reflection.v1alpha.ExtensionNumberResponse list_services_response=6:.grpc.reflection.v1alpha.ListServiceResponse error_response=7:.grpc.reflection.v1alpha.ErrorResponse
grpc.reflection.v1alpha.FileDescriptorResponse: file_descriptor_proto=1:*bytes
grpc.reflection.v1alpha.ExtensionNumberResponse: base_type_name=1:string extension_number=2:*int32
grpc.reflection.v1alpha.ListServiceResponse: service=1:*.grpc.reflection.v1alpha.ServiceResponse
grpc.reflection.v1alpha.ServiceResponse: name=1:string
grpc.reflection.v1alpha.ErrorResponse: error_code=1:int32 error_message=2:string
"#;

/// `enum-name: VALUE=number ...`
const ENUMS: &str = r#"
atomix.multiraft.v1.OperationResponseHeaders.Status: OK=0 ERROR=1 UNKNOWN=2 CANCELED=3 NOT_FOUND=4 ALREADY_EXISTS=5 UNAUTHORIZED=6 FORBIDDEN=7 CONFLICT=8 INVALID=9 UNAVAILABLE=10 NOT_SUPPORTED=11 TIMEOUT=12 INTERNAL=13 FAULT=14
atomix.multiraft.v1.MemberConfig.Role: UNKNOWN=0 MEMBER=1 OBSERVER=2 WITNESS=3
grpc.health.v1.HealthCheckResponse.ServingStatus: UNKNOWN=0 SERVING=1 NOT_SERVING=2 SERVICE_UNKNOWN=3
"#;

/// `service: Method(Request) -> Response` with `stream ` before a streamed response.
const SERVICES: &str = r#"
atomix.runtime.election.v1.LeaderElection: Create(CreateRequest)->CreateResponse Close(CloseRequest)->CloseResponse Enter(EnterRequest)->EnterResponse Withdraw(WithdrawRequest)->WithdrawResponse Anoint(AnointRequest)->AnointResponse Promote(PromoteRequest)->PromoteResponse Demote(DemoteRequest)->DemoteResponse Evict(EvictRequest)->EvictResponse GetTerm(GetTermRequest)->GetTermResponse Watch(WatchRequest)->stream:WatchResponse
atomix.runtime.election.v1.LeaderElections: Create(CreateRequest)->CreateResponse Close(CloseRequest)->CloseResponse
atomix.multiraft.v1.Partition: OpenSession(OpenSessionRequest)->OpenSessionResponse KeepAlive(KeepAliveRequest)->KeepAliveResponse CloseSession(CloseSessionRequest)->CloseSessionResponse
atomix.multiraft.v1.Session: CreatePrimitive(CreatePrimitiveRequest)->CreatePrimitiveResponse ClosePrimitive(ClosePrimitiveRequest)->ClosePrimitiveResponse
atomix.multiraft.v1.Node: Bootstrap(BootstrapRequest)->BootstrapResponse Join(JoinRequest)->JoinResponse Leave(LeaveRequest)->LeaveResponse Watch(WatchRequest)->stream:Event
atomix.multiraft.election.v1.LeaderElection: Enter(EnterRequest)->EnterResponse Withdraw(WithdrawRequest)->WithdrawResponse Anoint(AnointRequest)->AnointResponse Promote(PromoteRequest)->PromoteResponse Demote(DemoteRequest)->DemoteResponse Evict(EvictRequest)->EvictResponse GetTerm(GetTermRequest)->GetTermResponse Watch(WatchRequest)->stream:WatchResponse
grpc.health.v1.Health: Check(HealthCheckRequest)->HealthCheckResponse Watch(HealthCheckRequest)->stream:HealthCheckResponse
grpc.reflection.v1.ServerReflection: ServerReflectionInfo(ServerReflectionRequest)->stream:ServerReflectionResponse
grpc.reflection.v1alpha.ServerReflection: ServerReflectionInfo(ServerReflectionRequest)->stream:ServerReflectionResponse
"#;

/// The driver election API: each operation's request/response wrapping (headers = 1,
/// input/output = 2) and whether it is a command or a query.
const DRIVER_OPS: &[(&str, bool)] = &[
    ("Enter", true),
    ("Withdraw", true),
    ("Anoint", true),
    ("Promote", true),
    ("Demote", true),
    ("Evict", true),
    ("GetTerm", false),
    ("Watch", false),
];

struct Descriptors {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, Vec<(String, i32)>>,
    services: BTreeMap<String, Vec<(String, String, String, bool)>>,
}

fn collect_message(prefix: &str, msg: &DescriptorProto, d: &mut Descriptors) {
    let name = format!("{prefix}.{}", msg.name());
    for nested in &msg.nested_type {
        collect_message(&name, nested, d);
    }
    for e in &msg.enum_type {
        let values = e.value.iter().map(|v| (v.name().to_string(), v.number())).collect();
        d.enums.insert(format!("{name}.{}", e.name()), values);
    }
    d.messages.insert(name, msg.clone());
}

fn descriptors() -> Descriptors {
    let fds = FileDescriptorSet::decode(conclave_proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes");
    let mut d = Descriptors { messages: BTreeMap::new(), enums: BTreeMap::new(), services: BTreeMap::new() };
    for file in &fds.file {
        let pkg = file.package();
        for msg in &file.message_type {
            collect_message(pkg, msg, &mut d);
        }
        for e in &file.enum_type {
            let values = e.value.iter().map(|v| (v.name().to_string(), v.number())).collect();
            d.enums.insert(format!("{pkg}.{}", e.name()), values);
        }
        for svc in &file.service {
            let methods = svc
                .method
                .iter()
                .map(|m| (m.name().to_string(), m.input_type().to_string(), m.output_type().to_string(), m.server_streaming()))
                .collect();
            d.services.insert(format!("{pkg}.{}", svc.name()), methods);
        }
    }
    d
}

fn scalar_type(name: &str) -> Option<Type> {
    Some(match name {
        "string" => Type::String,
        "bytes" => Type::Bytes,
        "bool" => Type::Bool,
        "uint32" => Type::Uint32,
        "uint64" => Type::Uint64,
        "int32" => Type::Int32,
        "int64" => Type::Int64,
        _ => return None,
    })
}

/// Renders a field of a descriptor in the table's notation.
fn render_field(d: &Descriptors, f: &prost_types::FieldDescriptorProto) -> String {
    let repeated = if f.label() == Label::Repeated { "*" } else { "" };
    let ty = match f.r#type() {
        Type::Message | Type::Enum => f.type_name().to_string(),
        Type::String => "string".into(),
        Type::Bytes => "bytes".into(),
        Type::Bool => "bool".into(),
        Type::Uint32 => "uint32".into(),
        Type::Uint64 => "uint64".into(),
        Type::Int32 => "int32".into(),
        Type::Int64 => "int64".into(),
        other => format!("{other:?}"),
    };
    if f.r#type() == Type::Enum {
        assert!(d.enums.contains_key(&ty[1..]), "enum {ty} is not defined");
    }
    format!("{}={}:{repeated}{ty}", f.name(), f.number())
}

#[test]
fn every_public_message_has_exactly_the_contracted_fields() {
    let d = descriptors();
    let mut checked = 0;
    for line in MESSAGES.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, fields) = line.split_once(':').expect("table line has a colon");
        let msg = d.messages.get(name).unwrap_or_else(|| panic!("message {name} is missing"));
        let mut expected: Vec<String> = fields.split_whitespace().map(String::from).collect();
        let mut actual: Vec<String> = msg.field.iter().map(|f| render_field(&d, f)).collect();
        expected.sort();
        actual.sort();
        assert_eq!(actual, expected, "fields of {name}");
        for spec in &expected {
            let ty = spec.rsplit(':').next().unwrap().trim_start_matches('*');
            assert!(
                scalar_type(ty).is_some() || d.messages.contains_key(&ty[1..]) || d.enums.contains_key(&ty[1..]),
                "{name}: type {ty} is neither scalar nor defined"
            );
        }
        checked += 1;
    }
    assert!(checked > 90, "the table covers every public message ({checked})");
}

#[test]
fn the_event_fields_form_one_oneof() {
    let d = descriptors();
    let event = &d.messages["atomix.multiraft.v1.Event"];
    assert_eq!(event.oneof_decl.len(), 1);
    assert_eq!(event.oneof_decl[0].name(), "event");
    for f in &event.field {
        let in_oneof = f.oneof_index.is_some();
        assert_eq!(in_oneof, f.number() != 1, "field {} oneof membership", f.name());
    }
}

#[test]
fn every_public_enum_has_exactly_the_contracted_values() {
    let d = descriptors();
    for line in ENUMS.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, values) = line.split_once(':').unwrap();
        let actual = d.enums.get(name).unwrap_or_else(|| panic!("enum {name} is missing"));
        let expected: Vec<(String, i32)> = values
            .split_whitespace()
            .map(|v| {
                let (n, num) = v.split_once('=').unwrap();
                (n.to_string(), num.parse().unwrap())
            })
            .collect();
        assert_eq!(actual, &expected, "values of {name}");
    }
}

#[test]
fn every_public_service_has_exactly_the_contracted_methods_and_streaming() {
    let d = descriptors();
    for line in SERVICES.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (service, methods) = line.split_once(':').unwrap();
        let pkg = &service[..service.rfind('.').unwrap()];
        let actual = d.services.get(service).unwrap_or_else(|| panic!("service {service} is missing"));
        let expected: Vec<(String, String, String, bool)> = methods
            .split_whitespace()
            .map(|m| {
                let (sig, output) = m.split_once("->").unwrap();
                let (method, input) = sig.trim_end_matches(')').split_once('(').unwrap();
                let (streaming, output) = match output.strip_prefix("stream:") {
                    Some(o) => (true, o),
                    None => (false, output),
                };
                (method.to_string(), format!(".{pkg}.{input}"), format!(".{pkg}.{output}"), streaming)
            })
            .collect();
        assert_eq!(actual, &expected, "methods of {service}");
    }
}

#[test]
fn driver_election_requests_wrap_headers_and_input() {
    let d = descriptors();
    let pkg = "atomix.multiraft.election.v1";
    for (op, command) in DRIVER_OPS {
        let kind = if *command { "Command" } else { "Query" };
        let req = &d.messages[&format!("{pkg}.{op}Request")];
        let rendered: Vec<String> = req.field.iter().map(|f| render_field(&d, f)).collect();
        assert_eq!(
            rendered,
            vec![format!("headers=1:.atomix.multiraft.v1.{kind}RequestHeaders"), format!("input=2:.{pkg}.{op}Input"),],
            "{op}Request"
        );
        let resp = &d.messages[&format!("{pkg}.{op}Response")];
        let rendered: Vec<String> = resp.field.iter().map(|f| render_field(&d, f)).collect();
        assert_eq!(
            rendered,
            vec![format!("headers=1:.atomix.multiraft.v1.{kind}ResponseHeaders"), format!("output=2:.{pkg}.{op}Output"),],
            "{op}Response"
        );
        let out = &d.messages[&format!("{pkg}.{op}Output")];
        let rendered: Vec<String> = out.field.iter().map(|f| render_field(&d, f)).collect();
        assert_eq!(rendered, vec![format!("term=1:.{pkg}.Term")], "{op}Output");
    }
}

#[test]
fn hand_encoded_messages_decode_into_the_generated_types() {
    use conclave_proto::atomix::multiraft::election::v1 as driver;
    use conclave_proto::atomix::runtime::election::v1 as client;

    // Client Term: term=1 (varint 7), leader=2 "a", candidates=3 ["a", "b"].
    let bytes = [0x08, 7, 0x12, 1, b'a', 0x1a, 1, b'a', 0x1a, 1, b'b'];
    let term = client::Term::decode(&bytes[..]).unwrap();
    assert_eq!(term, client::Term { term: 7, leader: "a".into(), candidates: vec!["a".into(), "b".into()] });

    // Driver Term: leader=1 "a", candidates=2 ["b"], index=3 (varint 7).
    let bytes = [0x0a, 1, b'a', 0x12, 1, b'b', 0x18, 7];
    let term = driver::Term::decode(&bytes[..]).unwrap();
    assert_eq!(term, driver::Term { leader: "a".into(), candidates: vec!["b".into()], index: 7 });

    // PromoteInput and DemoteInput carry the candidate in field 2 (tag 0x12), not 1.
    let bytes = [0x12, 2, b'c', b'1'];
    assert_eq!(driver::PromoteInput::decode(&bytes[..]).unwrap().candidate, "c1");
    assert_eq!(driver::DemoteInput::decode(&bytes[..]).unwrap().candidate, "c1");
    assert_eq!(driver::EnterInput::decode(&bytes[..]).unwrap().candidate, "", "Enter uses field 1");

    // EnterRequest (client API): id=1 { name=1 "e" }, candidate=2 "c".
    let bytes = [0x0a, 3, 0x0a, 1, b'e', 0x12, 1, b'c'];
    let req = client::EnterRequest::decode(&bytes[..]).unwrap();
    assert_eq!(req.id.unwrap().name, "e");
    assert_eq!(req.candidate, "c");

    // KeepAliveInput: session_id=1 (5), input_filter=2 bytes, last_input_sequence_num=3 (9),
    // last_output_sequence_nums=4 map entry {1: 2}.
    let bytes = [0x08, 5, 0x12, 2, 0xff, 0x00, 0x18, 9, 0x22, 4, 0x08, 1, 0x10, 2];
    let ka = conclave_proto::atomix::multiraft::v1::KeepAliveInput::decode(&bytes[..]).unwrap();
    assert_eq!(ka.session_id, 5);
    assert_eq!(&ka.input_filter[..], &[0xff, 0x00]);
    assert_eq!(ka.last_input_sequence_num, 9);
    assert_eq!(ka.last_output_sequence_nums.get(&1), Some(&2));

    // Node Event: timestamp=1 {seconds=1}, leader_updated=3 {group_id=1: 2, term=2: 3, leader=3: 4}.
    let bytes = [0x0a, 2, 0x08, 1, 0x1a, 6, 0x08, 2, 0x10, 3, 0x18, 4];
    let ev = conclave_proto::atomix::multiraft::v1::Event::decode(&bytes[..]).unwrap();
    assert_eq!(ev.timestamp.unwrap().seconds, 1);
    match ev.event.unwrap() {
        conclave_proto::atomix::multiraft::v1::event::Event::LeaderUpdated(e) => {
            assert_eq!((e.group_id, e.term, e.leader), (2, 3, 4));
        }
        other => panic!("decoded the wrong event: {other:?}"),
    }
}

#[test]
fn server_reflection_info_streams_both_ways_and_its_requests_ask_one_question() {
    let fds = FileDescriptorSet::decode(conclave_proto::FILE_DESCRIPTOR_SET).expect("the embedded descriptor set decodes");
    for package in ["grpc.reflection.v1", "grpc.reflection.v1alpha"] {
        let file = fds.file.iter().find(|f| f.package() == package).unwrap_or_else(|| panic!("{package} is compiled"));
        let method = &file.service[0].method[0];
        assert_eq!(
            (method.name(), method.client_streaming(), method.server_streaming()),
            ("ServerReflectionInfo", true, true),
            "{package}"
        );
        let d = descriptors();
        for (message, oneof, first_field) in
            [("ServerReflectionRequest", "message_request", 3), ("ServerReflectionResponse", "message_response", 4)]
        {
            let msg = &d.messages[&format!("{package}.{message}")];
            assert_eq!(msg.oneof_decl.iter().map(|o| o.name()).collect::<Vec<_>>(), [oneof], "{package}.{message}");
            for f in &msg.field {
                assert_eq!(f.oneof_index.is_some(), f.number() >= first_field, "{package}.{message}.{} oneof membership", f.name());
            }
        }
    }
}
