//! What the edge fuzzer throws at a connection, as proptest strategies: raw bytes, mangled
//! prefaces, hand-built HTTP/2 frames (lying lengths, unknown types, bad stream ids,
//! invalid SETTINGS, WINDOW_UPDATE overflow, CONTINUATION / RST_STREAM / PING floods,
//! headers with bytes HTTP/2 forbids), and gRPC calls over a real HTTP/2 client with lying
//! length prefixes, compressed flags, random protobuf bodies to every served method, odd
//! paths, many and huge headers, and bad `grpc-timeout` values.
use proptest::collection::vec;
use proptest::prelude::*;
use prost_reflect::MessageDescriptor;

use super::frames::*;
use super::valid::random_message;

/// A method the client listener serves (from reflection and the descriptor set).
#[derive(Clone, Debug)]
pub struct MethodInfo {
    pub path: String,
    /// The server streams responses (the call may stay open until the client leaves).
    pub streaming: bool,
    /// The request message type.
    pub input: MessageDescriptor,
}

/// One fuzzed connection.
#[derive(Clone, Debug)]
pub enum Conn {
    /// Bytes written on a raw TCP connection.
    Raw(RawCase),
    /// One call made with the `h2` client library.
    Grpc(GrpcCase),
}

#[derive(Clone, Debug)]
pub enum RawCase {
    /// Random bytes, optionally after a valid preface and SETTINGS.
    Bytes { after_preface: bool, bytes: Vec<u8> },
    /// The first `keep` bytes of the preface, one byte optionally replaced, then `tail`.
    Preface { keep: usize, corrupt: Option<(usize, u8)>, tail: Vec<u8> },
    /// A valid preface and SETTINGS, then these frames.
    Frames(Vec<FrameCase>),
}

/// How a frame header's length relates to the payload that follows it.
#[derive(Clone, Copy, Debug)]
pub enum Len {
    Exact,
    Longer(u16),
    Shorter(u16),
    Any(u32),
}

impl Len {
    fn declared(self, payload_len: usize) -> u32 {
        match self {
            Len::Exact => payload_len as u32,
            Len::Longer(extra) => payload_len as u32 + u32::from(extra),
            Len::Shorter(less) => (payload_len as u32).saturating_sub(u32::from(less)),
            Len::Any(value) => value & 0x00ff_ffff,
        }
    }
}

#[derive(Clone, Debug)]
pub enum FrameCase {
    Any {
        kind: u8,
        flags: u8,
        stream_id: u32,
        len: Len,
        payload: Vec<u8>,
    },
    Settings {
        flags: u8,
        settings: Vec<(u16, u32)>,
    },
    WindowUpdate {
        stream_id: u32,
        increments: Vec<u32>,
    },
    PingFlood {
        count: u16,
        flags: u8,
    },
    /// `count` calls opened (HEADERS) and reset at once (RST_STREAM), on new streams.
    RstFlood {
        path: String,
        count: u16,
        code: u32,
    },
    /// HEADERS without END_HEADERS, then `count` CONTINUATION frames of `chunk` bytes.
    ContinuationFlood {
        count: u16,
        chunk: u16,
        end: bool,
    },
    /// A header block of literal fields (any bytes), optionally ending the stream.
    Headers {
        stream_id: u32,
        fields: Vec<(Vec<u8>, Vec<u8>)>,
        end_stream: bool,
    },
    /// A header block of random bytes (HPACK garbage).
    HpackGarbage {
        stream_id: u32,
        block: Vec<u8>,
    },
    /// A gRPC call on stream 1 with raw headers (extra fields of any bytes) and body.
    Call {
        path: Vec<u8>,
        extra: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
        end_stream: bool,
    },
}

/// A gRPC call through the `h2` client library (well-formed HTTP/2, odd gRPC).
#[derive(Clone, Debug)]
pub struct GrpcCase {
    pub path: String,
    /// The method's known shape, `None` for paths the server does not serve.
    pub streaming: Option<bool>,
    pub content_type: Option<String>,
    pub timeout: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub messages: Vec<Message>,
    /// Sizes of the DATA frames the body is cut into (the rest goes in a last frame).
    pub cuts: Vec<u16>,
}

/// One gRPC message on the wire: compressed flag, length prefix (maybe lying), payload.
#[derive(Clone, Debug)]
pub struct Message {
    pub flag: u8,
    pub len: Len,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.flag);
        let declared = match self.len {
            Len::Any(value) => value,
            other => other.declared(self.payload.len()),
        };
        out.extend_from_slice(&declared.to_be_bytes());
        out.extend_from_slice(&self.payload);
    }
}

