//! The node-kill failover: a cluster node is killed at a known instant, and the bench
//! measures, through the surviving nodes only,
//! - per partition, the time from the kill until a command succeeds again: one probe per
//!   partition (an election whose name hashes to it) over a connection to a surviving node
//!   enters and withdraws in a closed loop until the kill (`command`, the baseline); once
//!   the node is gone it sends a new one-shot write (Enter of a new candidate) every 5 ms,
//!   several in flight, so no request stuck since the kill holds it up; `cmd_recovery` is
//!   the time from the kill to the first of them that succeeds;
//! - with the Node API of the surviving nodes (`--admin-endpoints`, Conclave only), which
//!   groups the killed node led at the kill and when another node first reported leading
//!   each of them (`leader_recovery`); the probes of those partitions give `cmd_recovery`,
//!   the others `cmd_recovery_other`;
//! - client candidacies held on the killed node (Conclave only): per election, the leading
//!   candidate is connected to the killed node, the next one and the watchers to surviving
//!   nodes; `candidacy` is the time from the kill until each watcher sees the next candidate
//!   lead. The dead node's sessions end when the cluster's session timeout expires them, so
//!   this figure is bounded below by that timeout, reported with it.
//!
//! Every loop is bounded: the probes by `recovery_timeout` after the kill and a count of
//! attempts, the watchers by the session timeout plus `recovery_timeout`.
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::ElectionClient;
use crate::conclave::ConclaveClient;
use crate::config::{BenchConfig, Target};
use crate::error::BenchError;
use crate::node_events::{self, GroupFailover, LeaderTracker};
use crate::report::Report;
use crate::stats::{progress_line, Recorder};
use crate::watch::Watchers;
use crate::workload::short_message;

/// Most partitions the probes cover (one connection each).
pub const MAX_PARTITIONS: u32 = 4_096;
/// Names tried per partition when looking for one that hashes to each partition.
const NAMES_PER_PARTITION: u32 = 1_000;
/// How often the bench checks whether a killed process is gone, and for how long.
const DEATH_POLL: Duration = Duration::from_micros(200);
const DEATH_BOUND: Duration = Duration::from_secs(5);
/// Pause after a failed baseline command, so a refusing node is not spun on.
const ERROR_BACKOFF: Duration = Duration::from_millis(2);
/// After the kill, a probe sends a new write this often...
const PROBE_INTERVAL: Duration = Duration::from_millis(5);
/// ... with at most this many waiting at once (so requests that hang until a server-side
/// timeout, as etcd's do for 7 s when proposed to a dead leader, stall a probe only after
/// 5 s of them), and at most this many in all.
const MAX_IN_FLIGHT: usize = 1_024;
const MAX_ATTEMPTS_AFTER_KILL: u64 = 10_000;
/// Longest wait for the node to be killed to lead `min_led_groups` groups. A partition
/// whose leadership followed an earlier run's workload goes back to its preferred node
/// after ten quiet rebalancing periods (20 s with the defaults), then a transfer.
const BALANCE_BOUND: Duration = Duration::from_secs(60);
/// Session timeout assumed for the candidacy bound when the run is not told the cluster's.
const ASSUMED_SESSION_TIMEOUT: Duration = Duration::from_secs(5);
/// The next candidate of every candidacy election, on a surviving node.
const NEXT_CANDIDATE: &str = "b";

/// How the bench kills the node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KillMethod {
    /// `kill(pid, SIGKILL)`; the node counts as gone once the process is a zombie or gone.
    Pid(i32),
    /// `sh -c COMMAND`; the node counts as gone once the command exited successfully.
    Command(String),
}

/// What to kill, when, and what to watch it through.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeKill {
    pub method: KillMethod,
    /// The killed node's client endpoint, one of the run's endpoints; every other endpoint
    /// is a survivor.
    pub endpoint: String,
    /// The killed node's id (to know which groups it led; needs `admin_endpoints`).
    pub node_id: Option<u64>,
    /// Node API endpoints of surviving nodes (`http://host:port` of admin listeners).
    pub admin_endpoints: Vec<String>,
    /// Partitions of the cluster: one probe per partition (etcd: this many probes).
    pub partitions: u32,
    /// Probe only the first this many partitions (`None`: every one). With 0, nothing
    /// writes: the partitions stay quiet, and the Node API's leader reports
    /// (`leader_recovery`) are the measure.
    pub probes: Option<u32>,
    /// The kill happens this long after the measured phase starts.
    pub kill_after: Duration,
    /// Bound of the wait for each probe's and group's recovery, from the kill.
    pub recovery_timeout: Duration,
    /// The cluster's session timeout, as the harness configured it (reported with the
    /// candidacy figure, and its bound).
    pub session_timeout: Option<Duration>,
    /// With the Node API: before the measured phase, wait (at most `BALANCE_BOUND`) until
    /// the node to be killed leads at least this many groups (a cluster just started, or
    /// a node just restarted, gets its share of leaderships back by rebalancing).
    pub min_led_groups: u32,
    /// With the Node API: before the measured phase, also wait (at most `BALANCE_BOUND`)
    /// until every group is led by its preferred node, nodes numbered 1..=this (see
    /// [`LeaderTracker::balanced`]): every node caught up, e.g. after a restarted node
    /// rejoined. `None`: no such wait.
    pub balanced_nodes: Option<u64>,
}

