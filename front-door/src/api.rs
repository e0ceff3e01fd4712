//! The Lambda API over a set of functions, as the AWS SDKs and CLI call it: `Invoke` and
//! `InvokeWithResponseStream` (each function's [`Endpoint`]), `GetFunction`, `GetFunctionConfiguration`, `ListFunctions` and the
//! reserved-concurrency operations. Function names arrive as the SDKs send them
//! (percent-encoded; a name, `name:qualifier`, a full or partial ARN; the `Qualifier`
//! parameter), and are understood by [`ApiRequest::route`]. Only `$LATEST` exists: any other
//! qualifier is a function not found, named in the answer.

use crate::function::Function;
use crate::invoke_http::Endpoint;
use crate::invoker::Invoker;
use bytes::Bytes;
use http_server::{self as http, Reply};
use hyper::body::Incoming;
use hyper::Request;
use proto::invoke_api::{error_type, query_param, ApiRequest, FunctionRef, Operation, ACCOUNT_ID};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Largest body a concurrency request may have (it is one small JSON object).
const CONCURRENCY_BODY_LIMIT: usize = 4096;
/// Most functions one `ListFunctions` page holds, as on Lambda.
const LIST_PAGE_MAX: usize = 50;

/// Every function one server hosts, by name. Cheap to clone.
#[derive(Clone)]
pub struct Router<I: Invoker> {
    functions: Arc<BTreeMap<String, Endpoint<I>>>,
}

impl<I: Invoker> Router<I> {
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint<I>>) -> Router<I> {
        let functions = endpoints
            .into_iter()
            .map(|endpoint| (endpoint.invoker().function().name.clone(), endpoint))
            .collect();
        Router {
            functions: Arc::new(functions),
        }
    }

    /// The functions' endpoints, by name.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint<I>> {
        self.functions.values()
    }

    /// Answers one request of the Lambda API.
    pub async fn handle(self, request: Request<Incoming>) -> Reply {
        let routed = ApiRequest::route(
            request.method().as_str(),
            request.uri().path(),
            request.uri().query(),
        );
        let (operation, reference) = match routed {
            Ok(ApiRequest {
                function: Some(reference),
                operation,
            }) => (operation, reference),
            Ok(ApiRequest { function: None, .. }) => return self.list(request.uri().query()),
            Err(e) => {
                let (status, exception) = e.status();
                return http::service_error(status, exception, &e.to_string());
            }
        };
        let Some(endpoint) = self.find(&reference) else {
            return self.not_found(&reference);
        };
        let invoker = endpoint.invoker();
        let function = invoker.function();
        match operation {
            Operation::Invoke => endpoint.clone().handle_invoke(request).await,
            Operation::InvokeWithResponseStream => endpoint.clone().handle_stream(request).await,
            Operation::GetFunctionConfiguration => {
                http::json(200, configuration(function).to_string())
            }
            Operation::GetFunction => {
                let mut body = json!({ "Configuration": configuration(function) });
                if let Some(reserved) = invoker.reserved_concurrency() {
                    body["Concurrency"] = json!({ "ReservedConcurrentExecutions": reserved });
                }
                http::json(200, body.to_string())
            }
            // Lambda answers `{}` when nothing is reserved.
            Operation::GetFunctionConcurrency => {
                let body = match invoker.reserved_concurrency() {
                    Some(n) => json!({ "ReservedConcurrentExecutions": n }),
                    None => json!({}),
                };
                http::json(200, body.to_string())
            }
            Operation::PutFunctionConcurrency => {
                let body = match http::read_body(request, CONCURRENCY_BODY_LIMIT).await {
                    Ok(body) => body,
                    Err(e) => {
                        let message = e.to_string();
                        return http::service_error(400, error_type::INVALID_PARAMETER, &message);
                    }
                };
                let Some(reserved) = reserved_concurrency(&body) else {
                    let message = "The request must be a JSON object with ReservedConcurrentExecutions, a whole number from 0";
                    return http::service_error(400, error_type::INVALID_PARAMETER, message);
                };
                match invoker.set_reserved_concurrency(Some(reserved)) {
                    Ok(()) => {
                        invoker.log(&format!(
                            "lambda: {}: reserved concurrency set to {reserved}",
                            function.name
                        ));
                        let body = json!({ "ReservedConcurrentExecutions": reserved });
                        http::json(200, body.to_string())
                    }
                    Err(e) => {
                        http::service_error(400, error_type::INVALID_PARAMETER, &e.to_string())
                    }
                }
            }
            Operation::DeleteFunctionConcurrency => match invoker.set_reserved_concurrency(None) {
                Ok(()) => {
                    invoker.log(&format!(
                        "lambda: {}: reserved concurrency removed",
                        function.name
                    ));
                    http::json(204, Bytes::new())
                }
                Err(e) => http::service_error(400, error_type::INVALID_PARAMETER, &e.to_string()),
            },
            Operation::ListFunctions => self.list(None),
        }
    }

    /// The function `reference` names: by name (the emulator's `function` reaches the only
    /// one), at `$LATEST`.
    pub fn find(&self, reference: &FunctionRef) -> Option<&Endpoint<I>> {
        if !reference.is_latest() {
            return None;
        }
        match self.functions.get(&reference.name) {
            Some(found) => Some(found),
            None if reference.name == "function" && self.functions.len() == 1 => {
                self.functions.values().next()
            }
            None => None,
        }
    }

    /// Lambda's answer for a function (or version) that does not exist: its ARN, qualifier
    /// included.
    pub fn not_found(&self, reference: &FunctionRef) -> Reply {
        let region = self
            .functions
            .values()
            .next()
            .map_or("us-east-1", |e| e.invoker().function().region.as_str());
        let qualifier = reference
            .qualifier
            .as_ref()
            .map(|q| format!(":{q}"))
            .unwrap_or_default();
        let message = format!(
            "Function not found: arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{}{qualifier}",
            reference.name
        );
        http::service_error(404, error_type::RESOURCE_NOT_FOUND, &message)
    }

    /// `ListFunctions`: every function's configuration by name, `MaxItems` at a time from
    /// `Marker` (the name `NextMarker` gave).
    fn list(&self, query: Option<&str>) -> Reply {
        let query = query.unwrap_or("");
        let page = query_param(query, "MaxItems")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .map_or(LIST_PAGE_MAX, |n| n.min(LIST_PAGE_MAX));
        let from = query_param(query, "Marker").unwrap_or_default();
        let mut functions = self
            .functions
            .range::<String, _>(from..)
            .map(|(_, endpoint)| endpoint.invoker().function());
        let listed: Vec<_> = functions.by_ref().take(page).map(configuration).collect();
        let mut body = json!({ "Functions": listed });
        if let Some(next) = functions.next() {
            body["NextMarker"] = json!(next.name);
        }
        http::json(200, body.to_string())
    }
}

