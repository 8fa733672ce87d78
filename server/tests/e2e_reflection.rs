//! Server reflection against `conclave serve`: the real grpcurl (1.8.6, which speaks
//! `grpc.reflection.v1alpha`, from the test suite's Python environment) lists the services of
//! the client and admin listeners, describes a service, a message and a nested enum, and
//! calls `Create` and `Enter` by name with no .proto file; a tonic client of
//! `grpc.reflection.v1` asks every kind of question over one stream, each answered before
//! the next is sent.
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use prost_types::FileDescriptorProto;
use refl::server_reflection_request::MessageRequest;
use refl::server_reflection_response::MessageResponse;
use support::client::grpc::reflection::v1 as refl;
use support::python::grpcurl;
use support::{Node, NodeOptions, TestDir};

const GRPCURL_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs grpcurl with `args` against `address` (plaintext), bounded in time.
fn grpcurl_at(grpcurl: &Path, address: SocketAddr, args: &[&str]) -> Output {
    let mut command = Command::new(grpcurl);
    command.args(["-plaintext", "-max-time", "20"]);
    let (before, after): (Vec<&str>, Vec<&str>) = match args.iter().position(|a| *a == "--") {
        Some(split) => (args[..split].to_vec(), args[split + 1..].to_vec()),
        None => (Vec::new(), args.to_vec()),
    };
    command.args(&before).arg(address.to_string()).args(&after);
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn grpcurl");
    let deadline = Instant::now() + GRPCURL_TIMEOUT;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("grpcurl {args:?} did not finish within {GRPCURL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("grpcurl output")
}

/// grpcurl's stdout, requiring success.
fn grpcurl_ok(grpcurl: &Path, address: SocketAddr, args: &[&str]) -> String {
    let output = grpcurl_at(grpcurl, address, args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "grpcurl {args:?} failed ({}):\n{stdout}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    stdout
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_describes_and_calls_through_reflection() {
    let grpcurl = grpcurl();
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let (client, admin) = (node.ports.listen, node.ports.admin);
    let reflection = ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

    // Each listener lists exactly what it serves.
    let mut expected = set(&[
        "atomix.multiraft.election.v1.LeaderElection",
        "atomix.multiraft.v1.Partition",
        "atomix.multiraft.v1.Session",
        "atomix.runtime.election.v1.LeaderElection",
        "atomix.runtime.election.v1.LeaderElections",
        "grpc.health.v1.Health",
    ]);
    expected.extend(set(&reflection));
    assert_eq!(lines(&grpcurl_ok(&grpcurl, client, &["list"])), expected, "services of the client listener");
    let mut expected = set(&["atomix.multiraft.v1.Node", "grpc.health.v1.Health"]);
    expected.extend(set(&reflection));
    assert_eq!(lines(&grpcurl_ok(&grpcurl, admin, &["list"])), expected, "services of the admin listener");
    assert_eq!(
        lines(&grpcurl_ok(&grpcurl, admin, &["list", "atomix.multiraft.v1.Node"])),
        set(&[
            "atomix.multiraft.v1.Node.Bootstrap",
            "atomix.multiraft.v1.Node.Join",
            "atomix.multiraft.v1.Node.Leave",
            "atomix.multiraft.v1.Node.Watch"
        ])
    );

    // A service, a message and a nested enum, described from the served descriptors.
    let service = grpcurl_ok(&grpcurl, client, &["describe", "atomix.runtime.election.v1.LeaderElection"]);
    for expected in [
        "atomix.runtime.election.v1.LeaderElection is a service:",
        "rpc Enter ( .atomix.runtime.election.v1.EnterRequest ) returns ( .atomix.runtime.election.v1.EnterResponse );",
        "rpc Watch ( .atomix.runtime.election.v1.WatchRequest ) returns ( stream .atomix.runtime.election.v1.WatchResponse );",
    ] {
        assert!(service.contains(expected), "describe of the service lacks {expected:?}:\n{service}");
    }
    let message = grpcurl_ok(&grpcurl, client, &["describe", "atomix.runtime.election.v1.Term"]);
    for expected in ["is a message:", "uint64 term = 1;", "string leader = 2;", "repeated string candidates = 3;"] {
        assert!(message.contains(expected), "describe of Term lacks {expected:?}:\n{message}");
    }
    let role = grpcurl_ok(&grpcurl, admin, &["describe", "atomix.multiraft.v1.MemberConfig.Role"]);
    assert!(role.contains("is an enum:") && role.contains("WITNESS = 3;"), "describe of the nested enum:\n{role}");
    let unknown = grpcurl_at(&grpcurl, client, &["describe", "atomix.runtime.election.v1.NoSuchThing"]);
    let said = String::from_utf8_lossy(&unknown.stderr).to_lowercase();
    assert!(!unknown.status.success() && said.contains("not found"), "an unknown symbol is not found: {said}");

    // Calls by name, the request written as JSON.
    grpcurl_ok(&grpcurl, client, &["-d", r#"{"id":{"name":"reflected"}}"#, "--", "atomix.runtime.election.v1.LeaderElections/Create"]);
    let entered = grpcurl_ok(
        &grpcurl,
        client,
        &["-d", r#"{"id":{"name":"reflected"},"candidate":"alice"}"#, "--", "atomix.runtime.election.v1.LeaderElection/Enter"],
    );
    let entered: serde_json::Value = serde_json::from_str(&entered).unwrap_or_else(|e| panic!("Enter answered JSON ({e}):\n{entered}"));
    let term = &entered["term"];
    assert_eq!((term["leader"].as_str(), term["candidates"].clone()), (Some("alice"), serde_json::json!(["alice"])), "{entered}");
    // uint64 is a string in protobuf's JSON mapping.
    assert!(term["term"].as_str().and_then(|t| t.parse::<u64>().ok()).is_some_and(|t| t >= 1), "{entered}");
    // An error answered through a call by name carries its code.
    let refused = grpcurl_at(&grpcurl, admin, &["-d", r#"{"group_id":0}"#, "--", "atomix.multiraft.v1.Node/Leave"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("InvalidArgument"), "Leave of group 0: {said}");
}

fn ask(question: MessageRequest) -> refl::ServerReflectionRequest {
    refl::ServerReflectionRequest { host: String::new(), message_request: Some(question) }
}

fn file_names(response: &refl::ServerReflectionResponse) -> Vec<String> {
    let Some(MessageResponse::FileDescriptorResponse(files)) = &response.message_response else {
        panic!("expected files, got {response:?}");
    };
    files
        .file_descriptor_proto
        .iter()
        .map(|b| FileDescriptorProto::decode(b.as_ref()).expect("a file descriptor").name().to_owned())
        .collect()
}

fn error_code(response: &refl::ServerReflectionResponse) -> i32 {
    let Some(MessageResponse::ErrorResponse(error)) = &response.message_response else {
        panic!("expected an error, got {response:?}");
    };
    assert!(!error.error_message.is_empty(), "the error says what is missing");
    error.error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_v1_service_answers_each_request_of_one_stream_in_order() {
    let mut dir = TestDir::new();
    let node = Node::start(&mut dir, &NodeOptions::default()).await;
    let mut client = refl::server_reflection_client::ServerReflectionClient::new(node.connect().await);
    let (requests, rx) = tokio::sync::mpsc::channel::<refl::ServerReflectionRequest>(1);
    let outgoing = futures_lite::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|request| (request, rx)) });
    let mut responses = client.server_reflection_info(outgoing).await.expect("the v1 reflection stream opens").into_inner();
    let election = "atomix/runtime/election/v1/election.proto";
    let questions = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("atomix.runtime.election.v1.LeaderElection.Enter".into()),
        MessageRequest::FileByFilename(election.into()),
        MessageRequest::FileContainingSymbol("atomix.runtime.election.v1.Nope".into()),
        MessageRequest::AllExtensionNumbersOfType("atomix.runtime.election.v1.Term".into()),
        MessageRequest::FileContainingExtension(refl::ExtensionRequest {
            containing_type: "atomix.runtime.election.v1.Term".into(),
            extension_number: 100,
        }),
    ];
    let mut answers = Vec::new();
    // Each question is sent only after the previous answer arrived: the server answers
    // while the client's side of the stream is still open.
    for question in questions.clone() {
        requests.send(ask(question.clone())).await.expect("the stream takes the request");
        let response = tokio::time::timeout(Duration::from_secs(10), responses.message())
            .await
            .expect("answered within 10 s")
            .expect("the stream stays healthy")
            .expect("one response per request");
        assert_eq!(response.original_request.as_ref().and_then(|r| r.message_request.clone()), Some(question), "answers come in order");
        answers.push(response);
    }
    drop(requests);
    let end = tokio::time::timeout(Duration::from_secs(10), responses.message()).await.expect("the stream ends");
    assert!(matches!(end, Ok(None)), "the server ends the stream with OK once the client closed its side: {end:?}");

    let Some(MessageResponse::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("expected the service list, got {:?}", answers[0]);
    };
    assert!(list.service.iter().any(|s| s.name == "atomix.runtime.election.v1.LeaderElection"), "{list:?}");
    assert!(!list.service.iter().any(|s| s.name == "atomix.multiraft.v1.Node"), "the client listener does not serve Node: {list:?}");
    // The method's file, then its dependency; asked again, the file alone (sent already).
    assert_eq!(file_names(&answers[1]), [election, "atomix/runtime/v1/primitive.proto"]);
    assert_eq!(file_names(&answers[2]), [election]);
    let file = FileDescriptorProto::decode(
        match &answers[2].message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto[0].clone(),
            other => panic!("expected a file, got {other:?}"),
        }
        .as_ref(),
    )
    .expect("decodes");
    let service = file.service.iter().find(|s| s.name() == "LeaderElection").expect("the file defines LeaderElection");
    assert!(service.method.iter().any(|m| m.name() == "Enter" && m.input_type() == ".atomix.runtime.election.v1.EnterRequest"));
    const NOT_FOUND: i32 = 5;
    assert_eq!(error_code(&answers[3]), NOT_FOUND);
    let Some(MessageResponse::AllExtensionNumbersResponse(numbers)) = &answers[4].message_response else {
        panic!("expected extension numbers, got {:?}", answers[4]);
    };
    assert_eq!((numbers.base_type_name.as_str(), numbers.extension_number.len()), ("atomix.runtime.election.v1.Term", 0));
    assert_eq!(error_code(&answers[5]), NOT_FOUND);
}
