//! The partner dashboard and finance console, served beside the control API on `:8090`.
//!
//! No JavaScript build chain: the pages are plain HTML, CSS and one script, compiled into the
//! binary; charts come from Chart.js (MIT), vendored unmodified from the npm registry (version
//! in the file name, licence beside it). Everything the pages show comes from the control API
//! with the session cookie, so the server decides what a session may read; nothing here holds
//! data.
//!
//! Every page is the same shell (`app.html`); the script routes by path (`/app/keys`, …), so
//! each page has its own address to bookmark, share or screenshot.

use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, StatusCode};

const SHELL: &str = include_str!("../assets/app.html");

/// The static assets: (name, content type, bytes). Names carry a version where the content is
/// cached for long.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/app.css"),
    ),
    (
        "chart-4.6.1.umd.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/vendor/chart-4.6.1.umd.min.js"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
    ),
];

/// What a browser may do with these pages: only this origin's scripts, styles and API; no
/// framing; no referrer (links carry nothing out).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

fn secured(mut r: Response) -> Response {
    let h = r.headers_mut();
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
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn shell() -> Response {
    let mut r =
        secured(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], SHELL).into_response());
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn asset(Path(name): Path<String>) -> Response {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return secured((StatusCode::NOT_FOUND, "no such asset").into_response());
    };
    // Vendored files are versioned by name; ours change with the binary, so revalidate.
    let cache = if name.starts_with("chart-") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    secured(
        (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, cache),
            ],
            *bytes,
        )
            .into_response(),
    )
}

/// The dashboard's routes, to merge into the control API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/app") }))
        .route("/sign-in", get(shell))
        .route("/app", get(shell))
        .route("/app/{*page}", get(shell))
        .route("/assets/{name}", get(asset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        router::<()>()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn pages_and_assets_are_served_with_a_strict_policy() {
        for path in ["/sign-in", "/app", "/app/keys", "/app/apis/maps/v1"] {
            let r = get(path).await;
            assert_eq!(r.status(), 200, "{path}");
            assert!(r.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'"));
        }
        for (name, content_type, _) in ASSETS {
            let r = get(&format!("/assets/{name}")).await;
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(r.headers()["content-type"], *content_type);
        }
        assert_eq!(get("/assets/../Cargo.toml").await.status(), 404);
        assert_eq!(get("/assets/nothing.js").await.status(), 404);
        assert_eq!(get("/").await.status(), 303);
    }

    /// Every asset the shell links to exists, and the shell loads no script from elsewhere.
    #[test]
    fn the_shell_links_only_to_served_assets() {
        for part in SHELL.split("/assets/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == name),
                "app.html links to /assets/{name}, which is not served"
            );
        }
        assert!(!SHELL.contains("http://") && !SHELL.contains("https://"));
    }
}
