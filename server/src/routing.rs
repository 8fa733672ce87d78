//! Where a request runs: election name → partition → Raft group → owning shard.
//!
//! Both functions are fixed and documented so that every node, and any client that wants to
//! know, computes the same answer:
//! - partition of an election = CRC-32 (IEEE 802.3, the polynomial of zlib's `crc32`) of the
//!   name's UTF-8 bytes, modulo the number of partitions, plus one (partition ids start at 1);
//!   in Python: `zlib.crc32(name.encode()) % partitions + 1`;
//! - a partition's Raft group has the partition's id;
//! - shard of a group = (group id − 1) modulo the number of shards. Every node of a cluster
//!   runs the same number of shards, so a peer message for group g goes straight to the
//!   matching shard on the other node.

/// The partition (1-based) that owns the election `name`.
pub fn partition_of(name: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "a cluster has at least one partition");
    crc32fast::hash(name.as_bytes()) % partitions + 1
}

/// The shard (0-based) that owns Raft group `group` (1-based).
pub fn shard_of(group: u32, shards: u32) -> u32 {
    assert!(shards > 0 && group > 0, "groups and shards are numbered from 1 and 0");
    (group - 1) % shards
}

/// Which node each partition prefers as its leader (`--leader-placement`). Its voters are
/// the same either way (from the round-robin node on, [`preferred_leader`]), so nodes that
/// disagree on it never disagree on a partition's configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaderPlacement {
    /// Round robin by partition over the nodes in id order: leaderships, and the work of
    /// leading, spread evenly over the nodes.
    #[default]
    Spread,
    /// Every partition prefers the lowest node id among its voters (with every node a
    /// voter: node 1 for all): followers then hear from one leader, whose rounds carry every
    /// partition's commands (fewer frames and log writes per command), while that node
    /// does all the leading.
    Pack,
}

/// The round-robin node of partition `group`: the node ids in ascending order, taken round
/// robin by group, so leaderships spread evenly over the nodes and (as groups also spread
/// round robin over shards) over each node's shards. The partition's voters start at it,
/// and with the spread placement it is the preferred leader.
pub fn preferred_leader(group: u32, nodes: &[u32]) -> u32 {
    assert!(!nodes.is_empty() && group > 0, "a cluster has nodes and groups start at 1");
    nodes[((group - 1) as usize) % nodes.len()]
}

/// The peer port of `shard` on a node whose peer address has port `base`: shards listen on
/// consecutive ports.
pub fn shard_port(base: u16, shard: u32) -> Option<u16> {
    u16::try_from(u32::from(base) + shard).ok()
}

/// The groups (1-based) owned by `shard` among `partitions` groups.
pub fn groups_of_shard(shard: u32, shards: u32, partitions: u32) -> impl Iterator<Item = u32> {
    (1..=partitions).filter(move |g| shard_of(*g, shards) == shard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_the_documented_crc32() {
        // Known CRC-32 values (as zlib computes them): crc32("") = 0, crc32("a") = 0xe8b7be43.
        assert_eq!(partition_of("", 16), 1);
        assert_eq!(partition_of("a", 16), 0xe8b7_be43 % 16 + 1);
        assert_eq!(partition_of("a", 1), 1);
    }

    #[test]
    fn every_partition_is_reachable_and_in_range() {
        let mut seen = [0u32; 8];
        for i in 0..10_000 {
            let p = partition_of(&format!("election-{i}"), 8);
            assert!((1..=8).contains(&p));
            seen[(p - 1) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 1_000), "spread is roughly even: {seen:?}");
    }

    #[test]
    fn preferred_leaders_spread_over_nodes_and_shards() {
        let nodes = [1, 2, 3];
        for shard in 0..2 {
            let mut led = [0u32; 3];
            for g in groups_of_shard(shard, 2, 12) {
                led[(preferred_leader(g, &nodes) - 1) as usize] += 1;
            }
            assert_eq!(led, [2, 2, 2], "shard {shard}");
        }
        assert_eq!(shard_port(5680, 1), Some(5681));
        assert_eq!(shard_port(65535, 1), None);
    }

    #[test]
    fn shards_partition_the_groups() {
        let mut owned: Vec<u32> = (0..3).flat_map(|s| groups_of_shard(s, 3, 10)).collect();
        owned.sort();
        assert_eq!(owned, (1..=10).collect::<Vec<_>>());
        assert_eq!(shard_of(1, 3), 0);
        assert_eq!(shard_of(4, 3), 0);
        assert_eq!(shard_of(3, 3), 2);
    }
}