impl RawCase {
    /// The bytes written to the connection.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            RawCase::Bytes { after_preface, bytes } => {
                if *after_preface {
                    out.extend_from_slice(PREFACE);
                    put_settings(&mut out, &[], 0);
                }
                out.extend_from_slice(bytes);
            }
            RawCase::Preface { keep, corrupt, tail } => {
                out.extend_from_slice(&PREFACE[..(*keep).min(PREFACE.len())]);
                if let Some((at, byte)) = corrupt {
                    if !out.is_empty() {
                        let at = at % out.len();
                        out[at] = *byte;
                    }
                }
                out.extend_from_slice(tail);
            }
            RawCase::Frames(frames) => {
                out.extend_from_slice(PREFACE);
                put_settings(&mut out, &[], 0);
                for frame in frames {
                    frame.encode(&mut out);
                }
            }
        }
        out
    }
}

impl FrameCase {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            FrameCase::Any { kind, flags, stream_id, len, payload } => {
                put_frame_lying(out, len.declared(payload.len()), *kind, *flags, *stream_id, payload)
            }
            FrameCase::Settings { flags, settings } => put_settings(out, settings, *flags),
            FrameCase::WindowUpdate { stream_id, increments } => {
                for increment in increments {
                    put_frame(out, WINDOW_UPDATE, 0, *stream_id, &increment.to_be_bytes());
                }
            }
            FrameCase::PingFlood { count, flags } => {
                for i in 0..u64::from(*count) {
                    put_frame(out, PING, *flags, 0, &i.to_be_bytes());
                }
            }
            FrameCase::RstFlood { path, count, code } => {
                let block = header_block(&grpc_request_fields(path.as_bytes()));
                for i in 0..u32::from(*count) {
                    let stream_id = 2 * i + 1;
                    put_frame(out, HEADERS, END_HEADERS, stream_id, &block);
                    put_frame(out, RST_STREAM, 0, stream_id, &code.to_be_bytes());
                }
            }
            FrameCase::ContinuationFlood { count, chunk, end } => {
                let mut fields = grpc_request_fields(b"/grpc.health.v1.Health/Check");
                fields.push((b"x-flood".to_vec(), vec![b'a'; usize::from(*chunk)]));
                put_frame(out, HEADERS, 0, 1, &header_block(&fields));
                let filler = header_block(&[(b"x-more".to_vec(), vec![b'b'; usize::from(*chunk)])]);
                for i in 0..*count {
                    let last = i + 1 == *count;
                    put_frame(out, CONTINUATION, if last && *end { END_HEADERS } else { 0 }, 1, &filler);
                }
            }
            FrameCase::Headers { stream_id, fields, end_stream } => {
                let flags = END_HEADERS | if *end_stream { END_STREAM } else { 0 };
                put_frame(out, HEADERS, flags, *stream_id, &header_block(fields));
            }
            FrameCase::HpackGarbage { stream_id, block } => put_frame(out, HEADERS, END_HEADERS | END_STREAM, *stream_id, block),
            FrameCase::Call { path, extra, body, end_stream } => {
                let mut fields = grpc_request_fields(path);
                fields.extend(extra.iter().cloned());
                put_frame(out, HEADERS, END_HEADERS, 1, &header_block(&fields));
                put_frame(out, DATA, if *end_stream { END_STREAM } else { 0 }, 1, body);
            }
        }
    }
}

fn stream_id() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), Just(1), Just(2), Just(3), Just(0x7fff_ffff), Just(0x8000_0001), any::<u32>()]
}

fn len() -> impl Strategy<Value = Len> {
    prop_oneof![
        4 => Just(Len::Exact),
        1 => (1u16..64).prop_map(Len::Longer),
        1 => (1u16..64).prop_map(Len::Shorter),
        1 => any::<u32>().prop_map(Len::Any),
    ]
}

/// Settings identifiers 1-6 with values around their limits, plus unknown identifiers.
fn setting() -> impl Strategy<Value = (u16, u32)> {
    let value = prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(16_383),
        Just(16_384),
        Just((1 << 24) - 1),
        Just(1 << 24),
        Just((1 << 31) - 1),
        Just(1 << 31),
        Just(u32::MAX),
        any::<u32>(),
    ];
    (prop_oneof![0u16..=8, any::<u16>()], value)
}

/// Header names and values with bytes HTTP/2 forbids in them now and then.
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => vec(b'a'..=b'z', 0..16),
        1 => vec(any::<u8>(), 0..max),
        1 => prop::sample::select(vec![
            b":path".to_vec(), b":method".to_vec(), b":status".to_vec(), b":protocol".to_vec(), b"connection".to_vec(),
            b"te".to_vec(), b"content-length".to_vec(), b"grpc-timeout".to_vec(), b"Upper-Case".to_vec(), b"".to_vec(),
            b"bad\r\nname".to_vec(), b"nul\0".to_vec(), b"grpc-encoding".to_vec(), b"content-type".to_vec(),
        ]),
    ]
}

