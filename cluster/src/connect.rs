//! Joining the NATS cluster: the flags every program takes (`--cluster URL[,URL...]`,
//! credentials, TLS), the connection with its checks, and the buckets, object store and streams
//! this crate keeps there (made by whichever program comes first, with the same settings).
//!
//! Everything that can be wrong with the connection is found here, at start, and named: an
//! address that does not parse, a cluster that cannot be reached, refused credentials, a TLS
//! failure, a server without JetStream, a message limit too small for Lambda's 6 MB payloads, or
//! fewer servers than the replicas asked for.

use crate::names;
use async_nats::jetstream::{self, kv, object_store, stream};
use async_nats::{ConnectErrorKind, ServerAddr};
use proto::runtime_api::SYNC_PAYLOAD_LIMIT;
use std::path::PathBuf;
use std::time::Duration;

/// The smallest NATS `max_payload` that carries a 6 MB invoke or response with its headers.
pub const MIN_MAX_PAYLOAD: usize = SYNC_PAYLOAD_LIMIT + 64 * 1024;

/// How long connecting may take before the address counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the client pings its server: two unanswered pings and it counts as cut off (and
/// says so), so a host whose network is gone stops taking forwarded work within seconds.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How long a JetStream request (a publish's acknowledgement, a bucket read) may take.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The flags of a program that joins a cluster.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Join the NATS JetStream cluster at these servers (nats://HOST:PORT or tls://HOST:PORT,
    /// comma-separated; user:password@ or a token@ in a URL are its credentials). Its servers
    /// need JetStream and `max_payload` of at least 8MB.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub cluster: Vec<String>,
    /// A NATS credentials file (a user JWT and its NKey seed, as `nsc` writes them).
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_creds: Option<PathBuf>,
    /// The CA certificate (PEM) the servers' TLS certificates are checked against; TLS is then
    /// required.
    #[arg(long, value_name = "FILE", requires = "cluster")]
    pub cluster_ca: Option<PathBuf>,
    /// A client certificate (PEM) for servers that verify clients; needs --cluster-key.
    #[arg(long, value_name = "FILE", requires = "cluster_key")]
    pub cluster_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cluster_cert")]
    pub cluster_key: Option<PathBuf>,
    /// Replicas of each bucket and stream this program creates (1 for a single server; 3
    /// survives the loss of one of three).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub cluster_replicas: u8,
}

impl ClusterArgs {
    /// Whether `--cluster` was given.
    pub fn enabled(&self) -> bool {
        !self.cluster.is_empty()
    }
}

/// Why joining the cluster failed; each says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("--cluster {url:?} is not a NATS server address (nats://HOST:PORT or tls://HOST:PORT): {reason}")]
    BadUrl { url: String, reason: String },
    #[error("--cluster-creds {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--cluster-ca/--cluster-cert/--cluster-key {}: no such file", path.display())]
    MissingFile { path: PathBuf },
    #[error("the NATS cluster at {urls} refused the credentials ({kind}): check --cluster-creds or the user and password in the URL")]
    Refused { urls: String, kind: String },
    #[error("cannot connect to the NATS cluster at {urls}: TLS failed: {detail}")]
    Tls { urls: String, detail: String },
    #[error("cannot reach the NATS cluster at {urls} ({kind}): is a server listening there?")]
    Unreachable { urls: String, kind: String },
    #[error("the NATS server {server} allows messages of at most {max_payload} bytes; invokes and responses of up to 6 MB need at least {MIN_MAX_PAYLOAD}: set `max_payload: 8MB` in every server's configuration")]
    PayloadLimit { server: String, max_payload: usize },
    #[error("the NATS server {server} has no JetStream: start every server with `-js` (or `jetstream {{}}` in its configuration)")]
    NoJetStream { server: String },
    #[error("cannot set up {what} on the NATS cluster with {replicas} replica(s): {detail}{hint}")]
    Setup {
        what: String,
        replicas: u8,
        detail: String,
        hint: &'static str,
    },
}

