//! A closed-loop HTTP/1.1 load generator that tells admitted requests from refused ones, which
//! wrk cannot: N connections each send one request after another (reconnecting when the server
//! closes), and only the 200s count as goodput; their latency percentiles are reported apart from
//! the 503s'. bench/overload_bench.sh drives it.
//!
//! Usage: cargo bench --bench load -- --url http://127.0.0.1:8080/log_prob --body FILE
//!        [--content-type application/json] [--rows 64] [--concurrency 8,32,128] [--seconds 15]
//!        [--warmup 2] [--method POST|GET] (GET sends no body; --body is then optional)
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
    path: String,
    body: Bytes,
    content_type: String,
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
    let body = match get("--body") {
        Some(file) => std::fs::read(&file).unwrap_or_else(|e| fail(&format!("{file}: {e}"))),
        None if method == "GET" => Vec::new(),
        None => fail("--body is required for POST"),
    };
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
        path,
        body: Bytes::from(body),
        content_type: get("--content-type").unwrap_or_else(|| "application/json".into()),
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
async fn client(args: Arc<Args>, start: Instant, end: Instant, tally: Arc<Mutex<Tally>>) {
    let mut local = Tally::default();
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
        let builder =
            if args.get { hyper::Request::get(args.path.as_str()) } else { hyper::Request::post(args.path.as_str()) };
        let request = builder
            .header("host", args.host.as_str())
            .header("content-type", args.content_type.as_str())
            .body(Full::new(args.body.clone()));
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
            let tasks: Vec<_> = (0..c).map(|_| tokio::spawn(client(args.clone(), start, end, tally.clone()))).collect();
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
