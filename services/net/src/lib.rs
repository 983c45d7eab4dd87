//! Outbound calls to addresses that partners and admins type in: a partner's JWKS URL, webhook
//! endpoints. Without a policy these let anyone who can register a URL make Péage's servers
//! call their loopback, the cloud metadata service (169.254.169.254) or the private network,
//! and read the answers back through delivery logs (server-side request forgery).
//!
//! [`OutboundPolicy`] says what may be called:
//! - `https://` only, unless `outbound.allow_http`;
//! - no user name or password in the URL;
//! - no address that is not globally routable (loopback, private, link-local, carrier-grade
//!   NAT, multicast, documentation, reserved; IPv4 inside IPv6 is unwrapped first), unless it
//!   is in `outbound.allow_private`;
//! - no host written as a number in one of the forms `inet_aton` also accepts (`0x7f000001`,
//!   `2130706433`, `0177.0.0.1`), which resolvers turn into addresses without DNS.
//!
//! The addresses are checked **after** DNS, by the resolver the connection is made with
//! ([`GuardedResolver`]): a connection only ever goes to an address that was checked, so a name
//! that resolves to a public address when registered and to 127.0.0.1 when called (DNS
//! rebinding) is still refused. [`Guarded`] checks the URL itself first, which also covers
//! IP literals (the connector does not resolve those). Redirects are never followed (hyper's
//! client does not).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use ipnet::IpNet;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Why a URL or an address may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{0:?} is not an absolute URL")]
    NotAUrl(String),
    #[error("only https:// URLs may be called (outbound.allow_http permits http://)")]
    Scheme,
    #[error("the URL must not carry a user name or password")]
    Userinfo,
    #[error(
        "{0:?} is an address written as a number; write it as a dotted IPv4 address or a name"
    )]
    NumericHost(String),
    #[error("{0} is not a public address (loopback, private, link-local, multicast or reserved); outbound.allow_private lists the exceptions")]
    Address(IpAddr),
    #[error("{0} resolves only to addresses that are not public; outbound.allow_private lists the exceptions")]
    Resolved(String),
}

/// What may be called; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allow_http: bool,
    allow_private: Vec<IpNet>,
}

impl OutboundPolicy {
    /// The default: https to public addresses only.
    pub fn strict() -> OutboundPolicy {
        OutboundPolicy::default()
    }

    pub fn new(allow_http: bool, allow_private: Vec<IpNet>) -> OutboundPolicy {
        OutboundPolicy {
            allow_http,
            allow_private,
        }
    }

    /// Whether `ip` may be connected to: public, or listed in `allow_private`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        is_public(ip) || self.allow_private.iter().any(|n| n.contains(&ip))
    }

    /// Parses and checks a URL as given (registration of a JWKS URL or a webhook endpoint).
    pub fn check_url(&self, url: &str) -> Result<Uri, Refused> {
        let uri: Uri = url
            .trim()
            .parse()
            .map_err(|_| Refused::NotAUrl(url.into()))?;
        self.check_uri(&uri)?;
        Ok(uri)
    }

    /// Checks what can be checked without DNS: scheme, credentials, numeric hosts and IP
    /// literals.
    pub fn check_uri(&self, uri: &Uri) -> Result<(), Refused> {
        let text = uri.to_string();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            Some("http") => return Err(Refused::Scheme),
            _ => return Err(Refused::NotAUrl(text)),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Refused::NotAUrl(text.clone()))?;
        if authority.as_str().contains('@') {
            return Err(Refused::Userinfo);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(Refused::NotAUrl(text));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if self.allows(ip) {
                Ok(())
            } else {
                Err(Refused::Address(ip))
            };
        }
        if is_numeric_host(host) {
            return Err(Refused::NumericHost(host.into()));
        }
        Ok(())
    }

    /// At registration: resolves the URL's host and refuses it when every address it has is
    /// refused, so a mistake is reported at once rather than at the first delivery. A name
    /// that does not resolve now is accepted (it may later); connections are checked anyway.
    pub async fn check_resolved(&self, uri: &Uri) -> Result<(), Refused> {
        self.check_uri(uri)?;
        let Some(host) = uri.host() else {
            return Ok(());
        };
        if host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
        {
            return Ok(());
        }
        match tokio::net::lookup_host((host, 0)).await {
            Ok(addrs) => {
                let addrs: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                if !addrs.is_empty() && !addrs.iter().any(|ip| self.allows(*ip)) {
                    return Err(Refused::Resolved(host.into()));
                }
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }
}

/// A host made only of labels that `inet_aton` reads as numbers: decimal, octal (leading 0) or
/// hexadecimal (`0x`). Such hosts never reach DNS; resolvers turn them into addresses.
fn is_numeric_host(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.split('.').all(|label| {
            let hex = label
                .strip_prefix("0x")
                .or_else(|| label.strip_prefix("0X"));
            match hex {
                Some(h) => h.bytes().all(|b| b.is_ascii_hexdigit()),
                None => !label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()),
            }
        })
}

