//! One host in the cluster ([`Node`]): it keeps its record in the registry, watches the others
//! and the deployed functions, answers invokes forwarded to it, takes asynchronous events from
//! the stream, and routes every synchronous invoke that reaches it ([`Node::route`]):
//!
//! 1. an idle environment of the function here;
//! 2. else a host with an idle environment of it (most idle first);
//! 3. else a host holding its snapshot, with room to restore it;
//! 4. else room for a new environment: here first, then the hosts with the most room (and
//!    [`FULL_HOSTS_ASKED`] that said they were full, since a record is up to a heartbeat old);
//! 5. else `429 TooManyRequestsException`: the whole cluster is at its limit.
//!
//! Every forward is addressed to one live host of the registry, never to a queue group: a queue
//! group would hand it to any subscriber, a hung host too, whose connection the server has not
//! dropped yet. A host that refuses (it filled up since its last record) or is gone (no one
//! listens on its subject) costs one round trip and the next is tried; a host that took the
//! invoke and then fell silent fails it ([`forward`](crate::forward)): it may have run, and a
//! synchronous invoke is never run twice behind its caller's back.

use crate::catalog::{self, Catalog, FunctionRecord};
use crate::connect::Cluster;
use crate::forward::{self, Probe, Replies, Sent};
use crate::names;
use crate::registry::{self, HostRecord, HostView};
use crate::runner::{RunError, Runner};
use crate::wire::{Forward, Reply};
use async_nats::Subscriber;
use front_door::LogTails;
use futures_util::StreamExt;
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::invoke_api::throttle_reason;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// What a host is told at start.
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub id: String,
    /// Its invoke endpoint, for its record.
    pub invoke_url: String,
    /// The region in function ARNs.
    pub region: String,
    /// Delay before each retry of a failed asynchronous event.
    pub retry_delay: Duration,
    /// Where failure records are also written as files (the stream always gets them).
    pub on_failure_dir: Option<PathBuf>,
    /// How many asynchronous events this host runs at once.
    pub event_workers: usize,
    /// The name log lines start with (`lambda-local`, `lambda-vm`).
    pub program: String,
}

