//! Test helpers: an upstream that answers with its name and can be told (by path) to echo,
//! sleep, fail, stream or count; a proxy started in-process on ephemeral ports; clients.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed()
}

/// A body of `total` bytes sent in 64 KiB chunks, generated as it is read.
pub fn generated(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(chunk.len() as u64);
            Some((
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(chunk.slice(..n as usize))),
                left - n,
            ))
        }
    });
    StreamBody::new(stream).boxed()
}

/// What a test upstream saw.
#[derive(Default)]
pub struct Seen {
    pub hits: AtomicUsize,
    pub connections: AtomicUsize,
    pub paths: Mutex<Vec<String>>,
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Answer 500 to every Nth request of the default path (0: never).
    pub fail_every: AtomicUsize,
    /// Delay every answer of the default path by this many milliseconds.
    pub delay_ms: AtomicUsize,
    /// `/healthz` answers 503 while set.
    pub unhealthy: std::sync::atomic::AtomicBool,
}

/// A loopback upstream. Paths:
/// - `/echo` (or any path ending in it): the request headers as JSON (`{"name": ["v1", ...]}`), and `x-upstream: NAME`
/// - `/sleep/MS`: answers after MS milliseconds
/// - `/status/CODE` (after any prefix): answers with that status
/// - `/download/N`: N bytes, streamed
/// - `/upload`: reads the body, answers with its length (and trailers it got, as JSON)
/// - `/stream-echo`: answers at once, streaming the request body back as it arrives
/// - `/trailers`: a chunked body followed by the trailer `x-checksum: abc123`
/// - `/hop`: answers with hop-by-hop headers that must not reach the client
/// - anything else: the upstream's name
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    pub seen: Arc<Seen>,
    stop: Option<oneshot::Sender<()>>,
    killed: tokio::sync::watch::Sender<bool>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_on(name, TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(name: &'static str, listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let (stop, mut stopped) = oneshot::channel();
        let (killed, kill_rx) = tokio::sync::watch::channel(false);
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                let mut kill_rx = kill_rx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(answer(name, &s, req).await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill_rx.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Upstream {
            addr,
            name,
            seen,
            stop: Some(stop),
            killed,
        }
    }

    pub fn hits(&self) -> usize {
        self.seen.hits.load(Ordering::SeqCst)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Stops listening and drops every open connection, as a crashed server would.
    pub fn kill(&mut self) {
        self.stop();
        let _ = self.killed.send(true);
    }
}

async fn answer(name: &'static str, seen: &Seen, req: Request<Incoming>) -> Response<Body> {
    seen.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    seen.paths.lock().unwrap().push(path.clone());
    *seen.last_headers.lock().unwrap() = Some(req.headers().clone());
    let mut resp = if path.ends_with("/echo") {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in req.headers() {
            map.entry(k.to_string())
                .or_default()
                .push(v.to_str().unwrap_or("?").to_owned());
        }
        Response::new(full(serde_json::to_vec(&map).unwrap()))
    } else if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        Response::new(full(name))
    } else if let Some((_, code)) = path.split_once("/status/") {
        let mut r = Response::new(full(name));
        *r.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        r
    } else if let Some(n) = path.strip_prefix("/download/") {
        Response::new(generated(n.parse().unwrap()))
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut len = 0u64;
        let mut trailers = BTreeMap::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            if let Some(d) = frame.data_ref() {
                len += d.len() as u64;
            } else if let Some(t) = frame.trailers_ref() {
                for (k, v) in t {
                    trailers.insert(k.to_string(), v.to_str().unwrap().to_owned());
                }
            }
        }
        Response::new(full(
            serde_json::to_vec(&serde_json::json!({"len": len, "trailers": trailers})).unwrap(),
        ))
    } else if path == "/stream-echo" {
        // Answers at once and streams the request body back as it arrives.
        let body = req.into_body().map_err(|e| e.into()).boxed();
        let mut r = Response::new(body);
        r.headers_mut().insert("x-streamed", "1".parse().unwrap());
        r
    } else if path == "/trailers" {
        let frames = vec![
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(Bytes::from_static(b"part one;"))),
            Ok(Frame::data(Bytes::from_static(b"part two"))),
            Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc123".parse().unwrap());
                t
            })),
        ];
        let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
        r.headers_mut().insert("trailer", "x-checksum".parse().unwrap());
        r
    } else if path == "/hop" {
        let mut r = Response::new(full(name));
        let h = r.headers_mut();
        h.insert("connection", "x-resp-hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert("upgrade", "h2c".parse().unwrap());
        h.insert("x-end-to-end", "kept".parse().unwrap());
        r
    } else if path == "/healthz" {
        let mut r = Response::new(full(name));
        if seen.unhealthy.load(Ordering::SeqCst) {
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        r
    } else {
        let delay = seen.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        let every = seen.fail_every.load(Ordering::SeqCst);
        let mut r = Response::new(full(name));
        if every > 0 && seen.hits.load(Ordering::SeqCst).is_multiple_of(every) {
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        }
        r
    };
    resp.headers_mut().insert("x-upstream", name.parse().unwrap());
    resp
}

/// A WebSocket upstream that echoes every message.
pub async fn ws_upstream() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// A proxy running in this process.
pub struct Proxy {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub state: Arc<switchyard::runtime::state::State>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts the proxy on a config text (its `listen` addresses should use port 0).
    pub async fn start(config: &str) -> Proxy {
        Self::start_source(switchyard::Source::Text {
            text: config.to_owned(),
            name: "test.toml".into(),
        })
        .await
    }

    /// Starts the proxy on a config file, reloaded when it changes.
    pub async fn start_file(path: &Path) -> Proxy {
        Self::start_source(switchyard::Source::File(path.to_owned())).await
    }

    async fn start_source(source: switchyard::Source) -> Proxy {
        let app = switchyard::App::start(source)
            .await
            .unwrap_or_else(|e| panic!("the proxy did not start:\n{e}"));
        let (http, https, admin) = (app.http_addr(), app.https_addr(), app.admin_addr());
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            app.run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Proxy {
            http,
            https,
            admin,
            state,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin.expect("an admin listener"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http.expect("an http listener"))
    }

    /// Stops accepting, drains, and waits for the server to return.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.unwrap();
        }
    }
}

