//! The function host: many functions behind one listener, routed by the Lambda API's path
//! (`/2015-03-31/functions/{FunctionName}/invocations`, the name also as `name:$LATEST` or a
//! function ARN), each served by its own [`Endpoint`] over its own pool. The emulator's path
//! (`function` as the name) reaches the function when there is only one. Also the status
//! endpoints: `GET /2015-03-31/functions/{name}/concurrency` (the Lambda API's
//! `GetFunctionConcurrency`) and `GET /status` (every function's environments per state).

use crate::pool::HostLimit;
use crate::service::FunctionService;
use bytes::Bytes;
use front_door::invoke_http::{function_arn, Endpoint};
use front_door::Invoker;
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use proto::invoke_api::{error_type, FunctionRef};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Every function this service hosts. Cheap to clone.
#[derive(Clone)]
pub struct FunctionHost {
    functions: Arc<BTreeMap<String, (FunctionService, Endpoint<FunctionService>)>>,
    host: HostLimit,
}

impl FunctionHost {
    /// Hosts `functions`, each with its endpoint; `host` is the cap they share.
    pub fn new(
        functions: Vec<(FunctionService, Endpoint<FunctionService>)>,
        host: HostLimit,
    ) -> Self {
        let functions = functions
            .into_iter()
            .map(|(service, endpoint)| (service.name().to_owned(), (service, endpoint)))
            .collect();
        FunctionHost {
            functions: Arc::new(functions),
            host,
        }
    }

    pub fn services(&self) -> impl Iterator<Item = &FunctionService> {
        self.functions.values().map(|(service, _)| service)
    }

    /// The function a path's reference names: by name, or `function` when there is only one.
    fn find(
        &self,
        reference: &FunctionRef,
    ) -> Option<&(FunctionService, Endpoint<FunctionService>)> {
        if !reference.is_latest() {
            return None;
        }
        match self.functions.get(reference.name) {
            Some(found) => Some(found),
            None if reference.name == "function" && self.functions.len() == 1 => {
                self.functions.values().next()
            }
            None => None,
        }
    }

    /// Answers one HTTP request.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        let path = request.uri().path().to_owned();
        if request.method() == Method::GET {
            return self.status(&path);
        }
        let streaming = FunctionRef::from_stream_path(&path);
        let Some(reference) = streaming
            .clone()
            .or_else(|| FunctionRef::from_invoke_path(&path))
        else {
            let message = format!("No such API: {path}");
            return http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message);
        };
        match self.find(&reference) {
            Some((_, endpoint)) if streaming.is_some() => {
                endpoint.clone().handle_stream(request).await
            }
            Some((_, endpoint)) => endpoint.clone().handle_invoke(request).await,
            None => self.not_found(&reference),
        }
    }

    fn not_found(&self, reference: &FunctionRef) -> Reply {
        let arn = match self.services().next() {
            Some(any) => function_arn(any.function(), reference),
            None => reference.name.to_owned(),
        };
        let message = format!("Function not found: {arn}");
        http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message)
    }

    fn status(&self, path: &str) -> Reply {
        if path == "/status" {
            let functions: BTreeMap<&str, serde_json::Value> = self
                .services()
                .map(|service| (service.name(), function_status(service)))
                .collect();
            let body = json!({
                "max_concurrency": self.host.max(),
                "in_use": self.host.in_use(),
                "functions": functions,
            });
            return http::json(200, Bytes::from(body.to_string()));
        }
        let reference = path
            .strip_prefix("/2015-03-31/functions/")
            .and_then(|rest| rest.strip_suffix("/concurrency"))
            .and_then(FunctionRef::parse);
        let Some(reference) = reference else {
            let message = format!("No such API: GET {path}");
            return http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message);
        };
        match self.find(&reference) {
            // The Lambda API's GetFunctionConcurrency answers `{}` without a reservation.
            Some((service, _)) => {
                let body = match service.reserved_concurrency() {
                    Some(n) => json!({ "ReservedConcurrentExecutions": n }),
                    None => json!({}),
                };
                http::json(200, Bytes::from(body.to_string()))
            }
            None => self.not_found(&reference),
        }
    }
}

fn function_status(service: &FunctionService) -> serde_json::Value {
    let counts = service.counts();
    json!({
        "initializing": counts.starting,
        "busy": counts.busy,
        "idle": counts.idle,
        "provisioned": counts.provisioned,
        "reserved_concurrency": service.reserved_concurrency(),
        "busy_vmm_pids": counts.busy_pids,
        "idle_vmm_pids": counts.idle_pids,
    })
}
