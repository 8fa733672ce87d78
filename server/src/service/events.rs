//! The node's events as the Node API's `Watch` streams them (api.md §3): conversions from
//! what shards ([`ShardEvent`]) and the peer transport ([`ConnectionEvent`]) report into
//! `atomix.multiraft.v1.Event`, and the [`EventHub`] that broadcasts those events to every
//! Watch subscriber of the node. Shard-local: `Rc`/`RefCell`, no locks, never blocks.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use conclave_engine::raft::{Membership, RaftEvent, Role};
use conclave_engine::shard::ShardEvent;
use conclave_proto::atomix::multiraft::v1 as pb;
use conclave_wire::{ConnectionEvent, ConnectionEventKind};
use pb::event::Event as Kind;

use crate::grpc::Status;

/// Live events a subscriber may have waiting before it is ended with RESOURCE_EXHAUSTED.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// An event of `kind` stamped with the current wall-clock time.
pub fn stamp(kind: Kind) -> pb::Event {
    pb::Event { timestamp: Some(SystemTime::now().into()), event: Some(kind) }
}

/// `member_ready`: this node's replica of `group_id` is running.
pub fn member_ready(group_id: u32, node_id: u64) -> pb::Event {
    stamp(Kind::MemberReady(pb::MemberReadyEvent { group_id, node_id }))
}

/// `leader_updated`: the leader of `group_id` in `term` is `leader` (0: none known).
pub fn leader_updated(group_id: u32, term: u64, leader: u64) -> pb::Event {
    stamp(Kind::LeaderUpdated(pb::LeaderUpdatedEvent { group_id, term, leader }))
}

/// `connection_established` / `connection_failed` for a peer connection event.
pub fn connection_event(event: &ConnectionEvent) -> pb::Event {
    let info = Some(pb::ConnectionInfo { address: event.address.clone(), snapshot: event.snapshot });
    stamp(match event.kind {
        ConnectionEventKind::Established => Kind::ConnectionEstablished(pb::ConnectionEstablishedEvent { info }),
        ConnectionEventKind::Failed { .. } => Kind::ConnectionFailed(pb::ConnectionFailedEvent { info }),
    })
}

/// Converts one node's shard events into Node API events. Stateful: it remembers the last
/// membership seen per group, so a membership change becomes one `membership_changed` per
/// node whose presence or role changed.
pub struct EventConverter {
    node_id: u64,
    memberships: HashMap<u32, BTreeMap<u64, Role>>,
}

impl EventConverter {
    /// A converter for the node `node_id` (the node `member_ready` events name).
    pub fn new(node_id: u64) -> EventConverter {
        EventConverter { node_id, memberships: HashMap::new() }
    }

    /// The Node API events for `event` of `group` (none for the Raft events the API has no
    /// event for: role changes, membership commits, aborted transfers).
    pub fn convert(&mut self, group: u32, event: &ShardEvent) -> Vec<pb::Event> {
        let group_id = group;
        let kind = match event {
            ShardEvent::MemberReady { membership } => {
                // The configuration the replica starts from is the baseline of later changes.
                self.memberships.insert(group, membership.members().collect());
                Kind::MemberReady(pb::MemberReadyEvent { group_id, node_id: self.node_id })
            }
            ShardEvent::MemberRemoved => {
                self.memberships.remove(&group);
                Kind::MembershipChanged(pb::MembershipChangedEvent { group_id, node_id: self.node_id })
            }
            ShardEvent::SnapshotRecovered { index } => Kind::SnapshotRecovered(pb::SnapshotRecoveredEvent { group_id, index: *index }),
            ShardEvent::SnapshotCreated { index } => Kind::SnapshotCreated(pb::SnapshotCreatedEvent { group_id, index: *index }),
            ShardEvent::SnapshotCompacted { index } => Kind::SnapshotCompacted(pb::SnapshotCompactedEvent { group_id, index: *index }),
            ShardEvent::LogCompacted { index } => Kind::LogCompacted(pb::LogCompactedEvent { group_id, index: *index }),
            ShardEvent::LogStoreCompacted { index } => Kind::LogdbCompacted(pb::LogDbCompactedEvent { group_id, index: *index }),
            ShardEvent::Raft(raft) => match *raft {
                RaftEvent::LeaderChanged { term, leader } => Kind::LeaderUpdated(pb::LeaderUpdatedEvent { group_id, term, leader }),
                RaftEvent::MembershipChanged { ref membership, .. } => return self.membership_changed(group, membership),
                RaftEvent::SnapshotSendStarted { to, index } => {
                    Kind::SendSnapshotStarted(pb::SendSnapshotStartedEvent { group_id, index, to })
                }
                RaftEvent::SnapshotSendCompleted { to, index } => {
                    Kind::SendSnapshotCompleted(pb::SendSnapshotCompletedEvent { group_id, index, to })
                }
                RaftEvent::SnapshotSendAborted { to, index } => {
                    Kind::SendSnapshotAborted(pb::SendSnapshotAbortedEvent { group_id, index, to })
                }
                RaftEvent::SnapshotReceived { from, index } => Kind::SnapshotReceived(pb::SnapshotReceivedEvent { group_id, index, from }),
                RaftEvent::RoleChanged { .. } | RaftEvent::MembershipCommitted { .. } | RaftEvent::TransferAborted { .. } => {
                    return Vec::new()
                }
            },
        };
        vec![stamp(kind)]
    }

