//! The platform log lines, in Lambda's exact format.

use std::time::Duration;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Lambda bills whole milliseconds, rounded up, and at least one.
pub fn billed_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

pub fn start(request_id: &str, version: &str) -> String {
    format!("START RequestId: {request_id} Version: {version}")
}

pub fn end(request_id: &str) -> String {
    format!("END RequestId: {request_id}")
}

/// How an invoke ended, as far as the REPORT line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Success,
    Timeout,
    /// The environment failed (runtime exit, oversized response); carries the error type.
    Error(String),
}

/// The figures of one REPORT line.
#[derive(Debug, Clone)]
pub struct Report {
    pub request_id: String,
    pub duration: Duration,
    pub memory_size_mb: u32,
    pub max_memory_used_mb: u64,
    /// Only on the first invoke after an on-demand init.
    pub init_duration: Option<Duration>,
    /// Only on the first invoke after a SnapStart restore.
    pub restore_duration: Option<Duration>,
    pub status: Status,
}

impl Report {
    /// The billed duration.
    pub fn billed_ms(&self) -> u64 {
        billed_ms(self.duration)
    }

    pub fn line(&self) -> String {
        let mut line = format!(
            "REPORT RequestId: {}\tDuration: {:.2} ms\tBilled Duration: {} ms\tMemory Size: {} MB\tMax Memory Used: {} MB\t",
            self.request_id,
            ms(self.duration),
            billed_ms(self.duration),
            self.memory_size_mb,
            self.max_memory_used_mb
        );
        if let Some(init) = self.init_duration {
            line += &format!("Init Duration: {:.2} ms\t", ms(init));
        }
        if let Some(restore) = self.restore_duration {
            line += &format!(
                "Restore Duration: {:.2} ms\tBilled Restore Duration: {} ms\t",
                ms(restore),
                billed_ms(restore)
            );
        }
        match &self.status {
            Status::Success => {}
            Status::Timeout => line += "Status: timeout\t",
            Status::Error(error_type) => {
                line += &format!("Status: error\tError Type: {error_type}\t")
            }
        }
        line
    }
}

/// The line Lambda prints when init fails.
/// The line for an init that belongs to no invocation (provisioned concurrency, SnapStart).
pub fn init_report(init_duration: Duration) -> String {
    format!("INIT_REPORT Init Duration: {:.2} ms", ms(init_duration))
}

pub fn init_report_error(init_duration: Duration, error_type: &str) -> String {
    format!(
        "INIT_REPORT Init Duration: {:.2} ms\tPhase: init\tStatus: error\tError Type: {error_type}",
        ms(init_duration)
    )
}

/// The line for a failed SnapStart restore (the runtime's after-restore hooks).
pub fn restore_report_error(restore_duration: Duration, error_type: &str) -> String {
    format!(
        "RESTORE_REPORT Restore Duration: {:.2} ms\tStatus: error\tError Type: {error_type}",
        ms(restore_duration)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_matches_lambda_format() {
        let report = Report {
            request_id: "8f507cfc-4697-b07a-ac58fc914c95".into(),
            duration: Duration::from_micros(2_751),
            memory_size_mb: 128,
            max_memory_used_mb: 39,
            init_duration: Some(Duration::from_micros(139_250)),
            restore_duration: None,
            status: Status::Success,
        };
        assert_eq!(
            report.line(),
            "REPORT RequestId: 8f507cfc-4697-b07a-ac58fc914c95\tDuration: 2.75 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\tMax Memory Used: 39 MB\tInit Duration: 139.25 ms\t"
        );
    }

    #[test]
    fn restore_and_status_fields() {
        let report = Report {
            request_id: "r".into(),
            duration: Duration::from_millis(1000),
            memory_size_mb: 256,
            max_memory_used_mb: 1,
            init_duration: None,
            restore_duration: Some(Duration::from_micros(474_160)),
            status: Status::Timeout,
        };
        let line = report.line();
        assert!(line.contains("Billed Duration: 1000 ms\t"), "{line}");
        assert!(line.contains("Restore Duration: 474.16 ms\tBilled Restore Duration: 475 ms\t"));
        assert!(line.ends_with("Status: timeout\t"));
        assert_eq!(start("r", "$LATEST"), "START RequestId: r Version: $LATEST");
        assert_eq!(end("r"), "END RequestId: r");
    }

    #[test]
    fn failed_phases_and_errors() {
        let report = Report {
            request_id: "r".into(),
            duration: Duration::from_nanos(1),
            memory_size_mb: 128,
            max_memory_used_mb: 0,
            init_duration: None,
            restore_duration: None,
            status: Status::Error("Runtime.ExitError".into()),
        };
        assert_eq!(
            report.line(),
            "REPORT RequestId: r\tDuration: 0.00 ms\tBilled Duration: 1 ms\tMemory Size: 128 MB\tMax Memory Used: 0 MB\tStatus: error\tError Type: Runtime.ExitError\t"
        );
        assert_eq!(
            init_report_error(Duration::from_micros(1_500), "Runtime.InitTimeout"),
            "INIT_REPORT Init Duration: 1.50 ms\tPhase: init\tStatus: error\tError Type: Runtime.InitTimeout"
        );
        assert_eq!(
            restore_report_error(Duration::from_millis(2), "Runtime.RestoreError"),
            "RESTORE_REPORT Restore Duration: 2.00 ms\tStatus: error\tError Type: Runtime.RestoreError"
        );
    }
}