impl NodeKill {
    pub fn new(method: KillMethod, endpoint: impl Into<String>) -> NodeKill {
        NodeKill {
            method,
            endpoint: endpoint.into(),
            node_id: None,
            admin_endpoints: Vec::new(),
            partitions: 16,
            probes: None,
            kill_after: Duration::from_secs(2),
            recovery_timeout: Duration::from_secs(10),
            session_timeout: None,
            min_led_groups: 1,
            balanced_nodes: None,
        }
    }

    /// Checks what a node-kill run of `config` cannot work with.
    pub fn validate(&self, config: &BenchConfig) -> Result<(), String> {
        if !config.endpoints.contains(&self.endpoint) {
            return Err(format!("the killed node's endpoint {} is not one of --endpoints", self.endpoint));
        }
        if survivors(&config.endpoints, &self.endpoint).is_empty() {
            return Err("a node-kill run needs at least one surviving endpoint".into());
        }
        if self.partitions == 0 {
            return Err("--partitions must be at least 1".into());
        }
        if self.probed() > MAX_PARTITIONS {
            return Err(format!("at most {MAX_PARTITIONS} partitions can be probed: set --probes (or fewer --partitions)"));
        }
        if self.probes.is_some_and(|p| p > self.partitions) {
            return Err("--probes must not exceed --partitions".into());
        }
        if let KillMethod::Pid(pid) = self.method {
            if pid <= 1 {
                return Err(format!("refusing to kill pid {pid}"));
            }
        }
        if self.admin_endpoints.is_empty() != self.node_id.is_none() {
            return Err("--admin-endpoints and --kill-node-id go together".into());
        }
        if config.target == Target::Etcd && !self.admin_endpoints.is_empty() {
            return Err("--admin-endpoints are Conclave's Node API; etcd has none".into());
        }
        if self.recovery_timeout.is_zero() {
            return Err("the recovery timeout must be positive".into());
        }
        Ok(())
    }

    /// The partitions probed (the first ones).
    fn probed(&self) -> u32 {
        self.probes.unwrap_or(self.partitions)
    }

    /// How long watchers wait for the next candidate after the kill.
    fn candidacy_bound(&self) -> Duration {
        self.session_timeout.unwrap_or(ASSUMED_SESSION_TIMEOUT) + self.recovery_timeout
    }
}

/// The partition of election `name` among `partitions`, as Conclave computes it (CRC-32 of
/// the name's UTF-8 bytes, modulo the partitions, plus one).
pub fn partition_of(name: &str, partitions: u32) -> u32 {
    crc32fast::hash(name.as_bytes()) % partitions + 1
}

/// One election name per partition, `(partition, name)` in partition order: the first of
/// `PREFIX-pK` (K = 0, 1, ...) that hashes to each partition.
pub fn probe_names(prefix: &str, partitions: u32) -> Result<Vec<(u32, String)>, String> {
    let mut names: Vec<Option<String>> = vec![None; partitions as usize];
    let mut missing = partitions as usize;
    for k in 0..partitions.saturating_mul(NAMES_PER_PARTITION) {
        let name = format!("{prefix}-p{k}");
        let slot = &mut names[(partition_of(&name, partitions) - 1) as usize];
        if slot.is_none() {
            *slot = Some(name);
            missing -= 1;
            if missing == 0 {
                break;
            }
        }
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let partition = i as u32 + 1;
            name.map(|n| (partition, n)).ok_or_else(|| format!("no probe name found for partition {partition}"))
        })
        .collect()
}

/// The endpoints other than `killed`.
pub fn survivors(endpoints: &[String], killed: &str) -> Vec<String> {
    endpoints.iter().filter(|e| *e != killed).cloned().collect()
}

