//! Random but well-formed request messages of any method, built from its input type's
//! descriptor: so that fuzzed calls get past decoding and reach the handlers. Numbers lean
//! to edge values (0, 1, the maximum, negatives); 64-bit unsigned fields (session ids,
//! indexes) are never small, so a fuzzed call cannot name the witness client's session.
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The encoding of a random message of type `descriptor`, from `seed`.
pub fn random_message(descriptor: &MessageDescriptor, seed: u64) -> Vec<u8> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    message(descriptor, &mut rng, 0).encode_to_vec()
}

fn message(descriptor: &MessageDescriptor, rng: &mut ChaCha8Rng, depth: u32) -> DynamicMessage {
    let mut message = DynamicMessage::new(descriptor.clone());
    for field in descriptor.fields() {
        if field.is_map() || !rng.random_bool(0.7) {
            continue;
        }
        let value = if field.is_list() {
            let count = rng.random_range(0..3);
            let items: Vec<Value> = (0..count).filter_map(|_| value(&field, rng, depth)).collect();
            Some(Value::List(items))
        } else {
            value(&field, rng, depth)
        };
        if let Some(value) = value {
            message.set_field(&field, value);
        }
    }
    message
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, choices: &[T]) -> T {
    choices[rng.random_range(0..choices.len())]
}

fn value(field: &FieldDescriptor, rng: &mut ChaCha8Rng, depth: u32) -> Option<Value> {
    Some(match field.kind() {
        Kind::Double => Value::F64(pick(rng, &[0.0, -1.0, 1e300, f64::NAN])),
        Kind::Float => Value::F32(pick(rng, &[0.0, -1.0, 3.5, f32::INFINITY])),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(pick(rng, &[0, 1, -1, 7, i32::MIN, i32::MAX])),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(pick(rng, &[0, 1, -1, 1000, i64::MIN, i64::MAX])),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(pick(rng, &[0, 1, 2, 3, 1000, u32::MAX])),
        Kind::Uint64 | Kind::Fixed64 => {
            let large = (1 << 40) + rng.random_range(0..1000);
            Value::U64(pick(rng, &[0, large, u64::MAX]))
        }
        Kind::Bool => Value::Bool(rng.random()),
        Kind::String => {
            let len = pick(rng, &[0usize, 1, 4, 12, 300, 2000]);
            let alphabet = b"abcdefgh0123456789-:/._ ";
            Value::String((0..len).map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())])).collect())
        }
        Kind::Bytes => Value::Bytes(Bytes::from((0..rng.random_range(0..24)).map(|_| rng.random::<u8>()).collect::<Vec<u8>>())),
        Kind::Enum(descriptor) => {
            let numbers: Vec<i32> = descriptor.values().map(|v| v.number()).chain([99, -1]).collect();
            Value::EnumNumber(pick(rng, &numbers))
        }
        Kind::Message(descriptor) if depth < 3 => Value::Message(message(&descriptor, rng, depth + 1)),
        Kind::Message(_) => return None,
    })
}