/// This host's part of the cluster.
pub struct Node {
    pub settings: HostSettings,
    pub cluster: Cluster,
    pub view: HostView,
    pub catalog: Catalog,
    pub runner: Arc<dyn Runner>,
    /// The log tails of this host's environments (its invoke endpoints watch the same).
    pub tails: LogTails,
    replies: Arc<Replies>,
    runs: Vec<String>,
    accepting: AtomicBool,
    connection: Arc<Connection>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    started_ms: u64,
    /// The forwarded invokes running here, and the last ones that finished (for the callers'
    /// probes).
    forwarded: Mutex<Forwarded>,
    /// Signalled when this host's environments changed (one started, went busy or idle), so
    /// the others hear of it before the next heartbeat.
    changed: tokio::sync::Notify,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("subscribing on the cluster: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
    #[error("writing this host's record in the registry: {0}")]
    Register(String),
    #[error("reading the deployed functions: {0}")]
    Catalog(String),
}

/// The state of the connection to NATS, as its events tell it.
#[derive(Default)]
pub struct Connection {
    disconnected: AtomicBool,
    /// Signalled each time the connection comes back.
    pub reconnected: Arc<tokio::sync::Notify>,
}

impl Connection {
    pub fn is_up(&self) -> bool {
        !self.disconnected.load(Ordering::SeqCst)
    }
}

/// The connection's state, and the event handler for [`Cluster::connect`] that keeps it and
/// says each change on stderr.
pub fn connection_watch(
    program: &str,
) -> (
    Arc<Connection>,
    impl Fn(async_nats::Event) + Send + Sync + 'static,
) {
    let connection = Arc::new(Connection::default());
    let state = Arc::clone(&connection);
    let program = program.to_owned();
    let on_event = move |event: async_nats::Event| {
        let say = |line: String| {
            let line = format!("{program}: cluster: {line}\n");
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        };
        match event {
            async_nats::Event::Disconnected if !state.disconnected.swap(true, Ordering::SeqCst) => {
                say("disconnected from NATS, reconnecting: until then this host forwards nothing, takes no forwarded work and no events, and serves only what reaches its own endpoint".into());
            }
            async_nats::Event::Connected if state.disconnected.swap(false, Ordering::SeqCst) => {
                state.reconnected.notify_one();
                say("connected to NATS again".into());
            }
            async_nats::Event::ServerError(e) => say(format!("server error: {e}")),
            async_nats::Event::SlowConsumer(_) => say("slow consumer: messages dropped".into()),
            _ => {}
        }
    };
    (connection, on_event)
}

impl Node {
    /// Joins: subscribes, writes this host's record, and starts its background work.
    pub async fn start(
        cluster: Cluster,
        connection: Arc<Connection>,
        runner: Arc<dyn Runner>,
        tails: LogTails,
        settings: HostSettings,
    ) -> Result<Arc<Node>, StartError> {
        let client = cluster.client.clone();
        let replies = Replies::start(&client).await?;
        let id = settings.id.clone();
        let direct = client.subscribe(names::host_invoke_subject(&id)).await?;
        let ping = client.subscribe(names::host_ping_subject(&id)).await?;
        let heartbeats = client.subscribe(names::HEARTBEATS).await?;
        let node = Arc::new(Node {
            runs: runner.runs(),
            settings,
            view: HostView::default(),
            catalog: Catalog::default(),
            runner,
            tails,
            replies,
            accepting: AtomicBool::new(true),
            connection,
            tasks: Mutex::new(Vec::new()),
            started_ms: proto::time::epoch_ms(),
            changed: tokio::sync::Notify::new(),
            forwarded: Mutex::new(Forwarded::default()),
            cluster,
        });
        node.catalog
            .reload(&node.cluster.functions)
            .await
            .map_err(StartError::Catalog)?;
        node.heartbeat_once()
            .await
            .map_err(|e| StartError::Register(e.to_string()))?;
        let consumer = node.cluster.events_consumer.clone();
        let mut tasks = Vec::new();
        let log = {
            let node = Arc::clone(&node);
            move |line: &str| node.log(line)
        };
        tasks.push(tokio::spawn(registry::watch(heartbeats, node.view.clone())));
        tasks.push(tokio::spawn(catalog::watch(
            node.cluster.functions.clone(),
            node.catalog.clone(),
            Arc::clone(&node.connection.reconnected),
            log,
        )));
        tasks.push(tokio::spawn(Arc::clone(&node).heartbeat()));
        tasks.push(tokio::spawn(Arc::clone(&node).serve(direct)));
        tasks.push(tokio::spawn(Arc::clone(&node).answer_pings(ping)));
        for _ in 0..node.settings.event_workers.max(1) {
            let worker = crate::events::work(Arc::clone(&node), consumer.clone());
            tasks.push(tokio::spawn(worker));
        }
        *node.lock_tasks() = tasks;
        Ok(node)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.settings.id
    }

    pub fn log(&self, line: &str) {
        self.runner
            .log(&format!("{}: cluster: {line}", self.settings.program));
    }

    /// Whether this host is connected to NATS now.
    pub fn connected(&self) -> bool {
        self.connection.is_up()
    }

    /// Whether this host takes forwarded work and events: it is connected and not stopping.
    pub fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && self.connected()
    }

    /// This host's record now.
    pub fn record(&self) -> HostRecord {
        let load = self.runner.load();
        HostRecord {
            id: self.settings.id.clone(),
            invoke_url: self.settings.invoke_url.clone(),
            runs: self.runs.clone(),
            max_concurrency: load.max_concurrency,
            in_use: load.in_use,
            functions: load.functions,
            accepting: self.accepting.load(Ordering::SeqCst),
            started_ms: self.started_ms,
        }
    }

    /// Says this host's record: to the others now, and to the registry.
    async fn heartbeat_once(&self) -> Result<u64, async_nats::jetstream::kv::PutError> {
        let value = bytes::Bytes::from(serde_json::to_vec(&self.record()).unwrap_or_default());
        let _ = self
            .cluster
            .client
            .publish(names::HEARTBEATS, value.clone())
            .await;
        self.cluster.hosts.put(self.id(), value).await
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut failing = false;
        let mut ticks = tokio::time::interval(registry::HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = self.changed.notified() => {
                    // A change is told at once, but at most every ANNOUNCE_EVERY.
                    tokio::time::sleep(ANNOUNCE_EVERY).await;
                    if self.connected() {
                        let _ = self.announce().await;
                    }
                    continue;
                }
            }
            if !self.connected() {
                // The records of the others age out of the view by themselves.
                continue;
            }
            match self.heartbeat_once().await {
                Ok(_) if failing => {
                    failing = false;
                    self.log("the registry takes this host's heartbeat again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    self.log(&format!("cannot write this host's heartbeat: {e}"));
                }
                Err(_) => {}
            }
        }
    }

