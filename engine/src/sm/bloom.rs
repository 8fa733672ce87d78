//! The Bloom filter of a driver KeepAlive: the sequence numbers of the commands the client
//! still has open, as the Atomix driver builds and serializes it with the Go library
//! `github.com/bits-and-blooms/bloom/v3` (v3.3.1), and the membership test its server runs.
//!
//! Compatible bit for bit with that library:
//! - an item's four base hashes are MurmurHash3 x64 128-bit (seed 0) of the item, then of the
//!   item with one byte `1` appended; hash `i` of `k` is
//!   `(h[i % 2] + i * h[2 + ((i + i % 2) % 4) / 2]) mod 2^64 mod m`;
//! - a sequence number is the 8 bytes of its big-endian encoding;
//! - the JSON is `{"m":M,"k":K,"b":BITSET}` where `BITSET` is a string, URL-safe base64 with
//!   padding, of the bitset's length in bits (u64 big-endian) followed by its 64-bit words
//!   (big-endian, bit `i` in word `i / 64` at `1 << (i % 64)`); bits at or past the bitset's
//!   length read as clear (the library's `New(0, k)` has `m = 1` over an empty bitset).
//!
//! Two bounds keep a hostile filter cheap, both documented in the README: a bitset holds at
//! most [`MAX_FILTER_BITS`] bits (else the filter is refused), and a test looks at most
//! [`MAX_TESTED_HASHES`] hash positions. The library's `NewWithEstimates(0, p)` — what the
//! driver sends when nothing is open — has `k = 2^63`; its test stops at the first clear bit
//! (the first, over an empty bitset), as this one does. Only a filter whose first
//! [`MAX_TESTED_HASHES`] positions for an item are all set while its `k` is larger answers
//! "contained" where the library might go on to find a clear bit: the safe side, since a
//! contained command keeps its output.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;

/// The largest bitset accepted, in bits (128 KiB of words; a session keeps its latest
/// filter). The driver sizes its filter at about 6.2 bits per open command, so this holds
/// over 160,000 of them, more than a session may leave unacknowledged.
pub const MAX_FILTER_BITS: u64 = 1 << 20;
/// The most hash positions one membership test examines (the driver uses 5).
pub const MAX_TESTED_HASHES: u64 = 64;

/// A Bloom filter in the layout of `bits-and-blooms/bloom/v3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BloomFilter {
    m: u64,
    k: u64,
    /// The bitset's length in bits; bits at or past it read as clear.
    bits: u64,
    words: Vec<u64>,
}

/// Why a filter was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BloomError {
    /// The bytes are not the library's JSON.
    Json(String),
    /// `m` is zero or missing (the library would divide by zero).
    ZeroSize,
    /// The bitset is larger than [`MAX_FILTER_BITS`].
    TooLarge { bits: u64 },
    /// The bitset's words do not match its length.
    BitsetLength { bits: u64, words: usize },
}

impl fmt::Display for BloomError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BloomError::Json(reason) => write!(f, "the filter is not the JSON of a bits-and-blooms Bloom filter: {reason}"),
            BloomError::ZeroSize => f.write_str("the filter's size m is zero or missing; it must be at least 1"),
            BloomError::TooLarge { bits } => write!(f, "the filter's bitset has {bits} bits; at most {MAX_FILTER_BITS} are accepted"),
            BloomError::BitsetLength { bits, words } => {
                write!(f, "the filter's bitset of {bits} bits carries {words} 64-bit words; it needs {}", words_for(*bits))
            }
        }
    }
}

impl std::error::Error for BloomError {}

fn words_for(bits: u64) -> u64 {
    bits.div_ceil(64)
}

/// The library's four base hashes of `data`.
fn base_hashes(data: &[u8]) -> [u64; 4] {
    let first = murmur3_128(data);
    let mut extended = Vec::with_capacity(data.len() + 1);
    extended.extend_from_slice(data);
    extended.push(1);
    let second = murmur3_128(&extended);
    [first as u64, (first >> 64) as u64, second as u64, (second >> 64) as u64]
}

fn murmur3_128(data: &[u8]) -> u128 {
    // Reading from a slice cannot fail.
    murmur3::murmur3_x64_128(&mut std::io::Cursor::new(data), 0).unwrap_or_default()
}

/// Hash position `i` before the modulo (the library's `location`).
fn location(h: &[u64; 4], i: u64) -> u64 {
    h[(i % 2) as usize].wrapping_add(i.wrapping_mul(h[2 + (((i + (i % 2)) % 4) / 2) as usize]))
}

/// The raw hash positions of `data` for `k` hashes, as the library's `Locations` returns
/// them (before the modulo by `m`).
pub fn locations(data: &[u8], k: u64) -> Vec<u64> {
    let h = base_hashes(data);
    (0..k).map(|i| location(&h, i)).collect()
}