/// A config with one http listener on port 0 and a pool per `(name, endpoints)`, each routed
/// by a route of the same name on path prefix `/NAME` (the first pool also gets `/`).
pub fn config(pools: &[(&str, &[SocketAddr])], extra: &str) -> String {
    let mut s = String::from("[listen]\nhttp = \"127.0.0.1:0\"\n\n[log]\naccess = false\n\n");
    for (name, eps) in pools {
        let eps: Vec<String> = eps.iter().map(|a| format!("\"{a}\"")).collect();
        s.push_str(&format!("[pools.{name}]\nendpoints = [{}]\n\n", eps.join(", ")));
    }
    for (i, (name, _)) in pools.iter().enumerate() {
        let prefix = if i == 0 {
            "/".to_owned()
        } else {
            format!("/{name}")
        };
        s.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nsplit = {{ {name} = 100 }}\n\n"
        ));
    }
    s.push_str(extra);
    s
}

/// A pooled HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(connector())
}

/// A prior-knowledge HTTP/2 (h2c) client.
pub fn h2c_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector())
}

/// A connector that sends what it is given at once, as curl's and browsers' do (without
/// `TCP_NODELAY`, an HTTP/2 request's DATA waits for the ACK of its HEADERS: 40 ms a POST).
fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

/// Sends a request and reads the whole answer.
pub async fn send(
    client: &Client<HttpConnector, Body>,
    req: Request<Body>,
) -> (http::response::Parts, Bytes) {
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}

pub async fn get(client: &Client<HttpConnector, Body>, url: &str) -> (http::response::Parts, Bytes) {
    send(client, Request::get(url).body(empty()).unwrap()).await
}

