//! The admin HTTP server: probes, `/metrics`, and the `/api/v1` JSON API over a
//! [`ControlPlane`]. Every error is JSON `{ "error": …, "hint": … }` (plus `job_id` when a
//! running rebalance job refused the request) with its status code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::{ControlPlane, SetHostsRequest};
use crate::metrics;
use crate::rebalance::{AddShardRequest, RebalanceError, RebalanceStatus, Rebalancer};
use shardgate_topology::{Job, JobKind};

/// How long `stop` lets running requests finish before closing their connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest piece of a client's path echoed back in an error.
const ECHO_LIMIT: usize = 200;

const REBALANCE_HINT: &str = "live rebalancing is not available yet on this proxy: shards \
    cannot be added or removed while it runs; the shard list comes from the config file";

/// Largest request body accepted: the biggest is an add-shard request, well under 1 KiB.
const BODY_LIMIT: usize = 64 * 1024;

/// What a job's shards show instead of their admin passwords.
const REDACTED: &str = "********";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] shardgate_config::AdminTokenError),
    #[error(
        "admin.listen {addr} is reachable from the network but the admin API has no token: \
         set admin.token_env (or admin.token), or listen on 127.0.0.1"
    )]
    OpenOnNetwork { addr: String },
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    pub hint: String,
    /// The running rebalance job that made the request fail (409); absent otherwise, so older
    /// clients and bodies without it still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// An error answer: a status code and an [`ErrorBody`].
struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    fn new(status: StatusCode, error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                hint: hint.into(),
                job_id: None,
            },
        }
    }
}

impl From<RebalanceError> for ApiError {
    fn from(e: RebalanceError) -> ApiError {
        // The rebalancer names its statuses; anything outside 4xx/5xx would be a bug there, and
        // must not reach the client as a success.
        let status = StatusCode::from_u16(e.status)
            .ok()
            .filter(|s| s.is_client_error() || s.is_server_error())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            body: ErrorBody {
                error: e.message,
                hint: e.hint,
                job_id: e.job_id,
            },
        }
    }
}

/// A request body the JSON extractor refused (axum answers those in plain text): its status
/// (400 bad JSON, 413 too large, 415 not JSON, 422 wrong fields) and reason, as JSON.
fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = if rejection.status() == StatusCode::UNPROCESSABLE_ENTITY {
        // Missing or mistyped fields: the request is wrong, not refused by a check.
        StatusCode::BAD_REQUEST
    } else {
        rejection.status()
    };
    let hint = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!("request bodies are limited to {} KiB", BODY_LIMIT / 1024)
    } else {
        "send Content-Type: application/json with a JSON object, e.g. {\"name\": \"s4\", \
         \"primary\": \"postgres://admin@10.0.0.4:5432\", \"replicas\": []}"
            .to_owned()
    };
    ApiError::new(
        status,
        format!("bad request body: {}", rejection.body_text()),
        hint,
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

#[derive(Clone)]
struct AppState {
    control: Arc<dyn ControlPlane>,
    /// `None`: the API is open.
    token: Option<Arc<str>>,
    metrics: PrometheusHandle,
}

/// A running admin HTTP server. Dropping it leaves the server running; `stop` ends it.
pub struct AdminServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl AdminServer {
    /// Installs the metrics recorder (once per process), binds `config.listen` and serves the
    /// probes, `/metrics` and `/api/v1` from `control`. With a token set
    /// ([`Admin::resolved_token`](shardgate_config::Admin::resolved_token)), `/api/v1/*`
    /// requires `Authorization: Bearer <token>`. Refuses to start when `token_env` names an
    /// unset variable, and without a token on an address other than loopback.
    pub async fn start(
        control: Arc<dyn ControlPlane>,
        config: &shardgate_config::Admin,
    ) -> Result<AdminServer, AdminError> {
        let err = |source| AdminError::Listen {
            addr: config.listen.clone(),
            source,
        };
        // Fail closed: a missing secret or an open API on the network stops the start.
        let token = config.resolved_token()?;
        if token.is_none() && !config.listens_on_loopback() {
            return Err(AdminError::OpenOnNetwork {
                addr: config.listen.clone(),
            });
        }
        let listener = TcpListener::bind(&config.listen).await.map_err(err)?;
        let local = listener.local_addr().map_err(err)?;
        let state = AppState {
            control,
            token: token.as_deref().map(Arc::from),
            metrics: metrics::install(),
        };
        let app = router(state);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, app, stopped));
        tracing::info!(addr = %local, token = token.is_some(), "admin server listening");
        Ok(AdminServer {
            addr: local,
            stop,
            task,
        })
    }

    /// The address it listens on (the real port when `admin.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting at once and lets running requests finish (up to 5 s) in the
    /// background.
    pub fn stop(self) {
        let _ = self.stop.send(true);
    }

    /// Like [`stop`](Self::stop), and waits until the server has closed.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "admin server task ended abnormally");
        }
    }
}