fn header_field() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (header_bytes(32), prop_oneof![3 => header_bytes(64), 1 => (1usize..40_000).prop_map(|n| vec![b'v'; n])])
}

fn frame_case(paths: Vec<String>) -> impl Strategy<Value = FrameCase> {
    let any_frame = (any::<u8>(), any::<u8>(), stream_id(), len(), vec(any::<u8>(), 0..64))
        .prop_map(|(kind, flags, stream_id, len, payload)| FrameCase::Any { kind: kind % 12, flags, stream_id, len, payload });
    let increment = prop_oneof![Just(0u32), Just(1), Just((1 << 31) - 1), Just(1 << 31), Just(u32::MAX), any::<u32>()];
    let raw_path = prop_oneof![
        3 => prop::sample::select(paths.clone()).prop_map(String::into_bytes),
        1 => header_bytes(256),
        1 => (1usize..20_000).prop_map(|n| [&b"/"[..], &vec![b'x'; n]].concat()),
    ];
    let body = (vec(message(None), 0..3), any::<bool>()).prop_map(|(messages, end_stream)| {
        let mut body = Vec::new();
        for m in &messages {
            m.encode(&mut body);
        }
        (body, end_stream)
    });
    prop_oneof![
        4 => any_frame,
        2 => (prop_oneof![Just(0u8), Just(ACK), any::<u8>()], vec(setting(), 0..6))
            .prop_map(|(flags, settings)| FrameCase::Settings { flags, settings }),
        2 => (prop_oneof![Just(0u32), Just(1), stream_id()], vec(increment, 1..4))
            .prop_map(|(stream_id, increments)| FrameCase::WindowUpdate { stream_id, increments }),
        1 => (1u16..3000, prop_oneof![Just(0u8), Just(ACK)]).prop_map(|(count, flags)| FrameCase::PingFlood { count, flags }),
        1 => (prop::sample::select(paths), 1u16..600, prop_oneof![Just(0u32), Just(8), any::<u32>()])
            .prop_map(|(path, count, code)| FrameCase::RstFlood { path, count, code }),
        1 => (1u16..2000, 0u16..2048, any::<bool>()).prop_map(|(count, chunk, end)| FrameCase::ContinuationFlood { count, chunk, end }),
        3 => (stream_id(), vec(header_field(), 0..12), any::<bool>())
            .prop_map(|(stream_id, fields, end_stream)| FrameCase::Headers { stream_id, fields, end_stream }),
        1 => (stream_id(), vec(any::<u8>(), 0..96)).prop_map(|(stream_id, block)| FrameCase::HpackGarbage { stream_id, block }),
        3 => (raw_path, vec(header_field(), 0..4), body)
            .prop_map(|(path, extra, (body, end_stream))| FrameCase::Call { path, extra, body, end_stream }),
    ]
}

fn raw_case(paths: Vec<String>) -> impl Strategy<Value = RawCase> {
    prop_oneof![
        2 => (any::<bool>(), vec(any::<u8>(), 0..2048)).prop_map(|(after_preface, bytes)| RawCase::Bytes { after_preface, bytes }),
        2 => (0usize..=24, prop::option::of((any::<usize>(), any::<u8>())), vec(any::<u8>(), 0..64))
            .prop_map(|(keep, corrupt, tail)| RawCase::Preface { keep, corrupt, tail }),
        6 => vec(frame_case(paths), 1..6).prop_map(RawCase::Frames),
    ]
}

/// Protobuf-shaped bytes (valid tags and wire types, random contents, nested once), so
/// that many requests decode and reach the handlers; or plain random bytes.
fn proto_bytes() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        (1u32..12, any::<u64>()).prop_map(|(field, value)| {
            let mut out = Vec::new();
            put_varint(&mut out, u64::from(field << 3));
            put_varint(&mut out, value % 1_000_000);
            out
        }),
        (1u32..12, vec(any::<u8>(), 0..24)).prop_map(|(field, bytes)| len_field(field, &bytes)),
        (1u32..12, "[a-z0-9:/-]{0,24}").prop_map(|(field, text)| len_field(field, text.as_bytes())),
    ];
    let nested = (1u32..6, vec(leaf.clone(), 0..4)).prop_map(|(field, inner)| len_field(field, &inner.concat()));
    prop_oneof![
        3 => vec(prop_oneof![2 => leaf, 1 => nested], 0..5).prop_map(|fields| fields.concat()),
        1 => vec(any::<u8>(), 0..64),
    ]
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn len_field(field: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, u64::from(field << 3 | 2));
    put_varint(&mut out, bytes.len() as u64);
    out.extend_from_slice(bytes);
    out
}

