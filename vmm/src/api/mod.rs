//! Firecracker's HTTP API on a Unix socket (`vmm --api-sock PATH`), for what this VMM has.
//!
//! - [`socket`] creates the socket (owner-only, never over another file);
//! - [`server`] is the API thread: it frames requests ([`parse`], on `httparse`), turns them
//!   into typed requests ([`routes`], bodies in [`types`]) and hands them to the main thread;
//! - [`controller`] is the main thread's side: the pre-boot configuration, boot and restore,
//!   and what `GET` reports; `running` what it does to a running VM (pause, snapshot, metrics);
//! - [`client`] is a small blocking client of the same API, for programs that drive a `vmm`.
//!
//! The contract is `vmm/api/openapi.yaml`. Extensions (Firecracker has no such thing) live
//! under `/ext/`.

pub mod client;
pub mod controller;
pub mod parse;
pub mod routes;
mod running;
pub mod server;
pub mod socket;
pub mod types;

use serde::Serialize;
use types::Fault;

/// A response: its status and, except for `204`, a JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Option<Vec<u8>>,
}

impl ApiResponse {
    /// `204 No Content`: Firecracker's success for every `PUT` and `PATCH`.
    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: None,
        }
    }

    /// `200` with `value` as JSON.
    pub fn ok<T: Serialize>(value: &T) -> ApiResponse {
        match serde_json::to_vec(value) {
            Ok(body) => ApiResponse {
                status: 200,
                body: Some(body),
            },
            Err(e) => ApiResponse::fault(500, &format!("encoding the response: {e}")),
        }
    }

    /// `status` with Firecracker's error body, `{"fault_message": ...}`.
    pub fn fault(status: u16, message: &str) -> ApiResponse {
        let fault = Fault {
            fault_message: message.to_owned(),
        };
        ApiResponse {
            status,
            // A struct of one string always encodes.
            body: Some(serde_json::to_vec(&fault).unwrap_or_default()),
        }
    }

    /// The response as HTTP/1.1 bytes.
    pub fn to_http(&self, keep_alive: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: vmm\r\nConnection: {}\r\n",
            self.status,
            reason(self.status),
            if keep_alive { "keep-alive" } else { "close" }
        );
        if let Some(body) = &self.body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body);
        }
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}
