//! The live change stream (`GET /s/changes/{tenant}/live`, server-sent events) on workerd:
//! a client that disconnects and comes back with `Last-Event-ID` sees every committed change
//! of its tenant exactly once and in order, and nothing of a tenant on the same shard; the
//! lag from commit to client is measured.

use crate::scenarios::expect;
use crate::sharded::neighbour;
use crate::target::{Http, Target};
use serde_json::{Value, json};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One server-sent event as received.
#[derive(Debug, Clone)]
struct Event {
    id: String,
    kind: String,
    data: String,
    /// Unix milliseconds when it arrived.
    arrived_ms: f64,
}

fn unix_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// An open event stream: the response head read, then chunks decoded as they come.
struct Sse {
    reader: BufReader<TcpStream>,
    chunked: bool,
    text: String,
    ended: bool,
}

impl Sse {
    fn open(host: &str, path: &str, last_event_id: Option<&str>) -> io::Result<Self> {
        let stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nConnection: close\r\n");
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        (&stream).write_all(head.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        assert!(status.contains(" 200 "), "live stream: {status}");
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
            if lower.starts_with("content-type:") {
                assert!(lower.contains("text/event-stream"), "{line}");
            }
        }
        Ok(Self { reader, chunked, text: String::new(), ended: false })
    }

    /// Reads more bytes into `text`; false at the end of the response.
    fn fill(&mut self) -> io::Result<bool> {
        if self.ended {
            return Ok(false);
        }
        if self.chunked {
            let mut size = String::new();
            if self.reader.read_line(&mut size)? == 0 {
                self.ended = true;
                return Ok(false);
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {size:?}: {e}")))?;
            if n == 0 {
                self.ended = true;
                return Ok(false);
            }
            let mut chunk = vec![0; n + 2];
            self.reader.read_exact(&mut chunk)?;
            chunk.truncate(n);
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        } else {
            let mut buf = [0u8; 4096];
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                self.ended = true;
                return Ok(false);
            }
            self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(true)
    }

    /// The next event (comments skipped), or `None` at the end of the response.
    fn next(&mut self) -> io::Result<Option<Event>> {
        loop {
            while let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut e =
                    Event { id: String::new(), kind: String::new(), data: String::new(), arrived_ms: unix_ms() };
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        e.id = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        e.kind = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data.push_str(v);
                    }
                }
                if !e.kind.is_empty() {
                    return Ok(Some(e));
                }
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
#[ignore = "needs the app on workerd: run by examples/worker-app/e2e.sh"]
fn stream_live() {
    const N: usize = 40;
    let t = Http::required();
    let a = t.tenant("live_a");
    let b = neighbour(&t, &a, "live_b");
    let host = t.host.clone();
    let path = format!("/s/changes/{a}/live?for_ms=5000");
    let received: Arc<Mutex<Vec<Event>>> = Arc::default();
    let connected = Arc::new(AtomicBool::new(false));
    let reader = {
        let (received, connected, a) = (Arc::clone(&received), Arc::clone(&connected), a.clone());
        std::thread::spawn(move || -> Result<usize, String> {
            let mut last: Option<String> = None;
            let mut connections = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while received.lock().unwrap().len() < N {
                assert!(Instant::now() < deadline, "the stream did not deliver {N} events in 60 s");
                let mut sse = Sse::open(&host, &path, last.as_deref()).map_err(|e| e.to_string())?;
                connections += 1;
                connected.store(true, Ordering::SeqCst);
                let mut this_time = 0;
                while let Some(e) = sse.next().map_err(|e| e.to_string())? {
                    assert_eq!(e.kind, "change", "{e:?}");
                    let data: Value = serde_json::from_str(&e.data).map_err(|x| format!("{x}: {}", e.data))?;
                    let doc = if data["after"].is_null() { &data["before"] } else { &data["after"] };
                    assert_eq!(doc["tenant"], a.as_str(), "another tenant's event reached the stream: {data}");
                    last = Some(e.id.clone());
                    received.lock().unwrap().push(e);
                    this_time += 1;
                    // The first connection hangs up early: the client comes back after it.
                    if connections == 1 && this_time == 12 {
                        break;
                    }
                }
            }
            Ok(connections)
        })
    };
    while !connected.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Writes of both tenants, paced: A's ids in order, B's between them.
    let mut want = Vec::new();
    for i in 0..N {
        for tenant in [&a, &b] {
            let doc = json!({ "id": format!("{tenant}-{i}"), "tenant": tenant, "status": "open", "score": i, "title": "live" });
            expect(t.call("POST", "/s/tickets", Some(doc.to_string().as_bytes())), 201);
        }
        want.push(format!("{a}-{i}"));
        std::thread::sleep(Duration::from_millis(25));
    }
    let connections = reader.join().expect("the reader thread").expect("the stream");
    let got = received.lock().unwrap().clone();
    let ids: Vec<String> = got
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["id"]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, want, "every committed change once, in order, across {connections} connections");
    assert!(connections >= 2, "the client reconnected");
    let mut lags: Vec<f64> = got
        .iter()
        .map(|e| {
            let at = serde_json::from_str::<Value>(&e.data).unwrap()["at"].as_f64().unwrap();
            (e.arrived_ms - at).max(0.0)
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    let (p50, p99) = (percentile(&lags, 0.5), percentile(&lags, 0.99));
    println!(
        "change stream lag, commit to client: p50 {p50:.1} ms, p99 {p99:.1} ms over {} events ({connections} connections)",
        lags.len()
    );
    assert!(p99 < 5000.0, "lag p99 {p99} ms");
}
