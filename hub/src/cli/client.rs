//! A blocking HTTP client for the hub's REST API (`/api/v1`), and how its
//! failures become exit codes.
//!
//! It sends and decodes the bodies in [`crate::api::types`], adds the bearer
//! token, and turns problem+json answers into one line a person can act on. It
//! does not retry (the resumable upload in `upload.rs` does, where retrying is
//! safe) and knows nothing about commands or output formats.

use std::io::Read;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::credentials::{Connection, Source};
use super::{exit, CliError};
use crate::api::types::Problem;

/// Timeouts and size bounds of the client.
// Design: no overall deadline on ordinary requests, so a multi-GiB download over
// a slow link may take hours; a stalled socket fails after `read` instead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientLimits {
    /// TCP connect.
    pub(crate) connect: Duration,
    /// Longest silence while reading an answer.
    pub(crate) read: Duration,
    /// Longest stall while sending a body.
    pub(crate) write: Duration,
    /// Longest wait for `POST …/versions`: the hub parses, chunks, hashes and
    /// signs before it answers.
    pub(crate) register: Duration,
    /// Largest error body read (problem+json is small; a proxy page may not be).
    pub(crate) max_error_body: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(120),
            write: Duration::from_secs(120),
            register: Duration::from_secs(60 * 60),
            max_error_body: 64 * 1024,
        }
    }
}

/// Why a request to the hub failed.
#[derive(Debug)]
pub(crate) enum HubError {
    /// The hub answered with an error status.
    Status {
        /// HTTP status.
        status: u16,
        /// The problem's `detail`, or a summary when the body was no problem+json.
        detail: String,
        /// The raw body (bounded), for answers that carry a state, such as an
        /// upload's 409.
        body: String,
    },
    /// The hub could not be reached, or the connection broke.
    Transport {
        /// What went wrong, from the HTTP library.
        message: String,
    },
    /// The hub answered 2xx with a body that is not what the API promises.
    Decode {
        /// The request path.
        path: String,
        /// The decoder's complaint.
        message: String,
    },
}

impl HubError {
    /// Whether trying again later may succeed: connection trouble, 5xx, 408, 429.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            HubError::Transport { .. } => true,
            HubError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            HubError::Decode { .. } => false,
        }
    }
}

impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HubError::Status { status, detail, .. } => write!(f, "HTTP {status}: {detail}"),
            HubError::Transport { message } => f.write_str(message),
            HubError::Decode { path, message } => {
                write!(f, "unreadable answer to {path}: {message}")
            }
        }
    }
}

/// A blocking client bound to one hub and token.
#[derive(Debug)]
pub(crate) struct HubClient {
    agent: ureq::Agent,
    conn: Connection,
    limits: ClientLimits,
}

/// A file being downloaded: its body and what the hub says about it.
pub(crate) struct Download {
    /// The body.
    pub(crate) body: Box<dyn Read + Send + Sync + 'static>,
    /// `Content-Length`, when sent.
    pub(crate) length: Option<u64>,
    /// `x-flotilla-sha256`, when sent.
    pub(crate) sha256: Option<String>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("length", &self.length)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Percent-encodes one URL path segment (a model name, a token name), so a
/// name holding `/` or `?` cannot address another resource.
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl HubClient {
    /// A client for `conn` with the default limits.
    pub(crate) fn new(conn: Connection) -> Self {
        Self::with_limits(conn, ClientLimits::default())
    }

    /// A client for `conn` with explicit limits.
    pub(crate) fn with_limits(conn: Connection, limits: ClientLimits) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(limits.connect)
            .timeout_read(limits.read)
            .timeout_write(limits.write)
            .user_agent(concat!("flotilla/", env!("CARGO_PKG_VERSION")))
            // Errors are answers too; redirects would resend the token elsewhere.
            .redirects(0)
            .build();
        Self {
            agent,
            conn,
            limits,
        }
    }

