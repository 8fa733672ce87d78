//! Conclave's Bloom filter against filters the Go library of the Atomix driver
//! (`bits-and-blooms/bloom/v3`) built: `fixtures/bloom/bloom.jsonl`, made by
//! `fixtures/bloom/main.go` (see its README). For every filter, decoding its JSON and testing
//! every probed number gives exactly the library's answers, and building the same filter here
//! gives the same JSON byte for byte; the raw hash positions match too.

use std::collections::BTreeSet;

use conclave_engine::sm::bloom::{self, BloomFilter};
use serde_json::Value;

const FIXTURES: &str = include_str!("fixtures/bloom/bloom.jsonl");
const PROBE_LIMIT: u64 = 2100;
const SPECIALS: [u64; 7] = [1 << 16, 1 << 32, (1 << 32) + 1, 1 << 48, 1 << 63, u64::MAX - 1, u64::MAX];

fn numbers(value: &Value) -> Vec<u64> {
    value.as_array().expect("an array").iter().map(|v| v.as_u64().expect("a u64")).collect()
}

fn fixtures(kind: &str) -> Vec<Value> {
    let all: Vec<Value> = FIXTURES.lines().map(|line| serde_json::from_str(line).expect("a fixture line is JSON")).collect();
    let chosen: Vec<Value> = all.into_iter().filter(|f| (f["name"] == "locations") == (kind == "locations")).collect();
    assert!(!chosen.is_empty(), "no {kind} fixtures");
    chosen
}

#[test]
fn decoded_go_filters_answer_every_probe_as_the_library_does() {
    let mut answers = 0;
    for fixture in fixtures("filters") {
        let name = fixture["name"].as_str().expect("name");
        let filter = BloomFilter::from_json(fixture["filter"].as_str().expect("filter").as_bytes()).expect(name);
        assert_eq!((filter.m(), filter.k()), (fixture["m"].as_u64().unwrap(), fixture["k"].as_u64().unwrap()), "{name}");
        let contained: BTreeSet<u64> = numbers(&fixture["contained"]).into_iter().collect();
        let probes: Vec<u64> = (0..PROBE_LIMIT).chain(SPECIALS).collect();
        assert_eq!(probes.len() as u64, fixture["probed"].as_u64().unwrap(), "{name}: the probe list matches main.go");
        for seq in probes {
            assert_eq!(filter.contains_sequence(seq), contained.contains(&seq), "{name}: sequence number {seq}");
            answers += 1;
        }
        for member in numbers(&fixture["members"]) {
            assert!(contained.contains(&member), "{name}: the library contains its member {member}");
        }
    }
    assert!(answers > 45_000, "{answers} answers checked");
}

#[test]
fn filters_built_here_serialize_exactly_as_the_library_does() {
    for fixture in fixtures("filters") {
        let name = fixture["name"].as_str().expect("name");
        let mut filter = if let Some(rest) = name.strip_prefix("estimates n=") {
            let (n, fp) = rest.split_once(" fp=").expect("estimates n=N fp=P");
            BloomFilter::with_estimates(n.parse().unwrap(), fp.parse().unwrap())
        } else if name.starts_with("estimates consecutive") {
            BloomFilter::with_estimates(50, 0.05)
        } else {
            BloomFilter::new(fixture["m"].as_u64().unwrap(), fixture["k"].as_u64().unwrap())
        };
        for member in numbers(&fixture["members"]) {
            filter.add_sequence(member);
        }
        assert_eq!(filter.to_json(), fixture["filter"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn raw_hash_locations_match_the_library() {
    for fixture in fixtures("locations") {
        let value = fixture["value"].as_u64().expect("value");
        assert_eq!(bloom::locations(&bloom::sequence_key(value), 8), numbers(&fixture["locations"]), "value {value}");
    }
}