fn blocks(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| s.parse().expect("literal CIDR block"))
        .collect()
}

/// Blocks that are not globally routable (IANA special-purpose registries, RFC 6890 and
/// successors), and the IPv6 forms that embed an IPv4 address checked on their own.
fn special_purpose() -> &'static [IpNet] {
    static BLOCKS: OnceLock<Vec<IpNet>> = OnceLock::new();
    BLOCKS.get_or_init(|| {
        blocks(&[
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "192.168.0.0/16",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/96",
            "::1/128",
            "64:ff9b:1::/48",
            "100::/64",
            "2001::/23",
            "2001:db8::/32",
            "fc00::/7",
            "fe80::/10",
            "fec0::/10",
            "ff00::/8",
        ])
    })
}

/// Whether `ip` is globally routable. IPv4 inside IPv6 (mapped `::ffff:0:0/96`, NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) is judged by the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !special_purpose()
            .iter()
            .any(|n| n.contains(&IpAddr::V4(v4))),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_public(IpAddr::V4(v4));
            }
            !special_purpose()
                .iter()
                .any(|n| n.contains(&IpAddr::V6(v6)))
        }
    }
}

fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let o = v6.octets();
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// How names are looked up: the system's resolver, or (tests) a function.
pub type Lookup = Arc<dyn Fn(String) -> BoxFuture<io::Result<Vec<IpAddr>>> + Send + Sync>;

fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

/// A resolver for hyper-util's connector that hands it only the addresses the policy allows:
/// the connection is made to an address that was checked, whatever DNS answers next time.
#[derive(Clone)]
pub struct GuardedResolver {
    policy: Arc<OutboundPolicy>,
    lookup: Lookup,
}

impl GuardedResolver {
    pub fn new(policy: Arc<OutboundPolicy>) -> GuardedResolver {
        GuardedResolver::with_lookup(policy, system_lookup())
    }

    pub fn with_lookup(policy: Arc<OutboundPolicy>, lookup: Lookup) -> GuardedResolver {
        GuardedResolver { policy, lookup }
    }
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = BoxFuture<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let (policy, lookup) = (Arc::clone(&self.policy), Arc::clone(&self.lookup));
        Box::pin(async move {
            let host = name.as_str().to_string();
            let allowed: Vec<SocketAddr> = lookup(host.clone())
                .await?
                .into_iter()
                .filter(|ip| policy.allows(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    Refused::Resolved(host),
                ));
            }
            Ok(allowed.into_iter())
        })
    }
}

/// A TCP connector whose names go through [`GuardedResolver`] (wrap it with TLS, then in
/// [`Guarded`]). `http://` is left to [`Guarded`] and the policy.
pub fn http_connector(resolver: GuardedResolver) -> HttpConnector<GuardedResolver> {
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_nodelay(true);
    http
}

/// A connector that refuses what the policy refuses before connecting (scheme, credentials,
/// IP literals, numeric hosts); the names it lets through are checked again after DNS by the
/// inner connector's [`GuardedResolver`].
#[derive(Clone)]
pub struct Guarded<C> {
    inner: C,
    policy: Arc<OutboundPolicy>,
}

impl<C> Guarded<C> {
    pub fn new(inner: C, policy: Arc<OutboundPolicy>) -> Guarded<C> {
        Guarded { inner, policy }
    }
}