/// A connection to the cluster with the buckets, object store and streams in hand.
#[derive(Clone)]
pub struct Cluster {
    pub client: async_nats::Client,
    pub jetstream: jetstream::Context,
    pub hosts: kv::Store,
    pub functions: kv::Store,
    pub attempts: kv::Store,
    /// Published SnapStart snapshots ([`crate::snapshots`]).
    pub snapshots: kv::Store,
    pub artifacts: object_store::ObjectStore,
    pub events: stream::Stream,
    /// The durable consumer every host takes events from.
    pub events_consumer: jetstream::consumer::PullConsumer,
    pub failures: stream::Stream,
    /// The servers as given, for messages.
    pub urls: String,
}

/// The addresses `--cluster` names, each checked.
pub fn server_addrs(urls: &[String]) -> Result<Vec<ServerAddr>, ConnectError> {
    urls.iter()
        .map(|url| {
            let url = url.trim();
            let bad = |reason: String| ConnectError::BadUrl {
                url: url.to_owned(),
                reason,
            };
            let addr: ServerAddr = url
                .parse()
                .map_err(|e: std::io::Error| bad(e.to_string()))?;
            match addr.scheme() {
                "nats" | "tls" => {}
                other => return Err(bad(format!("unknown scheme {other:?}"))),
            }
            if addr.host().is_empty() {
                return Err(bad("no host".into()));
            }
            Ok(addr)
        })
        .collect()
}