async fn serve(listener: TcpListener, app: Router, stopped: watch::Receiver<bool>) {
    let mut graceful = stopped.clone();
    let mut deadline = stopped;
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop_requested(&mut graceful).await;
    });
    let grace_over = async move {
        stop_requested(&mut deadline).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = server => {
            if let Err(e) = result {
                tracing::error!(error = %e, "admin server stopped");
            }
        }
        () = grace_over => tracing::warn!("admin requests still running at stop; closed them"),
    }
    tracing::debug!("admin server stopped");
}

/// Resolves when `stop` is called; never when the handle is dropped without it.
async fn stop_requested(stopped: &mut watch::Receiver<bool>) {
    if stopped.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/api/v1/shards", get(shards).post(add_shard))
        .route("/api/v1/shards/{name}", delete(remove_shard))
        .route("/api/v1/shards/{name}/hosts", put(set_hosts))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/replicas", get(replicas))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/sequences", get(sequences))
        .route("/api/v1/verify/references", get(verify_references))
        .route("/api/v1/queries", get(queries).delete(reset_queries))
        .route("/api/v1/queries/reset", post(reset_queries))
        .route("/api/v1/readiness", get(sharding_readiness))
        .route("/api/v1/transactions", get(transactions))
        .route("/api/v1/transactions/resolve", post(resolve_transactions))
        .route("/api/v1/rebalance", get(rebalance_status))
        .route("/api/v1/rebalance/abort", post(abort_rebalance))
        // Both fallbacks apply to the routes registered above, so they come last.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        // Around everything, fallbacks included: an unknown /api/v1 path answers 401, not 404,
        // to a caller without the token.
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let protected = path == "/api/v1" || path.starts_with("/api/v1/");
    let Some(expected) = state.token.as_deref().filter(|_| protected) else {
        return next.run(request).await;
    };
    let hint = "pass the admin token: Authorization: Bearer <token> (shardgate admin --token \
                or SHARDGATE_ADMIN_TOKEN)";
    let error = match bearer_token(request.headers()) {
        // Constant time, so the comparison does not tell how much of a guess was right.
        Some(given) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
            return next.run(request).await;
        }
        Some(_) => "wrong admin token",
        None => "this endpoint needs the admin token",
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, error, hint).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"shardgate admin\""),
    );
    response
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(state): State<AppState>) -> Response {
    let readiness = state.control.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let text = metrics::render(&state.metrics, &*state.control);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn shards(State(state): State<AppState>) -> Response {
    Json(state.control.shards()).into_response()
}

async fn pools(State(state): State<AppState>) -> Response {
    Json(state.control.pools()).into_response()
}

async fn replicas(State(state): State<AppState>) -> Response {
    Json(state.control.replicas()).into_response()
}

async fn reload(State(state): State<AppState>) -> Response {
    let control = state.control.clone();
    // Reload reads and validates the config file: blocking work, off the runtime's threads.
    match tokio::task::spawn_blocking(move || control.reload()).await {
        Ok(Ok(outcome)) => {
            tracing::info!(applied = ?outcome.applied, needs_restart = ?outcome.needs_restart,
                "config reloaded via the admin API");
            Json(outcome).into_response()
        }
        // The request was fine; the file it points at cannot be applied.
        Ok(Err(refused)) => {
            tracing::warn!(reason = %refused.message, "config reload refused");
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, running config kept: {}", refused.message),
                refused.hint,
            )
            .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload failed inside shardgate; the running config is kept",
                "see shardgate's log",
            )
            .into_response()
        }
    }
}

