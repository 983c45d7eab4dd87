//! A real gRPC upstream for the gateway's tests: `greet.v1.Greeter` on a tonic server (h2c).

use std::net::SocketAddr;
use std::pin::Pin;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub mod pb {
    tonic::include_proto!("greet.v1");
}

pub use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{CountdownRequest, HelloReply, HelloRequest};

type Replies = Pin<Box<dyn Stream<Item = Result<HelloReply, Status>> + Send>>;

struct Service;

fn reply(message: String) -> HelloReply {
    HelloReply { message }
}

#[tonic::async_trait]
impl Greeter for Service {
    async fn say_hello(&self, r: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Ok(Response::new(reply(format!(
            "hello {}",
            r.into_inner().name
        ))))
    }

    type CountdownStream = Replies;

    async fn countdown(&self, r: Request<CountdownRequest>) -> Result<Response<Replies>, Status> {
        let n = r.into_inner().count;
        let replies = tokio_stream::iter((0..n).rev().map(|i| Ok(reply(i.to_string()))));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn collect(
        &self,
        r: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<HelloReply>, Status> {
        let mut names = Vec::new();
        let mut stream = r.into_inner();
        while let Some(m) = stream.next().await {
            names.push(m?.name);
        }
        Ok(Response::new(reply(names.join(","))))
    }

    type ChatStream = Replies;

    async fn chat(&self, r: Request<Streaming<HelloRequest>>) -> Result<Response<Replies>, Status> {
        let replies = r
            .into_inner()
            .map(|m| m.map(|m| reply(format!("hi {}", m.name))));
        Ok(Response::new(Box::pin(replies)))
    }

    async fn missing(&self, _: Request<HelloRequest>) -> Result<Response<HelloReply>, Status> {
        Err(Status::not_found("nothing here"))
    }
}

/// Serves the Greeter on `listener` until the task is dropped or aborted: h2c, or TLS with
/// `tls = Some((certificate PEM, private key PEM))`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(String, String)>,
) -> Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = tls {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        server = server.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
    }
    server
        .add_service(GreeterServer::new(Service))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}

/// Binds a free local port and serves there in the background (h2c).
pub async fn spawn() -> std::io::Result<SocketAddr> {
    spawn_with(None).await
}

/// The same over TLS with this certificate and key (PEM).
pub async fn spawn_tls(cert_pem: String, key_pem: String) -> std::io::Result<SocketAddr> {
    spawn_with(Some((cert_pem, key_pem))).await
}

async fn spawn_with(tls: Option<(String, String)>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, tls).await {
            eprintln!("grpc upstream stopped: {e}");
        }
    });
    Ok(addr)
}
