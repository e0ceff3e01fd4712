//! The environment's side of each Extensions API call, checked against the state as the
//! runtime's calls are: an extension that calls out of order gets a 403, never a broken
//! environment.

use super::{ApiReply, Handle, Phase, Reset, ShutdownReason, State};
use crate::extensions::{Agent, AgentState};
use crate::report::Status;
use crate::telemetry::Flavour;
use bytes::Bytes;
use proto::extensions_api::{error_type, Event, EventType, RegisterResponse, MAX_EXTENSIONS};
use proto::runtime_api::ErrorRequest;
use proto::telemetry_api::{Subscription, Target};

fn forbidden(error_type: &'static str, message: impl Into<String>) -> ApiReply {
    ApiReply::Rejected(403, error_type, message.into())
}

fn unknown(id: &str) -> ApiReply {
    forbidden(
        error_type::UNKNOWN_IDENTIFIER,
        format!("Unknown extension {id}"),
    )
}

/// A registered extension: its id and the answer to `register`.
pub struct Registered {
    pub id: String,
    pub response: RegisterResponse,
}

impl Handle {
    /// `POST /extension/register`: an external extension registers under its file name; any
    /// other name is an internal extension (the runtime's), which may take `INVOKE` only.
    /// Registration is open during init.
    pub fn register(
        &self,
        name: &str,
        events: Vec<EventType>,
        with_account: bool,
    ) -> Result<Registered, ApiReply> {
        if name.is_empty() {
            return Err(forbidden(error_type::INVALID_NAME, "Empty extension name"));
        }
        let mut state = self.lock();
        if !matches!(state.phase, Phase::Initializing { .. }) || state.extensions.closed {
            return Err(forbidden(
                error_type::REGISTRATION_CLOSED,
                "Extension registration closed already",
            ));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let external = state
            .extensions
            .agents
            .iter()
            .position(|a| a.is_external() && a.name == name);
        match external {
            Some(at) => {
                let agent = &mut state.extensions.agents[at];
                if agent.state != AgentState::Launched {
                    return Err(forbidden(
                        error_type::INVALID_STATE,
                        format!("Extension {name} is registered already"),
                    ));
                }
                agent.id = id.clone();
                agent.events = events;
                agent.state = AgentState::Registered;
                if state.extensions.externals_registered() {
                    self.extensions_registered(&mut state);
                }
            }
            None => {
                if events.contains(&EventType::Shutdown) {
                    return Err(forbidden(
                        error_type::INVALID_EVENT_TYPE,
                        "SHUTDOWN: internal extensions cannot register for SHUTDOWN",
                    ));
                }
                if state.extensions.agents.iter().any(|a| a.name == name) {
                    return Err(forbidden(
                        error_type::INVALID_STATE,
                        "Extension with this name already registered",
                    ));
                }
                if state.extensions.agents.len() >= MAX_EXTENSIONS {
                    return Err(forbidden(
                        error_type::TOO_MANY,
                        format!("Extension limit ({MAX_EXTENSIONS}) reached"),
                    ));
                }
                state.extensions.agents.push(Agent {
                    id: id.clone(),
                    name: name.to_owned(),
                    process: None,
                    events,
                    state: AgentState::Registered,
                    pending: None,
                });
            }
        }
        let config = &self.shared.config;
        let response = RegisterResponse {
            function_name: config.function_name.clone(),
            function_version: config.function_version.clone(),
            handler: config.handler.clone(),
            account_id: with_account.then(|| proto::invoke_api::ACCOUNT_ID.to_owned()),
        };
        Ok(Registered { id, response })
    }

    /// `GET /extension/event/next`: the extension is done with its last event (or with init)
    /// and waits for the next. An extension of an environment being shut down gets its
    /// `SHUTDOWN` here.
    pub async fn extension_next(&self, id: &str) -> Result<Event, ApiReply> {
        {
            let mut state = self.lock();
            let generation_agent = state.extensions.by_id(id).is_some();
            let Some(agent) = find(&mut state, id) else {
                return Err(unknown(id));
            };
            if agent.state == AgentState::Failed {
                return Err(forbidden(
                    error_type::INVALID_STATE,
                    format!(
                        "Extension {} reported an error; it gets no more events",
                        agent.name
                    ),
                ));
            }
            agent.state = AgentState::Ready;
            if generation_agent {
                match state.phase {
                    Phase::Initializing { .. } => self.maybe_end_init(&mut state),
                    _ => self.extensions_done(&mut state),
                }
            }
            self.shared.work.notify_waiters();
        }
        loop {
            let notified = self.shared.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                let Some(agent) = find(&mut state, id) else {
                    // Its environment is gone and so, soon, is it.
                    return Err(ApiReply::Rejected(
                        410,
                        proto::runtime_api::error_type::ENVIRONMENT_RESET,
                        "the environment was reset; this extension is no longer served".into(),
                    ));
                };
                if let Some(event) = agent.pending.take() {
                    agent.state = AgentState::Running;
                    return Ok(event);
                }
            }
            notified.await;
        }
    }

