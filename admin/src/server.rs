//! The admin HTTP server: probes, `/metrics`, and the `/api/v1` JSON API over a
//! [`ControlPlane`]. Every error is JSON `{ "error": …, "hint": … }` with its status code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::control::ControlPlane;
use crate::metrics;

/// How long `stop` lets running requests finish before closing their connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Longest piece of a client's path echoed back in an error.
const ECHO_LIMIT: usize = 200;

const REBALANCE_HINT: &str = "live rebalancing is not available yet: shards cannot be added \
    or removed while shardgate runs; the shard list comes from the config file";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} (admin.listen): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    pub hint: String,
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
            },
        }
    }
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
    /// requires `Authorization: Bearer <token>`.
    pub async fn start(
        control: Arc<dyn ControlPlane>,
        config: &shardgate_config::Admin,
    ) -> Result<AdminServer, AdminError> {
        let err = |source| AdminError::Listen {
            addr: config.listen.clone(),
            source,
        };
        let listener = TcpListener::bind(&config.listen).await.map_err(err)?;
        let local = listener.local_addr().map_err(err)?;
        let token = config.resolved_token();
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
        .route("/api/v1/shards", get(shards).post(not_implemented))
        .route("/api/v1/shards/{name}", delete(not_implemented))
        .route("/api/v1/pools", get(pools))
        .route("/api/v1/replicas", get(replicas))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/rebalance", get(not_implemented))
        .route("/api/v1/rebalance/abort", post(not_implemented))
        // Both fallbacks apply to the routes registered above, so they come last.
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
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

async fn not_implemented(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        format!("{method} {} is not implemented yet", echo(uri.path())),
        REBALANCE_HINT,
    )
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {method} {}", echo(uri.path())),
        "endpoints: GET /health, /ready, /metrics; /api/v1/shards, /api/v1/pools, \
         /api/v1/replicas, POST /api/v1/reload, /api/v1/rebalance",
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
