//! From a method, a path and a body to a typed [`ApiRequest`], with Firecracker's paths and
//! refusals: a bad path or method, a body where none belongs, a bad resource ID, JSON that does
//! not fit (unknown fields included) are all `400` with a `fault_message`. Paths Firecracker
//! has and this VMM does not (balloon, MMDS, ...) get a `400` saying so.

use super::types::{
    ActionType, InstanceActionInfo, LoggerConfig, MachineConfigUpdate, MetricsConfig,
    SnapshotCreateParams, SnapshotLoadParams, VmRunState, VmStateUpdate, WorkingSetConfig,
};
use crate::config::{BootSource, Drive, Entropy, MachineConfig, NetworkInterface, Serial, Vsock};
use serde::de::DeserializeOwned;

/// Every request the API serves.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    GetInstanceInfo,
    GetVersion,
    GetVmConfig,
    GetMachineConfig,
    /// Extension: `GET /ext/status`.
    GetStatus,
    /// Extension: `GET /ext/working-set`, the pages a restored guest has touched.
    GetWorkingSet,
    /// Extension: `PUT /ext/working-set`, the working set the next snapshot load reads in.
    PutWorkingSet(WorkingSetConfig),
    PutMachineConfig(MachineConfig),
    PatchMachineConfig(MachineConfigUpdate),
    PutBootSource(BootSource),
    PutDrive(Drive),
    PutNetworkInterface(NetworkInterface),
    PutVsock(Vsock),
    PutEntropy(Entropy),
    PutSerial(Serial),
    PutLogger(LoggerConfig),
    PutMetrics(MetricsConfig),
    Action(ActionType),
    PatchVm(VmRunState),
    CreateSnapshot(SnapshotCreateParams),
    LoadSnapshot(SnapshotLoadParams),
}

/// A refused request: its status (400 unless said otherwise) and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            message: message.into(),
        }
    }
}

/// Firecracker endpoints this VMM does not have: refused by name rather than as unknown paths.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("balloon", "the balloon device"),
    ("mmds", "the microVM metadata service (MMDS)"),
    ("cpu-config", "custom CPU templates"),
    ("pmem", "pmem devices"),
    ("hotplug", "memory hotplug"),
];

/// The typed request `method path` with `body` stands for.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, ApiError> {
    let trimmed = path.trim_start_matches('/');
    let mut segments = trimmed.split('/');
    let first = segments.next().unwrap_or_default();
    let rest: Vec<&str> = segments.collect();
    let has_body = !body.is_empty();
    match method {
        "GET" if has_body => return Err(ApiError::bad_request("a GET request cannot have a body")),
        "PUT" | "PATCH" if !has_body => {
            return Err(ApiError::bad_request(format!("empty {method} request")))
        }
        _ => {}
    }
    let unknown = || {
        ApiError::bad_request(format!(
            "invalid request method and/or path: {method} {path}"
        ))
    };
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(name, _)| *name == first) {
        return Err(ApiError::bad_request(format!(
            "{method} {path}: {what} is not supported by this VMM"
        )));
    }
    let request = match (method, first, rest.as_slice()) {
        ("GET", "", []) => ApiRequest::GetInstanceInfo,
        ("GET", "version", []) => ApiRequest::GetVersion,
        ("GET", "vm", ["config"]) => ApiRequest::GetVmConfig,
        ("GET", "machine-config", []) => ApiRequest::GetMachineConfig,
        ("GET", "ext", ["status"]) => ApiRequest::GetStatus,
        ("GET", "ext", ["working-set"]) => ApiRequest::GetWorkingSet,
        ("PUT", "ext", ["working-set"]) => ApiRequest::PutWorkingSet(json(body)?),
        ("PUT", "machine-config", []) => ApiRequest::PutMachineConfig(json(body)?),
        ("PATCH", "machine-config", []) => ApiRequest::PatchMachineConfig(json(body)?),
        ("PUT", "boot-source", []) => ApiRequest::PutBootSource(json(body)?),
        ("PUT", "drives", [id]) => {
            let drive: Drive = json(body)?;
            same_id(id, &drive.drive_id)?;
            ApiRequest::PutDrive(drive)
        }
        ("PUT", "network-interfaces", [id]) => {
            let iface: NetworkInterface = json(body)?;
            same_id(id, &iface.iface_id)?;
            ApiRequest::PutNetworkInterface(iface)
        }
        ("PUT", "drives" | "network-interfaces", []) => {
            return Err(ApiError::bad_request("the ID cannot be empty"))
        }
        ("PATCH", "drives" | "network-interfaces", [_]) => {
            return Err(ApiError::bad_request(format!(
                "PATCH {path}: updating a device after boot (a new backing file, rate \
                 limiters) is not supported by this VMM"
            )))
        }
        ("PUT", "vsock", []) => ApiRequest::PutVsock(json(body)?),
        ("PUT", "entropy", []) => ApiRequest::PutEntropy(json(body)?),
        ("PUT", "serial", []) => ApiRequest::PutSerial(json(body)?),
        ("PUT", "logger", []) => ApiRequest::PutLogger(json(body)?),
        ("PUT", "metrics", []) => ApiRequest::PutMetrics(json(body)?),
        ("PUT", "actions", []) => {
            let action: InstanceActionInfo = json(body)?;
            ApiRequest::Action(action.action_type)
        }
        ("PATCH", "vm", []) => {
            let update: VmStateUpdate = json(body)?;
            ApiRequest::PatchVm(update.state)
        }
        ("PUT", "snapshot", ["create"]) => ApiRequest::CreateSnapshot(json(body)?),
        ("PUT", "snapshot", ["load"]) => ApiRequest::LoadSnapshot(json(body)?),
        _ => return Err(unknown()),
    };
    Ok(request)
}

