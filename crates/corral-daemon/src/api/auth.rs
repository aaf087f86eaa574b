//! Who may use the API. The API is a shell as the daemon's user (often root), so every
//! request passes, in order:
//!
//! 1. **`Host`** must name this daemon: its listen address (`127.0.0.1:7070`, `localhost:7070`
//!    on loopback, any IP literal with the port when listening on all addresses) or a name
//!    given with `--allow-host`. A DNS-rebinding page reaches us under its own name: refused.
//! 2. **`Origin`**, when a browser sends one, must be this daemon's own origin: another
//!    site's page cannot read from us, open a WebSocket, or act.
//! 3. **A credential**: `Authorization: Bearer <token>` (the CLI reads `<home>/token`), or
//!    the session cookie a one-time login link set (for the dashboard). Never a token in a
//!    URL. `--insecure-no-auth` skips this step only. A session is
//!    `<expiry>.<nonce>.<HMAC-SHA256 of both, keyed by the token>`: it needs no state, so a
//!    browser stays logged in across a daemon restart, and changing the token ends every
//!    session.
//! 4. **State changes are non-simple requests**: `POST`/`PUT`/`PATCH`/`DELETE` must carry
//!    `Authorization` or the `X-Corral-Client` header. A cross-site form or a `text/plain`
//!    POST can send neither, and we never answer the CORS preflight that would allow them.

use super::ApiError;
use axum::http::{header, HeaderMap, Method, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The session cookie set by a login link.
pub const SESSION_COOKIE: &str = "corral_session";
/// How long a login link can be used (once).
pub const LOGIN_LINK_TTL: Duration = Duration::from_secs(120);
/// How long a session cookie lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct Auth {
    /// `None` under `--insecure-no-auth`.
    token: Option<String>,
    /// The fleet's shared token, accepted besides `token` (`--fleet-token-file`).
    fleet_token: Option<String>,
    bound: SocketAddr,
    allow_hosts: Vec<String>,
    login_codes: Mutex<HashMap<String, Instant>>,
}

impl Auth {
    pub fn new(opts: &crate::ServeOpts, bound: SocketAddr) -> anyhow::Result<Auth> {
        let token = if opts.insecure_no_auth {
            tracing::warn!(
                "--insecure-no-auth: the API accepts requests with no token; anyone who can reach {bound} \
                 can run commands as this user"
            );
            None
        } else {
            match &opts.token {
                Some(t) => Some(t.clone()),
                None => Some(crate::home::load_or_create_token(&opts.home)?),
            }
        };
        Ok(Auth {
            token,
            fleet_token: opts.fleet_token.clone(),
            bound,
            allow_hosts: opts
                .allow_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            login_codes: Mutex::new(HashMap::new()),
        })
    }

