//! The metered groups' metrics (feature `metrics`): `tollgate_metered_settles_total` moves by
//! how each reservation of the LLM example was settled, and the `reserve` and `settle` calls
//! are timed. A process of its own (the recorder is global), calling the app without a
//! connection.
#![cfg(all(feature = "tower", feature = "metrics"))]

#[allow(dead_code)]
#[path = "../examples/llm_gateway.rs"]
mod example;

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::gateway::{Gateway, Policy};
use tollgate::{ManualClock, Options, Store};

/// The value of the sample of `name` carrying every label of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|lab| l.contains(lab)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn settles_are_counted_by_how_their_usage_was_known() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    let store =
        Store::open_in_memory(Options::default().clock(ManualClock::new(1_700_000_040_000)))
            .expect("store");
    let policy = Policy::load(example::LLM_POLICY).expect("policy");
    let gateway = Gateway::new(store, policy);
    let app = example::app(&gateway, example::upstream(example::Upstream::default()));
    for usage in ["900", "none"] {
        let req = Request::post("/v1/chat/completions")
            .header("authorization", "Bearer key_metrics")
            .header("x-max-tokens", "50")
            .header("x-mock-usage", usage)
            .body(Body::empty())
            .expect("request");
        let mut app = app.clone();
        let resp = tower::Service::call(&mut app, req).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body");
    }
    let text = handle.render();
    let settles = "tollgate_metered_settles_total";
    for usage in ["reported", "missing"] {
        let labels = [
            "group=\"chat\"",
            &format!("usage=\"{usage}\"") as &str,
            "result=\"ok\"",
        ];
        assert_eq!(
            sample(&text, settles, &labels),
            Some(1.0),
            "{usage}\n{text}"
        );
    }
    for op in ["reserve", "settle"] {
        let labels = [&format!("operation=\"{op}\"") as &str];
        let n = sample(&text, "tollgate_backend_call_seconds_count", &labels);
        assert_eq!(n, Some(2.0), "{op}\n{text}");
    }
}