    /// The hub's base URL.
    pub(crate) fn hub(&self) -> &str {
        &self.conn.hub
    }

    /// A request to `path` (which starts with `/api/v1/`) with the token set.
    pub(crate) fn request(&self, method: &str, path: &str) -> ureq::Request {
        let r = self
            .agent
            .request(method, &format!("{}{path}", self.conn.hub))
            .set("Accept", "application/json, application/problem+json");
        match &self.conn.token {
            Some(t) => r.set("Authorization", &format!("Bearer {t}")),
            None => r,
        }
    }

    /// Sends `req` with an optional JSON body and turns a failure into a
    /// [`HubError`].
    pub(crate) fn call(
        &self,
        req: ureq::Request,
        body: Option<&impl Serialize>,
    ) -> Result<ureq::Response, HubError> {
        let sent = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        self.answer(sent)
    }

    /// Turns ureq's result into a response or a [`HubError`].
    pub(crate) fn answer(
        &self,
        sent: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, HubError> {
        match sent {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(status, resp)) => Err(self.status_error(status, resp)),
            Err(ureq::Error::Transport(t)) => Err(HubError::Transport {
                message: t.to_string(),
            }),
        }
    }

    fn status_error(&self, status: u16, resp: ureq::Response) -> HubError {
        let status_text = resp.status_text().to_string();
        let mut body = String::new();
        let _ = resp
            .into_reader()
            .take(self.limits.max_error_body)
            .read_to_string(&mut body);
        let detail = match serde_json::from_str::<Problem>(&body) {
            Ok(p) if !p.detail.trim().is_empty() => p.detail,
            Ok(p) => p.title,
            Err(_) => format!("the hub answered HTTP {status} {status_text}"),
        };
        HubError::Status {
            status,
            detail,
            body,
        }
    }

