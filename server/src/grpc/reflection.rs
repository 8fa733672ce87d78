//! The standard gRPC server reflection service, in both packages clients speak:
//! `grpc.reflection.v1` and the older `grpc.reflection.v1alpha` (grpcurl 1.8, for one).
//! It answers from the descriptor set compiled into the binary
//! ([`conclave_proto::FILE_DESCRIPTOR_SET`]), indexed once per process with `prost-reflect`,
//! so that tools list, describe and call the services with no `.proto` file at hand.
//!
//! Each listener mounts its own instance, which lists the services that listener's router
//! really serves. Every request on the stream gets one response, in order; a question that
//! cannot be answered (unknown file, symbol or extension) gets an `ErrorResponse` and the
//! stream goes on.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;
use std::sync::LazyLock;

use bytes::Bytes;
use conclave_proto::grpc::reflection::v1 as pb;
use pb::server_reflection_request::MessageRequest;
use pb::server_reflection_response::MessageResponse;
use prost::Message as _;
use prost_reflect::{DescriptorPool, FileDescriptor};

use super::requests::RequestStream;
use super::router::{split_path, Router};
use super::status::Status;
use super::stream::{OverflowPolicy, StreamLimits, StreamSink};

/// Path of `grpc.reflection.v1.ServerReflection/ServerReflectionInfo`.
pub const REFLECTION_V1_PATH: &str = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
/// Path of `grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo`.
pub const REFLECTION_V1ALPHA_PATH: &str = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

/// Responses queued per stream. The handler waits for room, so a client that stops reading
/// holds at most this many answers (each at most the descriptor set's size).
const LIMITS: StreamLimits = StreamLimits { max_queued_messages: 16, max_queued_bytes: 1 << 20, overflow: OverflowPolicy::EndStream };

/// The compiled descriptors, indexed by file name and by every fully qualified symbol.
struct DescriptorIndex {
    pool: DescriptorPool,
    /// Encoded `FileDescriptorProto` of every file, by file name.
    encoded: HashMap<String, Bytes>,
    /// Services, methods, messages, fields, oneofs, enums, enum values and extensions, by
    /// full name, to the file that defines them.
    symbols: HashMap<String, FileDescriptor>,
}

impl DescriptorIndex {
    fn new(descriptor_set: &[u8]) -> Result<DescriptorIndex, String> {
        let pool =
            DescriptorPool::decode(descriptor_set).map_err(|error| format!("the compiled descriptor set does not index: {error}"))?;
        let encoded =
            pool.files().map(|file| (file.name().to_owned(), Bytes::from(file.file_descriptor_proto().encode_to_vec()))).collect();
        let mut symbols = HashMap::new();
        for service in pool.services() {
            for method in service.methods() {
                symbols.insert(method.full_name().to_owned(), service.parent_file());
            }
            symbols.insert(service.full_name().to_owned(), service.parent_file());
        }
        for message in pool.all_messages() {
            for field in message.fields() {
                symbols.insert(field.full_name().to_owned(), message.parent_file());
            }
            for oneof in message.oneofs() {
                symbols.insert(oneof.full_name().to_owned(), message.parent_file());
            }
            symbols.insert(message.full_name().to_owned(), message.parent_file());
        }
        for enumeration in pool.all_enums() {
            for value in enumeration.values() {
                symbols.insert(value.full_name().to_owned(), enumeration.parent_file());
            }
            symbols.insert(enumeration.full_name().to_owned(), enumeration.parent_file());
        }
        for extension in pool.all_extensions() {
            symbols.insert(extension.full_name().to_owned(), extension.parent_file());
        }
        Ok(DescriptorIndex { pool, encoded, symbols })
    }

    /// `file` first, then every file it depends on, directly or not, that `sent` does not
    /// hold yet; records what it returns in `sent`. The client then holds every file it
    /// needs to build `file`'s descriptors.
    fn file_with_dependencies(&self, file: &FileDescriptor, sent: &mut HashSet<String>) -> pb::FileDescriptorResponse {
        let mut files = vec![self.encoded[file.name()].clone()];
        sent.insert(file.name().to_owned());
        let mut pending: Vec<FileDescriptor> = file.dependencies().collect();
        while let Some(dependency) = pending.pop() {
            if sent.insert(dependency.name().to_owned()) {
                files.push(self.encoded[dependency.name()].clone());
                pending.extend(dependency.dependencies());
            }
        }
        pb::FileDescriptorResponse { file_descriptor_proto: files }
    }
}

/// The index of the binary's own descriptor set, built on first use.
static INDEX: LazyLock<Result<DescriptorIndex, String>> = LazyLock::new(|| DescriptorIndex::new(conclave_proto::FILE_DESCRIPTOR_SET));

/// Reflection for one listener: the services its router serves.
pub struct ReflectionService {
    index: &'static DescriptorIndex,
    services: Vec<String>,
}

