//! A real HTTP/2 origin in the clear (h2c, prior knowledge) on loopback: it answers every
//! request with a fixed body followed by trailers, the way an origin that learns its usage
//! only after streaming reports it.

use std::net::SocketAddr;

/// A running h2c origin; it lives until the test process ends.
pub struct H2Origin {
    pub addr: SocketAddr,
}

impl H2Origin {
    /// Answers `200` with `body` and then `trailers` (name, value) to every request.
    pub fn start(
        body: &'static [u8],
        trailers: &'static [(&'static str, &'static str)],
    ) -> H2Origin {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind h2 origin");
        let addr = listener.local_addr().expect("h2 origin addr");
        listener.set_nonblocking(true).expect("nonblocking");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((socket, _)) = listener.accept().await {
                    tokio::spawn(serve(socket, body, trailers));
                }
            });
        });
        H2Origin { addr }
    }
}

async fn serve(
    socket: tokio::net::TcpStream,
    body: &'static [u8],
    trailers: &'static [(&'static str, &'static str)],
) {
    let Ok(mut connection) = h2::server::handshake(socket).await else {
        return;
    };
    while let Some(Ok((_request, mut respond))) = connection.accept().await {
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "text/plain")
            .body(())
            .expect("response");
        let Ok(mut stream) = respond.send_response(response, false) else {
            continue;
        };
        let _ = stream.send_data(bytes::Bytes::from_static(body), false);
        let mut map = http::HeaderMap::new();
        for (name, value) in trailers {
            map.insert(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let _ = stream.send_trailers(map);
    }
}
