//! The simulated cluster: nodes holding one replica per group, each replica a real
//! `RaftNode` over a simulated disk (writes complete after a delay, in order; a crash loses
//! whatever was not yet complete), all talking through the simulated network in batches.
//! `run_seed` drives one whole run: chaos (crashes, partitions, loss, membership changes,
//! leadership transfers, client traffic), then healing, then the liveness and
//! linearizability verdicts.

use conclave_engine::raft::{open_batch, Config, EntryKind, Membership, Outbox, RaftEvent, RaftNode, RaftRole, Recovered, Role};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checker::{GroupChecker, Violation};
use super::client::{decode_write, encode_write, GroupClients};
use super::disk::{decode_register, encode_register, snapshot_index, DiskWrite, Replica};
use super::linearizability::check_register;
use super::network::{Network, NetworkFaults};
use super::SimOptions;

mod invariants;
mod reads;

/// Ticks of client traffic after the faults heal, before liveness is judged.
const CLIENT_TICKS_AFTER_HEAL: u64 = 50;
/// Linearizability search budget (explored states) per group.
const LINEARIZABILITY_BUDGET: usize = 2_000_000;

/// What a run did, for the test's summary line.
/// With `SimOptions::peer_down`: the probability per tick that some node's connection to a
/// peer fails while both are alive.
const SPURIOUS_PEER_DOWN: f64 = 0.01;

#[derive(Debug, Default, Clone)]
pub struct SimReport {
    pub ticks: u64,
    pub committed_entries: u64,
    pub client_operations: usize,
    pub crashes: u64,
    pub leaders_elected: u64,
    pub batches_delivered: u64,
    pub snapshots_taken: u64,
    pub snapshots_installed: u64,
    /// Replica-ticks skipped because the replica was quiesced.
    pub quiesced_ticks: u64,
    /// Accepted proposals that add a non-member (as a new, empty replica) or remove a member.
    pub members_added: u64,
    pub members_removed: u64,
    /// Replicas deleted after their removal committed.
    pub replicas_discarded: u64,
    /// With eager rejoins: nodes added back right after their removal committed.
    pub eager_rejoins: u64,
    /// Quiet groups woken by a connection failure (`SimOptions::peer_down`).
    pub peer_down_wakes: u64,
    /// Messages replicas dropped as traffic of another replica incarnation.
    pub incarnation_drops: u64,
    /// Reads followers served under a lease from their leader.
    pub follower_lease_reads: u64,
}

struct SimNode {
    id: u64,
    /// Failure detector: the tick each peer was last heard from, and whether it was
    /// reported silent since (index = peer id - 1).
    last_heard: Vec<u64>,
    silent: Vec<bool>,
    up: bool,
    /// Ticks of this run of the node (its shard loop's tick count, fed to every replica).
    ticks: u64,
    incarnation: u64,
    /// Replica starts so far (restarts and joins): each start seeds its RNG afresh.
    replica_starts: u64,
    /// Replicas started to join a group so far: each gets the next number as incarnation.
    joins: u64,
    replicas: Vec<Replica>,
    outbox: Outbox,
}

struct Sim {
    seed: u64,
    opts: SimOptions,
    rng: ChaCha8Rng,
    now: u64,
    faults: NetworkFaults,
    net: Network,
    nodes: Vec<SimNode>,
    initial: Vec<Membership>,
    checkers: Vec<GroupChecker>,
    clients: Vec<GroupClients>,
    /// Per group: removals proposed, as (node, index, term) of their membership entry. The
    /// first replica to apply that entry makes the harness delete the removed replica.
    pending_removals: Vec<Vec<(u64, u64, u64)>>,
    /// Replicas (node index, group) to delete once the current pump ends.
    discards: Vec<(usize, usize)>,
    /// With `eager_rejoin`: (group, node, tick) of replicas deleted after their removal
    /// committed, for the group's leader to add the node back at once, while the deleted
    /// replica's messages may still be in flight.
    rejoins: Vec<(usize, u64, u64)>,
    /// Per-node clocks, stalls and the read nemesis (see `reads.rs`).
    reads: reads::ReadNemesis,
    report: SimReport,
}

