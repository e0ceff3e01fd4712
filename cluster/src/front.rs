//! A host's invoke endpoint in a cluster: the front door's Lambda API ([`Router`]) over every
//! function deployed to the cluster, each behind an [`Endpoint`] with the cluster as its
//! [`Invoker`] and the event stream as its queue; and `GET /cluster`, what this host sees of the
//! cluster.

use crate::catalog::FunctionRecord;
use crate::events::StreamQueue;
use crate::host::Node;
use bytes::Bytes;
use front_door::invoke_http::Endpoint;
use front_door::{Code, Function, Invoker, Router};
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::invoke_api::ApiRequest;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

/// One deployed function as the invoke endpoint sees it: run wherever the cluster routes it.
#[derive(Clone)]
pub struct ClusterFunction {
    function: Function,
    record: Arc<FunctionRecord>,
    node: Arc<Node>,
}

impl Invoker for ClusterFunction {
    fn function(&self) -> &Function {
        &self.function
    }

    fn log(&self, line: &str) {
        self.node.runner.log(line);
    }

    fn invoke(
        &self,
        invocation: Invocation,
    ) -> impl Future<Output = Result<Outcome, InvokeError>> + Send {
        let (node, record) = (Arc::clone(&self.node), Arc::clone(&self.record));
        async move {
            let request_id = invocation.request_id.clone();
            let tail = node.tails.is_watching(&request_id);
            let (outcome, remote_tail) = node.route(&record, invocation, tail).await?;
            if let Some(remote_tail) = remote_tail {
                node.tails.fill(&request_id, &remote_tail);
            }
            Ok(outcome)
        }
    }
}

/// An endpoint per function, with the record's revision it was made for.
type Endpoints = HashMap<String, (u64, Endpoint<ClusterFunction>)>;

/// The invoke endpoint of a host in a cluster. Cheap to clone.
#[derive(Clone)]
pub struct Front {
    node: Arc<Node>,
    endpoints: Arc<Mutex<Endpoints>>,
    /// The Lambda API over the deployed functions, for the catalog generation it was made for.
    router: Arc<Mutex<(u64, Option<Router<ClusterFunction>>)>>,
}

impl Front {
    pub fn new(node: Arc<Node>) -> Front {
        Front {
            node,
            endpoints: Arc::default(),
            router: Arc::default(),
        }
    }

    fn endpoint(&self, record: &Arc<FunctionRecord>) -> Endpoint<ClusterFunction> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((revision, endpoint)) = endpoints.get(record.name()) {
            if *revision == record.revision {
                return endpoint.clone();
            }
        }
        let settings = &self.node.settings;
        let mut function = Function::new(&record.config);
        function.region = settings.region.clone();
        function.events.retry_delay = settings.retry_delay;
        function.events.on_failure_dir = settings.on_failure_dir.clone();
        function.code = record.artifacts.first().map(|artifact| Code {
            size: artifact.size,
            last_modified: UNIX_EPOCH + Duration::from_millis(record.deployed_ms),
        });
        let queue = StreamQueue {
            jetstream: self.node.cluster.jetstream.clone(),
            function: function.name.clone(),
        };
        let invoker = ClusterFunction {
            function,
            record: Arc::clone(record),
            node: Arc::clone(&self.node),
        };
        let endpoint = Endpoint::with_queue(invoker, self.node.tails.clone(), Arc::new(queue));
        endpoints.insert(
            record.name().to_owned(),
            (record.revision, endpoint.clone()),
        );
        endpoint
    }

    /// The Lambda API over the functions deployed now.
    fn router(&self) -> Router<ClusterFunction> {
        let catalog = &self.node.catalog;
        let generation = catalog.generation();
        let mut router = self.router.lock().unwrap_or_else(|e| e.into_inner());
        if let (seen, Some(current)) = &*router {
            if *seen == generation {
                return current.clone();
            }
        }
        let endpoints: Vec<_> = catalog
            .records()
            .iter()
            .map(|record| self.endpoint(record))
            .collect();
        let current = Router::new(endpoints);
        *router = (generation, Some(current.clone()));
        current
    }

    /// Answers one HTTP request: the Lambda API (`Invoke`, `GetFunction`, `ListFunctions`,
    /// ...) over every deployed function, and `GET /cluster`.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        if request.method() == Method::GET && request.uri().path() == "/cluster" {
            let body = serde_json::to_vec(&self.node.status()).unwrap_or_default();
            return http::json(200, Bytes::from(body));
        }
        // A function deployed a moment ago may not have reached this host's view yet.
        let routed = ApiRequest::route(
            request.method().as_str(),
            request.uri().path(),
            request.uri().query(),
        );
        if let Ok(ApiRequest {
            function: Some(reference),
            ..
        }) = routed
        {
            let bucket = &self.node.cluster.functions;
            let _ = self.node.catalog.at_least(bucket, &reference.name, 0).await;
        }
        self.router().handle(request).await
    }
}
