//! The durable record of what the Node API changed on a shard: groups it bootstrapped or
//! joined (with the members they started from) and client partitions this node left. The
//! client partitions themselves need no record: every node hosts them, from `--peers`.
//!
//! One small TOML file per shard (`groups.toml`), replaced atomically (written to a
//! temporary file, synced, renamed, directory synced) on every change. Changes are rare
//! control-plane events, so the blocking writes are acceptable on the shard.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::service::node_control::{GroupSpec, MemberRole, MemberSpec};

const FILE_NAME: &str = "groups.toml";

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    #[serde(default)]
    group: Vec<GroupRecord>,
    /// Client partitions this node left.
    #[serde(default)]
    left: Vec<u32>,
}

/// A group the Node API started here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GroupRecord {
    pub id: u32,
    /// True for a replica that joined an existing group (its `members` are the ones it
    /// knew of then, itself excluded); false for one bootstrapped with `members`.
    pub joined: bool,
    pub members: Vec<MemberRecord>,
    /// The incarnation of a joined replica (see `raft::Config::incarnation`): chosen at the
    /// Join, so that the group tells it from a replica this node held before. Absent (0) for
    /// a bootstrapped replica, and in files written before incarnations existed, which read
    /// as they did (their joined replicas were added with incarnation 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub incarnation: u64,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub node_id: u64,
    pub host: String,
    pub port: u16,
    /// "member", "observer" or "witness".
    pub role: String,
}

impl GroupRecord {
    pub fn new(spec: &GroupSpec, joined: bool) -> GroupRecord {
        let members = spec
            .members
            .iter()
            .map(|m| MemberRecord {
                node_id: m.node_id,
                host: m.host.clone(),
                port: m.port,
                role: match m.role {
                    MemberRole::Member => "member",
                    MemberRole::Observer => "observer",
                    MemberRole::Witness => "witness",
                }
                .to_string(),
            })
            .collect();
        GroupRecord { id: spec.group_id, joined, members, incarnation: 0 }
    }

    /// The group as a spec, or why the record is unreadable.
    pub fn spec(&self) -> Result<GroupSpec, String> {
        let mut members = Vec::with_capacity(self.members.len());
        for m in &self.members {
            let role = match m.role.as_str() {
                "member" => MemberRole::Member,
                "observer" => MemberRole::Observer,
                "witness" => MemberRole::Witness,
                other => return Err(format!("group {}: member {} has unknown role `{other}`", self.id, m.node_id)),
            };
            members.push(MemberSpec { node_id: m.node_id, host: m.host.clone(), port: m.port, role });
        }
        Ok(GroupSpec { group_id: self.id, members })
    }
}

/// A shard's registry, loaded in memory and saved on every change.
pub struct Registry {
    path: PathBuf,
    file: RegistryFile,
}

impl Registry {
    /// Loads `dir/groups.toml` (an absent file is an empty registry).
    pub fn load(dir: &Path) -> Result<Registry, String> {
        let path = dir.join(FILE_NAME);
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Registry { path, file })
    }

    pub fn groups(&self) -> &[GroupRecord] {
        &self.file.group
    }

    pub fn has_left(&self, partition: u32) -> bool {
        self.file.left.contains(&partition)
    }

    pub fn get(&self, group: u32) -> Option<&GroupRecord> {
        self.file.group.iter().find(|g| g.id == group)
    }

    /// Records a group started here (replacing an older record of the same id) and, for
    /// a client partition, clears its "left" mark.
    pub fn add(&mut self, record: GroupRecord) -> Result<(), String> {
        let mut next = self.file.clone();
        next.left.retain(|p| *p != record.id);
        next.group.retain(|g| g.id != record.id);
        next.group.push(record);
        next.group.sort_by_key(|g| g.id);
        self.save(next)
    }

    /// Records that this node no longer hosts `group`.
    pub fn remove(&mut self, group: u32, is_partition: bool) -> Result<(), String> {
        let mut next = self.file.clone();
        next.group.retain(|g| g.id != group);
        if is_partition && !next.left.contains(&group) {
            next.left.push(group);
            next.left.sort_unstable();
        }
        self.save(next)
    }

    fn save(&mut self, next: RegistryFile) -> Result<(), String> {
        let text = toml::to_string(&next).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let tmp = self.path.with_extension("toml.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("saving {}: {e}", self.path.display()))?;
        self.file = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u32) -> GroupSpec {
        GroupSpec {
            group_id: id,
            members: vec![
                MemberSpec { node_id: 1, host: "127.0.0.1".into(), port: 7000, role: MemberRole::Member },
                MemberSpec { node_id: 2, host: "::1".into(), port: 7100, role: MemberRole::Witness },
            ],
        }
    }

    #[test]
    fn records_survive_a_reload_and_partitions_can_be_left_and_rejoined() {
        let dir = std::env::temp_dir().join(format!("conclave-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut registry = Registry::load(&dir).unwrap();
        assert!(registry.groups().is_empty());
        registry.add(GroupRecord::new(&spec(100), false)).unwrap();
        registry.remove(3, true).unwrap();
        let reloaded = Registry::load(&dir).unwrap();
        assert_eq!(reloaded.get(100).unwrap().spec().unwrap(), spec(100));
        assert!(reloaded.has_left(3));
        let mut registry = reloaded;
        registry.add(GroupRecord { incarnation: 77, ..GroupRecord::new(&spec(3), true) }).unwrap();
        registry.remove(100, false).unwrap();
        let reloaded = Registry::load(&dir).unwrap();
        assert!(!reloaded.has_left(3));
        assert!(reloaded.get(100).is_none());
        assert!(reloaded.get(3).unwrap().joined);
        assert_eq!(reloaded.get(3).unwrap().incarnation, 77, "a joined replica's incarnation survives a restart");
        std::fs::write(dir.join(FILE_NAME), "group = 5").unwrap();
        assert!(Registry::load(&dir).is_err(), "a damaged registry is reported, not ignored");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `groups.toml` written before incarnations existed reads as it did: its replicas
    /// are incarnation 0, as the configurations of their groups hold them.
    #[test]
    fn a_registry_written_before_incarnations_reads_with_incarnation_zero() {
        let dir = std::env::temp_dir().join(format!("conclave-registry-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = "left = [2]\n\n[[group]]\nid = 9\njoined = true\n\n[[group.members]]\nnode_id = 1\nhost = \"127.0.0.1\"\nport = 7000\nrole = \"member\"\n";
        std::fs::write(dir.join(FILE_NAME), old).unwrap();
        let registry = Registry::load(&dir).unwrap();
        let record = registry.get(9).unwrap();
        assert!(record.joined);
        assert_eq!(record.incarnation, 0);
        assert!(registry.has_left(2));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