/// Runs seed `seed` with `opts`; Err describes the first violated property.
pub fn run_seed(seed: u64, opts: &SimOptions) -> Result<SimReport, Violation> {
    let mut sim = Sim::new(seed, opts.clone())?;
    let total = opts.chaos_ticks + opts.heal_ticks;
    let mut live = false;
    for tick in 0..total {
        sim.report.ticks = tick + 1;
        let healing = tick >= opts.chaos_ticks;
        if tick == opts.chaos_ticks {
            sim.heal_all()?;
        }
        if !healing {
            sim.inject_faults()?;
        }
        if tick < opts.chaos_ticks + CLIENT_TICKS_AFTER_HEAL {
            sim.client_traffic()?;
        }
        sim.tick_all()?;
        for _ in 0..opts.units_per_tick {
            sim.advance_unit()?;
        }
        if tick >= opts.chaos_ticks + CLIENT_TICKS_AFTER_HEAL && sim.is_live_and_converged()? {
            live = true;
            break;
        }
    }
    if !live {
        return Err(Violation(format!(
            "liveness: {} ticks after healing, some group still has no leader whose term's \
             entries are committed and applied everywhere ({})",
            opts.heal_ticks,
            sim.describe_groups()
        )));
    }
    sim.check_histories()?;
    let live = sim.nodes.iter().flat_map(|node| node.replicas.iter()).filter_map(|replica| replica.raft.as_ref());
    for raft in live {
        sim.report.incarnation_drops += raft.incarnation_drops();
        sim.report.follower_lease_reads += raft.follower_lease_reads();
    }
    sim.report.batches_delivered = sim.net.delivered;
    sim.report.committed_entries = sim.checkers.iter().map(GroupChecker::committed_len).sum();
    Ok(sim.report)
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Result<Self, Violation> {
        let initial: Vec<Membership> = (0..opts.groups).map(|g| opts.initial_membership(g)).collect();
        let mut sim = Sim {
            seed,
            rng: ChaCha8Rng::seed_from_u64(seed),
            now: 0,
            faults: NetworkFaults { loss: opts.loss, duplicate: opts.duplicate, max_delay: opts.max_net_delay },
            net: Network::default(),
            nodes: Vec::new(),
            checkers: (0..opts.groups).map(GroupChecker::new).collect(),
            clients: (0..opts.groups).map(|_| GroupClients::default()).collect(),
            pending_removals: (0..opts.groups).map(|_| Vec::new()).collect(),
            discards: Vec::new(),
            rejoins: Vec::new(),
            reads: reads::ReadNemesis::new(seed, &opts),
            initial,
            report: SimReport::default(),
            opts,
        };
        for id in 1..=sim.opts.nodes {
            let replicas =
                sim.initial.iter().map(|m| Replica::empty(m.role(id).is_some(), m.role(id) == Some(Role::Witness), m.clone())).collect();
            let last_heard = vec![0; sim.opts.nodes as usize];
            let silent = vec![false; sim.opts.nodes as usize];
            sim.nodes.push(SimNode {
                id,
                last_heard,
                silent,
                up: false,
                ticks: 0,
                incarnation: 0,
                replica_starts: 0,
                joins: 0,
                replicas,
                outbox: Outbox::new(id),
            });
            sim.start_node(id as usize - 1)?;
        }
        Ok(sim)
    }

    fn config(&self, id: u64, group: u32) -> Config {
        let mut cfg = Config::new(id, group);
        cfg.election_ticks = 10;
        cfg.heartbeat_ticks = 2;
        cfg.max_entries_per_message = self.opts.max_entries_per_message;
        cfg.max_inflight_messages = 4;
        cfg.max_inflight_bytes = 4096;
        cfg.deliberate_bugs = self.opts.bugs;
        cfg.lease_reads = self.opts.lease_reads;
        cfg.lease_micros = Config::safe_lease_micros(cfg.election_ticks, reads::MICROS_PER_UNIT * self.opts.units_per_tick);
        cfg.follower_leases = self.opts.lease_reads && self.opts.follower_leases;
        if self.opts.short_follower_leases {
            cfg.follower_lease_micros = cfg.lease_micros / 4;
        }
        cfg.quiesce = self.opts.quiesce;
        cfg.hold_commit_notices = self.opts.hold_commit_notices;
        cfg
    }

    /// Starts (or restarts) node `n` from what its disks hold.
    fn start_node(&mut self, n: usize) -> Result<(), Violation> {
        self.nodes[n].incarnation += 1;
        self.nodes[n].ticks = 0;
        // A starting server counts every peer as just heard from.
        let tick = self.report.ticks;
        self.nodes[n].last_heard.fill(tick);
        self.nodes[n].silent.fill(false);
        for g in 0..self.opts.groups as usize {
            if self.nodes[n].replicas[g].hosted {
                self.start_replica(n, g)?;
            }
        }
        self.nodes[n].up = true;
        for g in 0..self.opts.groups as usize {
            self.pump(n, g)?;
        }
        Ok(())
    }

    /// Starts node `n`'s replica of group `g` from what its disk holds (nothing, for a
    /// replica that just joined), with a fresh RNG seed, as a server does at every start.
    fn start_replica(&mut self, n: usize, g: usize) -> Result<(), Violation> {
        let id = self.nodes[n].id;
        self.nodes[n].replica_starts += 1;
        let starts = self.nodes[n].replica_starts;
        let mut cfg = self.config(id, g as u32);
        let replica = &mut self.nodes[n].replicas[g];
        cfg.incarnation = replica.incarnation;
        let snapshot = replica.durable_snapshot.clone();
        let recovered = Recovered {
            hard_state: replica.durable_hard_state,
            compacted_index: snapshot.as_ref().map_or(0, |s| s.index),
            compacted_term: snapshot.as_ref().map_or(0, |s| s.term),
            membership: snapshot.as_ref().map_or_else(|| replica.bootstrap.clone(), |s| s.membership.clone()),
            entries: replica.durable_entries.clone(),
            applied: snapshot.as_ref().map_or(0, |s| s.index),
        };
        let rng_seed = self.seed ^ (id << 40) ^ ((g as u64) << 24) ^ starts;
        let mut raft = RaftNode::restart(cfg, recovered, ChaCha8Rng::seed_from_u64(rng_seed))
            .map_err(|e| Violation(format!("node {id} group {g} failed to restart: {e}")))?;
        replica.register = 0;
        replica.register_applied = snapshot.as_ref().map_or(0, |s| s.index);
        if let Some(snapshot) = snapshot {
            replica.register = decode_register(&snapshot.data)?;
            raft.snapshot_taken(snapshot.index, snapshot.data)
                .map_err(|e| Violation(format!("node {id} group {g}: recovered snapshot refused: {e}")))?;
        }
        replica.raft = Some(raft);
        Ok(())
    }

    /// Deletes node `n`'s replica of group `g` with its storage, as a server does once the
    /// replica's removal committed: whatever it had in flight to its clients is abandoned.
    fn discard_replica(&mut self, n: usize, g: usize) {
        let replica = &mut self.nodes[n].replicas[g];
        if !replica.hosted {
            return;
        }
        self.report.incarnation_drops += replica.raft.as_ref().map_or(0, |r| r.incarnation_drops());
        self.report.follower_lease_reads += replica.raft.as_ref().map_or(0, |r| r.follower_lease_reads());
        *replica = Replica::empty(false, false, Membership::default());
        self.clients[g].node_crashed(self.nodes[n].id);
        self.report.replicas_discarded += 1;
    }

    /// Node `n` crashed: each other node may hear of it at once, its connection to `n`
    /// broken (`SimOptions::peer_down`); the others find out by silence.
    fn connections_broken(&mut self, n: usize) -> Result<(), Violation> {
        if !self.opts.peer_down {
            return Ok(());
        }
        let crashed = self.nodes[n].id;
        for m in 0..self.nodes.len() {
            if m != n && self.rng.random_bool(0.5) {
                self.peer_down(m, crashed)?;
            }
        }
        Ok(())
    }

    /// Node `n`'s connection to `peer` failed, as a server's shard hears of it
    /// (`Request::PeerDown`): its quiet groups led by `peer` wake now.
    fn peer_down(&mut self, n: usize, peer: u64) -> Result<(), Violation> {
        if !self.nodes[n].up {
            return Ok(());
        }
        for g in 0..self.opts.groups as usize {
            let Some(raft) = self.nodes[n].replicas[g].raft.as_mut() else { continue };
            if raft.leader() == peer && raft.is_quiesced() {
                raft.wake_for_leader_loss();
                self.report.peer_down_wakes += 1;
                self.pump(n, g)?;
            }
        }
        Ok(())
    }

    fn crash_node(&mut self, n: usize) {
        self.reads.node_crashed(n);
        let node = &mut self.nodes[n];
        node.up = false;
        node.outbox.drain();
        for replica in &mut node.replicas {
            self.report.incarnation_drops += replica.raft.as_ref().map_or(0, |r| r.incarnation_drops());
            self.report.follower_lease_reads += replica.raft.as_ref().map_or(0, |r| r.follower_lease_reads());
            replica.raft = None;
            replica.writes.clear();
        }
        let id = node.id;
        self.net.drop_from(id);
        for clients in &mut self.clients {
            clients.node_crashed(id);
        }
        self.report.crashes += 1;
    }

    fn heal_all(&mut self) -> Result<(), Violation> {
        self.reads.heal();
        self.net.heal();
        self.faults = NetworkFaults::calm(self.opts.max_net_delay);
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up {
                self.start_node(n)?;
            }
        }
        Ok(())
    }

    /// Drains the Ready of replica (n, g) until it has nothing more, checking as it goes,
    /// then deletes the replicas whose removal was seen committed meanwhile.
    fn pump(&mut self, n: usize, g: usize) -> Result<(), Violation> {
        let drained = self.drain_ready(n, g);
        for (n, g) in std::mem::take(&mut self.discards) {
            self.discard_replica(n, g);
            if self.opts.eager_rejoin {
                self.rejoins.push((g, self.nodes[n].id, self.report.ticks));
            }
        }
        drained
    }

    fn drain_ready(&mut self, n: usize, g: usize) -> Result<(), Violation> {
        let Sim { nodes, checkers, clients, rng, now, opts, report, initial, pending_removals, discards, .. } = self;
        let node = &mut nodes[n];
        let id = node.id;
        let replica = &mut node.replicas[g];
        let Some(raft) = replica.raft.as_mut() else { return Ok(()) };
        while raft.has_ready() {
            let ready = raft.ready();
            for event in &ready.events {
                if let RaftEvent::MembershipChanged { membership, .. } = event {
                    if *membership != initial[g] {
                        checkers[g].membership_changed = true;
                    }
                }
                if let RaftEvent::RoleChanged { role: RaftRole::Leader, term } = event {
                    report.leaders_elected += 1;
                    checkers[g].on_leader(id, *term, raft.compacted_index(), |i| raft.entry_term(i))?;
                }
            }
            if let Some(first) = ready.entries.first() {
                let prev_term = raft.entry_term(first.index - 1).unwrap_or(0);
                let witness = replica.witness;
                checkers[g].on_appended(id, &ready.entries, prev_term, witness)?;
            }
            let ack = ready.persist_ack();
            node.outbox.extend(ready.messages);
            if ready.hard_state.is_some() || !ready.entries.is_empty() || !ready.persisted_messages.is_empty() || ready.snapshot.is_some() {
                let earliest = replica.writes.back().map_or(0, |w| w.done_at);
                let done_at = (*now + rng.random_range(1..=opts.max_disk_delay)).max(earliest);
                replica.writes.push_back(DiskWrite {
                    done_at,
                    hard_state: ready.hard_state,
                    entries: ready.entries,
                    then_send: ready.persisted_messages,
                    ack,
                    install: ready.snapshot,
                });
            }
            for entry in &ready.committed_entries {
                let first_apply = entry.index > checkers[g].committed_len();
                checkers[g].on_applied(id, entry)?;
                if first_apply && entry.kind == EntryKind::Membership as i32 {
                    // A removal committed: its replica goes (once this pump ends). A removal
                    // whose entry lost its index never takes effect.
                    pending_removals[g].retain(|&(node, index, term)| {
                        if index == entry.index && term == entry.term {
                            discards.push((node as usize - 1, g));
                        }
                        index > entry.index
                    });
                }
                if let Some(value) = decode_write(entry) {
                    replica.register = value;
                }
                replica.register_applied = entry.index;
                clients[g].applied(id, entry, *now);
            }
            for read in &ready.read_states {
                clients[g].read_confirmed(id, &read.context, read.index);
            }
            clients[g].serve_reads(id, replica.register_applied, replica.register, *now);
            let applied = raft.applied_index();
            let snapshot_due = opts.snapshot_interval > 0
                && !ready.committed_entries.is_empty()
                && applied >= snapshot_index(&replica.durable_snapshot) + opts.snapshot_interval;
            if snapshot_due {
                // Written then renamed: the snapshot is durable at once.
                raft.snapshot_taken(applied, encode_register(replica.register))
                    .map_err(|e| Violation(format!("node {id} group {g}: snapshot refused: {e}")))?;
                report.snapshots_taken += 1;
                let snapshot = raft.latest_snapshot().expect("just taken").clone();
                let base = snapshot_index(&replica.durable_snapshot);
                replica.durable_entries.drain(..(snapshot.index - base) as usize);
                replica.durable_snapshot = Some(snapshot);
                raft.compact(applied.saturating_sub(opts.snapshot_tail));
            }
        }
        Ok(())
    }

    /// One time unit: deliver due batches, complete due disk writes, send what was produced.
    fn advance_unit(&mut self) -> Result<(), Violation> {
        self.now += 1;
        self.feed_clocks();
        for batch in self.reads.take_released() {
            self.deliver(batch)?;
        }
        for batch in self.net.deliver_due(self.now) {
            self.deliver(batch)?;
        }
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up || self.reads.is_stalled(n) {
                continue;
            }
            for g in 0..self.opts.groups as usize {
                self.complete_writes(n, g)?;
            }
        }
        self.flush();
        self.read_nemesis_unit();
        self.check_acknowledged_durable()?;
        self.check_electable()
    }

    /// Hands `batch` to its node (a stalled node's batches wait for it to resume).
    fn deliver(&mut self, batch: conclave_engine::raft::MessageBatch) -> Result<(), Violation> {
        let n = batch.to as usize - 1;
        if !self.nodes[n].up {
            return Ok(());
        }
        if self.reads.holds_for(n) {
            self.reads.hold(batch);
            return Ok(());
        }
        self.nodes[n].last_heard[batch.from as usize - 1] = self.report.ticks;
        self.nodes[n].silent[batch.from as usize - 1] = false;
        let messages = open_batch(batch.to, batch).map_err(|e| Violation(format!("node refused a batch: {e}")))?;
        for msg in messages {
            let g = msg.group_id as usize;
            let Some(raft) = self.nodes[n].replicas[g].raft.as_mut() else { continue };
            raft.step(msg).map_err(|e| Violation(format!("node {} group {g} refused a message: {e}", n + 1)))?;
            self.pump(n, g)?;
        }
        Ok(())
    }

    fn complete_writes(&mut self, n: usize, g: usize) -> Result<(), Violation> {
        loop {
            let node = &mut self.nodes[n];
            let replica = &mut node.replicas[g];
            match replica.writes.front() {
                Some(write) if write.done_at <= self.now => {}
                _ => return Ok(()),
            }
            let write = replica.writes.pop_front().expect("checked above");
            if let Some(hard_state) = write.hard_state {
                replica.durable_hard_state = hard_state;
            }
            replica.write_entries(write.entries);
            node.outbox.extend(write.then_send);
            if let (Some((index, term)), Some(raft)) = (write.ack, replica.raft.as_mut()) {
                raft.persisted(index, term);
            }
            if let Some(snapshot) = write.install {
                let index = snapshot.index;
                replica.register = decode_register(&snapshot.data)?;
                replica.register_applied = index;
                self.report.snapshots_installed += 1;
                replica.durable_entries.clear();
                replica.durable_snapshot = Some(snapshot);
                if let Some(raft) = replica.raft.as_mut() {
                    raft.snapshot_installed(index);
                }
            }
            self.pump(n, g)?;
        }
    }

    fn flush(&mut self) {
        for node in &mut self.nodes {
            if !node.up {
                continue;
            }
            for batch in node.outbox.drain() {
                self.net.send(batch, self.now, &self.faults, &mut self.rng);
            }
        }
    }

    /// Node-level failure detection, as the server's shards do it (`shard/liveness.rs`):
    /// every node pings every peer each tick (one empty batch for all groups), and when a
    /// peer has been silent for an election timeout it wakes, once, its quiet groups whose
    /// leader that peer is.
    fn detect_failures(&mut self) {
        const SILENCE_TICKS: u64 = 10;
        let tick = self.report.ticks;
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up || self.reads.is_stalled(n) {
                continue;
            }
            let id = self.nodes[n].id;
            for peer in 1..=self.opts.nodes {
                if peer != id {
                    let ping = conclave_engine::raft::MessageBatch { from: id, to: peer, messages: Vec::new() };
                    self.net.send(ping, self.now, &self.faults, &mut self.rng);
                }
            }
            let node = &mut self.nodes[n];
            for peer in 1..=self.opts.nodes {
                let p = peer as usize - 1;
                if peer == id || node.silent[p] || node.last_heard[p] + SILENCE_TICKS >= tick {
                    continue;
                }
                node.silent[p] = true;
                for replica in &mut node.replicas {
                    let Some(raft) = replica.raft.as_mut() else { continue };
                    if raft.leader() == peer && raft.is_quiesced() {
                        raft.wake_for_leader_loss();
                    }
                }
            }
        }
    }

    fn tick_all(&mut self) -> Result<(), Violation> {
        self.feed_clocks();
        if self.opts.quiesce {
            self.detect_failures();
        }
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up || self.reads.is_stalled(n) {
                continue;
            }
            self.nodes[n].ticks += 1;
            let node_tick = self.nodes[n].ticks;
            for g in 0..self.opts.groups as usize {
                if let Some(raft) = self.nodes[n].replicas[g].raft.as_mut() {
                    // As the shard loop, within its commit-notice delay (shorter than a tick).
                    if raft.commit_notices_owed() {
                        raft.flush_commit_notices();
                    }
                    // As the server's shard loop: a quiet replica is not ticked at all.
                    if raft.is_quiesced() {
                        self.report.quiesced_ticks += 1;
                    } else {
                        raft.set_shard_tick(node_tick);
                        raft.tick();
                    }
                }
                self.pump(n, g)?;
            }
        }
        Ok(())
    }

    fn leader_of(&self, g: usize) -> Option<usize> {
        (0..self.nodes.len()).find(|n| self.nodes[*n].replicas[g].raft.as_ref().is_some_and(|r| r.role() == RaftRole::Leader))
    }

    fn inject_faults(&mut self) -> Result<(), Violation> {
        if self.opts.read_faults {
            self.read_nemesis()?;
        }
        let nodes = self.opts.nodes;
        if self.rng.random_bool(self.opts.crash) {
            let n = self.rng.random_range(0..nodes as usize);
            if self.nodes[n].up {
                self.crash_node(n);
                self.connections_broken(n)?;
            }
        }
        if self.rng.random_bool(self.opts.crash_leader) {
            let g = self.rng.random_range(0..self.opts.groups as usize);
            if let Some(n) = self.leader_of(g) {
                self.crash_node(n);
                self.connections_broken(n)?;
            }
        }
        if self.opts.peer_down && self.rng.random_bool(SPURIOUS_PEER_DOWN) {
            // A connection fails while both ends are alive (a reset, a timeout).
            let n = self.rng.random_range(0..nodes as usize);
            let peer = self.rng.random_range(1..=nodes);
            if peer != self.nodes[n].id {
                self.peer_down(n, peer)?;
            }
        }
        for n in 0..self.nodes.len() {
            if !self.nodes[n].up && self.rng.random_bool(self.opts.restart) {
                self.start_node(n)?;
            }
        }
        if self.rng.random_bool(self.opts.partition) {
            match self.rng.random_range(0..3) {
                0 => {
                    let node = self.rng.random_range(1..=nodes);
                    self.net.isolate(node, nodes);
                }
                1 => {
                    let from = self.rng.random_range(1..=nodes);
                    let to = self.rng.random_range(1..=nodes);
                    if from != to {
                        self.net.block(from, to);
                    }
                }
                _ => {
                    let sides: Vec<bool> = (0..nodes).map(|_| self.rng.random_bool(0.5)).collect();
                    for a in 1..=nodes {
                        for b in 1..=nodes {
                            if sides[a as usize - 1] != sides[b as usize - 1] {
                                self.net.block(a, b);
                            }
                        }
                    }
                }
            }
        } else if self.net.is_partitioned() && self.rng.random_bool(self.opts.heal) {
            self.net.heal();
        }
        if self.rng.random_bool(self.opts.membership_change) {
            self.change_membership()?;
        }
        self.rejoin_eagerly()?;
        if self.rng.random_bool(self.opts.transfer) {
            let g = self.rng.random_range(0..self.opts.groups as usize);
            if let Some(n) = self.leader_of(g) {
                let to = self.rng.random_range(1..=nodes);
                let raft = self.nodes[n].replicas[g].raft.as_mut().expect("leader is up");
                // Refusals (not a voter, itself) are part of the exercise.
                let _ = raft.transfer_leadership(to);
                self.pump(n, g)?;
            }
        }
        Ok(())
    }

    /// The leader of a random group promotes an observer or demotes a voter (keeping two);
    /// with `whole_nodes` it may also remove a member outright or add a non-member.
    fn change_membership(&mut self) -> Result<(), Violation> {
        let g = self.rng.random_range(0..self.opts.groups as usize);
        let Some(n) = self.leader_of(g) else { return Ok(()) };
        let mut target = self.rng.random_range(1..=self.opts.nodes);
        let raft = self.nodes[n].replicas[g].raft.as_mut().expect("leader is up");
        let current = raft.membership().clone();
        if self.opts.whole_nodes && self.rng.random_bool(0.5) {
            // Half the time, a node outside the group if there is one: it joins.
            let outside: Vec<u64> = (1..=self.opts.nodes).filter(|id| current.role(*id).is_none() && self.may_join(*id, g)).collect();
            if !outside.is_empty() {
                target = outside[self.rng.random_range(0..outside.len())];
            }
        }
        self.change_member(g, n, target).map(drop)
    }

    /// With `eager_rejoin`: the leader of a group whose member was just removed and deleted
    /// adds the node back as soon as it can (a new replica, while its predecessor's messages
    /// may still be on the wire). Tried for up to 20 ticks.
    fn rejoin_eagerly(&mut self) -> Result<(), Violation> {
        let tick = self.report.ticks;
        self.rejoins.retain(|&(_, _, since)| since + 20 >= tick);
        let Some(&(g, node, _)) = self.rejoins.first() else { return Ok(()) };
        let Some(n) = self.leader_of(g) else { return Ok(()) };
        let member = self.nodes[n].replicas[g].raft.as_ref().is_some_and(|r| r.membership().role(node).is_some());
        if member {
            self.rejoins.remove(0);
        } else if self.change_member(g, n, node)? {
            self.rejoins.remove(0);
            self.report.eager_rejoins += 1;
        }
        Ok(())
    }

    /// Leader `n` of group `g` changes `target`'s role, removes it, or adds it (see
    /// `change_membership`). Returns whether a change was proposed.
    fn change_member(&mut self, g: usize, n: usize, target: u64) -> Result<bool, Violation> {
        let raft = self.nodes[n].replicas[g].raft.as_mut().expect("leader is up");
        let current = raft.membership().clone();
        let voters = current.members().filter(|(_, r)| *r == Role::Voter).count();
        let next_role = if self.opts.whole_nodes {
            let remove = self.rng.random_bool(0.5);
            match current.role(target) {
                Some(Role::Voter) if voters > 2 => (!remove).then_some(Role::Observer),
                Some(Role::Observer) => (!remove).then_some(Role::Voter),
                Some(Role::Witness) => None,
                Some(Role::Voter) => return Ok(false),
                None if !self.may_join(target, g) => return Ok(false),
                None => Some(match self.rng.random_range(0..10) {
                    0..=5 => Role::Observer,
                    9 if self.opts.witnesses => Role::Witness,
                    _ => Role::Voter,
                }),
            }
        } else {
            match current.role(target) {
                Some(Role::Voter) if voters > 2 => Some(Role::Observer),
                Some(Role::Observer) => Some(Role::Voter),
                _ => return Ok(false),
            }
        };
        let joining = next_role.is_some() && current.role(target).is_none();
        // A joining node starts a new replica: the next incarnation of its node.
        let incarnation = if joining { self.nodes[target as usize - 1].joins + 1 } else { 0 };
        let next = current.members().filter(|(id, _)| *id != target).chain(next_role.map(|role| (target, role)));
        let next = Membership::new(next)
            .and_then(|next| if joining { next.with_incarnation(target, incarnation) } else { Ok(next) })
            .map_err(|e| Violation(format!("simulation built a bad membership: {e}")))?;
        let raft = self.nodes[n].replicas[g].raft.as_mut().expect("leader is up");
        // Refusals (a change still pending, no entry of the term committed) are expected.
        let Ok(index) = raft.propose_membership_change(next) else { return self.pump(n, g).map(|()| false) };
        let term = raft.term();
        if next_role.is_none() {
            self.report.members_removed += 1;
            self.pending_removals[g].push((target, index, term));
        } else if current.role(target).is_none() {
            // A join: the node starts an empty replica from the group as it stood (any
            // replica it still holds is stale: a removal that committed, or a join that
            // failed), before the leader's first append can reach it.
            let t = target as usize - 1;
            self.discard_replica(t, g);
            self.pending_removals[g].retain(|(node, _, _)| *node != target);
            self.report.members_added += 1;
            self.nodes[t].joins += 1;
            self.nodes[t].replicas[g] = Replica::empty(true, next_role == Some(Role::Witness), current);
            self.nodes[t].replicas[g].incarnation = incarnation;
            if self.nodes[t].up {
                self.start_replica(t, g)?;
                self.pump(t, g)?;
            }
        }
        self.pump(n, g).map(|()| true)
    }

    /// May `node` join group `g` now? Not while messages of a replica it held are still in
    /// flight (unless `eager_rejoin`): a server's Join comes after its Leave completed, over
    /// the same ordered connection as those messages, so they arrive first. With
    /// `eager_rejoin` replica incarnations must tell the deleted replica's late messages
    /// from the new one's.
    fn may_join(&self, node: u64, g: usize) -> bool {
        self.opts.eager_rejoin || !self.net.carries(node, g as u32)
    }

    fn client_traffic(&mut self) -> Result<(), Violation> {
        self.feed_clocks();
        if self.opts.read_faults {
            return self.read_profile_traffic();
        }
        for g in 0..self.opts.groups as usize {
            if !self.rng.random_bool(self.opts.client_op) {
                continue;
            }
            let n = match self.leader_of(g) {
                Some(leader) if self.rng.random_bool(0.7) => leader,
                _ => self.rng.random_range(0..self.nodes.len()),
            };
            let write = self.rng.random_bool(0.5);
            self.client_op(n, g, write)?;
        }
        Ok(())
    }

    /// A client write (a proposal) or read (a ReadIndex) of group `g` sent to node `n`,
    /// recorded for the linearizability check, then the node's output delivered.
    fn client_op(&mut self, n: usize, g: usize, write: bool) -> Result<(), Violation> {
        let id = self.nodes[n].id;
        let now = self.now;
        let op_id = self.clients[g].next_op_id();
        let Some(raft) = self.nodes[n].replicas[g].raft.as_mut() else { return Ok(()) };
        if write {
            if let Ok((index, _)) = raft.propose([encode_write(op_id)]) {
                self.clients[g].write_proposed(op_id, id, index, now);
            }
        } else if raft.read_index(bytes::Bytes::copy_from_slice(&op_id.to_le_bytes())).is_ok() {
            self.clients[g].read_requested(op_id, id, now);
        }
        self.pump(n, g)
    }

    /// Every group has a leader whose term's entries are committed, and every replica
    /// that applies has applied all of them.
    fn is_live_and_converged(&self) -> Result<bool, Violation> {
        for g in 0..self.opts.groups as usize {
            let Some(n) = self.leader_of(g) else { return Ok(false) };
            let leader = self.nodes[n].replicas[g].raft.as_ref().expect("leader is up");
            let commit = leader.commit_index();
            if commit != leader.last_index() || leader.entry_term(commit) != Some(leader.term()) {
                return Ok(false);
            }
            if self.checkers[g].committed_len() > commit {
                return Err(Violation(format!(
                    "group {g}: entries up to {} were applied but leader {} commits only {commit}",
                    self.checkers[g].committed_len(),
                    n + 1
                )));
            }
            // The leader's configuration is committed (its whole log is): its members that
            // apply must have applied everything; removed and orphaned replicas do not count.
            for (member, role) in leader.membership().members() {
                if !matches!(role, Role::Voter | Role::Observer) {
                    continue;
                }
                let replica = &self.nodes[member as usize - 1].replicas[g];
                let Some(raft) = replica.raft.as_ref() else {
                    return Err(Violation(format!("group {g}: member {member} of the committed configuration hosts no live replica")));
                };
                if raft.applied_index() < commit {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }

    fn describe_groups(&self) -> String {
        let mut out = Vec::new();
        for g in 0..self.opts.groups as usize {
            for node in &self.nodes {
                if let Some(raft) = node.replicas[g].raft.as_ref() {
                    out.push(format!(
                        "g{g}/n{}: {:?} term {} leader {} commit {} applied {} last {}",
                        node.id,
                        raft.role(),
                        raft.term(),
                        raft.leader(),
                        raft.commit_index(),
                        raft.applied_index(),
                        raft.last_index()
                    ));
                }
            }
        }
        out.join("; ")
    }

    fn check_histories(&mut self) -> Result<(), Violation> {
        for (g, clients) in self.clients.iter_mut().enumerate() {
            clients.finish();
            self.report.client_operations += clients.history.len();
            check_register(&clients.history, 0, LINEARIZABILITY_BUDGET)
                .map_err(|e| Violation(format!("group {g}: linearizability: {e}")))?;
        }
        Ok(())
    }
}