/// The rebalancer, or the 501 a proxy without one answers.
fn rebalancer(state: &AppState, method: &Method, uri: &Uri) -> Result<Arc<Rebalancer>, ApiError> {
    state.control.rebalancer().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{method} {} is not implemented yet", echo(uri.path())),
            REBALANCE_HINT,
        )
    })
}

/// A started (or aborting) job: 202, the work goes on in the background.
fn accepted(job: Job) -> Response {
    (StatusCode::ACCEPTED, Json(redact(job))).into_response()
}

async fn add_shard(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    body: Result<Json<AddShardRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    // 501 before looking at the body: without a rebalancer no body is right.
    let rebalancer = rebalancer(&state, &method, &uri)?;
    let Json(request) = body.map_err(json_rejection)?;
    let name = request.name.clone();
    let job = rebalancer.add_shard(request).await.map_err(|e| {
        tracing::warn!(shard = %name, status = e.status, reason = %e.message, "add shard refused");
        ApiError::from(e)
    })?;
    tracing::info!(job = %job.id, shard = %name, "add shard started via the admin API");
    Ok(accepted(job))
}

async fn remove_shard(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let rebalancer = rebalancer(&state, &method, &uri)?;
    let Path(name) = name.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad shard name in the path: {}", rejection.body_text()),
            "percent-encode the shard name as UTF-8",
        )
    })?;
    let job = rebalancer.remove_shard(&name).await.map_err(|e| {
        tracing::warn!(shard = %name, status = e.status, reason = %e.message, "remove shard refused");
        ApiError::from(e)
    })?;
    tracing::info!(job = %job.id, shard = %name, "remove shard started via the admin API");
    Ok(accepted(job))
}

async fn set_hosts(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    name: Result<Path<String>, PathRejection>,
    body: Result<Json<SetHostsRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(name) = name.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("bad shard name in the path: {}", rejection.body_text()),
            "percent-encode the shard name as UTF-8",
        )
    })?;
    let Json(request) = body.map_err(json_rejection)?;
    let Some(change) = state.control.set_hosts(name.clone(), request) else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{method} {} is not implemented yet", echo(uri.path())),
            "this build has no topology store to publish hosts in",
        ));
    };
    match change.await {
        Ok(outcome) => {
            tracing::info!(shard = %name, changed = outcome.changed, version = outcome.topology_version,
                primary = %outcome.primary, replicas = ?outcome.replicas, "shard hosts set via the admin API");
            Ok(Json(outcome).into_response())
        }
        Err(e) => {
            tracing::warn!(shard = %name, status = e.status, reason = %e.message, "shard hosts change refused");
            let status =
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Err(ApiError::new(status, e.message, e.hint))
        }
    }
}

async fn sequences(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Some(report) = state.control.sequences() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!("{method} {} is not implemented yet", echo(uri.path())),
            REBALANCE_HINT,
        ));
    };
    Ok(Json(report.await?).into_response())
}

async fn verify_references(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Some(report) = state.control.verify_references() else {
        return Err(not_served(&method, &uri, REBALANCE_HINT));
    };
    Ok(Json(report.await?).into_response())
}

/// The 501 of an endpoint this proxy does not serve.
fn not_served(method: &Method, uri: &Uri, hint: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{method} {} is not implemented yet", echo(uri.path())),
        hint,
    )
}

const QUERIES_HINT: &str = "this proxy keeps no per-query statistics";

async fn queries(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (sort, limit) = crate::queries::parse_params(uri.query()).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            e.to_string(),
            "use sort=total_time|calls|mean_time|errors and limit=1..10000",
        )
    })?;
    let report = state
        .control
        .queries(sort, limit)
        .ok_or_else(|| not_served(&method, &uri, QUERIES_HINT))?;
    Ok(Json(report).into_response())
}