/// Sends raw bytes on a new connection and reads until the server closes it or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(wait, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

/// A raw upstream: `serve` runs on every accepted connection. Returns the address and a count
/// of connections accepted.
pub async fn scripted<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s));
        }
    });
    (addr, count)
}

/// Reads one request head (up to the blank line); false at the end of the connection.
pub async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::io::AsyncReadExt::read(s, &mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return false,
        }
    }
    true
}

/// A port free at the time of asking (to put in a config before the server starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when this is dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on.
pub async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// The `switchyard` binary, running on a config file.
pub struct Running {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub config: tempfile::NamedTempFile,
}

impl Running {
    /// Starts the binary on a config whose http listener is `127.0.0.1:PORT` with a free port.
    pub fn start(config_text: &str) -> Running {
        Running::start_with(config_text, &[], std::process::Stdio::null())
    }

    /// [`Running::start`] with more arguments for `run`, and its stderr (the logs) sent to `logs`.
    pub fn start_with(config_text: &str, args: &[&str], logs: std::process::Stdio) -> Running {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let text = config_text.replace("http = \"127.0.0.1:0\"", &format!("http = \"127.0.0.1:{port}\""));
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["run", "--workers", "2", "-c"])
            .arg(f.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(logs)
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the proxy did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Running {
            child,
            addr,
            config: f,
        }
    }

    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned and still own.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request as a raw upstream parsed it from the bytes it received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Field names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Every value of a field.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }
}

/// A raw upstream that records every byte it receives and parses requests from them as a
/// typical server would (httparse, then `Content-Length` or chunked framing), answering each
/// with `answer(request)` (raw bytes). Sees through a proxy's framing: if the proxy smuggles,
/// this parses two requests where one was sent.
pub struct Recorder {
    pub addr: SocketAddr,
    pub bytes: Arc<Mutex<Vec<u8>>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

/// A plain `200 OK` answer with a short body.
pub fn ok_answer(_: &Recorded) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
}

impl Recorder {
    pub async fn start(answer: fn(&Recorded) -> Vec<u8>) -> Recorder {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (b, r) = (bytes.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (b, r) = (b.clone(), r.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        while let Some((req, used)) = parse_request(&buf) {
                            buf.drain(..used);
                            r.lock().unwrap().push(req.clone());
                            if s.write_all(&answer(&req)).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                b.lock().unwrap().extend_from_slice(&chunk[..n]);
                                buf.extend_from_slice(&chunk[..n]);
                            }
                        }
                    }
                });
            }
        });
        Recorder {
            addr,
            bytes,
            requests,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Everything received, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

/// One whole request at the start of `buf`, and how many bytes it took.
fn parse_request(buf: &[u8]) -> Option<(Recorded, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut fields);
    let httparse::Status::Complete(head) = req.parse(buf).ok()? else {
        return None;
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let value = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut at = head;
    let mut body = Vec::new();
    if value("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        loop {
            let (len, size) = match httparse::parse_chunk_size(&buf[at..]).ok()? {
                httparse::Status::Complete(c) => c,
                httparse::Status::Partial => return None,
            };
            at += len;
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let end = buf[at..].windows(2).position(|w| w == b"\r\n")?;
                    at += end + 2;
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            let size = size as usize;
            if buf.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    } else if let Some(n) = value("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
        if buf.len() < at + n {
            return None;
        }
        body.extend_from_slice(&buf[at..at + n]);
        at += n;
    }
    Some((
        Recorded {
            method: req.method?.to_owned(),
            path: req.path?.to_owned(),
            headers,
            body,
        },
        at,
    ))
}

/// Polls `check` every 20 ms until it holds, and says how long that took; fails the test with
/// `what` when it does not hold within `within`. The one way tests wait for something.
pub async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Starts Prometheus on `port`, scraping `targets` every second as job "fleet".
pub fn prometheus(port: u16, dir: &std::path::Path, targets: &[SocketAddr]) -> Killed {
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .unwrap();
    Killed(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the prometheus binary (apt-get install prometheus)"),
    )
}