/// The bytes the driver adds for a sequence number.
pub fn sequence_key(sequence_num: u64) -> [u8; 8] {
    sequence_num.to_be_bytes()
}

impl BloomFilter {
    /// An empty filter of `m` bits and `k` hashes (the library's `New`: a zero `m` or `k`
    /// becomes 1, the bitset keeps the `m` asked for). Panics on `m` above
    /// [`MAX_FILTER_BITS`]; use it for filters this code builds.
    pub fn new(m: u64, k: u64) -> BloomFilter {
        assert!(m <= MAX_FILTER_BITS, "a Bloom filter of {m} bits is above the limit");
        BloomFilter { m: m.max(1), k: k.max(1), bits: m, words: vec![0; words_for(m) as usize] }
    }

    /// A filter sized for `n` items at false-positive rate `fp`, as the library's
    /// `NewWithEstimates` (the driver calls it with its open requests and 0.05). For `n = 0`
    /// the library's `k` is Go's conversion of NaN, `2^63` on amd64; so is this one's.
    pub fn with_estimates(n: u64, fp: f64) -> BloomFilter {
        let ln2 = std::f64::consts::LN_2;
        let m = (-(n as f64) * fp.ln() / (ln2 * ln2)).ceil();
        let k = (ln2 * m / n as f64).ceil();
        let m = if m.is_nan() || m <= 0.0 { 0 } else { m as u64 };
        let k = if k.is_nan() || k >= 18_446_744_073_709_551_616.0 { 1 << 63 } else { k as u64 };
        BloomFilter::new(m, k)
    }

    /// Rebuilds a filter from its parts (a decoded log entry or snapshot), checking them.
    pub fn from_parts(m: u64, k: u64, bits: u64, words: Vec<u64>) -> Result<BloomFilter, BloomError> {
        if m == 0 {
            return Err(BloomError::ZeroSize);
        }
        if bits > MAX_FILTER_BITS {
            return Err(BloomError::TooLarge { bits });
        }
        if words.len() as u64 != words_for(bits) {
            return Err(BloomError::BitsetLength { bits, words: words.len() });
        }
        Ok(BloomFilter { m, k, bits, words })
    }

    /// The size `m` the hash positions are taken modulo.
    pub fn m(&self) -> u64 {
        self.m
    }
    /// The number of hashes `k`.
    pub fn k(&self) -> u64 {
        self.k
    }
    /// The bitset's length in bits.
    pub fn bits(&self) -> u64 {
        self.bits
    }
    /// The bitset's words.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    fn bit(&self, i: u64) -> bool {
        i < self.bits && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds `data` (sets at most [`MAX_TESTED_HASHES`] positions).
    pub fn add(&mut self, data: &[u8]) {
        let h = base_hashes(data);
        for i in 0..self.k.min(MAX_TESTED_HASHES) {
            let position = location(&h, i) % self.m;
            if position < self.bits {
                self.words[(position / 64) as usize] |= 1 << (position % 64);
            }
        }
    }

    /// Adds a sequence number as the driver does.
    pub fn add_sequence(&mut self, sequence_num: u64) {
        self.add(&sequence_key(sequence_num));
    }

    /// The library's `Test`: whether every hash position of `data` is set.
    pub fn contains(&self, data: &[u8]) -> bool {
        let h = base_hashes(data);
        (0..self.k.min(MAX_TESTED_HASHES)).all(|i| self.bit(location(&h, i) % self.m))
    }

    /// Whether the filter contains a sequence number as the driver adds them.
    pub fn contains_sequence(&self, sequence_num: u64) -> bool {
        self.contains(&sequence_key(sequence_num))
    }

    /// The library's JSON for this filter, byte for byte as Go's `json.Marshal` writes it.
    pub fn to_json(&self) -> String {
        let mut bitset = Vec::with_capacity(8 + self.words.len() * 8);
        bitset.extend_from_slice(&self.bits.to_be_bytes());
        for word in &self.words {
            bitset.extend_from_slice(&word.to_be_bytes());
        }
        format!("{{\"m\":{},\"k\":{},\"b\":\"{}\"}}", self.m, self.k, URL_SAFE.encode(bitset))
    }