async fn reset_queries(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    if !state.control.reset_queries() {
        return Err(not_served(&method, &uri, QUERIES_HINT));
    }
    Ok(Json(serde_json::json!({ "reset": true })).into_response())
}

async fn sharding_readiness(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let report = state.control.sharding_readiness().ok_or_else(|| {
        not_served(
            &method,
            &uri,
            "the readiness report needs [sharding] mode = \"observe\"",
        )
    })?;
    Ok(Json(report).into_response())
}

const TRANSACTIONS_HINT: &str = "this proxy does not run two-phase commit recovery";

async fn transactions(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let report = state
        .control
        .transactions()
        .ok_or_else(|| not_served(&method, &uri, TRANSACTIONS_HINT))?;
    Ok(Json(report.await).into_response())
}

async fn resolve_transactions(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let report = state
        .control
        .resolve_transactions()
        .ok_or_else(|| not_served(&method, &uri, TRANSACTIONS_HINT))?;
    let report = report.await;
    tracing::info!(
        committed = report.committed.len(),
        rolled_back = report.rolled_back.len(),
        left = report.left.len(),
        "in-doubt transactions resolved via the admin API"
    );
    Ok(Json(report).into_response())
}

async fn rebalance_status(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let rebalancer = rebalancer(&state, &method, &uri)?;
    let mut status: RebalanceStatus = rebalancer.status().await?;
    status.job = status.job.map(redact);
    Ok(Json(status).into_response())
}

async fn abort_rebalance(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
) -> Result<Response, ApiError> {
    let rebalancer = rebalancer(&state, &method, &uri)?;
    let job = rebalancer.abort().await.map_err(|e| {
        tracing::warn!(status = e.status, reason = %e.message, "rebalance abort refused");
        ApiError::from(e)
    })?;
    tracing::info!(job = %job.id, "rebalance abort requested via the admin API");
    Ok(accepted(job))
}

/// The job without its shards' admin passwords: status output gets pasted into tickets and
/// chats, and the caller never needs them back.
fn redact(mut job: Job) -> Job {
    let hide = |shard: &mut shardgate_config::Shard| {
        if shard.admin_password.is_some() {
            shard.admin_password = Some(REDACTED.to_owned());
        }
    };
    if let JobKind::Add { shard } = &mut job.kind {
        hide(shard);
    }
    job.old_shards.iter_mut().for_each(hide);
    job.new_shards.iter_mut().for_each(hide);
    job
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", echo(uri.path())),
        "endpoints: GET /health, /ready, /metrics; /api/v1/shards (GET, POST), \
         DELETE /api/v1/shards/{name}, PUT /api/v1/shards/{name}/hosts, GET /api/v1/pools, /api/v1/replicas, /api/v1/sequences, /api/v1/verify/references, \
         /api/v1/transactions, /api/v1/rebalance; POST /api/v1/reload, \
         /api/v1/transactions/resolve, /api/v1/rebalance/abort",
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", echo(uri.path())),
        "the Allow header lists the methods it accepts",
    )
}

