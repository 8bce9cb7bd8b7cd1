//! `[tracing]` end to end: a client's `traceparent` is kept (the trace goes on, this hop as the
//! parent upstream sees), one is started when there is none, and the proxy's spans reach a real
//! OTLP/HTTP receiver — a server decoding the protobuf with the official definitions
//! (`opentelemetry-proto`) — with the decision as attributes and the client's span as parent.
//! Sampling follows the client's flag, else `sample`; without `[tracing]` the proxy leaves
//! `traceparent` alone.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use support::*;

/// An OTLP/HTTP receiver: every span of every `POST /v1/traces` it decoded, with the resource's
/// `service.name`.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    content_types: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let content_types = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (spans.clone(), content_types.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (s, c) = (s.clone(), c.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (s, c) = (s.clone(), c.clone());
                        async move {
                            assert_eq!(req.uri().path(), "/v1/traces");
                            c.lock()
                                .unwrap()
                                .push(req.headers()["content-type"].to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            for rs in export.resource_spans {
                                let service = rs
                                    .resource
                                    .iter()
                                    .flat_map(|r| &r.attributes)
                                    .find(|kv| kv.key == "service.name")
                                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                                let Some(Any::StringValue(service)) = service else {
                                    panic!("no service.name")
                                };
                                for ss in rs.scope_spans {
                                    assert_eq!(ss.scope.unwrap().name, "switchyard");
                                    for span in ss.spans {
                                        s.lock().unwrap().push((service.clone(), span));
                                    }
                                }
                            }
                            Ok::<_, std::convert::Infallible>(http::Response::new(full("")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Collector {
            addr,
            spans,
            content_types,
        }
    }

    async fn spans(&self, n: usize) -> Vec<(String, Span)> {
        eventually(
            &format!("{n} span(s) at the collector"),
            Duration::from_secs(10),
            async || self.spans.lock().unwrap().len() >= n,
        )
        .await;
        self.spans.lock().unwrap().clone()
    }
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                Some(Any::StringValue(s)) => s,
                Some(Any::IntValue(i)) => i.to_string(),
                Some(Any::BoolValue(b)) => b.to_string(),
                Some(Any::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(up: &[(&str, SocketAddr)], tracing: &str) -> String {
    let pools: Vec<(&str, &[SocketAddr])> = up.iter().map(|(n, a)| (*n, std::slice::from_ref(a))).collect();
    config_of(&pools, tracing)
}

fn config_of(pools: &[(&str, &[SocketAddr])], tracing: &str) -> String {
    support::config(pools, tracing)
        .replace("split = { blue = 100 }", "split = { blue = 100 }\n[routes.mirror]\npool = \"green\"\npercent = 100\ncompare = false")
        .replacen("[listen]", "[identity]\nfrom = [\"header:x-user-id\"]\n[[flags]]\nname = \"dark\"\npercent = 100\n\n[listen]", 1)
}

#[tokio::test]
async fn spans_reach_an_otlp_receiver_with_the_decision_and_the_clients_trace_goes_on() {
    let collector = Collector::start().await;
    let blue = Recorder::start(ok_answer).await;
    let green = Recorder::start(ok_answer).await;
    let cfg = config(
        &[("blue", blue.addr), ("green", green.addr)],
        &format!(
            "[tracing]\notlp = \"http://{}\"\nsample = 0.0\nservice_name = \"shop-edge\"\n",
            collector.addr
        ),
    );
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();

    // A sampled client trace: kept, this hop its child.
    let req = Request::get(proxy.url("/a?q=1"))
        .header("x-user-id", "u1")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=x")
        .body(empty())
        .unwrap();
    assert_eq!(send(&client, req).await.0.status, 200);
    let spans = collector.spans(1).await;
    let (service, span) = &spans[0];
    assert_eq!(service, "shop-edge");
    assert_eq!(hex(&span.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&span.parent_span_id), CLIENT_SPAN);
    assert_eq!(span.kind, 2, "SERVER");
    assert_eq!(span.name, "GET blue");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0);
    let a = attributes(span);
    assert_eq!(a["switchyard.route"], "blue", "{a:?}");
    assert_eq!(a["switchyard.pool"], "blue");
    assert_eq!(a["switchyard.why"], "split");
    assert_eq!(a["switchyard.flags"], "dark=on");
    assert_eq!(a["switchyard.mirror.pool"], "green");
    assert!(a["switchyard.bucket"].starts_with("0."), "{a:?}");
    assert_eq!(a["http.request.method"], "GET");
    assert_eq!(a["url.path"], "/a");
    assert_eq!(a["http.response.status_code"], "200");
    assert_eq!(a["server.address"], blue.addr.to_string());
    assert_eq!(a["client.address"], "127.0.0.1");
    assert!(
        span.status.as_ref().is_none_or(|s| s.code == 0),
        "{:?}",
        span.status
    );
    assert_eq!(
        collector.content_types.lock().unwrap()[0],
        "application/x-protobuf"
    );
    // The upstream saw this hop's span as its parent, in the client's trace; tracestate as sent.
    let got = blue.requests.lock().unwrap()[0].clone();
    let tp = got.get("traceparent").unwrap();
    assert_eq!(tp, format!("00-{CLIENT_TRACE}-{}-01", hex(&span.span_id)));
    assert_eq!(
        got.all("traceparent").len(),
        1,
        "the client's is replaced, not added to"
    );
    assert_eq!(got.get("tracestate"), Some("vendor=x"));
    // So did the shadow, marked as a copy.
    eventually("the shadow's copy", Duration::from_secs(5), async || {
        !green.requests.lock().unwrap().is_empty()
    })
    .await;
    let copy = green.requests.lock().unwrap()[0].clone();
    assert_eq!(copy.get("traceparent"), Some(tp));
    assert_eq!(copy.get("x-switchyard-mirror"), Some("1"));

    // An unsampled client trace: kept and passed on unsampled; nothing exported.
    let req = Request::get(proxy.url("/b"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))
        .body(empty())
        .unwrap();
    send(&client, req).await;
    let sent = blue.requests.lock().unwrap()[1]
        .get("traceparent")
        .unwrap()
        .to_owned();
    assert!(
        sent.starts_with(&format!("00-{CLIENT_TRACE}-")) && sent.ends_with("-00"),
        "{sent}"
    );

    // No traceparent (or a malformed one): a trace starts here, at `sample` (0 here: not recorded).
    for tp in [None, Some("00-zz-nonsense-01")] {
        let mut req = Request::get(proxy.url("/c"));
        if let Some(tp) = tp {
            req = req.header("traceparent", tp);
        }
        send(&client, req.body(empty()).unwrap()).await;
        let sent = blue
            .requests
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .get("traceparent")
            .unwrap()
            .to_owned();
        assert!(
            !sent.contains(CLIENT_TRACE) && sent.ends_with("-00") && sent.len() == 55,
            "{sent}"
        );
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        collector.spans.lock().unwrap().len(),
        1,
        "unsampled spans are not exported"
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_trace_started_here_is_recorded_at_the_sample_rate_and_failures_are_errors() {
    let collector = Collector::start().await;
    let blue = Upstream::start("blue").await;
    let dead = dead_port().await;
    let cfg = support::config(
        &[("blue", &[blue.addr]), ("dead", &[dead])],
        &format!(
            "[tracing]\notlp = \"http://{}/\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[context]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
            collector.addr
        ),
    );
    let proxy = Proxy::start(&cfg).await;
    let client = h1_client();
    let req = Request::get(proxy.url("/dead"))
        .header("x-forwarded-for", "198.51.100.7")
        .body(empty())
        .unwrap();
    let (parts, _) = send(&client, req).await;
    assert_eq!(parts.status, 502);
    let (_, span) = collector.spans(1).await.remove(0);
    assert!(span.parent_span_id.is_empty(), "a root");
    assert_eq!(span.name, "GET dead");
    let status = span.status.clone().unwrap();
    assert_eq!(status.code, 2, "STATUS_CODE_ERROR");
    assert_eq!(status.message, "upstream_connect");
    let a = attributes(&span);
    assert_eq!(a["http.response.status_code"], "502");
    assert_eq!(a["error.type"], "upstream_connect");
    assert_eq!(a["server.address"], dead.to_string());
    // The client a trusted proxy names, and the connection's peer.
    assert_eq!(a["client.address"], "198.51.100.7");
    assert_eq!(a["network.peer.address"], "127.0.0.1");
    assert_eq!(collector.spans.lock().unwrap().len(), 1);
    // The spans' count in the metrics.
    eventually("the exported count", Duration::from_secs(5), async || {
        let (_, body) = get(&client, &proxy.admin_url("/metrics")).await;
        String::from_utf8_lossy(&body).contains("switchyard_trace_spans_total{result=\"exported\"} 1")
    })
    .await;
    proxy.shutdown().await;
}

#[tokio::test]
async fn without_tracing_the_traceparent_passes_untouched() {
    let blue = Recorder::start(ok_answer).await;
    let proxy = Proxy::start(&support::config(&[("blue", &[blue.addr])], "")).await;
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let req = Request::get(proxy.url("/"))
        .header("traceparent", &tp)
        .body(empty())
        .unwrap();
    send(&h1_client(), req).await;
    assert_eq!(
        blue.requests.lock().unwrap()[0].get("traceparent"),
        Some(tp.as_str())
    );
    let req = Request::get(proxy.url("/")).body(empty()).unwrap();
    send(&h1_client(), req).await;
    assert_eq!(blue.requests.lock().unwrap()[1].get("traceparent"), None);
    proxy.shutdown().await;
}

#[test]
fn check_shows_tracing_and_refuses_what_run_could_not_use() {
    let run = |extra: &str| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(
            &mut f,
            support::config(&[("blue", &["127.0.0.1:9".parse().unwrap()])], extra).as_bytes(),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["check", "-c"])
            .arg(f.path())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = run("[tracing]\notlp = \"http://otel:4318\"\nsample = 0.05\n");
    assert!(ok, "{said}");
    assert!(
        said.contains("tracing: traceparent kept or started; spans of 5% of the traces started here"),
        "{said}"
    );
    let (ok, said) = run("[tracing]\notlp = \"ftp://otel\"\nsample = 2\nservice_name = \"\"\n");
    assert!(!ok);
    for key in ["tracing.otlp", "tracing.sample", "tracing.service_name"] {
        assert!(said.contains(key), "{key}: {said}");
    }
}

/// `[tracing]` follows a reload: sampling from nothing to everything, then tracing taken out
/// (the client's `traceparent` passes untouched again).
#[tokio::test]
async fn tracing_follows_a_reload() {
    let collector = Collector::start().await;
    let blue = Recorder::start(ok_answer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    let with = |sample: &str| {
        support::config(
            &[("blue", &[blue.addr])],
            &format!(
                "[tracing]\notlp = \"http://{}\"\nsample = {sample}\n",
                collector.addr
            ),
        )
    };
    std::fs::write(&path, with("0.0")).unwrap();
    let proxy = Proxy::start_file(&path).await;
    let client = h1_client();
    get(&client, &proxy.url("/")).await;
    std::fs::write(&path, with("1.0")).unwrap();
    eventually("the reload", Duration::from_secs(10), async || {
        proxy
            .state
            .snapshot
            .load()
            .tracing
            .as_ref()
            .is_some_and(|t| t.sample == 1.0)
    })
    .await;
    get(&client, &proxy.url("/")).await;
    let spans = collector.spans(1).await;
    assert_eq!(spans.len(), 1, "only the request after the reload is recorded");
    std::fs::write(&path, support::config(&[("blue", &[blue.addr])], "")).unwrap();
    eventually("the reload", Duration::from_secs(10), async || {
        proxy.state.snapshot.load().tracing.is_none()
    })
    .await;
    let tp = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let req = Request::get(proxy.url("/"))
        .header("traceparent", &tp)
        .body(empty())
        .unwrap();
    send(&client, req).await;
    assert_eq!(
        blue.requests.lock().unwrap().last().unwrap().get("traceparent"),
        Some(tp.as_str())
    );
    proxy.shutdown().await;
}