impl ReflectionService {
    /// Mounts `ServerReflectionInfo` of both reflection packages on `router`, listing every
    /// service `router` serves at that moment and the two reflection services. Call it after
    /// every other service of the listener is registered.
    pub fn register(router: &mut Router) -> Result<(), String> {
        let index = INDEX.as_ref().map_err(Clone::clone)?;
        let mut services: BTreeSet<String> = router.services().map(str::to_owned).collect();
        for path in [REFLECTION_V1_PATH, REFLECTION_V1ALPHA_PATH] {
            let (service, _) = split_path(path).expect("the reflection paths are well formed");
            services.insert(service.to_owned());
        }
        let reflection = Rc::new(ReflectionService { index, services: services.into_iter().collect() });
        for path in [REFLECTION_V1_PATH, REFLECTION_V1ALPHA_PATH] {
            let reflection = Rc::clone(&reflection);
            // The two packages' messages are the same on the wire (same fields, same numbers:
            // pinned by proto/tests/contract.rs), so both are served with the v1 types.
            router.bidi_streaming(path, LIMITS, move |requests, _ctx, sink| Rc::clone(&reflection).serve(requests, sink));
        }
        Ok(())
    }

    /// Answers each request of the stream in order until the client closes its side.
    async fn serve(self: Rc<Self>, mut requests: RequestStream, sink: StreamSink) -> Result<(), Status> {
        let mut sent = HashSet::new();
        while let Some(request) = requests.message_of::<pb::ServerReflectionRequest>().await? {
            let response = self.answer(request, &mut sent);
            sink.send_message(&response)
                .await
                .map_err(|error| Status::internal(format!("could not queue a reflection response: {error}")))?;
        }
        Ok(())
    }

    /// The response to one request; `sent` holds the files this stream has already sent.
    fn answer(&self, request: pb::ServerReflectionRequest, sent: &mut HashSet<String>) -> pb::ServerReflectionResponse {
        let answered = match &request.message_request {
            None => Err(Status::invalid_argument(
                "the reflection request asks nothing: set one of file_by_filename, file_containing_symbol, \
                 file_containing_extension, all_extension_numbers_of_type or list_services",
            )),
            Some(MessageRequest::ListServices(_)) => Ok(MessageResponse::ListServicesResponse(pb::ListServiceResponse {
                service: self.services.iter().map(|name| pb::ServiceResponse { name: name.clone() }).collect(),
            })),
            Some(MessageRequest::FileByFilename(name)) => self.file_by_name(name, sent),
            Some(MessageRequest::FileContainingSymbol(symbol)) => self.file_containing_symbol(symbol, sent),
            Some(MessageRequest::FileContainingExtension(extension)) => self.file_containing_extension(extension, sent),
            Some(MessageRequest::AllExtensionNumbersOfType(name)) => self.extension_numbers(name),
        };
        let message_response = answered.unwrap_or_else(|status| {
            MessageResponse::ErrorResponse(pb::ErrorResponse {
                error_code: status.code() as i32,
                error_message: status.message().to_owned(),
            })
        });
        pb::ServerReflectionResponse {
            valid_host: request.host.clone(),
            original_request: Some(request),
            message_response: Some(message_response),
        }
    }

    fn file_by_name(&self, name: &str, sent: &mut HashSet<String>) -> Result<MessageResponse, Status> {
        let file = self.index.pool.get_file_by_name(name).ok_or_else(|| Status::not_found(format!("unknown file {name:?}")))?;
        Ok(MessageResponse::FileDescriptorResponse(self.index.file_with_dependencies(&file, sent)))
    }

    fn file_containing_symbol(&self, symbol: &str, sent: &mut HashSet<String>) -> Result<MessageResponse, Status> {
        // Fully qualified names are accepted with or without protobuf's leading dot.
        let name = symbol.strip_prefix('.').unwrap_or(symbol);
        let file = self.index.symbols.get(name).ok_or_else(|| Status::not_found(format!("unknown symbol {symbol:?}")))?;
        Ok(MessageResponse::FileDescriptorResponse(self.index.file_with_dependencies(file, sent)))
    }

    fn file_containing_extension(&self, request: &pb::ExtensionRequest, sent: &mut HashSet<String>) -> Result<MessageResponse, Status> {
        let message = self.message(&request.containing_type)?;
        let extension = u32::try_from(request.extension_number).ok().and_then(|number| message.get_extension(number)).ok_or_else(|| {
            Status::not_found(format!("message {} has no extension number {}", message.full_name(), request.extension_number))
        })?;
        Ok(MessageResponse::FileDescriptorResponse(self.index.file_with_dependencies(&extension.parent_file(), sent)))
    }

    fn extension_numbers(&self, name: &str) -> Result<MessageResponse, Status> {
        let message = self.message(name)?;
        let mut numbers: Vec<i32> = message.extensions().filter_map(|extension| i32::try_from(extension.number()).ok()).collect();
        numbers.sort_unstable();
        Ok(MessageResponse::AllExtensionNumbersResponse(pb::ExtensionNumberResponse {
            base_type_name: message.full_name().to_owned(),
            extension_number: numbers,
        }))
    }

    fn message(&self, name: &str) -> Result<prost_reflect::MessageDescriptor, Status> {
        let bare = name.strip_prefix('.').unwrap_or(name);
        self.index.pool.get_message_by_name(bare).ok_or_else(|| Status::not_found(format!("unknown message type {name:?}")))
    }
}

#[cfg(test)]
mod tests;
