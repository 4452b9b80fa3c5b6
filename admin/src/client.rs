//! The admin CLI's HTTP client: blocking, plain HTTP to the admin port (loopback by default,
//! so no TLS), with the bearer token when one is given.

use std::time::Duration;

/// Connecting to a live local server takes microseconds; past this it is not answering.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reload re-reads and validates the config file; nothing else takes more than a moment.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach shardgate's admin API at {url} ({reason}); shardgate may not be running \
         there (set --url or SHARDGATE_ADMIN_URL)"
    )]
    Unreachable { url: String, reason: String },
    #[error("{url} is not a usable admin URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("request to {url} failed: {reason}")]
    Failed { url: String, reason: String },
}

/// A server's answer, whatever its status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

pub struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `base` is the server's root URL (`http://127.0.0.1:9930`); only `http://` is accepted.
    pub fn new(base: &str, token: Option<String>) -> Result<AdminClient, ClientError> {
        let base = base.trim().trim_end_matches('/');
        let bad = |reason: &str| ClientError::BadUrl {
            url: base.to_owned(),
            reason: reason.to_owned(),
        };
        if base.starts_with("https://") {
            return Err(bad(
                "https is not supported: the admin API is plain HTTP (keep \
                            admin.listen on a loopback or private address)",
            ));
        }
        if !base.starts_with("http://") || base.len() == "http://".len() {
            return Err(bad("expected http://HOST:PORT"));
        }
        let agent = ureq::Agent::config_builder()
            // 4xx/5xx carry the server's JSON error, which the CLI prints.
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .max_redirects(0)
            .build()
            .new_agent();
        Ok(AdminClient {
            base: base.to_owned(),
            token: token.filter(|t| !t.is_empty()),
            agent,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> Result<Reply, ClientError> {
        let url = self.url(path);
        let mut request = self.agent.get(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        finish(&url, request.call())
    }

    pub fn delete(&self, path: &str) -> Result<Reply, ClientError> {
        let url = self.url(path);
        let mut request = self.agent.delete(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        finish(&url, request.call())
    }

    /// PUTs `json`.
    pub fn put(&self, path: &str, json: &serde_json::Value) -> Result<Reply, ClientError> {
        let url = self.url(path);
        let mut request = self.agent.put(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = request
            .header("Content-Type", "application/json")
            .send(json.to_string());
        finish(&url, result)
    }

    /// POSTs `json` (or an empty body).
    pub fn post(&self, path: &str, json: Option<&serde_json::Value>) -> Result<Reply, ClientError> {
        let url = self.url(path);
        let mut request = self.agent.post(&url);
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let result = match json {
            Some(value) => request
                .header("Content-Type", "application/json")
                .send(value.to_string()),
            None => request.send_empty(),
        };
        finish(&url, result)
    }
}

fn finish(
    url: &str,
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, ClientError> {
    let mut response = result.map_err(|e| classify(url, e))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| classify(url, e))?;
    Ok(Reply { status, body })
}

fn classify(url: &str, error: ureq::Error) -> ClientError {
    let url = url.to_owned();
    match error {
        ureq::Error::Io(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Timeout(_) => ClientError::Unreachable {
            url,
            reason: error.to_string(),
        },
        ureq::Error::BadUri(reason) => ClientError::BadUrl { url, reason },
        other => ClientError::Failed {
            url,
            reason: other.to_string(),
        },
    }
}