    /// Checks a request; `Err` is the response to send instead.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        self.check_host_and_origin(headers)?;
        self.check_credential(method, headers)
    }

    /// Steps 1 and 2 alone: what a login link needs (it is the credential).
    pub fn check_host_and_origin(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.host_allowed(host) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "bad_host",
                format!(
                    "this daemon does not answer to the name `{}`; use {} (or start it with --allow-host NAME)",
                    host.escape_default(),
                    self.bound
                ),
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let ok = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
            if !ok {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "bad_origin",
                    "requests from another site's page are refused",
                ));
            }
        }
        Ok(())
    }

    fn check_credential(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if let Some(token) = &self.token {
            let matches = |t: &str| {
                bearer.is_some_and(|g| super::constant_time_eq(g.as_bytes(), t.as_bytes()))
            };
            let by_token = matches(token) || self.fleet_token.as_deref().is_some_and(matches);
            if !by_token && !self.has_session(headers) {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing or wrong token: send `Authorization: Bearer <token>`; the CLI reads the \
                     daemon's <home>/token by itself when run by the daemon's user (or set CORRAL_TOKEN \
                     or --token-file)",
                ));
            }
        }
        let changes_state = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
        let non_simple = bearer.is_some() || headers.contains_key(corral_client::CLIENT_HEADER);
        if changes_state && !non_simple {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "simple_request",
                format!(
                    "a request that changes state must carry `Authorization` or `{}`",
                    corral_client::CLIENT_HEADER
                ),
            ));
        }
        Ok(())
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self
            .allow_hosts
            .iter()
            .any(|h| *h == host || host.rsplit_once(':').is_some_and(|(name, _)| name == h))
        {
            return true;
        }
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        if port.parse::<u16>().ok() != Some(self.bound.port()) {
            return false;
        }
        let name = name.trim_start_matches('[').trim_end_matches(']');
        let ip = self.bound.ip();
        if ip.is_unspecified() {
            // Listening on every address: any address of this machine, by number.
            return name.parse::<std::net::IpAddr>().is_ok() || name == "localhost";
        }
        if ip.is_loopback() && (name == "localhost" || name == "127.0.0.1" || name == "::1") {
            return true;
        }
        name.parse::<std::net::IpAddr>().is_ok_and(|n| n == ip)
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let rest = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        rest.is_some_and(|h| !h.contains('/') && self.host_allowed(h))
    }

    fn has_session(&self, headers: &HeaderMap) -> bool {
        let now = crate::util::unix_now();
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(k, v)| k == SESSION_COOKIE && self.session_valid(v, now))
    }

    /// The MAC of a session's expiry and nonce; `None` without a token (no sessions then).
    fn session_mac(&self, expiry: u64, nonce: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, token.as_bytes());
        let tag = ring::hmac::sign(
            &key,
            format!("corral-session-v1:{expiry}:{nonce}").as_bytes(),
        );
        Some(tag.as_ref().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn session_valid(&self, cookie: &str, now: f64) -> bool {
        let mut parts = cookie.splitn(3, '.');
        let (Some(expiry), Some(nonce), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(expiry) = expiry.parse::<u64>() else {
            return false;
        };
        if (expiry as f64) <= now {
            return false;
        }
        self.session_mac(expiry, nonce)
            .is_some_and(|want| super::constant_time_eq(want.as_bytes(), mac.as_bytes()))
    }

    /// A new session cookie's value, valid for [`SESSION_TTL`].
    fn new_session(&self) -> Option<String> {
        let expiry = (crate::util::unix_now() as u64).saturating_add(SESSION_TTL.as_secs());
        let nonce = crate::home::random_token().ok()?;
        let mac = self.session_mac(expiry, &nonce)?;
        Some(format!("{expiry}.{nonce}.{mac}"))
    }

    /// A new one-time login code (for `/login/{code}`).
    pub fn new_login_code(&self) -> anyhow::Result<String> {
        let code = crate::home::random_token()?;
        let mut codes = self.login_codes.lock().unwrap_or_else(|e| e.into_inner());
        codes.retain(|_, at| at.elapsed() < LOGIN_LINK_TTL);
        codes.insert(code.clone(), Instant::now());
        Ok(code)
    }

    /// A one-time link that logs a browser in: `http://<bound>/login/<code>`.
    pub fn login_url(&self) -> anyhow::Result<String> {
        Ok(format!(
            "http://{}/login/{}",
            self.bound,
            self.new_login_code()?
        ))
    }

    /// Spends a login code; on success, a new session for the cookie.
    pub fn redeem(&self, code: &str) -> Option<String> {
        let at = self
            .login_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(code)?;
        if at.elapsed() >= LOGIN_LINK_TTL {
            return None;
        }
        match self.token {
            Some(_) => self.new_session(),
            // No credential is needed: the link only opens the dashboard.
            None => Some("none".into()),
        }
    }

    /// The address the daemon is reached at, for links it prints.
    pub fn bound(&self) -> SocketAddr {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(bound: &str, token: Option<&str>, allow: &[&str]) -> Auth {
        Auth {
            token: token.map(str::to_string),
            fleet_token: Some("the-fleet-token-of-the-tests".into()),
            bound: bound.parse().unwrap(),
            allow_hosts: allow.iter().map(|s| s.to_string()).collect(),
            login_codes: Mutex::new(HashMap::new()),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn code(r: Result<(), ApiError>) -> &'static str {
        match r {
            Ok(()) => "ok",
            Err(e) => e.code,
        }
    }

    #[test]
    fn host_origin_token_and_simple_requests() {
        let a = auth("127.0.0.1:7070", Some("sekrit-sekrit-sekrit"), &[]);
        let get = Method::GET;
        let post = Method::POST;
        let tok = ("authorization", "Bearer sekrit-sekrit-sekrit");
        type Case<'a> = (Method, Vec<(&'static str, &'a str)>, &'a str);
        let cases: Vec<Case> = vec![
            (get.clone(), vec![("host", "127.0.0.1:7070"), tok], "ok"),
            (get.clone(), vec![("host", "localhost:7070"), tok], "ok"),
            (get.clone(), vec![("host", "evil.example"), tok], "bad_host"),
            (
                get.clone(),
                vec![("host", "evil.example:7070"), tok],
                "bad_host",
            ),
            (
                get.clone(),
                vec![("host", "127.0.0.1:7071"), tok],
                "bad_host",
            ),
            (get.clone(), vec![tok], "bad_host"),
            (
                get.clone(),
                vec![
                    ("host", "127.0.0.1:7070"),
                    ("origin", "http://evil.example"),
                    tok,
                ],
                "bad_origin",
            ),
            (
                get.clone(),
                vec![("host", "127.0.0.1:7070"), ("origin", "null"), tok],
                "bad_origin",
            ),
            (
                get.clone(),
                vec![
                    ("host", "127.0.0.1:7070"),
                    ("origin", "http://127.0.0.1:7070"),
                    tok,
                ],
                "ok",
            ),
            (
                get.clone(),
                vec![("host", "127.0.0.1:7070")],
                "unauthorized",
            ),
            (
                get.clone(),
                vec![
                    ("host", "127.0.0.1:7070"),
                    ("authorization", "Bearer the-fleet-token-of-the-tests"),
                ],
                "ok",
            ),
            (
                get.clone(),
                vec![("host", "127.0.0.1:7070"), ("authorization", "Bearer nope")],
                "unauthorized",
            ),
            (post.clone(), vec![("host", "127.0.0.1:7070"), tok], "ok"),
        ];
        for (m, h, want) in cases {
            assert_eq!(code(a.check(&m, &headers(&h))), want, "{m} {h:?}");
        }
    }

    #[test]
    fn without_auth_a_state_change_still_needs_a_non_simple_header() {
        let a = auth("127.0.0.1:7070", None, &[]);
        let host = ("host", "127.0.0.1:7070");
        assert_eq!(code(a.check(&Method::GET, &headers(&[host]))), "ok");
        assert_eq!(
            code(a.check(&Method::POST, &headers(&[host]))),
            "simple_request"
        );
        assert_eq!(
            code(a.check(&Method::POST, &headers(&[host, ("x-corral-client", "x")]))),
            "ok"
        );
    }

    #[test]
    fn allowed_names_and_the_unspecified_address() {
        let a = auth("0.0.0.0:7070", None, &["gpu-01.lan"]);
        for (host, ok) in [
            ("10.0.0.5:7070", true),
            ("gpu-01.lan", true),
            ("gpu-01.lan:7070", true),
            ("GPU-01.LAN:7070", true),
            ("other.lan:7070", false),
            ("10.0.0.5:80", false),
        ] {
            assert_eq!(a.host_allowed(host), ok, "{host}");
        }
    }

    #[test]
    fn a_login_code_works_once_and_makes_a_session() {
        let a = auth("127.0.0.1:7070", Some("sekrit-sekrit-sekrit"), &[]);
        let c = a.new_login_code().unwrap();
        let session = a.redeem(&c).expect("first use");
        assert!(a.redeem(&c).is_none(), "a code works once");
        let cookie = format!("other=1; {SESSION_COOKIE}={session}");
        let h = headers(&[("host", "127.0.0.1:7070"), ("cookie", &cookie)]);
        assert_eq!(code(a.check(&Method::GET, &h)), "ok");
        // A state change by cookie must still be non-simple.
        assert_eq!(code(a.check(&Method::POST, &h)), "simple_request");
        // The session needs no state: a daemon with the same token takes it ...
        let again = auth("127.0.0.1:7070", Some("sekrit-sekrit-sekrit"), &[]);
        assert_eq!(code(again.check(&Method::GET, &h)), "ok");
        // ... another token, a changed cookie or an expired one does not.
        let other = auth("127.0.0.1:7070", Some("another-token-another"), &[]);
        assert_eq!(code(other.check(&Method::GET, &h)), "unauthorized");
        let (expiry, rest) = session.split_once('.').unwrap();
        let later = format!(
            "{SESSION_COOKIE}={}.{rest}",
            expiry.parse::<u64>().unwrap() + 1
        );
        let h = headers(&[("host", "127.0.0.1:7070"), ("cookie", &later)]);
        assert_eq!(code(a.check(&Method::GET, &h)), "unauthorized");
        let nonce = rest.split_once('.').unwrap().0;
        let mac = a.session_mac(1, nonce).unwrap();
        assert!(
            !a.session_valid(&format!("1.{nonce}.{mac}"), 2.0),
            "expired"
        );
        assert!(a.session_valid(&format!("1.{nonce}.{mac}"), 0.5));
    }
}
