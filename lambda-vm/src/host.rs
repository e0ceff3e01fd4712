//! The function host: many functions behind one listener. The Lambda API's routes (invoke by
//! name, `name:qualifier`, full or partial ARN; `GetFunction`, `ListFunctions`, the
//! concurrency operations) are the front door's [`Router`]; each function is served by its own
//! endpoint over its own pool. Here too: `GET /status`, every function's environments per
//! state, and its `vmm` processes kept ready for restores.

use crate::pool::HostLimit;
use crate::service::FunctionService;
use bytes::Bytes;
use front_door::{Invoker, Router};
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;
use std::collections::BTreeMap;

/// Every function this service hosts. Cheap to clone.
#[derive(Clone)]
pub struct FunctionHost {
    router: Router<FunctionService>,
    host: HostLimit,
}

impl FunctionHost {
    /// Hosts the functions of `router`; `host` is the cap they share.
    pub fn new(router: Router<FunctionService>, host: HostLimit) -> Self {
        FunctionHost { router, host }
    }

    pub fn services(&self) -> impl Iterator<Item = &FunctionService> {
        self.router.endpoints().map(|endpoint| endpoint.invoker())
    }

    /// Answers one HTTP request.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        if request.method() == Method::GET && request.uri().path() == "/status" {
            return self.status();
        }
        self.router.handle(request).await
    }

    fn status(&self) -> Reply {
        let functions: BTreeMap<&str, serde_json::Value> = self
            .services()
            .map(|service| (service.name(), function_status(service)))
            .collect();
        let body = json!({
            "max_concurrency": self.host.max(),
            "in_use": self.host.in_use(),
            "functions": functions,
        });
        http::json(200, Bytes::from(body.to_string()))
    }
}

fn function_status(service: &FunctionService) -> serde_json::Value {
    let counts = service.counts();
    let ready = service.ready_pids();
    json!({
        "initializing": counts.starting,
        "busy": counts.busy,
        "idle": counts.idle,
        "provisioned": counts.provisioned,
        "waiting": counts.waiting,
        "abandoned_invocations": service.abandoned_invocations(),
        "reserved_concurrency": service.reserved_concurrency(),
        "busy_vmm_pids": counts.busy_pids,
        "idle_vmm_pids": counts.idle_pids,
        "ready": ready.len(),
        "ready_vmm_pids": ready,
    })
}