    /// `POST /extension/init/error`: the extension failed to initialize; so does the
    /// environment, with the extension's error type.
    pub fn extension_init_error(&self, id: &str, error_type: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        let phase = state.phase;
        let Some(agent) = state.extensions.by_id(id) else {
            return unknown(id);
        };
        let Phase::Initializing { started } = phase else {
            return forbidden(
                error_type::INVALID_STATE,
                "init/error is only valid during init",
            );
        };
        agent.state = AgentState::Failed;
        let name = agent.name.clone();
        let message = error_message(&body, &format!("Extension {name} failed to initialize"));
        let outcome = super::Outcome::Failure {
            body: ErrorRequest::new(error_type, format!("{}{message}", self.head_prefix(&state)))
                .to_json()
                .into(),
            reset: Some(Reset::RuntimeExit {
                reason: message.clone(),
            }),
        };
        self.fail_init(&mut state, started.elapsed(), error_type, outcome);
        self.reset(&mut state, ShutdownReason::Failure);
        ApiReply::Accepted
    }

    /// `POST /extension/exit/error`: the extension is about to exit because of an error; what
    /// the environment was doing fails with the extension's error type, and it is reset.
    pub fn extension_exit_error(&self, id: &str, error_type: &str, body: Bytes) -> ApiReply {
        let mut state = self.lock();
        let Some(agent) = state.extensions.by_id(id) else {
            return unknown(id);
        };
        if agent.state == AgentState::Failed {
            return forbidden(
                error_type::INVALID_STATE,
                "the extension reported an error already",
            );
        }
        agent.state = AgentState::Failed;
        let name = agent.name.clone();
        let message = error_message(&body, &format!("Extension {name} exited with an error"));
        if matches!(state.phase, Phase::Ready) && self.unfinished_current(&state).is_none() {
            if let Some(ending) = state.post_invoke.as_mut() {
                ending.report.status = Status::Error(error_type.into());
            }
        }
        self.environment_failed(&mut state, error_type, &message);
        ApiReply::Accepted
    }
}

impl Handle {
    /// A Telemetry (or Logs) API subscription of extension `id`: open during init.
    pub fn subscribe_telemetry(
        &self,
        id: &str,
        subscription: Subscription,
        target: Target,
        flavour: Flavour,
    ) -> Result<(), ApiReply> {
        let mut state = self.lock();
        let generation = state.generation;
        let initializing = matches!(state.phase, Phase::Initializing { .. });
        let Some(agent) = state.extensions.by_id(id) else {
            return Err(unknown(id));
        };
        if !initializing {
            return Err(forbidden(
                SUBSCRIPTION_CLOSED,
                "Telemetry API subscription is closed: subscribe during init",
            ));
        }
        let name = agent.name.clone();
        self.shared.telemetry.subscribe(
            generation,
            &name,
            subscription.types,
            subscription.buffering,
            target,
            flavour,
        );
        Ok(())
    }
}

/// The error type of a subscription after init, as Lambda names it.
const SUBSCRIPTION_CLOSED: &str = "Telemetry.SubscriptionClosed";

/// The agent `id` names: of this generation, or of one being shut down.
fn find<'a>(state: &'a mut State, id: &str) -> Option<&'a mut Agent> {
    if state.extensions.by_id(id).is_some() {
        return state.extensions.by_id(id);
    }
    state
        .retiring
        .iter_mut()
        .find(|a| !a.id.is_empty() && a.id == id)
}

/// The message of an extension's error post: its `errorMessage` when it is Lambda's error JSON,
/// else `fallback`.
fn error_message(body: &[u8], fallback: &str) -> String {
    serde_json::from_slice::<ErrorRequest>(body)
        .ok()
        .map(|e| e.error_message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| fallback.to_owned())
}