/// The state letter of a `/proc/PID/stat` line (the field after the command's closing
/// parenthesis; the command itself may hold spaces and parentheses).
pub fn process_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Whether process `pid` no longer runs (gone, or a zombie its parent has not reaped).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => matches!(process_state(&stat), Some('Z' | 'X') | None),
        Err(_) => true,
    }
}

/// When the kill was issued and, once confirmed, when the node was gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillInstants {
    pub kill_at: Instant,
    pub dead_at: Option<Instant>,
}

/// Where a probe command sent at `sent` and completed at `done` falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Completed before the kill: a baseline sample.
    Before,
    /// Sent before the node was known gone, completed after the kill: not a sample.
    Spanning,
    /// Sent after the node was gone; if it succeeded, the partition serves commands again
    /// this long after the kill.
    After(Duration),
}

pub fn classify(sent: Instant, done: Instant, kill: Option<KillInstants>) -> Phase {
    match kill {
        None => Phase::Before,
        Some(k) if done < k.kill_at => Phase::Before,
        Some(KillInstants { kill_at, dead_at: Some(dead_at) }) if sent >= dead_at => Phase::After(done - kill_at),
        Some(_) => Phase::Spanning,
    }
}

/// Issues the kill: publishes the instant, kills, waits until the node is gone, publishes
/// that. Returns what happened, for the report's notes.
async fn kill_node(method: &KillMethod, instants: &watch::Sender<Option<KillInstants>>) -> Result<String, BenchError> {
    let kill_at = Instant::now();
    instants.send_replace(Some(KillInstants { kill_at, dead_at: None }));
    let described = match method.clone() {
        KillMethod::Pid(pid) => {
            // SAFETY: kill(2) with a pid checked > 1 and a constant signal.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            if rc != 0 {
                return Err(BenchError::Io(format!("kill -9 {pid}: {}", std::io::Error::last_os_error())));
            }
            let gone = tokio::task::spawn_blocking(move || {
                let deadline = Instant::now() + DEATH_BOUND;
                while !process_gone(pid) {
                    if Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(DEATH_POLL);
                }
                true
            })
            .await
            .map_err(|e| BenchError::Io(format!("waiting for pid {pid}: {e}")))?;
            if !gone {
                return Err(BenchError::Io(format!("pid {pid} still runs {DEATH_BOUND:?} after SIGKILL")));
            }
            format!("SIGKILL to pid {pid}")
        }
        KillMethod::Command(command) => {
            let shown = command.clone();
            let status = tokio::task::spawn_blocking(move || std::process::Command::new("sh").arg("-c").arg(&command).status())
                .await
                .map_err(|e| BenchError::Io(format!("running the kill command: {e}")))??;
            if !status.success() {
                return Err(BenchError::Io(format!("the kill command `{shown}` failed: {status}")));
            }
            format!("`sh -c {shown}`")
        }
    };
    let dead_at = Instant::now();
    instants.send_replace(Some(KillInstants { kill_at, dead_at: Some(dead_at) }));
    Ok(format!(
        "node kill: {described}; node counted as gone {:.2} ms after the kill was issued (probe commands sent before that are not recovery samples)",
        (dead_at - kill_at).as_secs_f64() * 1e3
    ))
}

/// What one probe saw after the kill.
#[derive(Clone, Debug)]
struct ProbeOutcome {
    partition: u32,
    recovered: Option<Duration>,
}

