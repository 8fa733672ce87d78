//! Unit tests of [`super::Replica`] that need crate-internal hooks (a halted Raft node).

use std::cell::RefCell;
use std::rc::Rc;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::raft::{Config, Membership};

fn settle(replica: &mut Replica) {
    for _ in 0..20 {
        let mut ready = replica.take_ready();
        replica.apply_committed(&mut ready);
        if let Some((index, term)) = ready.persist_ack() {
            replica.raft_mut().persisted(index, term);
        }
    }
}

#[test]
fn a_halted_raft_node_stops_the_replica_without_panicking() {
    let mut cfg = Config::new(1, 1);
    cfg.election_ticks = 3;
    cfg.heartbeat_ticks = 1;
    let raft = RaftNode::new(cfg, Membership::voters([1]).unwrap(), ChaCha8Rng::seed_from_u64(5)).unwrap();
    let mut replica = Replica::new(raft, StateMachine::new());
    for _ in 0..20 {
        replica.tick();
        settle(&mut replica);
    }
    assert!(replica.is_leader());
    let waiting: Rc<RefCell<Option<Result<Committed, ShardError>>>> = Rc::default();
    let sink = Rc::clone(&waiting);
    replica.propose(&sm::command::open_session(1, 10_000), Box::new(move |r| *sink.borrow_mut() = Some(r)));
    replica.raft_mut().break_term_for_test();
    settle(&mut replica);
    let answer = waiting.borrow_mut().take().expect("the waiting proposal is answered");
    assert!(matches!(&answer, Err(ShardError::Unavailable(why)) if why.contains("the term fell")), "{answer:?}");
    let later: Rc<RefCell<Option<Result<Committed, ShardError>>>> = Rc::default();
    let sink = Rc::clone(&later);
    replica.propose(&sm::command::open_session(1, 10_000), Box::new(move |r| *sink.borrow_mut() = Some(r)));
    let refused = later.borrow_mut().take().expect("refused at once");
    assert!(matches!(&refused, Err(ShardError::Unavailable(why)) if why.contains("stopped")), "{refused:?}");
    assert!(!replica.has_ready(), "a halted replica has nothing for the runtime");
}