/// The body as `T`; the error names the field at fault.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." => ApiError::bad_request(format!("invalid JSON body: {inner}")),
            _ => ApiError::bad_request(format!("invalid JSON body: `{path}`: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// A resource ID in a path: letters, digits and `_` (as Firecracker allows), at most 64, and
/// the same as the body's.
fn same_id(from_path: &str, from_body: &str) -> Result<(), ApiError> {
    if from_path.is_empty() {
        return Err(ApiError::bad_request("the ID cannot be empty"));
    }
    let valid = from_path.len() <= 64
        && from_path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Err(ApiError::bad_request(
            "API resource IDs can only contain letters, digits and underscores (64 at most)",
        ));
    }
    if from_path != from_body {
        return Err(ApiError::bad_request(
            "the ID in the path does not match the ID in the body",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(method: &str, path: &str, body: &str) -> String {
        match route(method, path, body.as_bytes()) {
            Err(e) => {
                assert_eq!(e.status, 400);
                e.message
            }
            Ok(request) => panic!("{method} {path} {body}: accepted as {request:?}"),
        }
    }

    #[test]
    fn firecracker_paths_become_typed_requests() {
        assert_eq!(route("GET", "/", b""), Ok(ApiRequest::GetInstanceInfo));
        assert_eq!(route("GET", "/vm/config", b""), Ok(ApiRequest::GetVmConfig));
        assert_eq!(
            route("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#),
            Ok(ApiRequest::Action(ActionType::InstanceStart))
        );
        assert_eq!(
            route("PATCH", "/vm", br#"{"state":"Paused"}"#),
            Ok(ApiRequest::PatchVm(VmRunState::Paused))
        );
        let drive = route(
            "PUT",
            "/drives/rootfs",
            br#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":true}"#,
        );
        assert!(matches!(drive, Ok(ApiRequest::PutDrive(d)) if d.is_root_device));
    }

    #[test]
    fn bad_requests_are_refused_with_a_reason() {
        assert!(refused("GET", "/nope", "").contains("invalid request method and/or path"));
        assert!(refused("DELETE", "/drives/a", "").contains("invalid request"));
        assert!(refused("GET", "/", "{}").contains("cannot have a body"));
        assert!(refused("PUT", "/boot-source", "").contains("empty PUT"));
        assert!(refused("PUT", "/boot-source", "{").contains("invalid JSON"));
        assert!(refused("PUT", "/boot-source", "{} {}").contains("invalid JSON"));
        let unknown = refused(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"2M"}"#,
        );
        assert!(unknown.contains("huge_pages"), "{unknown}");
        let bad_id = refused(
            "PUT",
            "/drives/a-b",
            r#"{"drive_id":"a-b","path_on_host":"/r","is_root_device":false}"#,
        );
        assert!(bad_id.contains("letters, digits"), "{bad_id}");
        let mismatch = refused(
            "PUT",
            "/drives/a",
            r#"{"drive_id":"b","path_on_host":"/r","is_root_device":false}"#,
        );
        assert!(mismatch.contains("does not match"), "{mismatch}");
        assert!(refused("PUT", "/balloon", r#"{"amount_mib":1}"#).contains("not supported"));
        assert!(refused(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"s","mem_backend":{"backend_type":"Nope","backend_path":"m"}}"#
        )
        .contains("mem_backend.backend_type"));
    }
}