impl<C> tower_service::Service<Uri> for Guarded<C>
where
    C: tower_service::Service<Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<C::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Err(refused) = self.policy.check_uri(&uri) {
            return Box::pin(async move { Err(Box::new(refused) as BoxError) });
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The policy's refusal inside an error chain (a client error wrapping a connect error), if
/// that is what made a call fail: it is shown; any other cause is reported generically.
pub fn refusal_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut cause: Option<&'e (dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(r) = e.downcast_ref::<Refused>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<Refused>()) {
                return Some(r);
            }
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    fn strict() -> OutboundPolicy {
        OutboundPolicy::strict()
    }

    #[test]
    fn only_public_https_urls_without_credentials_pass_the_strict_policy() {
        let p = strict();
        assert!(p
            .check_url("https://idp.example.com/.well-known/jwks.json")
            .is_ok());
        assert!(p.check_url("https://93.184.215.14/hook").is_ok());
        assert_eq!(
            p.check_url("http://idp.example.com/jwks"),
            Err(Refused::Scheme)
        );
        assert_eq!(
            p.check_url("https://user:pw@idp.example.com/jwks"),
            Err(Refused::Userinfo)
        );
        assert!(matches!(p.check_url("ftp://x/y"), Err(Refused::NotAUrl(_))));
        assert!(matches!(p.check_url("/relative"), Err(Refused::NotAUrl(_))));
        for url in [
            "https://127.0.0.1/",
            "https://127.1.2.3:8443/",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.1.2.3/",
            "https://172.20.0.1/",
            "https://192.168.1.1/",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://255.255.255.255/",
            "https://[::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
            "https://[64:ff9b::a9fe:a9fe]/",
            "https://[2002:7f00:1::]/",
            "https://[fe80::1]/",
            "https://[fd00::1]/",
            "https://[ff02::1]/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(Refused::Address(_))),
                "{url}: {:?}",
                p.check_url(url)
            );
        }
        for url in [
            "https://0x7f000001/",
            "https://2130706433/",
            "https://0177.0.0.1/",
            "https://0x7f.1/",
            "https://127.1/",
        ] {
            assert!(
                matches!(p.check_url(url), Err(Refused::NumericHost(_))),
                "{url}: {:?}",
                p.check_url(url)
            );
        }
        // Names that merely look like hex stay names.
        assert!(p.check_url("https://cafe.be/hook").is_ok());
        assert!(p.check_url("https://deadbeef.example/hook").is_ok());
    }

    #[test]
    fn the_allow_list_admits_private_addresses_and_http_on_request() {
        let p = OutboundPolicy::new(true, vec!["10.20.0.0/16".parse().unwrap()]);
        assert!(p.check_url("http://10.20.3.4:8080/jwks").is_ok());
        assert!(p.check_url("https://[::ffff:10.20.3.4]/jwks").is_ok());
        assert_eq!(
            p.check_url("http://10.21.0.1/jwks"),
            Err(Refused::Address("10.21.0.1".parse().unwrap()))
        );
    }

    fn lookup(answers: Vec<IpAddr>) -> Lookup {
        Arc::new(move |_| {
            let answers = answers.clone();
            Box::pin(async move { Ok(answers) })
        })
    }

    #[tokio::test]
    async fn names_that_resolve_to_private_addresses_are_refused_after_dns() {
        let policy = Arc::new(strict());
        let mut private = GuardedResolver::with_lookup(
            Arc::clone(&policy),
            lookup(vec![
                "127.0.0.1".parse().unwrap(),
                "10.0.0.7".parse().unwrap(),
            ]),
        );
        let e = private
            .call("rebind.attacker.test".parse::<Name>().unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            refusal_in(&e),
            Some(&Refused::Resolved("rebind.attacker.test".into()))
        );
        // A mixed answer: only the public address is handed to the connector.
        let mut mixed = GuardedResolver::with_lookup(
            policy,
            lookup(vec![
                "169.254.169.254".parse().unwrap(),
                "93.184.215.14".parse().unwrap(),
            ]),
        );
        let addrs: Vec<SocketAddr> = mixed
            .call("idp.example".parse::<Name>().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec!["93.184.215.14:0".parse().unwrap()]);
    }

    /// The whole chain as callers build it, against a real listener on 127.0.0.1: refused
    /// by default, whether named by address or by a name resolving to it, and reached once
    /// the allow list names it.
    #[tokio::test]
    async fn a_client_on_the_guarded_connector_never_reaches_a_refused_address() {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 1024];
                let _ = s.read(&mut request).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let client = |policy: OutboundPolicy| {
            let policy = Arc::new(policy);
            let resolver = GuardedResolver::with_lookup(
                Arc::clone(&policy),
                lookup(vec!["127.0.0.1".parse().unwrap()]),
            );
            Client::builder(TokioExecutor::new())
                .build::<_, String>(Guarded::new(http_connector(resolver), policy))
        };
        let get = |url: String| http::Request::get(url).body(String::new()).unwrap();
        let strict_http = client(OutboundPolicy::new(true, vec![]));
        for url in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://innocent.example:{port}/"),
        ] {
            let e = strict_http.request(get(url.clone())).await.unwrap_err();
            assert!(refusal_in(&e).is_some(), "{url}: {e:?}");
        }
        let allowed = client(OutboundPolicy::new(
            true,
            vec!["127.0.0.1/32".parse().unwrap()],
        ));
        let r = allowed
            .request(get(format!("http://innocent.example:{port}/")))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}