/// A gRPC message: mostly honest prefixes; the payload a well-formed message of `input`
/// (when known), protobuf-shaped bytes or random bytes.
pub fn message(input: Option<MessageDescriptor>) -> impl Strategy<Value = Message> {
    let flag = prop_oneof![8 => Just(0u8), 2 => Just(1u8), 1 => any::<u8>()];
    let len = prop_oneof![
        8 => Just(Len::Exact),
        1 => (1u16..64).prop_map(Len::Longer),
        1 => (1u16..64).prop_map(Len::Shorter),
        1 => prop_oneof![Just((4u32 << 20) + 1), Just(u32::MAX), any::<u32>()].prop_map(Len::Any),
    ];
    let payload = match input {
        Some(input) => prop_oneof![2 => proto_bytes(), 3 => any::<u64>().prop_map(move |seed| random_message(&input, seed))].boxed(),
        None => proto_bytes().boxed(),
    };
    (flag, len, payload).prop_map(|(flag, len, payload)| Message { flag, len, payload })
}

fn grpc_timeout() -> impl Strategy<Value = String> {
    prop_oneof!["[0-9]{1,8}[HMSmun]", Just("0n".to_owned()), Just("99999999H".to_owned()), "[0-9]{9,12}[HMSmun]", "[ -~]{0,12}",]
}

fn odd_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just("/a.B/".to_owned()),
        Just("/grpc.health.v1.Health/Check/extra".to_owned()),
        "/[a-zA-Z0-9._-]{0,40}/[a-zA-Z0-9._-]{0,40}",
        (1usize..12_000).prop_map(|n| format!("/{}/{}", "s".repeat(n), "m".repeat(n / 2))),
    ]
}

fn grpc_case(methods: Vec<MethodInfo>) -> impl Strategy<Value = GrpcCase> {
    let target = prop_oneof![
        6 => prop::sample::select(methods).prop_map(|m| (m.path, Some(m.streaming), Some(m.input))),
        1 => odd_path().prop_map(|path| (path, None, None)),
    ];
    let content_type = prop_oneof![
        8 => Just(Some("application/grpc".to_owned())),
        1 => Just(Some("application/grpc+proto".to_owned())),
        1 => prop::option::of("[ -~]{0,30}"),
    ];
    let header = (
        prop_oneof![3 => "x-[a-z0-9-]{1,20}", 1 => Just("grpc-encoding".to_owned()), 1 => Just("grpc-timeout".to_owned()), 1 => "[a-z]{1,8}"],
        prop_oneof![8 => vec(0x20u8..0x7f, 0..40), 2 => vec(0x80u8..=0xff, 0..40), 1 => (1usize..30_000).prop_map(|n| vec![b'h'; n])],
    );
    let headers = prop_oneof![6 => vec(header.clone(), 0..3), 1 => vec(header, 0..60)];
    let shaped = (target, content_type, prop::option::of(grpc_timeout()), headers, vec(0u16..200, 0..4)).prop_flat_map(
        |((path, streaming, input), content_type, timeout, headers, cuts)| {
            let messages = prop_oneof![6 => vec(message(input.clone()), 1..=1), 1 => vec(message(input), 0..=3)];
            (Just((path, streaming, content_type, timeout, headers, cuts)), messages)
        },
    );
    shaped.prop_map(|((path, streaming, content_type, timeout, headers, cuts), messages)| GrpcCase {
        path,
        streaming,
        content_type,
        timeout,
        headers,
        messages,
        cuts,
    })
}

/// One well-formed call to every method at once, each with a random request (a
/// well-formed message of its input type or random protobuf-shaped bytes).
pub fn sweep(methods: Vec<MethodInfo>) -> impl Strategy<Value = Vec<Conn>> {
    let calls: Vec<_> = methods
        .into_iter()
        .map(|method| {
            let input = method.input.clone();
            let payload = prop_oneof![3 => any::<u64>().prop_map(move |seed| random_message(&input, seed)), 1 => proto_bytes()];
            payload.prop_map(move |payload| {
                Conn::Grpc(GrpcCase {
                    path: method.path.clone(),
                    streaming: Some(method.streaming),
                    content_type: Some("application/grpc".to_owned()),
                    timeout: None,
                    headers: Vec::new(),
                    messages: vec![Message { flag: 0, len: Len::Exact, payload }],
                    cuts: Vec::new(),
                })
            })
        })
        .collect();
    calls
}

/// One case: a few connections run at the same time.
pub fn batch(methods: Vec<MethodInfo>, max_connections: usize) -> impl Strategy<Value = Vec<Conn>> {
    let paths: Vec<String> = methods.iter().map(|m| m.path.clone()).collect();
    let conn = prop_oneof![
        1 => raw_case(paths).prop_map(Conn::Raw),
        1 => grpc_case(methods).prop_map(Conn::Grpc),
    ];
    vec(conn, 1..=max_connections)
}