/// A client-sent path, cut to a sane length for an error message.
fn echo(path: &str) -> String {
    path.chars().take(ECHO_LIMIT).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::FromRequest;
    use shardgate_config::{Host, Shard};
    use shardgate_topology::{Phase, Progress};

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), BODY_LIMIT)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn error_body_job_id_is_optional_both_ways() {
        let plain = ErrorBody {
            error: "e".into(),
            hint: "h".into(),
            job_id: None,
        };
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({ "error": "e", "hint": "h" })
        );
        let busy = ErrorBody {
            job_id: Some("rb-1".into()),
            ..plain.clone()
        };
        assert_eq!(
            serde_json::to_value(&busy).unwrap(),
            serde_json::json!({ "error": "e", "hint": "h", "job_id": "rb-1" })
        );
        // Bodies from servers that predate job_id still parse.
        let old: ErrorBody = serde_json::from_str(r#"{"error":"e","hint":"h"}"#).unwrap();
        assert_eq!(old, plain);
    }

    #[tokio::test]
    async fn rebalance_errors_keep_status_and_job_id() {
        let error = |status: u16, job_id: Option<&str>| RebalanceError {
            status,
            code: "busy".into(),
            message: "a rebalance job is running".into(),
            hint: "wait for it or abort it".into(),
            job_id: job_id.map(str::to_owned),
        };
        let response = ApiError::from(error(409, Some("rb-42"))).into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(
            body_json(response).await,
            serde_json::json!({
                "error": "a rebalance job is running",
                "hint": "wait for it or abort it",
                "job_id": "rb-42",
            })
        );
        for (given, answered) in [(422, 422), (503, 503), (404, 404), (200, 500), (999, 500)] {
            let response = ApiError::from(error(given, None)).into_response();
            assert_eq!(response.status().as_u16(), answered, "{given}");
        }
    }

    /// What the add-shard handler's extractor makes of a body, mapped as the handler does.
    async fn extract(content_type: Option<&str>, body: impl Into<Body>) -> (u16, ErrorBody) {
        let mut request = Request::post("/api/v1/shards");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let request = request.body(body.into()).unwrap();
        let rejection = match Json::<AddShardRequest>::from_request(request, &()).await {
            Ok(_) => panic!("the body was accepted"),
            Err(rejection) => rejection,
        };
        let response = json_rejection(rejection).into_response();
        let status = response.status().as_u16();
        let json = body_json(response).await;
        (status, serde_json::from_value(json).unwrap())
    }

    #[tokio::test]
    async fn bad_bodies_answer_json() {
        let json = Some("application/json");
        let (status, body) = extract(json, "{not json").await;
        assert_eq!(status, 400);
        assert!(body.error.starts_with("bad request body:"), "{body:?}");
        assert!(body.hint.contains("application/json"), "{body:?}");

        let (status, body) = extract(json, r#"{"name":"s4"}"#).await;
        assert_eq!(status, 400);
        assert!(body.error.contains("primary"), "{body:?}");

        let (status, body) = extract(json, r#"{"name":4,"primary":"h"}"#).await;
        assert_eq!(status, 400, "{body:?}");

        let (status, _) = extract(None, r#"{"name":"s4","primary":"h"}"#).await;
        assert_eq!(status, 415);

        // Past the limit (axum's default here; the router sets BODY_LIMIT).
        let huge = format!(r#"{{"name":"{}","primary":"h"}}"#, "x".repeat(3 << 20));
        let (status, body) = extract(json, huge).await;
        assert_eq!(status, 413);
        assert!(body.hint.contains("KiB"), "{body:?}");
    }

    #[test]
    fn jobs_are_shown_without_admin_passwords() {
        let shard = |name: &str, password: Option<&str>| Shard {
            name: name.into(),
            primary: Host {
                host: "10.0.0.4".into(),
                ..Default::default()
            },
            replicas: vec![],
            admin_user: Some("rebalancer".into()),
            admin_password: password.map(str::to_owned),
        };
        let job = Job {
            id: "rb-1".into(),
            kind: JobKind::Add {
                shard: shard("s4", Some("hunter2")),
            },
            phase: Phase::Copying,
            stopped_in: None,
            from_version: 3,
            old_shards: vec![shard("s1", Some("pw1")), shard("s2", None)],
            new_shards: vec![shard("s1", Some("pw1")), shard("s4", Some("hunter2"))],
            to_version: None,
            owner: "p1".into(),
            heartbeat_ms: 0,
            started_ms: 0,
            finished_ms: None,
            abort_requested: false,
            error: None,
            progress: Progress::default(),
            plan: None,
        };
        let shown = serde_json::to_string(&redact(job)).unwrap();
        for secret in ["hunter2", "pw1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains(REDACTED));
        // A shard without a password of its own still shows none.
        let value: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert!(value["old_shards"][1].get("admin_password").is_none());
    }
}
