//! `GET /`: the web page — one HTML file with its script and style inline (no build step, no
//! CDN), which drives the jobs API: type a prompt, watch the steps, see and download the
//! images, and keep the session's history.

use axum::response::Html;

pub async fn index() -> Html<&'static str> {
    Html(include_str!("page.html"))
}