    /// Tells the other hosts this host's record now (not the registry).
    async fn announce(&self) -> Result<(), async_nats::PublishError> {
        let value = serde_json::to_vec(&self.record()).unwrap_or_default();
        self.cluster
            .client
            .publish(names::HEARTBEATS, value.into())
            .await
    }

    /// Runs an invocation on this host's environments, telling the others when that changes
    /// what this host has idle.
    pub(crate) async fn run_local(
        &self,
        function: Arc<FunctionRecord>,
        invocation: Invocation,
        may_start: bool,
    ) -> Result<Outcome, RunError> {
        let mut run = self.runner.run(function, invocation, may_start);
        // Its first poll takes an environment or refuses.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::future::Future::poll(run.as_mut(), cx))
        });
        let outcome = match first.await {
            std::task::Poll::Ready(outcome) => return outcome,
            std::task::Poll::Pending => {
                self.changed.notify_one();
                run.await
            }
        };
        self.changed.notify_one();
        outcome
    }

    /// Stops taking forwarded work and events, and removes this host's record.
    pub async fn stop(&self) {
        self.accepting.store(false, Ordering::SeqCst);
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        // The others hear at once that this host takes nothing more.
        let value = serde_json::to_vec(&self.record()).unwrap_or_default();
        let _ = self
            .cluster
            .client
            .publish(names::HEARTBEATS, value.into())
            .await;
        let _ = self.cluster.hosts.delete(self.id()).await;
        let _ = self.cluster.client.flush().await;
    }

    /// Routes one synchronous invoke of `function` (see the module's documentation); with
    /// `tail`, a run elsewhere brings its log tail back.
    pub async fn route(
        &self,
        function: &Arc<FunctionRecord>,
        invocation: Invocation,
        tail: bool,
    ) -> Result<(Outcome, Option<Vec<u8>>), InvokeError> {
        let here = function.runs_on(&self.runs);
        if here {
            if let Some(done) = self.run_here(function, &invocation, false).await {
                return done;
            }
        }
        // A connection that dropped (its server was lost) is usually back within moments:
        // wait a little for it rather than answer 429.
        let reconnected = tokio::time::Instant::now() + RECONNECT_WAIT;
        while !self.connected() && tokio::time::Instant::now() < reconnected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let others: Vec<HostRecord> = if self.connected() {
            self.view
                .live(self.id())
                .into_iter()
                .filter(|h| function.runs_on(&h.runs))
                .collect()
        } else {
            Vec::new()
        };
        let mut skip = HashSet::new();
        // Environments free up while an invoke is routed: one that found every place taken
        // looks once more before the answer is 429.
        for _ in 0..ROUTE_PASSES {
            if let Some(done) = self
                .route_once(function, &invocation, tail, here, &others, &mut skip)
                .await
            {
                return done;
            }
        }
        Err(InvokeError::Throttled {
            reason: throttle_reason::ACCOUNT,
        })
    }

    /// One pass of the routing order after this host's idle environments.
    async fn route_once(
        &self,
        function: &Arc<FunctionRecord>,
        invocation: &Invocation,
        tail: bool,
        here: bool,
        others: &[HostRecord],
        skip: &mut HashSet<String>,
    ) -> Option<Result<(Outcome, Option<Vec<u8>>), InvokeError>> {
        let name = function.name();
        let mut idle: Vec<&HostRecord> = others.iter().filter(|h| h.idle(name) > 0).collect();
        idle.sort_by_key(|h| std::cmp::Reverse(h.idle(name)));
        for host in idle {
            let forwarded = self.forward_to(host, function, invocation, tail, false, skip);
            if let Some(done) = forwarded.await {
                return Some(done);
            }
        }
        for host in others
            .iter()
            .filter(|h| h.has_snapshot(name) && h.has_capacity())
        {
            let forwarded = self.forward_to(host, function, invocation, tail, true, skip);
            if let Some(done) = forwarded.await {
                return Some(done);
            }
        }
        if here {
            if let Some(done) = self.run_here(function, invocation, true).await {
                return Some(done);
            }
        }
        // Room elsewhere: the hosts with the most first. Records are up to a heartbeat old,
        // so a few hosts that said they were full are asked too before the answer is 429.
        let mut roomy: Vec<&HostRecord> = others.iter().collect();
        roomy.sort_by_key(|h| std::cmp::Reverse(free(h)));
        let said_full = roomy.iter().filter(|h| !h.has_capacity()).count();
        let asked = roomy.len() - said_full.saturating_sub(FULL_HOSTS_ASKED);
        for host in roomy.into_iter().take(asked) {
            let forwarded = self.forward_to(host, function, invocation, tail, true, skip);
            if let Some(done) = forwarded.await {
                return Some(done);
            }
        }
        None
    }

    /// Runs the invoke here; `None` when this host cannot start it now.
    async fn run_here(
        &self,
        function: &Arc<FunctionRecord>,
        invocation: &Invocation,
        may_start: bool,
    ) -> Option<Result<(Outcome, Option<Vec<u8>>), InvokeError>> {
        let run = self.run_local(Arc::clone(function), invocation.clone(), may_start);
        match run.await {
            Ok(outcome) => Some(Ok((outcome, None))),
            Err(RunError::Busy) => None,
            Err(RunError::Unavailable(why)) => {
                self.log(&format!("cannot run {} here: {why}", function.name()));
                None
            }
            Err(RunError::Invoke(error)) => Some(Err(error)),
        }
    }

    fn forward(
        &self,
        function: &FunctionRecord,
        invocation: &Invocation,
        tail: bool,
        may_start: bool,
    ) -> Forward {
        Forward {
            function: function.name().to_owned(),
            revision: function.revision,
            invocation: invocation.clone(),
            tail,
            may_start,
        }
    }

    /// Forwards the invoke to `host`; `None` when it did not run it there (and the host is not
    /// asked again for this invoke when it cannot run it at all).
    async fn forward_to(
        &self,
        host: &HostRecord,
        function: &FunctionRecord,
        invocation: &Invocation,
        tail: bool,
        may_start: bool,
        skip: &mut HashSet<String>,
    ) -> Option<Result<(Outcome, Option<Vec<u8>>), InvokeError>> {
        if skip.contains(&host.id) {
            return None;
        }
        let forward = self.forward(function, invocation, tail, may_start);
        let subject = names::host_invoke_subject(&host.id);
        let sent = forward::send(
            &self.cluster.client,
            &self.replies,
            subject,
            Some(&host.id),
            &forward,
        )
        .await;
        match sent {
            Sent::Done { outcome, tail } => Some(Ok((outcome, tail))),
            Sent::Failed(error) => Some(Err(error)),
            Sent::NotRun(reason) => {
                // Busy now, or the message was lost: it may take the invoke in a later round.
                if reason != BUSY && reason != forward::NEVER_REACHED {
                    skip.insert(host.id.clone());
                }
                None
            }
        }
    }

    async fn serve(self: Arc<Self>, mut subscription: Subscriber) {
        while let Some(message) = subscription.next().await {
            tokio::spawn(Arc::clone(&self).answer(message));
        }
    }

    /// Answers the probes of callers waiting on forwarded invokes: what became of the one
    /// each names.
    async fn answer_pings(self: Arc<Self>, mut subscription: Subscriber) {
        while let Some(message) = subscription.next().await {
            let Some(reply) = message.reply else {
                continue;
            };
            let request_id = String::from_utf8_lossy(&message.payload);
            let state = self.lock_forwarded().state(&request_id);
            let answer = bytes::Bytes::from_static(state.as_str().as_bytes());
            let _ = self.cluster.client.publish(reply, answer).await;
        }
    }

    fn lock_forwarded(&self) -> std::sync::MutexGuard<'_, Forwarded> {
        self.forwarded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one forwarded invoke and sends its outcome back.
    async fn answer(self: Arc<Self>, message: async_nats::Message) {
        let Some(inbox) = message.reply.clone() else {
            return;
        };
        let reply = match Forward::decode(message.headers.as_ref(), message.payload) {
            Ok(forward) => {
                let request_id = forward.invocation.request_id.clone();
                self.lock_forwarded().running.insert(request_id.clone());
                // Running until its answer is out, for the caller's probes.
                let _finish = FinishForwarded {
                    node: &self,
                    request_id,
                };
                let reply = self.answer_reply(forward, &inbox).await;
                self.send_reply(inbox, reply).await;
                return;
            }
            Err(e) => Reply::Failed(InvokeError::Lost(e.to_string())),
        };
        self.send_reply(inbox, reply).await;
    }

    async fn send_reply(&self, inbox: async_nats::Subject, reply: Reply) {
        let (headers, body) = reply.encode();
        let client = &self.cluster.client;
        if let Err(e) = client.publish_with_headers(inbox, headers, body).await {
            self.log(&format!(
                "cannot send a forwarded invoke's outcome back: {e}"
            ));
        }
    }

    async fn answer_reply(&self, forward: Forward, inbox: &async_nats::Subject) -> Reply {
        if !self.accepting.load(Ordering::SeqCst) {
            return Reply::Refused(format!("host {} is stopping", self.id()));
        }
        let functions = &self.cluster.functions;
        let Some(function) = self
            .catalog
            .at_least(functions, &forward.function, forward.revision)
            .await
        else {
            return Reply::Refused(format!(
                "host {} does not know {} (revision {})",
                self.id(),
                forward.function,
                forward.revision
            ));
        };
        if !function.runs_on(&self.runs) {
            return Reply::Refused(format!(
                "host {} runs none of {}'s artifacts",
                self.id(),
                forward.function
            ));
        }
        let request_id = forward.invocation.request_id.clone();
        let watch = forward.tail.then(|| self.tails.watch(&request_id));
        let mut run =
            std::pin::pin!(self.run_local(function, forward.invocation, forward.may_start));
        let mut alive = tokio::time::interval(forward::ALIVE_EVERY);
        alive.tick().await;
        let outcome = loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                _ = alive.tick() => {
                    let (headers, body) = Reply::Alive.encode();
                    let _ = self
                        .cluster
                        .client
                        .publish_with_headers(inbox.clone(), headers, body)
                        .await;
                }
            }
        };
        let tail = match watch {
            Some(watch) => Some(watch.finish().await),
            None => None,
        };
        match outcome {
            Ok(outcome) => Reply::Done { outcome, tail },
            Err(RunError::Busy) => Reply::Refused(BUSY.into()),
            Err(RunError::Unavailable(why)) => Reply::Refused(why),
            Err(RunError::Invoke(error)) => Reply::Failed(error),
        }
    }

    /// The status endpoint's answer: this host, what it sees of the others, the functions.
    pub fn status(&self) -> serde_json::Value {
        let hosts: Vec<serde_json::Value> = self
            .view
            .all()
            .into_iter()
            .map(|(record, age)| {
                serde_json::json!({
                    "id": record.id,
                    "invoke_url": record.invoke_url,
                    "live": age < registry::STALE_AFTER && record.accepting,
                    "heartbeat_age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                    "max_concurrency": record.max_concurrency,
                    "in_use": record.in_use,
                    "functions": record.functions,
                })
            })
            .collect();
        serde_json::json!({
            "host": self.record(),
            "connected": self.connected(),
            "accepting": self.accepting(),
            "hosts": hosts,
            "functions": self.catalog.names(),
        })
    }
}