    /// One `membership_changed` per node added, removed or given another role, in node id
    /// order, against the configuration the replica started from (`MemberReady`) or last
    /// changed to; every member if neither was seen.
    fn membership_changed(&mut self, group_id: u32, membership: &Membership) -> Vec<pb::Event> {
        let next: BTreeMap<u64, Role> = membership.members().collect();
        let previous = self.memberships.insert(group_id, next.clone()).unwrap_or_default();
        let nodes: BTreeSet<u64> = previous.keys().chain(next.keys()).copied().collect();
        nodes
            .into_iter()
            .filter(|node| previous.get(node) != next.get(node))
            .map(|node_id| stamp(Kind::MembershipChanged(pb::MembershipChangedEvent { group_id, node_id })))
            .collect()
    }
}

/// What a new subscriber is told first: the node's current state (for the node, a
/// `member_ready` and a `leader_updated` for every group it hosts).
pub type CurrentState = Box<dyn Fn() -> Vec<pb::Event>>;

/// One subscriber's queue, shared by the hub (producer) and its [`Subscription`].
struct Queue {
    events: VecDeque<pb::Event>,
    /// Most events waiting; reaching it ends the subscription.
    limit: usize,
    /// Set once the subscription has ended; nothing more is delivered.
    ended: Option<Status>,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    queues: BTreeMap<u64, Rc<RefCell<Queue>>>,
}

/// Broadcasts events to every Watch subscriber of the node, in publish order. Publishing
/// never blocks and never grows a queue without bound: a subscriber with
/// [`SUBSCRIBER_QUEUE`] live events waiting is ended with RESOURCE_EXHAUSTED.
pub struct EventHub {
    subscribers: Rc<RefCell<Subscribers>>,
    current_state: CurrentState,
    capacity: usize,
}

impl EventHub {
    /// A hub whose new subscribers first receive `current_state()`.
    pub fn new(current_state: CurrentState) -> EventHub {
        EventHub::with_capacity(SUBSCRIBER_QUEUE, current_state)
    }

    /// A hub whose subscribers may fall `capacity` live events behind (at least 1).
    pub fn with_capacity(capacity: usize, current_state: CurrentState) -> EventHub {
        EventHub { subscribers: Rc::default(), current_state, capacity: capacity.max(1) }
    }

    /// Queues `event` for every subscriber; ends those that are too far behind.
    pub fn publish(&self, event: pb::Event) {
        let mut wake = Vec::new();
        let capacity = self.capacity;
        self.subscribers.borrow_mut().queues.retain(|_, queue| {
            let mut queue = queue.borrow_mut();
            if queue.events.len() >= queue.limit {
                queue.events = VecDeque::new();
                queue.ended = Some(Status::resource_exhausted(format!(
                    "the Watch stream fell behind: more than {capacity} node events were waiting for \
                     the client to read them; call Watch again to start from the current state"
                )));
            } else {
                queue.events.push_back(event.clone());
            }
            wake.extend(queue.waker.take());
            queue.ended.is_none()
        });
        // Woken after every borrow is released: a waker may do anything.
        wake.into_iter().for_each(Waker::wake);
    }