    /// Decodes a 2xx answer's JSON body.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        path: &str,
        resp: ureq::Response,
    ) -> Result<T, HubError> {
        resp.into_json().map_err(|e| HubError::Decode {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    /// `GET path?query` and decode.
    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, HubError> {
        let mut req = self.request("GET", path);
        for (k, v) in query {
            req = req.query(k, v);
        }
        let resp = self.call(req, None::<&()>)?;
        self.decode(path, resp)
    }

    /// `METHOD path` with a JSON body, and decode the answer.
    pub(crate) fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, HubError> {
        let resp = self.call(self.request(method, path), Some(body))?;
        self.decode(path, resp)
    }

    /// `POST path` with a JSON body that the hub may take long to answer
    /// (registration).
    pub(crate) fn send_slow<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, HubError> {
        let req = self.request("POST", path).timeout(self.limits.register);
        let resp = self.call(req, Some(body))?;
        self.decode(path, resp)
    }

    /// `DELETE path`, with an optional JSON body; expects no answer body.
    pub(crate) fn delete(&self, path: &str, body: Option<&impl Serialize>) -> Result<(), HubError> {
        self.call(self.request("DELETE", path), body).map(|_| ())
    }

    /// `GET path` of a file, to be streamed.
    pub(crate) fn download(&self, path: &str) -> Result<Download, HubError> {
        let req = self.request("GET", path).set(
            "Accept",
            "application/octet-stream, application/problem+json",
        );
        let resp = self.call(req, None::<&()>)?;
        let length = resp.header("Content-Length").and_then(|v| v.parse().ok());
        let sha256 = resp
            .header("x-flotilla-sha256")
            .map(|v| v.trim().to_ascii_lowercase());
        Ok(Download {
            body: resp.into_reader(),
            length,
            sha256,
        })
    }

    /// The [`CliError`] for a failed request: the exit code by status, and the
    /// hub's own words, with a hint where the client knows more than the hub.
    pub(crate) fn cli_error(&self, e: HubError) -> CliError {
        match e {
            HubError::Status { status, detail, .. } => {
                let code = match status {
                    401 | 403 => exit::DENIED,
                    404 => exit::NOT_FOUND,
                    409 => exit::CONFLICT,
                    410 => exit::NOT_FOUND,
                    408 | 429 => exit::UNAVAILABLE,
                    400..=499 => exit::USAGE,
                    _ => exit::UNAVAILABLE,
                };
                let message = if status == 401 && self.conn.token.is_none() {
                    format!(
                        "{detail} (no token for {}: pass --token, set FLOTILLA_TOKEN, \
                         or run `flotilla login --hub {} --token TOKEN`)",
                        self.conn.hub, self.conn.hub
                    )
                } else {
                    detail
                };
                CliError { code, message }
            }
            HubError::Transport { message } => CliError {
                code: exit::UNAVAILABLE,
                message: self.unreachable(&message),
            },
            HubError::Decode { path, message } => CliError {
                code: exit::UNAVAILABLE,
                message: format!(
                    "the hub at {} sent an answer to {path} this flotilla cannot read ({message}); \
                     is it a Flotilla hub of a matching version?",
                    self.conn.hub
                ),
            },
        }
    }

    fn unreachable(&self, why: &str) -> String {
        let hint = match &self.conn.hub_source {
            Source::Default => " Start one with `flotilla-hub serve --data-dir DIR`, or point at \
                                 yours with --hub URL, FLOTILLA_HUB, or `flotilla login --hub URL \
                                 --token TOKEN`."
                .to_string(),
            Source::Config(p) => format!(
                " The hub URL is {}; use --hub URL or FLOTILLA_HUB for another, or run \
                 `flotilla login --hub URL --token TOKEN`.",
                Source::Config(p.clone())
            ),
            Source::Flag => " Check --hub / FLOTILLA_HUB.".to_string(),
        };
        format!(
            "cannot reach the hub at {} ({}): {why}.{hint}",
            self.conn.hub, self.conn.hub_source
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(token: Option<&str>, source: Source) -> HubClient {
        HubClient::new(Connection {
            hub: "http://127.0.0.1:8440".into(),
            hub_source: source,
            token: token.map(str::to_string),
        })
    }

    fn status(status: u16) -> HubError {
        HubError::Status {
            status,
            detail: "the detail".into(),
            body: String::new(),
        }
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let c = client(Some("t"), Source::Flag);
        for (s, code) in [
            (401, exit::DENIED),
            (403, exit::DENIED),
            (404, exit::NOT_FOUND),
            (409, exit::CONFLICT),
            (400, exit::USAGE),
            (413, exit::USAGE),
            (415, exit::USAGE),
            (422, exit::USAGE),
            (500, exit::UNAVAILABLE),
            (503, exit::UNAVAILABLE),
        ] {
            let e = c.cli_error(status(s));
            assert_eq!(e.code, code, "HTTP {s}");
            assert_eq!(e.message, "the detail");
        }
    }

    #[test]
    fn unauthorised_without_a_token_says_how_to_give_one() {
        let e = client(None, Source::Default).cli_error(status(401));
        assert_eq!(e.code, exit::DENIED);
        assert!(e.message.contains("flotilla login"), "{}", e.message);
    }

    #[test]
    fn connection_errors_name_the_url_and_how_to_point_elsewhere() {
        let e = client(None, Source::Default).cli_error(HubError::Transport {
            message: "Connection refused".into(),
        });
        assert_eq!(e.code, exit::UNAVAILABLE);
        assert!(e.message.contains("http://127.0.0.1:8440"));
        assert!(e.message.contains("--hub"));
    }

    #[test]
    fn transport_errors_and_5xx_are_transient_but_4xx_are_not() {
        assert!(HubError::Transport {
            message: String::new()
        }
        .is_transient());
        assert!(status(503).is_transient());
        assert!(status(429).is_transient());
        assert!(!status(400).is_transient());
        assert!(!status(409).is_transient());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(segment("fraud-v2.1_x"), "fraud-v2.1_x");
        assert_eq!(segment("../a b/?"), "..%2Fa%20b%2F%3F");
    }
}
