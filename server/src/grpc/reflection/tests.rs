//! The reflection answers, asked directly (the end-to-end tests ask through grpcurl and a
//! tonic client): every kind of symbol, files with their dependencies sent once per stream,
//! extension questions and errors.
use super::*;
use crate::grpc::Code;
use prost_types::FileDescriptorProto;

fn service_for(paths: &[&str]) -> ReflectionService {
    let mut router = Router::new();
    for path in paths {
        router.unary(path, |request, _| async move { Ok(request) });
    }
    ReflectionService::register(&mut router).expect("the descriptor set indexes");
    let index = INDEX.as_ref().expect("indexed");
    let services = router.services().map(str::to_owned).collect();
    ReflectionService { index, services }
}

fn ask(service: &ReflectionService, question: MessageRequest, sent: &mut HashSet<String>) -> MessageResponse {
    let request = pb::ServerReflectionRequest { host: "h".into(), message_request: Some(question.clone()) };
    let response = service.answer(request, sent);
    assert_eq!(response.valid_host, "h");
    assert_eq!(response.original_request.and_then(|r| r.message_request), Some(question), "the request is echoed");
    response.message_response.expect("every request is answered")
}

/// The names of the files of a file descriptor response, in order.
fn file_names(response: MessageResponse) -> Vec<String> {
    let MessageResponse::FileDescriptorResponse(files) = response else {
        panic!("expected files, got {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| FileDescriptorProto::decode(bytes.as_ref()).expect("a file descriptor").name().to_owned())
        .collect()
}

fn error(response: MessageResponse) -> (Code, String) {
    let MessageResponse::ErrorResponse(error) = response else {
        panic!("expected an error, got {response:?}");
    };
    (u32::try_from(error.error_code).ok().and_then(Code::from_wire).expect("a gRPC code"), error.error_message)
}

#[test]
fn lists_the_services_of_its_router_and_itself() {
    let service = service_for(&["/grpc.health.v1.Health/Check", "/atomix.multiraft.v1.Node/Leave"]);
    let MessageResponse::ListServicesResponse(list) = ask(&service, MessageRequest::ListServices(String::new()), &mut HashSet::new())
    else {
        panic!("expected a service list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "atomix.multiraft.v1.Node",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"
        ]
    );
}

#[test]
fn every_kind_of_symbol_names_its_file() {
    let service = service_for(&[]);
    let election = "atomix/runtime/election/v1/election.proto";
    let node = "atomix/multiraft/v1/node.proto";
    for (symbol, file) in [
        ("atomix.runtime.election.v1.LeaderElection", election),
        ("atomix.runtime.election.v1.LeaderElection.Enter", election),
        ("atomix.runtime.election.v1.Term", election),
        (".atomix.runtime.election.v1.Term", election),
        ("atomix.runtime.election.v1.Term.candidates", election),
        ("atomix.multiraft.v1.MemberConfig.Role", node),
        ("atomix.multiraft.v1.MemberConfig.WITNESS", node),
        ("atomix.multiraft.v1.Event.event", node),
        ("grpc.health.v1.HealthCheckResponse.ServingStatus", "grpc/health/v1/health.proto"),
        ("grpc.reflection.v1alpha.ServerReflection", "grpc/reflection/v1alpha/reflection.proto"),
    ] {
        let files = file_names(ask(&service, MessageRequest::FileContainingSymbol(symbol.into()), &mut HashSet::new()));
        assert_eq!(files.first().map(String::as_str), Some(file), "{symbol}");
    }
    for unknown in ["atomix.runtime.election.v1.Nope", "atomix.runtime.election.v1", ""] {
        let (code, message) = error(ask(&service, MessageRequest::FileContainingSymbol(unknown.into()), &mut HashSet::new()));
        assert_eq!(code, Code::NotFound, "{unknown}");
        assert!(message.contains("unknown symbol"), "{message}");
    }
}

#[test]
fn files_come_with_their_dependencies_once_per_stream() {
    let service = service_for(&[]);
    let mut sent = HashSet::new();
    let election = "atomix/multiraft/election/v1/election.proto";
    assert_eq!(
        file_names(ask(&service, MessageRequest::FileByFilename(election.into()), &mut sent)),
        [election, "atomix/multiraft/v1/headers.proto"]
    );
    // headers.proto was sent on this stream: only the file asked for comes again.
    let session = "atomix/multiraft/v1/session.proto";
    assert_eq!(file_names(ask(&service, MessageRequest::FileByFilename(session.into()), &mut sent)), [session]);
    assert_eq!(file_names(ask(&service, MessageRequest::FileByFilename(session.into()), &mut sent)), [session]);
    let node = file_names(ask(&service, MessageRequest::FileByFilename("atomix/multiraft/v1/node.proto".into()), &mut sent));
    assert_eq!(node, ["atomix/multiraft/v1/node.proto", "google/protobuf/timestamp.proto"]);
    let (code, _) = error(ask(&service, MessageRequest::FileByFilename("nope.proto".into()), &mut sent));
    assert_eq!(code, Code::NotFound);
}

#[test]
fn extension_questions_answer_not_found_or_empty() {
    let service = service_for(&[]);
    let mut sent = HashSet::new();
    let MessageResponse::AllExtensionNumbersResponse(numbers) =
        ask(&service, MessageRequest::AllExtensionNumbersOfType("atomix.runtime.election.v1.Term".into()), &mut sent)
    else {
        panic!("expected extension numbers");
    };
    assert_eq!((numbers.base_type_name.as_str(), numbers.extension_number.len()), ("atomix.runtime.election.v1.Term", 0));
    let (code, _) = error(ask(&service, MessageRequest::AllExtensionNumbersOfType("no.Such".into()), &mut sent));
    assert_eq!(code, Code::NotFound);
    for (containing_type, number) in [("atomix.runtime.election.v1.Term", 100), ("no.Such", 1), ("atomix.runtime.election.v1.Term", -1)] {
        let question = pb::ExtensionRequest { containing_type: containing_type.into(), extension_number: number };
        let (code, message) = error(ask(&service, MessageRequest::FileContainingExtension(question), &mut sent));
        assert_eq!(code, Code::NotFound, "{message}");
    }
}

#[test]
fn an_empty_request_is_an_invalid_argument() {
    let service = service_for(&[]);
    let response = service.answer(pb::ServerReflectionRequest::default(), &mut HashSet::new());
    let (code, _) = error(response.message_response.expect("answered"));
    assert_eq!(code, Code::InvalidArgument);
}

#[test]
fn the_two_packages_are_the_same_on_the_wire() {
    let index = INDEX.as_ref().expect("indexed");
    for name in [
        "ServerReflectionRequest",
        "ExtensionRequest",
        "ServerReflectionResponse",
        "FileDescriptorResponse",
        "ExtensionNumberResponse",
        "ListServiceResponse",
        "ServiceResponse",
        "ErrorResponse",
    ] {
        let shape = |package: &str| {
            let message = index.pool.get_message_by_name(&format!("grpc.reflection.{package}.{name}")).expect("defined");
            message
                .fields()
                .map(|f| {
                    let kind = match f.kind() {
                        prost_reflect::Kind::Message(message) => message.name().to_owned(),
                        scalar => format!("{scalar:?}"),
                    };
                    (f.number(), f.name().to_owned(), kind, f.cardinality())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shape("v1"), shape("v1alpha"), "{name}");
    }
}