/// How long an invoke waits for a dropped connection to come back before it is routed
/// without the other hosts.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// How often the routing order is gone through before a 429.
const ROUTE_PASSES: usize = 2;

/// How many hosts whose last record said they were full are asked anyway before a 429.
const FULL_HOSTS_ASKED: usize = 2;

/// A host's free places, as its record says (negative: over).
fn free(host: &HostRecord) -> i64 {
    let max = i64::try_from(host.max_concurrency).unwrap_or(i64::MAX);
    max - i64::try_from(host.in_use).unwrap_or(i64::MAX)
}

/// The forwarded invokes of this host, for probes.
#[derive(Default)]
struct Forwarded {
    running: HashSet<String>,
    finished: std::collections::VecDeque<String>,
}

/// How many finished forwarded invokes a host remembers.
const FINISHED_KEPT: usize = 4096;

impl Forwarded {
    fn state(&self, request_id: &str) -> Probe {
        if self.running.contains(request_id) {
            Probe::Running
        } else if self.finished.iter().any(|id| id == request_id) {
            Probe::Finished
        } else {
            Probe::Unknown
        }
    }
}

/// Moves a forwarded invoke from running to finished when its answer is done.
struct FinishForwarded<'a> {
    node: &'a Node,
    request_id: String,
}

impl Drop for FinishForwarded<'_> {
    fn drop(&mut self) {
        let mut forwarded = self.node.lock_forwarded();
        forwarded.running.remove(&self.request_id);
        if forwarded.finished.len() >= FINISHED_KEPT {
            forwarded.finished.pop_front();
        }
        forwarded
            .finished
            .push_back(std::mem::take(&mut self.request_id));
    }
}

/// The shortest time between two announcements of this host's changes.
const ANNOUNCE_EVERY: Duration = Duration::from_millis(50);

/// A refusal that says only that the host is full now (it may take the next invoke).
const BUSY: &str = "busy";
