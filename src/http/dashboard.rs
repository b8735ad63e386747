//! The dashboard: a page and its scripts, compiled into the binary (it works offline and needs no
//! build step), that draws what the JSON routes and /metrics already say. It holds no data and no
//! secret of its own: the admin token is typed into the page and kept in its memory only.
use super::ApiError;
use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};

/// Scripts, styles and images from this origin only, no inline code, no frames, no forms posting
/// elsewhere: a script injected into the page through data could neither run nor send anything.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

const ASSETS: [(&str, &str, &str); 4] = [
    ("index.html", "text/html; charset=utf-8", include_str!("dashboard/index.html")),
    ("app.css", "text/css; charset=utf-8", include_str!("dashboard/app.css")),
    ("charts.js", "text/javascript; charset=utf-8", include_str!("dashboard/charts.js")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("dashboard/app.js")),
];

pub async fn root() -> Redirect {
    Redirect::to("/dashboard/")
}

pub async fn index() -> Response {
    asset_response("index.html").unwrap_or_else(|e| e.into_response())
}

pub async fn asset(Path(file): Path<String>) -> Response {
    asset_response(&file).unwrap_or_else(|e| e.into_response())
}

/// For working on the page: read the same files from this folder at each request instead of the
/// copies compiled in, so an edit shows on reload without a rebuild.
const DEV_DIR_ENV: &str = "FLOWSCORE_DASHBOARD_DEV_DIR";

fn asset_response(file: &str) -> Result<Response, ApiError> {
    let (name, content_type, body) = ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .ok_or_else(|| ApiError::NotFound(format!("no dashboard file {file}")))?;
    let body: std::borrow::Cow<'static, str> = match std::env::var_os(DEV_DIR_ENV) {
        Some(dir) => std::fs::read_to_string(std::path::Path::new(&dir).join(name))
            .map_err(|e| ApiError::NotFound(format!("{DEV_DIR_ENV}: cannot read {name}: {e}")))?
            .into(),
        None => (*body).into(),
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // The assets change with the binary; a restarted server must not serve a stale page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    Ok((headers, body).into_response())
}
