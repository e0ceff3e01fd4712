//! The state machine driven in-process: the test plays the runtime through the [`Handle`]'s
//! Runtime API methods, while a placeholder process (`sleep`) stands in for the runtime's
//! lifetime.

use super::*;
use bytes::Bytes;
use proto::runtime_api::{error_type, function_error_type};
use proto::InitializationType;
use std::path::PathBuf;

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

impl LogSink for Lines {
    fn line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_owned());
    }
}

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn config(runtime: &str, args: &[&str]) -> EnvironmentConfig {
    let mut config = EnvironmentConfig::new(PathBuf::from(runtime));
    config.runtime_args = args.iter().map(|a| a.to_string()).collect();
    config
}

fn sleeper() -> EnvironmentConfig {
    config("/bin/sleep", &["30"])
}

fn environment(config: EnvironmentConfig) -> (Handle, Arc<Lines>) {
    let lines = Arc::new(Lines::default());
    let addr = "127.0.0.1:9".parse().unwrap();
    let log: Arc<dyn LogSink> = lines.clone();
    (Handle::new(config, addr, log, None), lines)
}

/// Queues an invocation from a background task, as an invoke endpoint would, and returns once
/// it is queued (or already answered).
async fn invoke(
    handle: &Handle,
    event: &'static str,
) -> tokio::task::JoinHandle<Result<Outcome, InvokeError>> {
    let queued = handle.lock().queue.len();
    let task = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.invoke(Invocation::new(Bytes::from(event))).await })
    };
    for _ in 0..100 {
        if task.is_finished() || handle.lock().queue.len() > queued {
            break;
        }
        tokio::task::yield_now().await;
    }
    task
}

async fn next(handle: &Handle) -> Delivered {
    match handle.next().await {
        ApiReply::Next(delivered) => *delivered,
        other => panic!("expected an invocation, got {other:?}"),
    }
}

