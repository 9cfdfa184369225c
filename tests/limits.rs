//! Listener limits: header size (431), body size (413), stalled bodies (408), slowloris headers,
//! idle connections and the connection cap.
#![allow(clippy::unwrap_used)] // a test that cannot go on should stop right there

mod support;

use std::time::{Duration, Instant};

use http::Request;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn oversized_headers_get_431_problem() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "max_header_bytes: 2KiB")).await;
    let big = "a".repeat(3000);
    let req = Request::get(f.url("/"))
        .header("x-big", big)
        .body(empty())
        .unwrap();
    send(&client(), req)
        .await
        .assert_problem(431, "headers-too-large");
    // Just under the limit passes.
    let ok = Request::get(f.url("/"))
        .header("x-big", "a".repeat(1500))
        .body(empty())
        .unwrap();
    assert_eq!(send(&client(), ok).await.status, 200);
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn declared_oversized_body_gets_413_without_reaching_the_upstream() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "max_body_bytes: 1KiB")).await;
    let req = Request::post(f.url("/")).body(full(vec![b'x'; 2048])).unwrap();
    send(&client(), req).await.assert_problem(413, "body-too-large");
    assert_eq!(up.hits(), 0);
    let ok = Request::post(f.url("/")).body(full(vec![b'x'; 1024])).unwrap();
    assert_eq!(send(&client(), ok).await.echoed().body_len, 1024);
    f.shutdown().await;
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_413() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "max_body_bytes: 1KiB")).await;
    let chunk = format!("800\r\n{}\r\n0\r\n\r\n", "x".repeat(0x800));
    let req = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
    );
    let a = raw(f.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&a), 413, "{a}");
    assert!(a.contains("urn:ficus:problem:body-too-large"), "{a}");
    f.shutdown().await;
}

#[tokio::test]
async fn stalled_body_gets_408() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "body_read_timeout: 300ms")).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let a = read_all(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&a), 408, "{a}");
    assert!(a.contains("urn:ficus:problem:body-timeout"), "{a}");
    f.shutdown().await;
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_at_the_header_read_timeout() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "header_read_timeout: 500ms")).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    let started = Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").await.unwrap();
    // Trickle a header byte now and then, never finishing the head.
    let mut closed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if tcp.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(1), tcp.peek(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // hyper answers 408 before closing; either way the connection ends.
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(
        closed,
        "the connection was still open after 4 s of trickled headers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, get(&f.url("/"))).await;
    f.shutdown().await;
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "idle_timeout: 400ms")).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
    let started = Instant::now();
    // Keep-alive: the response arrives, then the connection idles until ficus closes it.
    let a = read_all(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&a), 200, "{a}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    f.shutdown().await;
}

/// Between requests a keep-alive connection is idle, not reading a head: the header-read timeout
/// (slowloris) starts with the next request's first byte, and only `idle_timeout` closes a
/// connection that sends nothing.
#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_read_timeout_between_requests() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(
        &up.url(),
        "header_read_timeout: 300ms, idle_timeout: 60s",
    ))
    .await;
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        if i > 0 {
            // Three times the header-read timeout, quiet.
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let req = Request::get(format!("/after-gap-{i}"))
            .header("host", "t")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = sender
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        assert_eq!(res.status(), 200, "request {i}");
    }
    assert_eq!(up.hits(), 3);
    f.shutdown().await;
}

