//! The web dashboard's files, embedded in the binary (`assets/dashboard/`, built from
//! `dashboard/` by `scripts/dashboard-build.sh` and checked in, so `cargo build` needs no
//! Node.js). `GET /` is `index.html` (`no-cache`); `GET /assets/{file}` are files whose
//! names carry a hash of their content (`immutable`). Each file is gzip-compressed once, on
//! first use, and sent compressed to a browser that accepts it.
//!
//! The files hold no secret and are served without a credential (the page tells a browser
//! without a session how to log in); `Host` and `Origin` are checked as for the API. Every
//! answer carries a Content-Security-Policy of `default-src 'self'`: no inline script, no
//! other origin, and the page cannot be framed.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::io::Write;
use std::sync::LazyLock;

mod files {
    include!("../../assets/dashboard/files.rs");
}

/// The policy on every dashboard answer.
pub const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    name: &'static str,
    body: &'static [u8],
    gzip: Vec<u8>,
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    files::FILES
        .iter()
        .map(|(name, body)| Asset {
            name,
            body,
            gzip: gzip(body),
        })
        .collect()
});

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    // Writing into a Vec cannot fail.
    let _ = enc.write_all(body);
    enc.finish().unwrap_or_default()
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

fn serve(name: &str, headers: &HeaderMap, cache: &'static str) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return super::ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such dashboard file (the page may be older than the daemon: reload it)",
        )
        .into_response();
    };
    let gz = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let mut resp = if gz {
        let mut r = asset.gzip.clone().into_response();
        r.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        r
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.name)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /`: the page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers, "no-cache")
}

/// `GET /assets/{file}`: a script or style sheet, named by its content's hash.
pub async fn asset(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(
        &format!("assets/{file}"),
        &headers,
        "public, max-age=31536000, immutable",
    )
}

/// Whether `path` is one of the dashboard's (served without a credential).
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_named_for_its_content_and_index_links_them() {
        let index = files::FILES
            .iter()
            .find(|(n, _)| *n == "index.html")
            .expect("index.html is embedded");
        let html = std::str::from_utf8(index.1).unwrap();
        assert!(!html.contains("<script>"), "no inline script");
        for (name, _) in files::FILES.iter().filter(|(n, _)| *n != "index.html") {
            assert!(name.starts_with("assets/"), "{name}");
            assert!(
                html.contains(&format!("/{name}")),
                "index.html links {name}"
            );
        }
        let total: usize = ASSETS.iter().map(|a| a.gzip.len()).sum();
        assert!(
            total < 300 * 1024,
            "the dashboard is {total} bytes compressed"
        );
    }
}