    /// A new subscriber: it receives the current state, then every event published from
    /// now on. The current state does not count against the queue bound.
    pub fn subscribe(&self) -> Subscription {
        // The callback runs before the hub is borrowed (it may read anything but must not
        // publish), and nothing can be published between it and the registration below.
        let events: VecDeque<pb::Event> = (self.current_state)().into();
        let limit = self.capacity + events.len();
        let queue = Rc::new(RefCell::new(Queue { events, limit, ended: None, waker: None }));
        let mut subscribers = self.subscribers.borrow_mut();
        let id = subscribers.next_id;
        subscribers.next_id += 1;
        subscribers.queues.insert(id, Rc::clone(&queue));
        Subscription { id, queue, hub: Rc::downgrade(&self.subscribers) }
    }

    /// Subscribers currently receiving events.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.borrow().queues.len()
    }
}

impl Drop for EventHub {
    /// Ends every subscriber: the node is going away.
    fn drop(&mut self) {
        let queues = std::mem::take(&mut self.subscribers.borrow_mut().queues);
        let mut wake = Vec::new();
        for queue in queues.values() {
            let mut queue = queue.borrow_mut();
            queue.ended = Some(Status::unavailable("the node is shutting down; call Watch again on a running node"));
            wake.extend(queue.waker.take());
        }
        wake.into_iter().for_each(Waker::wake);
    }
}

/// One subscriber's end of the hub. Dropping it unsubscribes. Poll it from one task.
pub struct Subscription {
    id: u64,
    queue: Rc<RefCell<Queue>>,
    hub: Weak<RefCell<Subscribers>>,
}