impl Cluster {
    /// Connects as `name` (what the servers show for this client), checks the servers, and
    /// makes what is missing of the buckets and streams.
    pub async fn connect(
        args: &ClusterArgs,
        name: &str,
        events: impl Fn(async_nats::Event) + Send + Sync + 'static,
    ) -> Result<Cluster, ConnectError> {
        let addrs = server_addrs(&args.cluster)?;
        let urls = args.cluster.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(CONNECT_TIMEOUT)
            .ping_interval(PING_INTERVAL)
            .subscription_capacity(1024)
            .event_callback({
                let events = std::sync::Arc::new(events);
                move |event| {
                    let events = events.clone();
                    async move { events(event) }
                }
            });
        // The client takes no credentials from the URLs themselves: a `user:password@` or
        // `token@` there becomes the connection's.
        if let Some(addr) = addrs.iter().find(|a| a.username().is_some()) {
            let user = percent_decoded(addr.username().unwrap_or_default());
            options = match addr.password() {
                Some(password) => options.user_and_password(user, percent_decoded(password)),
                None => options.token(user),
            };
        }
        if let Some(path) = &args.cluster_creds {
            options = options.credentials_file(path).await.map_err(|source| {
                ConnectError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        for path in [&args.cluster_ca, &args.cluster_cert, &args.cluster_key]
            .into_iter()
            .flatten()
        {
            if !path.is_file() {
                return Err(ConnectError::MissingFile { path: path.clone() });
            }
        }
        if let Some(ca) = &args.cluster_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&args.cluster_cert, &args.cluster_key) {
            options = options
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let client = options
            .connect(addrs.as_slice())
            .await
            .map_err(|e| connect_error(&urls, e))?;
        let info = client.server_info();
        let server = format!("{} ({}:{})", info.server_name, info.host, info.port);
        if info.max_payload < MIN_MAX_PAYLOAD {
            return Err(ConnectError::PayloadLimit {
                server,
                max_payload: info.max_payload,
            });
        }
        if !info.jetstream {
            return Err(ConnectError::NoJetStream { server });
        }
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(JETSTREAM_TIMEOUT);
        let setup = Setup {
            jetstream: &jetstream,
            replicas: args.cluster_replicas,
        };
        // A cluster that has just started elects its JetStream leader first: wait for it,
        // but not for what waiting does not change.
        let deadline = tokio::time::Instant::now() + JETSTREAM_READY;
        let parts = loop {
            match setup.all().await {
                Ok(parts) => break parts,
                Err(e) if e.is_final() || tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        Ok(Cluster {
            hosts: parts.hosts,
            functions: parts.functions,
            attempts: parts.attempts,
            snapshots: parts.snapshots,
            artifacts: parts.artifacts,
            events: parts.events,
            events_consumer: parts.events_consumer,
            failures: parts.failures,
            client,
            jetstream,
            urls,
        })
    }
}

/// How long a program waits at start for the cluster's JetStream to be ready.
const JETSTREAM_READY: Duration = Duration::from_secs(30);

/// The buckets, object store and streams.
struct Parts {
    hosts: kv::Store,
    functions: kv::Store,
    attempts: kv::Store,
    snapshots: kv::Store,
    artifacts: object_store::ObjectStore,
    events: stream::Stream,
    events_consumer: jetstream::consumer::PullConsumer,
    failures: stream::Stream,
}

impl ConnectError {
    /// Whether trying again cannot help.
    fn is_final(&self) -> bool {
        match self {
            ConnectError::Setup { detail, .. } => detail.contains("non-clustered mode"),
            _ => true,
        }
    }
}

/// A URL's user or password as typed (`%40` is `@`).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn connect_error(urls: &str, e: async_nats::ConnectError) -> ConnectError {
    let urls = urls.to_owned();
    let detail = e.to_string();
    match e.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            ConnectError::Refused { urls, kind: detail }
        }
        ConnectErrorKind::Tls => ConnectError::Tls { urls, detail },
        ConnectErrorKind::ServerParse => ConnectError::BadUrl {
            url: urls,
            reason: detail,
        },
        _ => ConnectError::Unreachable { urls, kind: detail },
    }
}

/// The most a host's heartbeat record may be behind before the server forgets it even if no
/// one deleted it (a host that died).
const HOST_RECORD_MAX_AGE: Duration = Duration::from_secs(60);

/// Longest an event may wait on Lambda (6 hours), and a margin.
const EVENT_MAX_AGE: Duration = Duration::from_secs(7 * 3600);

/// How long on-failure records are kept (Lambda's destinations keep them days).
const FAILURE_RECORD_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// Largest stored message: an asynchronous event (1 MiB) or a failure record holding one and
/// the function's last error.
const MAX_STORED_MESSAGE: i32 = 8 * 1024 * 1024;

fn hosts_bucket() -> kv::Config {
    kv::Config {
        bucket: names::HOSTS_BUCKET.into(),
        description: "lambda hosts: id -> record, rewritten every heartbeat".into(),
        history: 1,
        max_age: HOST_RECORD_MAX_AGE,
        storage: stream::StorageType::Memory,
        ..Default::default()
    }
}

fn functions_bucket() -> kv::Config {
    kv::Config {
        bucket: names::FUNCTIONS_BUCKET.into(),
        description: "lambda functions: name -> deployed function record".into(),
        history: 5,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn attempts_bucket() -> kv::Config {
    kv::Config {
        bucket: names::ATTEMPTS_BUCKET.into(),
        description: "failed attempts of asynchronous events, across redeliveries".into(),
        history: 1,
        max_age: EVENT_MAX_AGE,
        max_value_size: MAX_STORED_MESSAGE,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn snapshots_bucket() -> kv::Config {
    kv::Config {
        bucket: names::SNAPSHOTS_BUCKET.into(),
        description: "SnapStart snapshots: function.key.cpu -> published snapshot record".into(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

fn events_stream() -> stream::Config {
    stream::Config {
        name: names::EVENTS_STREAM.into(),
        description: Some("accepted asynchronous invokes, until each has its outcome".into()),
        subjects: vec![names::events_subject("*")],
        retention: stream::RetentionPolicy::WorkQueue,
        max_age: EVENT_MAX_AGE,
        max_message_size: MAX_STORED_MESSAGE,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

fn failures_stream() -> stream::Config {
    stream::Config {
        name: names::FAILURES_STREAM.into(),
        description: Some("on-failure destination records of asynchronous invokes".into()),
        subjects: vec![names::failures_subject("*")],
        retention: stream::RetentionPolicy::Limits,
        max_age: FAILURE_RECORD_MAX_AGE,
        max_message_size: MAX_STORED_MESSAGE,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

struct Setup<'a> {
    jetstream: &'a jetstream::Context,
    replicas: u8,
}

impl Setup<'_> {
    async fn all(&self) -> Result<Parts, ConnectError> {
        self.jetstream
            .query_account()
            .await
            .map_err(|e| self.error("JetStream (it is not ready)", e.to_string()))?;
        let hosts = self.bucket(names::HOSTS_BUCKET, hosts_bucket()).await?;
        let functions = self
            .bucket(names::FUNCTIONS_BUCKET, functions_bucket())
            .await?;
        let attempts = self
            .bucket(names::ATTEMPTS_BUCKET, attempts_bucket())
            .await?;
        let snapshots = self
            .bucket(names::SNAPSHOTS_BUCKET, snapshots_bucket())
            .await?;
        let events = self.stream(events_stream()).await?;
        let events_consumer = crate::events::consumer(&events)
            .await
            .map_err(|e| self.error("the event consumer", e))?;
        Ok(Parts {
            hosts,
            functions,
            attempts,
            snapshots,
            artifacts: self.object_store().await?,
            events,
            events_consumer,
            failures: self.stream(failures_stream()).await?,
        })
    }

    fn error(&self, what: &str, detail: String) -> ConnectError {
        let hint = if detail.contains("insufficient resources") || detail.contains("replicas") {
            ": the cluster has fewer JetStream servers than replicas; lower --cluster-replicas"
        } else {
            ""
        };
        ConnectError::Setup {
            what: what.to_owned(),
            replicas: self.replicas,
            detail,
            hint,
        }
    }

    async fn bucket(&self, name: &str, mut config: kv::Config) -> Result<kv::Store, ConnectError> {
        if let Ok(store) = self.jetstream.get_key_value(name).await {
            return Ok(store);
        }
        config.num_replicas = usize::from(self.replicas);
        self.jetstream
            .create_key_value(config)
            .await
            .map_err(|e| self.error(&format!("the key-value bucket {name}"), e.to_string()))
    }

    async fn object_store(&self) -> Result<object_store::ObjectStore, ConnectError> {
        let name = names::ARTIFACTS_STORE;
        if let Ok(store) = self.jetstream.get_object_store(name).await {
            return Ok(store);
        }
        let config = object_store::Config {
            bucket: name.into(),
            description: Some("function artifacts, named by their SHA-256".into()),
            storage: stream::StorageType::File,
            num_replicas: usize::from(self.replicas),
            ..Default::default()
        };
        self.jetstream
            .create_object_store(config)
            .await
            .map_err(|e| self.error(&format!("the object store {name}"), e.to_string()))
    }

    async fn stream(&self, mut config: stream::Config) -> Result<stream::Stream, ConnectError> {
        let name = config.name.clone();
        if let Ok(stream) = self.jetstream.get_stream(&name).await {
            return Ok(stream);
        }
        config.num_replicas = usize::from(self.replicas);
        self.jetstream
            .get_or_create_stream(config)
            .await
            .map_err(|e| self.error(&format!("the stream {name}"), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_urls_are_percent_decoded() {
        assert_eq!(percent_decoded("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decoded("plain%"), "plain%");
        assert_eq!(percent_decoded("%zz"), "%zz");
    }

    #[test]
    fn addresses_are_checked_one_by_one() {
        let ok = server_addrs(&[
            "nats://127.0.0.1:4222".into(),
            "tls://a.example:4443".into(),
        ]);
        assert_eq!(ok.unwrap().len(), 2);
        for bad in ["http://127.0.0.1:4222", "nats://", "nats://host:notaport"] {
            let error = server_addrs(&[bad.into()]).unwrap_err();
            assert!(
                error.to_string().starts_with(&format!("--cluster {bad:?}")),
                "{error}"
            );
        }
    }
}