/// Before the kill: Enter and Withdraw alternately, one at a time (the baseline `command`
/// latency). Ends only when the caller stops polling it.
async fn probe_baseline(
    recorder: &Recorder,
    kill: &watch::Receiver<Option<KillInstants>>,
    name: &str,
    candidate: &str,
    client: &mut ElectionClient,
) {
    let mut holding = false;
    loop {
        let sent = Instant::now();
        let result = if holding { client.withdraw(name, candidate).await } else { client.enter(name, candidate).await };
        let done = Instant::now();
        if result.is_ok() {
            holding = !holding;
        }
        if classify(sent, done, *kill.borrow()) == Phase::Before {
            match &result {
                Ok(()) => recorder.record("command", done - sent),
                Err(e) => recorder.error("command", &short_message(e)),
            }
        }
        if result.is_err() {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
}

/// One partition's probe: the baseline until the node is gone, then a new one-shot write
/// every `PROBE_INTERVAL` (at most `MAX_IN_FLIGHT` waiting at once), so a request stuck on
/// the dead node holds nothing up; the first success ends the probe.
async fn probe(
    recorder: Arc<Recorder>,
    mut kill: watch::Receiver<Option<KillInstants>>,
    recovery_timeout: Duration,
    partition: u32,
    name: String,
    mut client: ElectionClient,
) -> ProbeOutcome {
    let candidate = format!("probe-{partition}");
    let outcome = |recovered| ProbeOutcome { partition, recovered };
    let watched = kill.clone();
    let gone = tokio::select! {
        _ = probe_baseline(&recorder, &watched, &name, &candidate, &mut client) => None,
        gone = kill.wait_for(|k| k.is_some_and(|k| k.dead_at.is_some())) => gone.ok().and_then(|k| *k),
    };
    let Some(KillInstants { kill_at, .. }) = gone else {
        return outcome(None);
    };
    let writer = client.one_shot();
    let mut attempts = tokio::task::JoinSet::new();
    let mut sent_count = 0u64;
    let mut ticks = tokio::time::interval(PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = tokio::time::Instant::from_std(kill_at + recovery_timeout);
    loop {
        tokio::select! {
            _ = ticks.tick(), if attempts.len() < MAX_IN_FLIGHT && sent_count < MAX_ATTEMPTS_AFTER_KILL => {
                let (writer, name, attempt) = (writer.clone(), name.clone(), sent_count);
                sent_count += 1;
                attempts.spawn(async move {
                    let result = writer.write(&name, attempt).await;
                    (Instant::now(), result)
                });
            }
            Some(done) = attempts.join_next() => match done {
                Ok((done, Ok(()))) => return outcome(Some(done - kill_at)),
                Ok((_, Err(e))) => recorder.error("after_kill", &short_message(&e)),
                Err(e) => recorder.error("after_kill", &format!("attempt task: {e}")),
            },
            _ = tokio::time::sleep_until(deadline) => {
                recorder.error(
                    "cmd_recovery",
                    &format!(
                        "partition {partition}: no write succeeded within {recovery_timeout:?} ({sent_count} sent)"
                    ),
                );
                return outcome(None);
            }
        }
    }
}

/// One election whose leading candidate is connected to the node to be killed.
struct Candidacy {
    name: String,
    /// The leader's connection (to the killed node) and the next candidate's (to a
    /// survivor): kept open until the end.
    _candidates: [ConclaveClient; 2],
    watchers: Watchers,
}

async fn prepare_candidacy(config: &BenchConfig, kill: &NodeKill, survivors: &[String], election: usize) -> Result<Candidacy, BenchError> {
    let name = format!("{}-c{election}", config.name_prefix);
    let mut leader = ConclaveClient::connect(&kill.endpoint, config).await?;
    let mut next = ConclaveClient::connect(&survivors[election % survivors.len()], config).await?;
    leader.create(&name).await?;
    let state = leader.enter(&name, "a").await?;
    if state.leader != "a" {
        return Err(BenchError::Setup(format!("election {name} already has leader {:?}: use a fresh --name-prefix", state.leader)));
    }
    next.enter(&name, NEXT_CANDIDATE).await?;
    let first = election * config.watchers + 1;
    let watchers = Watchers::start_on(&name, config.watchers, config, |w| survivors[(first + w) % survivors.len()].clone()).await?;
    Ok(Candidacy { name, _candidates: [leader, next], watchers })
}

/// Waits for the kill, then for each watcher to see the next candidate lead.
async fn candidacy(recorder: Arc<Recorder>, mut kill: watch::Receiver<Option<KillInstants>>, bound: Duration, mut prepared: Candidacy) {
    let Ok(k) = kill.wait_for(Option::is_some).await.map(|k| k.expect("some")) else {
        return;
    };
    let left = bound.saturating_sub(k.kill_at.elapsed());
    match prepared.watchers.wait_for(|t| t.leader == NEXT_CANDIDATE, left).await {
        Ok(seen) => {
            for at in seen {
                recorder.record("candidacy", at.saturating_duration_since(k.kill_at));
            }
        }
        Err(e) => recorder.error("candidacy", &format!("{}: {}", prepared.name, short_message(&e))),
    }
}

/// Follows the survivors' leader reports: arms the tracker at the kill, ends once every
/// group the killed node led has a new leader or `recovery_timeout` after the kill.
async fn follow_leaders(
    mut readers: node_events::NodeEventReaders,
    mut tracker: LeaderTracker,
    mut kill: watch::Receiver<Option<KillInstants>>,
    killed: u64,
    recovery_timeout: Duration,
) -> (LeaderTracker, Vec<u32>) {
    let mut led = None;
    loop {
        if led.is_none() {
            if let Some(k) = *kill.borrow_and_update() {
                led = Some((tracker.arm(k.kill_at, killed), k.kill_at + recovery_timeout));
            }
        }
        if let Some((_, deadline)) = &led {
            if tracker.all_failed_over() || Instant::now() >= *deadline {
                break;
            }
        }
        let deadline = led.as_ref().map(|(_, d)| *d).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            update = readers.updates.recv() => match update {
                Some(update) => tracker.observe(update),
                None => if led.is_some() { break } else {
                    // Every stream ended before the kill: wait for it all the same.
                    let _ = kill.wait_for(Option::is_some).await;
                },
            },
            changed = kill.changed(), if led.is_none() => {
                if changed.is_err() { break }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }
    (tracker, led.map(|(groups, _)| groups).unwrap_or_default())
}

/// Runs a node-kill failover (see the module's documentation).
pub async fn run(config: BenchConfig) -> Result<Report, BenchError> {
    let kill = config.kill.clone().ok_or_else(|| BenchError::Config("not a node-kill run".into()))?;
    kill.validate(&config).map_err(BenchError::Config)?;
    let timeout = config.request_timeout;
    let survivors = survivors(&config.endpoints, &kill.endpoint);

    // Setup, not measured: probes, candidacies, the survivors' leader reports.
    let probes: Vec<(u32, String)> = match (config.target, kill.probed()) {
        (_, 0) => Vec::new(),
        (Target::Conclave, probed) => {
            let mut names = probe_names(&config.name_prefix, kill.partitions).map_err(BenchError::Setup)?;
            names.truncate(probed as usize);
            names
        }
        (Target::Etcd, probed) => (1..=probed).map(|i| (i, format!("{}-p{i}", config.name_prefix))).collect(),
    };
    let mut connecting = Vec::with_capacity(probes.len());
    for (i, (_, name)) in probes.iter().enumerate() {
        let config = config.clone();
        let endpoint = survivors[i % survivors.len()].clone();
        let name = name.clone();
        connecting.push(tokio::spawn(async move {
            let mut client = ElectionClient::connect_to(&config, &endpoint).await?;
            client.create(&name).await?;
            Ok::<_, BenchError>(client)
        }));
    }
    let mut probe_clients = Vec::with_capacity(probes.len());
    for task in connecting {
        probe_clients.push(task.await.map_err(|e| BenchError::Setup(format!("probe setup: {e}")))??);
    }
    let mut candidacies = Vec::new();
    if config.target == Target::Conclave {
        for election in 0..config.elections {
            candidacies.push(prepare_candidacy(&config, &kill, &survivors, election).await?);
        }
    }
    let mut tracker = LeaderTracker::new();
    let mut balance_wait = None;
    let readers = match kill.node_id {
        Some(_) => {
            let mut readers = node_events::watch_leaders(&kill.admin_endpoints, timeout).await?;
            let deadline = tokio::time::Instant::now() + timeout;
            while tracker.known() < kill.partitions as usize {
                match tokio::time::timeout_at(deadline, readers.updates.recv()).await {
                    Ok(Some(update)) => tracker.observe(update),
                    _ => {
                        return Err(BenchError::Setup(format!(
                            "the Node API of {:?} reported leaders of {} of {} groups",
                            kill.admin_endpoints,
                            tracker.known(),
                            kill.partitions
                        )))
                    }
                }
            }
            let killed = kill.node_id.expect("validated with the admin endpoints");
            let deadline = tokio::time::Instant::now() + BALANCE_BOUND;
            let ready = |tracker: &LeaderTracker| {
                tracker.led_by(killed) >= kill.min_led_groups as usize
                    && kill.balanced_nodes.is_none_or(|nodes| tracker.balanced(kill.partitions, nodes))
            };
            let waiting = Instant::now();
            while !ready(&tracker) {
                match tokio::time::timeout_at(deadline, readers.updates.recv()).await {
                    Ok(Some(update)) => tracker.observe(update),
                    _ => {
                        return Err(BenchError::Setup(format!(
                            "after {BALANCE_BOUND:?}, node {killed} leads {} groups (--min-led-groups {}), every group on its preferred node: {}",
                            tracker.led_by(killed),
                            kill.min_led_groups,
                            kill.balanced_nodes.is_some_and(|n| tracker.balanced(kill.partitions, n))
                        )))
                    }
                }
            }
            balance_wait = Some(waiting.elapsed());
            Some(readers)
        }
        None => None,
    };

    // The measured phase.
    let recorder = Arc::new(Recorder::new());
    let (instants, kill_rx) = watch::channel(None);
    let start = Instant::now();
    let ticker = {
        let recorder = Arc::clone(&recorder);
        let progress = config.progress;
        tokio::spawn(async move {
            for second in 1usize.. {
                tokio::time::sleep_until((start + Duration::from_secs(second as u64)).into()).await;
                let window = recorder.close_window();
                if progress {
                    eprintln!("{}", progress_line(second, &window));
                }
            }
        })
    };
    let probe_tasks: Vec<_> = probes
        .iter()
        .zip(probe_clients)
        .map(|((partition, name), client)| {
            tokio::spawn(probe(Arc::clone(&recorder), kill_rx.clone(), kill.recovery_timeout, *partition, name.clone(), client))
        })
        .collect();
    let candidacy_tasks: Vec<_> = candidacies
        .into_iter()
        .map(|prepared| tokio::spawn(candidacy(Arc::clone(&recorder), kill_rx.clone(), kill.candidacy_bound(), prepared)))
        .collect();
    let leader_task = readers.map(|readers| {
        tokio::spawn(follow_leaders(readers, tracker, kill_rx.clone(), kill.node_id.expect("with the readers"), kill.recovery_timeout))
    });
    tokio::time::sleep_until((start + kill.kill_after).into()).await;
    let killed = kill_node(&kill.method, &instants).await;
    if killed.is_err() {
        // No kill: end every waiter now rather than at its bound.
        drop(instants);
    }
    let mut outcomes = Vec::with_capacity(probe_tasks.len());
    for task in probe_tasks {
        if killed.is_err() {
            task.abort();
        }
        if let Ok(outcome) = task.await {
            outcomes.push(outcome);
        }
    }
    for task in candidacy_tasks {
        if killed.is_err() {
            task.abort();
        }
        let _ = task.await;
    }
    let leaders = match leader_task {
        Some(task) => task.await.ok(),
        None => None,
    };
    let elapsed = start.elapsed();
    ticker.abort();
    let _ = ticker.await;
    let kill_note = killed?;
    recorder.close_window();

    // Recovery samples, by whether the killed node led the partition.
    let led: Option<&Vec<u32>> = leaders.as_ref().map(|(_, led)| led);
    let mut notes = vec![kill_note];
    for outcome in &outcomes {
        let Some(after) = outcome.recovered else {
            continue;
        };
        let op = match led {
            Some(led) if !led.contains(&outcome.partition) => "cmd_recovery_other",
            _ => "cmd_recovery",
        };
        recorder.record(op, after);
    }
    if let Some((tracker, _)) = &leaders {
        for failover in tracker.failovers() {
            match failover.new_leader {
                Some((_, after)) => recorder.record("leader_recovery", after),
                None => recorder.error(
                    "leader_recovery",
                    &format!("group {}: no other node reported leading it within {:?}", failover.group, kill.recovery_timeout),
                ),
            }
        }
    }
    if let Some(waited) = balance_wait {
        notes.push(format!(
            "setup waited {} for node {} to lead at least {} groups{}",
            millis(waited),
            kill.node_id.unwrap_or_default(),
            kill.min_led_groups,
            if kill.balanced_nodes.is_some() { " and every group to be led by its preferred node (all nodes caught up)" } else { "" }
        ));
    }
    notes.extend(kill_notes(&config, &kill, &survivors, &outcomes, &leaders));

    Report::finish(&config, elapsed, recorder.finish(), notes, None)
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// What a reader needs to interpret a node-kill report, and the per-partition detail.
fn kill_notes(
    config: &BenchConfig,
    kill: &NodeKill,
    survivors: &[String],
    outcomes: &[ProbeOutcome],
    leaders: &Option<(LeaderTracker, Vec<u32>)>,
) -> Vec<String> {
    let mut notes = vec![format!(
        "node-kill failover: killed node at {}, surviving endpoints {}; the kill came {} after the start; command = a probe's Enter or Withdraw before the kill",
        kill.endpoint,
        survivors.join(","),
        millis(kill.kill_after)
    )];
    let scope = if leaders.is_some() {
        "for the partitions the killed node led (cmd_recovery_other: the partitions it did not lead)"
    } else {
        "for every partition (run with --admin-endpoints and --kill-node-id to tell the partitions the killed node led)"
    };
    notes.push(format!(
        "cmd_recovery: one probe per partition ({}) through a surviving node, Enter/Withdraw in a closed loop before the kill; once the node is gone, a new one-shot write (Enter of a new candidate; etcd: Campaign on a new election) every {} ms, up to {MAX_IN_FLIGHT} in flight; from the kill to the completion of the first that succeeds, {scope}",
        outcomes.len(),
        PROBE_INTERVAL.as_millis()
    ));
    if config.target == Target::Etcd {
        notes.push("etcd: one Raft group, so every probe measures the same group; no Node API and no candidacy measurement".into());
    }
    if let Some((_, led)) = leaders {
        notes.push(format!(
            "leader_recovery: from the kill to the first LeaderUpdated event naming another node, from the Node API of {}; groups the killed node led at the kill: {led:?}",
            kill.admin_endpoints.join(",")
        ));
    }
    if config.target == Target::Conclave {
        notes.push(format!(
            "candidacy: {} elections whose leading candidate was connected to the killed node, the next candidate and {} watchers each on surviving nodes; from the kill to each watcher seeing the next candidate lead. The dead node's sessions end only when the session timeout expires them: cluster session timeout {}",
            config.elections,
            config.watchers,
            match kill.session_timeout {
                Some(t) => format!("{} ms (as given by --session-timeout-ms)", t.as_millis()),
                None => format!("not given (bound assumes {} ms)", ASSUMED_SESSION_TIMEOUT.as_millis()),
            }
        ));
    }
    let failovers = leaders.as_ref().map(|(tracker, _)| tracker.failovers()).unwrap_or_default();
    for outcome in outcomes {
        let mut details = Vec::new();
        match failovers.iter().find(|f| f.group == outcome.partition) {
            Some(GroupFailover {
                new_leader: Some((node, after)),
                term_at_kill,
                new_term,
                reports,
                ..
            }) => details.push(format!(
                "led by the killed node (term {term_at_kill}), then by node {node} (term {}) after {} ({reports} leader reports since the kill)",
                new_term.unwrap_or_default(),
                millis(*after)
            )),
            Some(_) => details.push("led by the killed node, no new leader reported".into()),
            None if leaders.is_some() => details.push("led by another node at the kill".into()),
            None => {}
        }
        details.push(match outcome.recovered {
            Some(after) => format!("a command succeeded again after {}", millis(after)),
            None => "no command succeeded after the kill".into(),
        });
        let label = match config.target {
            Target::Conclave => "partition",
            Target::Etcd => "probe",
        };
        notes.push(format!("{label} {}: {}", outcome.partition, details.join("; ")));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(kill: NodeKill) -> BenchConfig {
        let mut config = BenchConfig::new("http://127.0.0.1:1", crate::Workload::Failover);
        config.endpoints = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into(), "http://127.0.0.1:3".into()];
        config.kill = Some(kill);
        config
    }

    #[test]
    fn partitions_follow_the_servers_documented_crc32() {
        // zlib.crc32(b"a") = 0xe8b7be43 = 3904355907; 3904355907 % 16 = 3.
        assert_eq!(partition_of("a", 16), 4);
        assert_eq!(partition_of("", 16), 1);
        assert_eq!(partition_of("anything", 1), 1);
    }

    #[test]
    fn probe_names_cover_every_partition_once() {
        for partitions in [1, 4, 16, 64] {
            let names = probe_names("bench-failover-1", partitions).unwrap();
            assert_eq!(names.len(), partitions as usize);
            for (i, (partition, name)) in names.iter().enumerate() {
                assert_eq!(*partition, i as u32 + 1);
                assert_eq!(partition_of(name, partitions), *partition, "{name}");
                assert!(name.starts_with("bench-failover-1-p"));
            }
        }
    }

    #[test]
    fn survivors_are_the_other_endpoints() {
        let all: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        assert_eq!(survivors(&all, "b"), vec!["a".to_string(), "c".to_string()]);
        assert_eq!(survivors(&all, "x").len(), 3);
    }

    #[test]
    fn process_state_reads_past_odd_command_names() {
        assert_eq!(process_state("42 (conclave) S 1 42 42 0"), Some('S'));
        assert_eq!(process_state("42 (a) b (c)) Z 1 2"), Some('Z'));
        assert_eq!(process_state("garbage"), None);
        assert!(!process_gone(std::process::id() as i32));
    }

    #[test]
    fn probe_commands_are_classified_around_the_kill() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(classify(t, t + ms(1), None), Phase::Before);
        let issued = Some(KillInstants { kill_at: t + ms(10), dead_at: None });
        assert_eq!(classify(t, t + ms(5), issued), Phase::Before);
        assert_eq!(classify(t, t + ms(11), issued), Phase::Spanning);
        let gone = Some(KillInstants { kill_at: t + ms(10), dead_at: Some(t + ms(12)) });
        assert_eq!(classify(t + ms(11), t + ms(300), gone), Phase::Spanning);
        assert_eq!(classify(t + ms(12), t + ms(300), gone), Phase::After(ms(290)));
    }

    #[test]
    fn kill_runs_are_validated() {
        let kill = NodeKill::new(KillMethod::Pid(12345), "http://127.0.0.1:1");
        assert_eq!(kill.validate(&config_with(kill.clone())), Ok(()));
        let refused = |kill: NodeKill| kill.clone().validate(&config_with(kill)).is_err();
        assert!(refused(NodeKill { endpoint: "http://127.0.0.1:9".into(), ..kill.clone() }));
        assert!(refused(NodeKill { method: KillMethod::Pid(1), ..kill.clone() }));
        assert!(refused(NodeKill { partitions: 0, ..kill.clone() }));
        assert!(refused(NodeKill { partitions: 10_000, ..kill.clone() }));
        assert!(!refused(NodeKill { partitions: 10_000, probes: Some(0), ..kill.clone() }));
        assert!(refused(NodeKill { partitions: 8, probes: Some(9), ..kill.clone() }));
        assert!(refused(NodeKill { node_id: Some(1), ..kill.clone() }));
        assert!(!refused(NodeKill { node_id: Some(1), admin_endpoints: vec!["http://127.0.0.1:29".into()], ..kill.clone() }));
        let mut alone = config_with(kill.clone());
        alone.endpoints.truncate(1);
        assert!(kill.validate(&alone).is_err());
        let mut etcd = config_with(kill.clone());
        etcd.target = Target::Etcd;
        assert_eq!(kill.validate(&etcd), Ok(()));
        let with_admin = NodeKill { node_id: Some(1), admin_endpoints: vec!["http://127.0.0.1:29".into()], ..kill };
        assert!(with_admin.validate(&etcd).is_err());
    }

    #[test]
    fn notes_name_each_partitions_leader_and_recovery() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut tracker = LeaderTracker::new();
        for (group, leader) in [(1, 1), (2, 2)] {
            tracker.observe(node_events::LeaderUpdate { group, term: 1, leader, at: t });
        }
        let led = tracker.arm(t, 1);
        tracker.observe(node_events::LeaderUpdate { group: 1, term: 2, leader: 3, at: t + ms(200) });
        let mut kill = NodeKill::new(KillMethod::Pid(12345), "http://127.0.0.1:1");
        kill.node_id = Some(1);
        kill.admin_endpoints = vec!["http://127.0.0.1:29".into()];
        kill.partitions = 2;
        let config = config_with(kill.clone());
        let outcomes = [ProbeOutcome { partition: 1, recovered: Some(ms(250)) }, ProbeOutcome { partition: 2, recovered: None }];
        let notes = kill_notes(&config, &kill, &survivors(&config.endpoints, &kill.endpoint), &outcomes, &Some((tracker, led)));
        let text = notes.join("\n");
        assert!(text.contains("groups the killed node led at the kill: [1]"), "{text}");
        assert!(text.contains("partition 1: led by the killed node (term 1), then by node 3 (term 2) after 200.0 ms (1 leader reports since the kill); a command succeeded again after 250.0 ms"), "{text}");
        assert!(text.contains("partition 2: led by another node at the kill; no command succeeded after the kill"), "{text}");
        assert!(text.contains("cluster session timeout not given"), "{text}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn killing_a_process_publishes_both_instants() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let (sender, receiver) = watch::channel(None);
        let note = kill_node(&KillMethod::Pid(child.id() as i32), &sender).await.unwrap();
        assert!(note.contains("SIGKILL"), "{note}");
        let k = receiver.borrow().expect("published");
        assert!(k.dead_at.expect("gone") >= k.kill_at);
        assert!(!child.wait().unwrap().success());
        let failing = kill_node(&KillMethod::Command("exit 3".into()), &sender).await;
        assert!(failing.is_err());
        let ok = kill_node(&KillMethod::Command("true".into()), &sender).await.unwrap();
        assert!(ok.contains("sh -c true"), "{ok}");
    }
}
