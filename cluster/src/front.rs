//! A host's invoke endpoint in a cluster: Lambda's invoke API for every function deployed to the
//! cluster (`/2015-03-31/functions/{name}/invocations`, the name also as `name:$LATEST` or its
//! ARN; `function` when only one is deployed), each behind the front door's [`Endpoint`] with
//! the cluster as its [`Invoker`] and the event stream as its queue; and `GET /cluster`, what
//! this host sees of the cluster.

use crate::catalog::FunctionRecord;
use crate::events::StreamQueue;
use crate::host::Node;
use bytes::Bytes;
use front_door::invoke_http::{function_arn, Endpoint};
use front_door::{AsyncPolicy, Function, Invoker};
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use proto::invoke::{Invocation, InvokeError, Outcome};
use proto::invoke_api::{error_type, FunctionRef, LATEST};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

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
}

impl Front {
    pub fn new(node: Arc<Node>) -> Front {
        Front {
            node,
            endpoints: Arc::default(),
        }
    }

    fn endpoint(&self, record: Arc<FunctionRecord>) -> Endpoint<ClusterFunction> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((revision, endpoint)) = endpoints.get(record.name()) {
            if *revision == record.revision {
                return endpoint.clone();
            }
        }
        let config = &record.config;
        let function = Function {
            name: config.function_name.clone(),
            version: LATEST.into(),
            region: self.node.settings.region.clone(),
            events: AsyncPolicy {
                retry_delay: self.node.settings.retry_delay,
                maximum_retry_attempts: config.maximum_retry_attempts,
                maximum_event_age: std::time::Duration::from_secs(u64::from(
                    config.maximum_event_age_secs,
                )),
                on_failure_dir: self.node.settings.on_failure_dir.clone(),
            },
        };
        let queue = StreamQueue {
            jetstream: self.node.cluster.jetstream.clone(),
            function: function.name.clone(),
        };
        let invoker = ClusterFunction {
            function,
            record: Arc::clone(&record),
            node: Arc::clone(&self.node),
        };
        let endpoint = Endpoint::with_queue(invoker, self.node.tails.clone(), Arc::new(queue));
        endpoints.insert(
            record.name().to_owned(),
            (record.revision, endpoint.clone()),
        );
        endpoint
    }

    /// Answers one HTTP request.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().to_owned();
        if request.method() == Method::GET && path == "/cluster" {
            let body = serde_json::to_vec(&self.node.status()).unwrap_or_default();
            return http::json(200, Bytes::from(body));
        }
        let Some(reference) = FunctionRef::from_invoke_path(&path) else {
            let message = format!("No such API: {path}");
            return http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message);
        };
        let catalog = &self.node.catalog;
        // A function deployed a moment ago may not have reached this host's view yet.
        let bucket = &self.node.cluster.functions;
        let record = match catalog.at_least(bucket, reference.name, 0).await {
            Some(record) => Some(record),
            None if reference.name == "function" => catalog.only(),
            None => None,
        };
        match record.filter(|_| reference.is_latest()) {
            Some(record) => self.endpoint(record).handle_invoke(request).await,
            None => {
                let function = Function {
                    name: reference.name.to_owned(),
                    version: LATEST.into(),
                    region: self.node.settings.region.clone(),
                    events: AsyncPolicy {
                        retry_delay: self.node.settings.retry_delay,
                        maximum_retry_attempts: 0,
                        maximum_event_age: std::time::Duration::ZERO,
                        on_failure_dir: None,
                    },
                };
                let message = format!(
                    "Function not found: {}",
                    function_arn(&function, &reference)
                );
                http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message)
            }
        }
    }
}