fn rejected(reply: ApiReply) -> (u16, &'static str) {
    match reply {
        ApiReply::Rejected(status, error_type, _) => (status, error_type),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn error_of(outcome: Outcome) -> ErrorRequest {
    error_and_reset(outcome).0
}

fn error_and_reset(outcome: Outcome) -> (ErrorRequest, Option<Reset>) {
    match outcome {
        Outcome::Failure { body, reset } => (serde_json::from_slice(&body).unwrap(), reset),
        other => panic!("expected a failure, got {other:?}"),
    }
}

use crate::sandbox::Reset;
use proto::runtime_api::ErrorRequest;

#[tokio::test]
async fn an_invocation_goes_through_and_init_is_reported_once() {
    let (handle, lines) = environment(sleeper());
    let first = invoke(&handle, r#"{"n":1}"#).await;
    let delivered = next(&handle).await;
    assert_eq!(delivered.invocation.event, r#"{"n":1}"#);
    assert!(delivered.deadline_ms > proto::time::epoch_ms());
    let id = delivered.invocation.request_id.clone();
    assert!(matches!(
        handle.respond(&id, Bytes::from_static(b"ok")),
        ApiReply::Accepted
    ));
    assert_eq!(first.await.unwrap(), Ok(Outcome::Success("ok".into())));

    let second = invoke(&handle, "{}").await;
    let id2 = next(&handle).await.invocation.request_id;
    handle.respond(&id2, Bytes::new());
    second.await.unwrap().unwrap();

    let log = lines.all();
    assert_eq!(log[0], format!("START RequestId: {id} Version: $LATEST"));
    assert_eq!(log[1], format!("END RequestId: {id}"));
    assert!(log[2].starts_with(&format!("REPORT RequestId: {id}\tDuration: ")));
    assert!(log[2].contains("\tInit Duration: "), "{}", log[2]);
    assert!(!log[5].contains("Init Duration"), "{}", log[5]);
    handle.shutdown();
}

#[tokio::test]
async fn wrong_ids_second_answers_and_early_polls_are_refused() {
    let (handle, _) = environment(sleeper());
    let pending = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;

    assert_eq!(
        rejected(handle.next().await),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    assert_eq!(
        rejected(handle.respond("not-an-id", Bytes::new())),
        (400, error_type::INVALID_REQUEST_ID)
    );
    assert!(matches!(
        handle.respond(&id, Bytes::new()),
        ApiReply::Accepted
    ));
    assert_eq!(
        rejected(handle.respond(&id, Bytes::new())),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    assert_eq!(
        rejected(handle.report_error(&id, Bytes::new())),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    assert_eq!(
        rejected(handle.init_error(Bytes::new(), "X")),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    assert_eq!(
        rejected(handle.restore_next().await),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    pending.await.unwrap().unwrap();

    // Once the runtime polls again, the old id is stale.
    let second = invoke(&handle, "{}").await;
    let id2 = next(&handle).await.invocation.request_id;
    assert_eq!(
        rejected(handle.respond(&id, Bytes::new())),
        (400, error_type::INVALID_REQUEST_ID)
    );
    handle.respond(&id2, Bytes::new());
    second.await.unwrap().unwrap();
    handle.shutdown();
}

#[tokio::test]
async fn a_timeout_resets_and_the_next_invocation_inits_afresh() {
    let mut config = sleeper();
    config.timeout = Duration::from_millis(100);
    let (handle, lines) = environment(config);
    let timed_out = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    let (error, reset) = error_and_reset(timed_out.await.unwrap().unwrap());
    assert_eq!(reset, Some(Reset::Timeout));
    assert_eq!(error.error_type, function_error_type::TIMEOUT);
    assert_eq!(
        error.error_message,
        format!("RequestId: {id} Error: Task timed out after 0.10 seconds")
    );
    // The killed runtime's late answer is refused, whatever it is.
    assert!(matches!(
        handle.respond(&id, Bytes::new()),
        ApiReply::Rejected(400, ..)
    ));

    let fresh = invoke(&handle, "{}").await;
    let id2 = next(&handle).await.invocation.request_id;
    handle.respond(&id2, Bytes::new());
    fresh.await.unwrap().unwrap();
    let reports: Vec<String> = lines
        .all()
        .into_iter()
        .filter(|l| l.starts_with("REPORT"))
        .collect();
    assert!(reports[0].ends_with("Status: timeout\t"), "{}", reports[0]);
    assert!(reports[1].contains("Init Duration"), "{}", reports[1]);
    assert!(lines
        .all()
        .iter()
        .any(|l| l.ends_with(&format!("{id} Task timed out after 0.10 seconds"))));
    handle.shutdown();
}

#[tokio::test]
async fn a_waiting_poll_of_a_reset_runtime_is_let_go() {
    let (handle, _) = environment(sleeper());
    let pending = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    handle.respond(&id, Bytes::new());
    pending.await.unwrap().unwrap();
    let poll = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.next().await })
    };
    tokio::task::yield_now().await;
    handle.shutdown();
    let stale = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the waiting poll ends")
        .unwrap();
    assert_eq!(rejected(stale), (410, error_type::ENVIRONMENT_RESET));
    // And a poll with no runtime at all is answered at once.
    assert_eq!(
        rejected(handle.next().await),
        (410, error_type::ENVIRONMENT_RESET)
    );
}

#[tokio::test]
async fn a_runtime_that_exits_mid_invoke_fails_it() {
    let (handle, lines) = environment(config("/bin/sh", &["-c", "sleep 0.3; exit 3"]));
    let crashed = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    let (error, reset) = error_and_reset(crashed.await.unwrap().unwrap());
    assert_eq!(error.error_type, function_error_type::RUNTIME_EXIT);
    assert_eq!(
        error.error_message,
        format!("RequestId: {id} Error: Runtime exited with error: exit status 3")
    );
    let reason = error.error_message.clone();
    assert_eq!(reset, Some(Reset::RuntimeExit { reason }));
    assert!(lines.all().iter().any(|l| l.starts_with("REPORT")
        && l.ends_with("Status: error\tError Type: Runtime.ExitError\t")));
    handle.shutdown();
}

#[tokio::test]
async fn a_runtime_that_exits_during_init_fails_the_waiting_invocation() {
    let (handle, lines) = environment(config("/bin/sh", &["-c", "echo dying; exit 7"]));
    let error = error_of(
        handle
            .invoke(Invocation::new(Bytes::from_static(b"{}")))
            .await
            .unwrap(),
    );
    assert_eq!(error.error_type, function_error_type::RUNTIME_EXIT);
    assert!(
        error
            .error_message
            .ends_with("Error: Runtime exited with error: exit status 7"),
        "{}",
        error.error_message
    );
    let log = lines.all();
    assert!(log.iter().any(|l| l == "dying"), "{log:?}");
    assert_eq!(lines.count("INIT_REPORT"), 1, "{log:?}");
    handle.shutdown();
}

#[tokio::test]
async fn init_error_fails_the_trigger_and_the_next_invocation_retries() {
    let (handle, lines) = environment(sleeper());
    let first = invoke(&handle, "{}").await;
    tokio::task::yield_now().await;
    let body = Bytes::from_static(br#"{"errorType":"InitFailed","errorMessage":"no"}"#);
    assert!(matches!(
        handle.init_error(body.clone(), "InitFailed"),
        ApiReply::Accepted
    ));
    assert_eq!(first.await.unwrap(), Ok(Outcome::failure(body)));
    assert_eq!(lines.count("INIT_REPORT"), 1);

    let second = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    handle.respond(&id, Bytes::new());
    second.await.unwrap().unwrap();
    handle.shutdown();
}

#[tokio::test]
async fn init_that_never_polls_times_out() {
    let mut config = sleeper();
    config.init_timeout = Duration::from_millis(100);
    let (handle, lines) = environment(config);
    let error = error_of(
        handle
            .invoke(Invocation::new(Bytes::from_static(b"{}")))
            .await
            .unwrap(),
    );
    assert_eq!(error.error_type, function_error_type::INIT_TIMEOUT);
    assert!(lines.all().iter().any(|l| l.starts_with("INIT_REPORT")
        && l.ends_with("Status: error\tError Type: Runtime.InitTimeout")));
    handle.shutdown();
}

#[tokio::test]
async fn a_runtime_that_cannot_start_fails_every_waiting_invocation() {
    let (handle, _) = environment(config("/nonexistent/runtime", &[]));
    let first = invoke(&handle, "{}").await;
    let second = invoke(&handle, "{}").await;
    for waiting in [first, second] {
        let error = error_of(waiting.await.unwrap().unwrap());
        assert_eq!(error.error_type, function_error_type::INVALID_ENTRYPOINT);
    }
}

#[tokio::test]
async fn one_invocation_at_a_time_even_with_two_polls() {
    let mut config = sleeper();
    config.init_type = InitializationType::ProvisionedConcurrency;
    let (handle, _) = environment(config);
    handle.start();
    let poll = || {
        let handle = handle.clone();
        tokio::spawn(async move { handle.next().await })
    };
    let (mut a, mut b) = (poll(), poll());
    tokio::task::yield_now().await;
    let first = invoke(&handle, r#"{"n":1}"#).await;
    let second = invoke(&handle, r#"{"n":2}"#).await;
    // One poll gets the first invocation; the other waits for the second (had it been given
    // the first as well, it would hand it back below instead of the second).
    let (done, waiting) = tokio::select! {
        done = &mut a => (done, b),
        done = &mut b => (done, a),
    };
    assert!(!waiting.is_finished(), "exactly one poll got an invocation");
    let ApiReply::Next(delivered) = done.unwrap() else {
        panic!("expected an invocation")
    };
    assert_eq!(delivered.invocation.event, r#"{"n":1}"#);
    handle.respond(&delivered.invocation.request_id, Bytes::new());
    first.await.unwrap().unwrap();
    let ApiReply::Next(delivered) = waiting.await.unwrap() else {
        panic!("expected an invocation")
    };
    assert_eq!(delivered.invocation.event, r#"{"n":2}"#);
    handle.respond(&delivered.invocation.request_id, Bytes::new());
    second.await.unwrap().unwrap();
    handle.shutdown();
}

#[tokio::test]
async fn the_queue_is_bounded_and_shutdown_releases_it() {
    let (handle, _) = environment(sleeper());
    let mut waiting = Vec::new();
    for _ in 0..MAX_QUEUED {
        waiting.push(invoke(&handle, "{}").await);
    }
    assert_eq!(
        handle.invoke(Invocation::new(Bytes::new())).await,
        Err(InvokeError::QueueFull)
    );
    handle.shutdown();
    for task in waiting {
        assert_eq!(task.await.unwrap(), Err(InvokeError::ShutDown));
    }
    assert_eq!(
        handle.invoke(Invocation::new(Bytes::new())).await,
        Err(InvokeError::ShutDown)
    );
}

fn snap_start() -> EnvironmentConfig {
    let mut config = sleeper();
    config.init_type = InitializationType::SnapStart;
    config
}

#[tokio::test]
async fn snap_start_reports_the_restore_on_the_first_invocation() {
    let (handle, lines) = environment(snap_start());
    handle.start();
    assert!(matches!(handle.restore_next().await, ApiReply::Empty));
    assert_eq!(
        rejected(handle.restore_next().await),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    let pending = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    handle.respond(&id, Bytes::new());
    pending.await.unwrap().unwrap();
    let report = lines
        .all()
        .into_iter()
        .find(|l| l.starts_with("REPORT"))
        .unwrap();
    assert!(report.contains("\tRestore Duration: "), "{report}");
    assert!(report.contains("\tBilled Restore Duration: "), "{report}");
    assert!(!report.contains("Init Duration"), "{report}");
    handle.shutdown();
}

#[tokio::test]
async fn a_failed_restore_goes_to_the_next_invocation() {
    let (handle, lines) = environment(snap_start());
    handle.start();
    assert!(matches!(handle.restore_next().await, ApiReply::Empty));
    assert!(matches!(
        handle.restore_error(Bytes::new(), function_error_type::RESTORE_ERROR),
        ApiReply::Accepted
    ));
    assert_eq!(
        handle.invoke(Invocation::new(Bytes::new())).await,
        Ok(Outcome::failure(Bytes::new()))
    );
    assert_eq!(lines.count("RESTORE_REPORT"), 1);
    assert_eq!(
        rejected(handle.restore_error(Bytes::new(), "X")),
        (403, error_type::INVALID_STATE_TRANSITION)
    );
    handle.shutdown();
}

#[tokio::test]
async fn a_snap_start_runtime_may_skip_restore_next() {
    let (handle, lines) = environment(snap_start());
    handle.start();
    let pending = invoke(&handle, "{}").await;
    let id = next(&handle).await.invocation.request_id;
    handle.respond(&id, Bytes::new());
    pending.await.unwrap().unwrap();
    let report = lines
        .all()
        .into_iter()
        .find(|l| l.starts_with("REPORT"))
        .unwrap();
    // Its init belonged to no invocation: a line of its own, not the REPORT's Init Duration.
    assert!(!report.contains("Init Duration"), "{report}");
    assert_eq!(lines.count("INIT_REPORT Init Duration: "), 1);
    handle.shutdown();
}
