//! The primitive registry: every election of the group by id and by name, and which
//! sessions hold a handle on each.
//!
//! A primitive's id is the log index of the CreatePrimitive entry that created it, so ids
//! are deterministic, never 0 and never reused. Primitives are never deleted: deleting an
//! election would reset its term number and break its use as a fencing token. Closing a
//! primitive releases one session's handle and withdraws that session's candidates.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::election::Election;
use super::session::SessionId;

/// A primitive id: the log index of the entry that created the primitive.
pub type PrimitiveId = u64;

/// One election primitive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Primitive {
    pub(crate) id: PrimitiveId,
    pub(crate) name: Arc<str>,
    pub(crate) election: Election,
    pub(crate) open_sessions: BTreeSet<SessionId>,
}

impl Primitive {
    pub fn id(&self) -> PrimitiveId {
        self.id
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn election(&self) -> &Election {
        &self.election
    }
    /// The sessions holding a handle (CreatePrimitive without ClosePrimitive).
    pub fn open_sessions(&self) -> &BTreeSet<SessionId> {
        &self.open_sessions
    }
}

/// Every primitive of the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    by_id: BTreeMap<PrimitiveId, Primitive>,
    by_name: BTreeMap<Arc<str>, PrimitiveId>,
}

impl Registry {
    pub fn get(&self, id: PrimitiveId) -> Option<&Primitive> {
        self.by_id.get(&id)
    }

    pub fn id_of(&self, name: &str) -> Option<PrimitiveId> {
        self.by_name.get(name).copied()
    }

    /// Every primitive in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = &Primitive> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub(crate) fn get_mut(&mut self, id: PrimitiveId) -> Option<&mut Primitive> {
        self.by_id.get_mut(&id)
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Primitive> {
        self.by_id.values_mut()
    }

    /// Adds a primitive (snapshot restore). Id and name must be new.
    pub(crate) fn insert(&mut self, primitive: Primitive) {
        let previous_name = self.by_name.insert(primitive.name.clone(), primitive.id);
        let previous_id = self.by_id.insert(primitive.id, primitive);
        debug_assert!(previous_name.is_none() && previous_id.is_none(), "primitive reused");
    }

    /// Returns the id of the election `name`, creating it with id `new_id` if it does not
    /// exist, and opens a handle for `session_id`.
    pub(crate) fn create(&mut self, name: &str, new_id: PrimitiveId, session_id: SessionId) -> PrimitiveId {
        let id = match self.by_name.get(name) {
            Some(&id) => id,
            None => {
                self.insert(Primitive { id: new_id, name: Arc::from(name), election: Election::default(), open_sessions: BTreeSet::new() });
                new_id
            }
        };
        if let Some(primitive) = self.by_id.get_mut(&id) {
            primitive.open_sessions.insert(session_id);
        }
        id
    }
}