/// The header-read timeout still holds for a kept-alive connection's later requests: once the
/// next head's first bytes arrive, the rest must follow within it, however the bytes trickle.
#[tokio::test]
async fn a_second_request_head_trickled_on_a_kept_alive_connection_is_cut_off() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(
        &up.url(),
        "header_read_timeout: 500ms, idle_timeout: 60s",
    ))
    .await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    expect_200_on(&mut tcp, b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    tcp.write_all(b"GET /second HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let closed = trickle_until_closed(&mut tcp, b"X", Duration::from_secs(4))
        .await
        .expect("the trickled second head was still being read after 4 s");
    assert!(closed < Duration::from_secs(3), "{closed:?}");
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "max_connections: 2")).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(f.addr).await.unwrap();
        // A request per connection proves each was accepted before the next one connects.
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(tcp);
    }
    let mut third = TcpStream::connect(f.addr).await.unwrap();
    let _ = third
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let a = read_all(&mut third, Duration::from_secs(5)).await;
    assert!(a.is_empty(), "the third connection was served: {a}");

    drop(held);
    let ok = eventually(Duration::from_secs(5), || async {
        raw(f.addr, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(ok, "a slot did not free up after the held connections closed");
    f.shutdown().await;
}

#[tokio::test]
async fn request_without_host_gets_400_problem() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let a = raw(f.addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(raw_status(&a), 400, "{a}");
    assert!(a.contains("urn:ficus:problem:missing-host"), "{a}");
    let a = raw(
        f.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&a), 400, "{a}");
    assert_eq!(up.hits(), 0);
    assert_reaches(&up, get(&f.url("/"))).await;
    f.shutdown().await;
}

/// The protocol is told from the first bytes without consuming them: a client that sends its
/// first byte alone is still served as HTTP/1.1.
#[tokio::test]
async fn a_request_whose_first_byte_arrives_alone_is_served_as_http1() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"P").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    tcp.write_all(b"OST /split HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await
        .unwrap();
    let a = read_all(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(raw_status(&a), 200, "{a}");
    assert!(a.contains("/split"), "{a}");
    assert_eq!(up.hits(), 1);
    f.shutdown().await;
}

/// An HTTP/2 preface that arrives in pieces is still HTTP/2: ficus answers with its SETTINGS.
#[tokio::test]
async fn an_h2c_preface_sent_in_two_pieces_is_served_as_http2() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&basic_config(&up.url())).await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The rest of the preface, then an empty SETTINGS frame.
    tcp.write_all(b"\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut head))
        .await
        .expect("a frame within 5 s")
        .expect("a frame header");
    assert_eq!(head[3], 0x4, "the first frame is SETTINGS: {head:?}");
    f.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(
        &up.url(),
        "header_read_timeout: 300ms, idle_timeout: 60s",
    ))
    .await;
    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("closed within 5 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing is sent to a client that said nothing");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    f.shutdown().await;
}

/// One keep-alive connection, with idle gaps between its requests (where it holds no buffers): a
/// head larger than one read, a 100 KiB body, and two pipelined requests sent in one write all
/// arrive whole, in order.
#[tokio::test]
async fn a_keep_alive_connection_serves_large_heads_bodies_and_pipelined_requests_after_idle_gaps() {
    let up = Upstream::echo().await;
    let f = Ficus::start(&with_limits(&up.url(), "max_header_bytes: 64KiB")).await;
    let tcp = TcpStream::connect(f.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let idle = || tokio::time::sleep(Duration::from_millis(200));

    let big = "b".repeat(20_000);
    let req = Request::get("/big-head")
        .header("host", "t")
        .header("x-big", &big)
        .body(empty())
        .unwrap();
    let a = sender.send_request(req).await.unwrap();
    let a = Answer::collect(a).await.unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.echoed().header("x-big"), Some(big.as_str()));
    idle().await;

    let req = Request::post("/body")
        .header("host", "t")
        .body(full(vec![b'x'; 100 * 1024]))
        .unwrap();
    let a = Answer::collect(sender.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(a.echoed().body_len, 100 * 1024);
    idle().await;

    let req = Request::get("/after-idle")
        .header("host", "t")
        .body(empty())
        .unwrap();
    let a = Answer::collect(sender.send_request(req).await.unwrap())
        .await
        .unwrap();
    assert_eq!(a.echoed().path, "/after-idle");

    let mut tcp = TcpStream::connect(f.addr).await.unwrap();
    tcp.write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    tcp.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    idle().await;
    tcp.write_all(
        b"GET /two HTTP/1.1\r\nHost: t\r\n\r\nGET /three HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let rest = read_all(&mut tcp, Duration::from_secs(5)).await;
    let (two, three) = (rest.find("\"/two\""), rest.find("\"/three\""));
    assert!(
        two.is_some_and(|two| three.is_some_and(|three| two < three)),
        "{rest}"
    );
    assert_eq!(rest.matches("HTTP/1.1 200").count(), 2, "{rest}");
    assert_eq!(up.hits(), 6);
    f.shutdown().await;
}