    /// Decodes the library's JSON. Field names match case-insensitively and unknown fields
    /// are ignored, as Go's `encoding/json` does; what the library would crash on (no `m`,
    /// no bitset) or what exceeds [`MAX_FILTER_BITS`] is refused.
    pub fn from_json(json: &[u8]) -> Result<BloomFilter, BloomError> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| BloomError::Json(e.to_string()))?;
        let object = value.as_object().ok_or_else(|| BloomError::Json("the filter is not a JSON object".into()))?;
        let field = |name: &str| object.get(name).or_else(|| object.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, v)| v));
        let number = |name: &str| -> Result<u64, BloomError> {
            match field(name) {
                None | Some(serde_json::Value::Null) => Ok(0),
                Some(value) => value.as_u64().ok_or_else(|| BloomError::Json(format!("{name:?} is not an unsigned integer: {value}"))),
            }
        };
        let m = number("m")?;
        let k = number("k")?;
        let encoded = match field("b") {
            Some(serde_json::Value::String(encoded)) => encoded,
            Some(other) => return Err(BloomError::Json(format!("the bitset \"b\" is not a string: {other}"))),
            None => return Err(BloomError::Json("the filter has no bitset \"b\"".into())),
        };
        let raw = URL_SAFE.decode(encoded).map_err(|e| BloomError::Json(format!("the bitset is not URL-safe base64: {e}")))?;
        let Some((length, body)) = raw.split_first_chunk::<8>() else {
            return Err(BloomError::Json(format!("the bitset is {} bytes; it needs at least its 8-byte length", raw.len())));
        };
        let bits = u64::from_be_bytes(*length);
        if bits > MAX_FILTER_BITS {
            return Err(BloomError::TooLarge { bits });
        }
        if body.len() % 8 != 0 {
            return Err(BloomError::Json(format!("the bitset's words take {} bytes, not a multiple of 8", body.len())));
        }
        let words = body.chunks_exact(8).map(|w| u64::from_be_bytes(w.try_into().unwrap_or_default())).collect();
        BloomFilter::from_parts(m, k, bits, words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_sequence_numbers_are_contained_and_survive_json() {
        let mut filter = BloomFilter::with_estimates(3, 0.05);
        for seq in [4, 9, 1 << 40] {
            filter.add_sequence(seq);
        }
        let decoded = BloomFilter::from_json(filter.to_json().as_bytes()).expect("decodes");
        assert_eq!(decoded, filter);
        assert!([4, 9, 1 << 40].iter().all(|&s| decoded.contains_sequence(s)));
    }

    #[test]
    fn the_empty_filter_of_the_driver_contains_nothing() {
        let filter = BloomFilter::with_estimates(0, 0.05);
        assert_eq!(filter.to_json(), r#"{"m":1,"k":9223372036854775808,"b":"AAAAAAAAAAA="}"#);
        assert!((0..1000).all(|s| !filter.contains_sequence(s)));
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        type Expected = fn(&BloomError) -> bool;
        let cases: &[(&str, Expected)] = &[
            ("", |e| matches!(e, BloomError::Json(_))),
            ("null", |e| matches!(e, BloomError::Json(_))),
            ("[1,2]", |e| matches!(e, BloomError::Json(_))),
            (r#"{"m":7,"k":5}"#, |e| matches!(e, BloomError::Json(r) if r.contains("no bitset"))),
            (r#"{"m":0,"k":5,"b":"AAAAAAAAAAA="}"#, |e| *e == BloomError::ZeroSize),
            (r#"{"m":-1,"k":5,"b":"AAAAAAAAAAA="}"#, |e| matches!(e, BloomError::Json(_))),
            (r#"{"m":1.5,"k":5,"b":"AAAAAAAAAAA="}"#, |e| matches!(e, BloomError::Json(_))),
            (r#"{"m":7,"k":5,"b":"not base64!"}"#, |e| matches!(e, BloomError::Json(_))),
            (r#"{"m":7,"k":5,"b":"AAAA"}"#, |e| matches!(e, BloomError::Json(r) if r.contains("8-byte length"))),
            (r#"{"m":7,"k":5,"b":"AAAAAAAAAAc="}"#, |e| *e == BloomError::BitsetLength { bits: 7, words: 0 }),
            (r#"{"m":7,"k":5,"b":"__________8="}"#, |e| matches!(e, BloomError::TooLarge { .. })),
        ];
        for (json, expected) in cases {
            let error = BloomFilter::from_json(json.as_bytes()).expect_err(json);
            assert!(expected(&error), "{json}: {error:?}");
            assert!(!error.to_string().is_empty());
        }
    }

    #[test]
    fn field_names_match_case_insensitively_and_unknown_fields_are_ignored() {
        let filter = BloomFilter::from_json(br#"{"M":7,"K":5,"B":"AAAAAAAAAAcAAAAAAAAAFw==","extra":[1]}"#).expect("decodes");
        assert_eq!((filter.m(), filter.k(), filter.bits(), filter.words()), (7, 5, 7, &[0x17][..]));
    }

    #[test]
    fn a_huge_k_is_bounded_and_errs_on_the_contained_side() {
        let mut filter = BloomFilter::new(64, 1 << 40);
        filter.words = vec![u64::MAX];
        assert!(filter.contains_sequence(12345), "every position set");
        filter.words = vec![u64::MAX - 1];
        let h = base_hashes(&sequence_key(7));
        let hits_bit_zero = (0..MAX_TESTED_HASHES).any(|i| location(&h, i).is_multiple_of(64));
        assert_eq!(filter.contains_sequence(7), !hits_bit_zero);
    }
}