/// `ReservedConcurrentExecutions` of a `PutFunctionConcurrency` body.
fn reserved_concurrency(body: &[u8]) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let n = value.get("ReservedConcurrentExecutions")?.as_u64()?;
    u32::try_from(n).ok()
}

/// The function's `FunctionConfiguration`, as `GetFunction` and `ListFunctions` return it: the
/// fields that apply to a function served here.
pub fn configuration(function: &Function) -> serde_json::Value {
    let config = &function.config;
    let snap_start = config.initialization_type == proto::InitializationType::SnapStart;
    let mut value = json!({
        "FunctionName": function.name,
        "FunctionArn": function.arn(),
        "Handler": config.handler,
        "MemorySize": config.memory_mb,
        "Timeout": config.timeout_secs,
        "Version": function.version,
        "Environment": { "Variables": config.environment },
        "EphemeralStorage": { "Size": config.tmp_size_mb },
        "PackageType": "Zip",
        "Architectures": ["x86_64"],
        "State": "Active",
        "LastUpdateStatus": "Successful",
        "SnapStart": {
            "ApplyOn": if snap_start { "PublishedVersions" } else { "None" },
            "OptimizationStatus": if snap_start { "On" } else { "Off" },
        },
    });
    if let Some(code) = &function.code {
        value["CodeSize"] = json!(code.size);
        value["LastModified"] = json!(lambda_time(code.last_modified));
    }
    value
}

/// Lambda's timestamp form: `2024-05-01T12:34:56.789+0000`.
fn lambda_time(time: std::time::SystemTime) -> String {
    let ms = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let rfc3339 = proto::time::rfc3339(ms);
    format!("{}+0000", rfc3339.trim_end_matches('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_has_lambdas_shape() {
        let mut config = proto::FunctionConfig::with_handler("worker.py");
        config.function_name = "hello".into();
        config.initialization_type = proto::InitializationType::SnapStart;
        config.environment.insert("K".into(), "v".into());
        let mut function = Function::new(&config);
        function.code = Some(crate::function::Code {
            size: 42,
            last_modified: std::time::UNIX_EPOCH
                + std::time::Duration::from_millis(1_714_566_896_789),
        });
        let value = configuration(&function);
        assert_eq!(value["FunctionName"], "hello");
        assert_eq!(
            value["FunctionArn"],
            "arn:aws:lambda:us-east-1:012345678912:function:hello"
        );
        assert_eq!(value["Handler"], "worker.py");
        assert_eq!(value["MemorySize"], 128);
        assert_eq!(value["Timeout"], 3);
        assert_eq!(value["Version"], "$LATEST");
        assert_eq!(value["Environment"]["Variables"]["K"], "v");
        assert_eq!(value["CodeSize"], 42);
        assert_eq!(value["LastModified"], "2024-05-01T12:34:56.789+0000");
        assert_eq!(value["SnapStart"]["ApplyOn"], "PublishedVersions");
    }

    #[test]
    fn put_concurrency_takes_a_whole_number() {
        assert_eq!(
            reserved_concurrency(br#"{"ReservedConcurrentExecutions": 3}"#),
            Some(3)
        );
        assert_eq!(
            reserved_concurrency(br#"{"ReservedConcurrentExecutions": 0}"#),
            Some(0)
        );
        for bad in [
            &b"{}"[..],
            b"[]",
            br#"{"ReservedConcurrentExecutions": -1}"#,
            b"nope",
        ] {
            assert_eq!(reserved_concurrency(bad), None);
        }
    }
}
