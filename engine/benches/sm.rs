//! Criterion benchmarks of election apply: the cost of one replica applying election
//! commands to the state machine, with a same-run baseline that builds (and encodes) the
//! very same commands without applying them.
//!
//! - `enter_withdraw`: candidate churn behind a stable leader (Enter joins the end of eight
//!   waiting candidates, Withdraw removes it, KeepAlive releases the two outputs);
//! - `leader_handover`: the leader withdraws and re-enters, so every iteration elects a new
//!   leader (term + 1) among eight candidates of eight sessions.
//!
//! Each iteration is three log entries. Run: `cargo bench -p conclave-engine --bench sm`.

use std::hint::black_box;

use conclave_engine::sm::{command, ElectionOp, Output, PrimitiveRef, StateMachine};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const CANDIDATES: usize = 8;

struct Fixture {
    sm: StateMachine,
    index: u64,
    now_ms: u64,
    sessions: Vec<u64>,
    next_seq: Vec<u64>,
    election: u64,
}

impl Fixture {
    /// A state machine with eight sessions, one election, and candidate i of session i.
    fn new() -> Fixture {
        let mut fixture =
            Fixture { sm: StateMachine::new(), index: 0, now_ms: 1_000, sessions: Vec::new(), next_seq: vec![1; CANDIDATES], election: 0 };
        for _ in 0..CANDIDATES {
            let open = fixture.apply(command::open_session(fixture.now_ms, 60_000));
            let Output::SessionOpened { session_id } = open else { panic!("open: {open:?}") };
            fixture.sessions.push(session_id);
        }
        let create = fixture.sequenced(0, |now, s, seq| command::create_primitive(now, s, seq, "bench"));
        let Output::PrimitiveCreated { primitive_id } = create else { panic!("create: {create:?}") };
        fixture.election = primitive_id;
        for i in 0..CANDIDATES {
            fixture.elect(i, ElectionOp::Enter, &format!("candidate-{i}"));
        }
        fixture
    }

    fn apply(&mut self, command: command::Command) -> Output {
        self.index += 1;
        match self.sm.apply(self.index, 1, &command).result {
            Ok(output) => output,
            Err(error) => panic!("bench command failed: {error}"),
        }
    }

    fn sequenced(&mut self, i: usize, build: impl FnOnce(u64, u64, u64) -> command::Command) -> Output {
        let seq = self.next_seq[i];
        self.next_seq[i] += 1;
        self.apply(build(self.now_ms, self.sessions[i], seq))
    }

    fn elect(&mut self, i: usize, op: ElectionOp, candidate: &str) -> Output {
        let election = self.election;
        self.sequenced(i, |now, s, seq| command::election(now, s, seq, PrimitiveRef::Id(election), op, candidate))
    }

    fn acknowledge(&mut self, i: usize) -> Output {
        let acked = self.next_seq[i] - 1;
        self.apply(command::keep_alive(self.now_ms, self.sessions[i], acked))
    }
}

fn election_apply(c: &mut Criterion) {
    let mut group = c.benchmark_group("sm_election_apply");
    group.throughput(Throughput::Elements(3));

    group.bench_function("baseline_build_and_encode_3_commands", |b| {
        let mut seq = 0u64;
        b.iter(|| {
            seq += 2;
            let enter = command::election(1, 1, seq, PrimitiveRef::Id(9), ElectionOp::Enter, "churn");
            let withdraw = command::election(1, 1, seq + 1, PrimitiveRef::Id(9), ElectionOp::Withdraw, "churn");
            let keep_alive = command::keep_alive(1, 1, seq + 1);
            black_box((command::encode(&enter), command::encode(&withdraw), command::encode(&keep_alive)))
        })
    });

    group.bench_function("enter_withdraw", |b| {
        let mut fixture = Fixture::new();
        b.iter(|| {
            black_box(fixture.elect(0, ElectionOp::Enter, "churn"));
            black_box(fixture.elect(0, ElectionOp::Withdraw, "churn"));
            black_box(fixture.acknowledge(0))
        })
    });

    group.bench_function("leader_handover", |b| {
        let mut fixture = Fixture::new();
        let names: Vec<String> = (0..CANDIDATES).map(|i| format!("candidate-{i}")).collect();
        let mut round = 0usize;
        b.iter(|| {
            let i = round % CANDIDATES;
            round += 1;
            black_box(fixture.elect(i, ElectionOp::Withdraw, &names[i]));
            black_box(fixture.elect(i, ElectionOp::Enter, &names[i]));
            black_box(fixture.acknowledge(i))
        })
    });

    group.bench_function("apply_bytes_enter_withdraw", |b| {
        let mut fixture = Fixture::new();
        let session = fixture.sessions[0];
        let election = fixture.election;
        b.iter(|| {
            let seq = fixture.next_seq[0];
            fixture.next_seq[0] += 2;
            let payloads = [
                command::encode(&command::election(1, session, seq, PrimitiveRef::Id(election), ElectionOp::Enter, "churn")),
                command::encode(&command::election(1, session, seq + 1, PrimitiveRef::Id(election), ElectionOp::Withdraw, "churn")),
                command::encode(&command::keep_alive(1, session, seq + 1)),
            ];
            for payload in payloads {
                fixture.index += 1;
                black_box(fixture.sm.apply_bytes(fixture.index, 1, &payload));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, election_apply);
criterion_main!(benches);
