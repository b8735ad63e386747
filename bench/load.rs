//! A closed-loop HTTP/1.1 load generator that tells admitted requests from refused ones, which
//! wrk cannot: N connections each send one request after another (reconnecting when the server
//! closes), and only the 200s count as goodput; their latency percentiles are reported apart from
//! the 503s'. bench/overload_bench.sh drives it.
//!
//! Usage: cargo bench --bench load -- --url http://127.0.0.1:8080/log_prob --body FILE
//!        [--content-type application/json] [--rows 64] [--concurrency 8,32,128] [--seconds 15]
//!        [--warmup 2] [--method POST|GET] (GET sends no body; --body is then optional)
//!        [--header 'name: value'] (one extra request header)
//!        [--targets FILE] (lines `PATH BODY_FILE`: each request takes the next target in turn,
//!        each connection starting at its own offset, spreading load uniformly over them; the
//!        --url's path and --body are then ignored)
//! Prints one line per concurrency:
//!   load concurrency=.. seconds=.. ok=.. refused=.. other=.. errors=.. ok_rows_per_s=..
//!     ok_p50_ms=.. ok_p99_ms=.. refused_p99_ms=..
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Args {
    get: bool,
    host: String,
    /// (path, body) pairs; a connection cycles through them.
    targets: Vec<(String, Bytes)>,
    content_type: String,
    /// One extra header, e.g. `inference-header-content-length: 123`.
    header: Option<(String, String)>,
    rows: f64,
    concurrency: Vec<usize>,
    seconds: f64,
    warmup: f64,
}

fn fail(msg: &str) -> ! {
    eprintln!("load: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| argv.iter().position(|a| a == name).and_then(|i| argv.get(i + 1)).cloned();
    let url = get("--url").unwrap_or_else(|| fail("--url is required"));
    let rest = url.strip_prefix("http://").unwrap_or_else(|| fail("--url must start with http://"));
    let (host, path) =
        rest.split_once('/').map_or((rest.to_string(), "/".to_string()), |(h, p)| (h.into(), format!("/{p}")));
    let method = get("--method").unwrap_or_else(|| "POST".into());
    let read = |file: &str| std::fs::read(file).unwrap_or_else(|e| fail(&format!("{file}: {e}")));
    let targets: Vec<(String, Bytes)> = match get("--targets") {
        Some(list) => String::from_utf8_lossy(&read(&list))
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| match l.split_once(' ') {
                Some((p, f)) => (p.to_string(), Bytes::from(read(f.trim()))),
                None => fail("--targets lines are `PATH BODY_FILE`"),
            })
            .collect(),
        None => {
            let body = match get("--body") {
                Some(file) => read(&file),
                None if method == "GET" => Vec::new(),
                None => fail("--body is required for POST"),
            };
            vec![(path, Bytes::from(body))]
        }
    };
    if targets.is_empty() {
        fail("--targets lists no target");
    }
    let number = |name: &str, default: f64| {
        get(name).map_or(default, |v| v.parse().unwrap_or_else(|_| fail(&format!("{name} needs a number"))))
    };
    let concurrency = get("--concurrency")
        .unwrap_or_else(|| "8".into())
        .split(',')
        .map(|c| c.parse().unwrap_or_else(|_| fail("--concurrency takes a comma list of numbers")))
        .collect();
    Args {
        get: method == "GET",
        host,
        targets,
        content_type: get("--content-type").unwrap_or_else(|| "application/json".into()),
        header: get("--header").map(|h| match h.split_once(':') {
            Some((k, v)) => (k.trim().to_string(), v.trim().to_string()),
            None => fail("--header takes `name: value`"),
        }),
        rows: number("--rows", 1.0),
        concurrency,
        seconds: number("--seconds", 15.0),
        warmup: number("--warmup", 2.0),
    }
}

#[derive(Default)]
struct Tally {
    ok: Vec<f64>,
    refused: Vec<f64>,
    other: usize,
    errors: usize,
}

/// One connection's loop until `end`; counts what completes inside [start, end).
async fn client(args: Arc<Args>, id: usize, start: Instant, end: Instant, tally: Arc<Mutex<Tally>>) {
    let mut local = Tally::default();
    let mut turn = id * 7919;
    let mut sender: Option<http1::SendRequest<Full<Bytes>>> = None;
    while Instant::now() < end {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            sender = match connect(&args.host).await {
                Ok(s) => Some(s),
                Err(_) => {
                    local.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
        }
        let Some(s) = sender.as_mut() else { continue };
        let (path, body) = &args.targets[turn % args.targets.len()];
        turn += 1;
        let builder = if args.get { hyper::Request::get(path.as_str()) } else { hyper::Request::post(path.as_str()) };
        let mut builder = builder.header("host", args.host.as_str()).header("content-type", args.content_type.as_str());
        if let Some((k, v)) = &args.header {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder.body(Full::new(body.clone()));
        let Ok(request) = request else { fail("cannot build the request") };
        let sent = Instant::now();
        let outcome = async {
            s.ready().await?;
            let response = s.send_request(request).await?;
            let status = response.status().as_u16();
            let close =
                response.headers().get("connection").is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, close))
        }
        .await;
        let done = Instant::now();
        // Completions inside the window count, whenever they were sent: with seconds of queueing,
        // counting only requests sent inside the window would undercount the rate.
        let counted = done >= start && done < end;
        match outcome {
            Ok((status, close)) => {
                if counted {
                    let ms = (done - sent).as_secs_f64() * 1e3;
                    match status {
                        200 => local.ok.push(ms),
                        503 => local.refused.push(ms),
                        _ => local.other += 1,
                    }
                }
                if close {
                    sender = None;
                }
            }
            Err(_) => {
                if counted {
                    local.errors += 1;
                }
                sender = None;
            }
        }
    }
    let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
    t.ok.extend(local.ok);
    t.refused.extend(local.refused);
    t.other += local.other;
    t.errors += local.errors;
}

async fn connect(host: &str) -> Result<http1::SendRequest<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let args = Arc::new(parse_args());
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| fail(&e.to_string()));
    for &c in &args.concurrency {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let start = Instant::now() + Duration::from_secs_f64(args.warmup);
        let end = start + Duration::from_secs_f64(args.seconds);
        runtime.block_on(async {
            let tasks: Vec<_> =
                (0..c).map(|i| tokio::spawn(client(args.clone(), i, start, end, tally.clone()))).collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t.ok.sort_by(f64::total_cmp);
        t.refused.sort_by(f64::total_cmp);
        println!(
            "load concurrency={c} seconds={} ok={} refused={} other={} errors={} ok_rows_per_s={:.1} ok_p50_ms={:.1} ok_p99_ms={:.1} refused_p99_ms={:.1}",
            args.seconds,
            t.ok.len(),
            t.refused.len(),
            t.other,
            t.errors,
            t.ok.len() as f64 * args.rows / args.seconds,
            percentile(&t.ok, 50.0),
            percentile(&t.ok, 99.0),
            percentile(&t.refused, 99.0),
        );
    }
}