impl Subscription {
    /// The next event, or the status the subscription ended with (it fell behind, or the
    /// node is shutting down).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<pb::Event, Status>> {
        let mut queue = self.queue.borrow_mut();
        if let Some(status) = &queue.ended {
            return Poll::Ready(Err(status.clone()));
        }
        match queue.events.pop_front() {
            Some(event) => Poll::Ready(Ok(event)),
            None => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Waits for the next event (see [`Subscription::poll_recv`]).
    pub async fn recv(&mut self) -> Result<pb::Event, Status> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Completes with the status the subscription ends with, once it has ended.
    pub async fn ended(&self) -> Status {
        poll_fn(|cx| {
            let mut queue = self.queue.borrow_mut();
            match &queue.ended {
                Some(status) => Poll::Ready(status.clone()),
                None => {
                    queue.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.borrow_mut().queues.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    use crate::grpc::Code;

    fn kinds(events: Vec<pb::Event>) -> Vec<Kind> {
        events
            .into_iter()
            .map(|event| {
                let at = SystemTime::try_from(event.timestamp.expect("stamped")).expect("valid time");
                let age = SystemTime::now().duration_since(at).expect("not in the future");
                assert!(age < Duration::from_secs(5), "stamped with the current time, {age:?} ago");
                event.event.expect("an event")
            })
            .collect()
    }

    fn changed(group_id: u32, node_ids: &[u64]) -> Vec<Kind> {
        node_ids.iter().map(|&node_id| Kind::MembershipChanged(pb::MembershipChangedEvent { group_id, node_id })).collect()
    }

    fn membership(members: &[(u64, Role)]) -> ShardEvent {
        let membership = Membership::new(members.iter().copied()).expect("valid membership");
        ShardEvent::Raft(RaftEvent::MembershipChanged { index: 1, membership })
    }

    #[test]
    fn shard_events_map_to_their_node_events() {
        let mut c = EventConverter::new(7);
        let raft = |e| ShardEvent::Raft(e);
        let cases = [
            (
                ShardEvent::MemberReady { membership: Membership::voters([7]).expect("valid") },
                Kind::MemberReady(pb::MemberReadyEvent { group_id: 3, node_id: 7 }),
            ),
            (
                raft(RaftEvent::LeaderChanged { term: 4, leader: 2 }),
                Kind::LeaderUpdated(pb::LeaderUpdatedEvent { group_id: 3, term: 4, leader: 2 }),
            ),
            (
                raft(RaftEvent::SnapshotSendStarted { to: 2, index: 10 }),
                Kind::SendSnapshotStarted(pb::SendSnapshotStartedEvent { group_id: 3, index: 10, to: 2 }),
            ),
            (
                raft(RaftEvent::SnapshotSendCompleted { to: 2, index: 11 }),
                Kind::SendSnapshotCompleted(pb::SendSnapshotCompletedEvent { group_id: 3, index: 11, to: 2 }),
            ),
            (
                raft(RaftEvent::SnapshotSendAborted { to: 5, index: 12 }),
                Kind::SendSnapshotAborted(pb::SendSnapshotAbortedEvent { group_id: 3, index: 12, to: 5 }),
            ),
            (
                raft(RaftEvent::SnapshotReceived { from: 1, index: 13 }),
                Kind::SnapshotReceived(pb::SnapshotReceivedEvent { group_id: 3, index: 13, from: 1 }),
            ),
            (ShardEvent::SnapshotRecovered { index: 14 }, Kind::SnapshotRecovered(pb::SnapshotRecoveredEvent { group_id: 3, index: 14 })),
            (ShardEvent::SnapshotCreated { index: 15 }, Kind::SnapshotCreated(pb::SnapshotCreatedEvent { group_id: 3, index: 15 })),
            (ShardEvent::SnapshotCompacted { index: 16 }, Kind::SnapshotCompacted(pb::SnapshotCompactedEvent { group_id: 3, index: 16 })),
            (ShardEvent::LogCompacted { index: 17 }, Kind::LogCompacted(pb::LogCompactedEvent { group_id: 3, index: 17 })),
            (ShardEvent::LogStoreCompacted { index: 18 }, Kind::LogdbCompacted(pb::LogDbCompactedEvent { group_id: 3, index: 18 })),
        ];
        for (event, expected) in cases {
            assert_eq!(kinds(c.convert(3, &event)), vec![expected], "for {event:?}");
        }
        let ignored = [
            raft(RaftEvent::RoleChanged { role: conclave_engine::raft::RaftRole::Leader, term: 4 }),
            raft(RaftEvent::MembershipCommitted { index: 9 }),
            raft(RaftEvent::TransferAborted { to: 2 }),
        ];
        for event in ignored {
            assert!(c.convert(3, &event).is_empty(), "{event:?} has no Node API event");
        }
    }

    #[test]
    fn membership_changes_name_each_node_whose_presence_or_role_changed() {
        let mut c = EventConverter::new(1);
        let (v, o, w) = (Role::Voter, Role::Observer, Role::Witness);
        // First sight of a group: every member.
        assert_eq!(kinds(c.convert(5, &membership(&[(1, v), (2, v), (3, v)]))), changed(5, &[1, 2, 3]));
        // Another group keeps its own state.
        assert_eq!(kinds(c.convert(6, &membership(&[(1, v)]))), changed(6, &[1]));
        // Unchanged: nothing.
        assert!(c.convert(5, &membership(&[(1, v), (2, v), (3, v)])).is_empty());
        // Added node 4 as an observer, removed node 2.
        assert_eq!(kinds(c.convert(5, &membership(&[(1, v), (3, v), (4, o)]))), changed(5, &[2, 4]));
        // Role change only: observer 4 promoted, voter 3 made a witness.
        assert_eq!(kinds(c.convert(5, &membership(&[(1, v), (3, w), (4, v)]))), changed(5, &[3, 4]));
        // Leaving forgets the group: this node's change, then a later sight is a first sight.
        assert_eq!(kinds(c.convert(5, &ShardEvent::MemberRemoved)), changed(5, &[1]));
        assert_eq!(kinds(c.convert(5, &membership(&[(1, v), (3, w), (4, v)]))), changed(5, &[1, 3, 4]));
        assert!(c.convert(6, &membership(&[(1, v)])).is_empty(), "group 6 was not forgotten");
    }

    #[test]
    fn a_member_leaving_is_named_against_the_configuration_the_replica_started_from() {
        let mut c = EventConverter::new(1);
        let v = Role::Voter;
        let start = Membership::new([(1, v), (2, v), (3, v)]).expect("valid");
        let ready = kinds(c.convert(5, &ShardEvent::MemberReady { membership: start }));
        assert_eq!(ready, vec![Kind::MemberReady(pb::MemberReadyEvent { group_id: 5, node_id: 1 })]);
        assert_eq!(kinds(c.convert(5, &membership(&[(1, v), (2, v)]))), changed(5, &[3]), "node 3 left");
    }

    #[test]
    fn connection_events_carry_address_and_snapshot_flag() {
        let event =
            |kind, snapshot| ConnectionEvent { kind, address: "10.0.0.2:5680".into(), snapshot, remote_node_id: 2, local_shard_id: 0 };
        let info = |snapshot| Some(pb::ConnectionInfo { address: "10.0.0.2:5680".into(), snapshot });
        assert_eq!(
            kinds(vec![connection_event(&event(ConnectionEventKind::Established, false))]),
            vec![Kind::ConnectionEstablished(pb::ConnectionEstablishedEvent { info: info(false) })]
        );
        let failed = event(ConnectionEventKind::Failed { reason: "refused".into() }, true);
        assert_eq!(kinds(vec![connection_event(&failed)]), vec![Kind::ConnectionFailed(pb::ConnectionFailedEvent { info: info(true) })]);
    }

    fn poll(subscription: &mut Subscription) -> Poll<Result<pb::Event, Status>> {
        subscription.poll_recv(&mut Context::from_waker(Waker::noop()))
    }

    fn term_of(result: Poll<Result<pb::Event, Status>>) -> u64 {
        match result {
            Poll::Ready(Ok(pb::Event { event: Some(Kind::LeaderUpdated(e)), .. })) => e.term,
            other => panic!("expected a leader update, got {other:?}"),
        }
    }

    /// A hub whose current state is "the last term published" (as the node's would be).
    fn hub(capacity: usize) -> (Rc<EventHub>, Rc<Cell<u64>>) {
        let last = Rc::new(Cell::new(0));
        let state = Rc::clone(&last);
        let hub = EventHub::with_capacity(capacity, Box::new(move || vec![leader_updated(1, state.get(), 1)]));
        (Rc::new(hub), last)
    }

    fn publish(hub: &EventHub, last: &Cell<u64>, terms: std::ops::RangeInclusive<u64>) {
        for term in terms {
            last.set(term);
            hub.publish(leader_updated(1, term, 1));
        }
    }

    #[test]
    fn subscribers_get_the_current_state_then_every_later_event_in_order() {
        let (hub, last) = hub(100);
        let mut early = hub.subscribe();
        publish(&hub, &last, 1..=3);
        let mut late = hub.subscribe();
        publish(&hub, &last, 4..=5);
        assert_eq!((0..6).map(|_| term_of(poll(&mut early))).collect::<Vec<_>>(), [0, 1, 2, 3, 4, 5]);
        assert_eq!((0..3).map(|_| term_of(poll(&mut late))).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(poll(&mut early).is_pending() && poll(&mut late).is_pending());
        assert_eq!(hub.subscriber_count(), 2);
        drop(late);
        assert_eq!(hub.subscriber_count(), 1);
    }

    #[test]
    fn a_subscriber_that_falls_behind_is_ended_and_removed_while_others_continue() {
        let (hub, last) = hub(4);
        let mut slow = hub.subscribe();
        let mut fast = hub.subscribe();
        for term in 1..=10 {
            publish(&hub, &last, term..=term);
            assert_eq!(term_of(poll(&mut fast)), term - 1);
        }
        // The current state plus 4 live events fit; the 5th live event ended it.
        let status = match poll(&mut slow) {
            Poll::Ready(Err(status)) => status,
            other => panic!("expected the slow subscriber to end, got {other:?}"),
        };
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("fell behind"), "{}", status.message());
        assert_eq!(hub.subscriber_count(), 1);
        assert!(matches!(poll(&mut slow), Poll::Ready(Err(_))), "stays ended");
        publish(&hub, &last, 11..=11);
        assert_eq!(term_of(poll(&mut fast)), 10);
        assert_eq!(term_of(poll(&mut fast)), 11);
    }

    #[test]
    fn dropping_the_hub_ends_its_subscribers() {
        let (hub, _) = hub(4);
        let mut subscription = hub.subscribe();
        assert_eq!(term_of(poll(&mut subscription)), 0);
        drop(hub);
        match poll(&mut subscription) {
            Poll::Ready(Err(status)) => assert_eq!(status.code(), Code::Unavailable),
            other => panic!("expected the subscription to end, got {other:?}"),
        }
    }
}
