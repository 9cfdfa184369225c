//! TLS client certificates as identity: the verified peer certificate's subject and SANs (read
//! once per connection, after the handshake), a route's SAN requirement, and forwarding them to
//! the upstream as headers.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};
use regex::Regex;
use x509_parser::extensions::GeneralName;

use crate::config::file::{ClientCertRuleConfig, ForwardClientCertConfig};

/// What the verified client certificate says about the caller. rustls has checked the chain
/// against the listener's CA bundle before this is built.
#[derive(Debug)]
pub struct PeerCert {
    /// The subject DN, attributes in certificate order (`CN=orders, O=Corp`).
    pub subject: String,
    /// URI, DNS, e-mail and IP SANs as text, in certificate order.
    pub sans: Vec<String>,
    /// The caller's name for logs and rate-limit keys: the first SAN (a SPIFFE ID or host
    /// name), else the subject.
    pub principal: Arc<str>,
    /// Ready-made header values, so forwarding costs no formatting per request. `None` when the
    /// text is not a valid header value (non-ASCII).
    subject_header: Option<HeaderValue>,
    san_header: Option<HeaderValue>,
}

impl PeerCert {
    /// Reads the leaf certificate; `None` if it cannot be parsed (rustls accepted it, so this
    /// should not happen).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let subject = cert.subject().to_string();
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::URI(s) | GeneralName::DNSName(s) | GeneralName::RFC822Name(s) => {
                        sans.push((*s).to_string());
                    }
                    GeneralName::IPAddress(bytes) => {
                        if let Some(ip) = ip_from_bytes(bytes) {
                            sans.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let subject_header = HeaderValue::from_str(&subject).ok();
        let san_header = if sans.is_empty() {
            None
        } else {
            HeaderValue::from_str(&sans.join(",")).ok()
        };
        let principal = Arc::from(sans.first().unwrap_or(&subject).as_str());
        Some(Self {
            principal,
            subject,
            sans,
            subject_header,
            san_header,
        })
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("a client certificate is required")]
    Missing,
    #[error("no SAN of the client certificate ({sans}) matches the route's pattern")]
    NotAllowed { sans: String },
}

/// A route's requirement on the client certificate, compiled once per snapshot.
#[derive(Debug)]
pub struct ClientCertRule {
    required: bool,
    san: Option<Regex>,
}

impl ClientCertRule {
    pub fn new(cfg: &ClientCertRuleConfig) -> Result<Self, String> {
        let san = match (&cfg.san, &cfg.san_regex) {
            (Some(_), Some(_)) => return Err("set `san` or `san_regex`, not both".into()),
            (Some(glob), None) => Some(glob_to_regex(glob)),
            (None, Some(re)) => Some(format!("^(?:{re})$")),
            (None, None) => None,
        };
        let san = san
            .map(|re| Regex::new(&re).map_err(|e| format!("client_cert: {e}")))
            .transpose()?;
        if !cfg.required && san.is_none() {
            return Err("client_cert: set `required: true`, a `san` or a `san_regex`".into());
        }
        Ok(Self {
            required: cfg.required,
            san,
        })
    }

    /// Without a certificate: refused when required, else let through. With one: at least one
    /// SAN must match the pattern, if the route has one.
    pub fn check(&self, cert: Option<&PeerCert>) -> Result<(), ClientCertError> {
        let Some(cert) = cert else {
            return if self.required {
                Err(ClientCertError::Missing)
            } else {
                Ok(())
            };
        };
        match &self.san {
            Some(re) if !cert.sans.iter().any(|s| re.is_match(s)) => Err(ClientCertError::NotAllowed {
                sans: cert.sans.join(","),
            }),
            _ => Ok(()),
        }
    }
}

/// `*` matches any run of characters (`/` and `.` included); everything else is literal.
fn glob_to_regex(glob: &str) -> String {
    let parts: Vec<String> = glob.split('*').map(regex::escape).collect();
    format!("^{}$", parts.join(".*"))
}

/// Headers that carry the client certificate upstream.
#[derive(Debug)]
pub struct ForwardClientCert {
    subject: Option<HeaderName>,
    san: Option<HeaderName>,
}

impl ForwardClientCert {
    pub fn new(cfg: &ForwardClientCertConfig) -> Result<Self, String> {
        let name = |h: &Option<String>| {
            h.as_ref()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("forward_client_cert: `{h}` is not a header name"))
                })
                .transpose()
        };
        let fwd = Self {
            subject: name(&cfg.subject)?,
            san: name(&cfg.san)?,
        };
        if fwd.subject.is_none() && fwd.san.is_none() {
            return Err("forward_client_cert: set `subject`, `san` or both".into());
        }
        Ok(fwd)
    }

    pub fn header_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.subject.iter().chain(self.san.iter())
    }

    /// Removes the caller's own copies, then sets the headers from the verified certificate.
    pub fn apply(&self, cert: Option<&PeerCert>, headers: &mut HeaderMap) {
        for h in self.header_names() {
            headers.remove(h);
        }
        let Some(cert) = cert else { return };
        if let (Some(h), Some(v)) = (&self.subject, &cert.subject_header) {
            headers.insert(h.clone(), v.clone());
        }
        if let (Some(h), Some(v)) = (&self.san, &cert.san_header) {
            headers.insert(h.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[&str]) -> PeerCert {
        PeerCert {
            subject: "CN=test".into(),
            principal: Arc::from(sans.first().copied().unwrap_or("CN=test")),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            subject_header: Some(HeaderValue::from_static("CN=test")),
            san_header: HeaderValue::from_str(&sans.join(",")).ok(),
        }
    }

    fn rule(required: bool, san: Option<&str>, san_regex: Option<&str>) -> Result<ClientCertRule, String> {
        ClientCertRule::new(&ClientCertRuleConfig {
            required,
            san: san.map(str::to_string),
            san_regex: san_regex.map(str::to_string),
        })
    }

    #[test]
    fn glob_star_spans_path_segments_and_the_rest_is_literal() {
        let r = rule(true, Some("spiffe://corp/*"), None).unwrap();
        assert!(r.check(Some(&cert(&["spiffe://corp/ns/prod/sa/orders"]))).is_ok());
        assert!(matches!(
            r.check(Some(&cert(&["spiffe://corpX/a"]))),
            Err(ClientCertError::NotAllowed { .. })
        ));
        assert!(matches!(
            r.check(Some(&cert(&["spiffe://other/a"]))),
            Err(ClientCertError::NotAllowed { .. })
        ));
        // `.` is literal, not "any character".
        let r = rule(true, Some("a.corp"), None).unwrap();
        assert!(r.check(Some(&cert(&["axcorp"]))).is_err());
        assert!(r.check(Some(&cert(&["a.corp"]))).is_ok());
    }

    #[test]
    fn any_san_may_match_and_regexes_are_anchored() {
        let r = rule(false, None, Some("orders\\.[a-z]+\\.corp")).unwrap();
        assert!(r.check(Some(&cert(&["x.corp", "orders.eu.corp"]))).is_ok());
        assert!(r.check(Some(&cert(&["orders.eu.corp.evil"]))).is_err());
    }

    #[test]
    fn a_missing_certificate_fails_only_when_required() {
        assert!(matches!(
            rule(true, None, None).unwrap().check(None),
            Err(ClientCertError::Missing)
        ));
        assert!(rule(false, Some("*"), None).unwrap().check(None).is_ok());
    }

    #[test]
    fn rules_that_check_nothing_or_twice_are_refused() {
        assert!(rule(false, None, None).is_err());
        assert!(rule(true, Some("a"), Some("b")).is_err());
        assert!(rule(true, None, Some("(")).is_err());
    }

    #[test]
    fn forwarding_strips_the_callers_copies_even_without_a_certificate() {
        let fwd = ForwardClientCert::new(&ForwardClientCertConfig {
            subject: Some("X-Client-Subject".into()),
            san: Some("X-Client-San".into()),
        })
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-client-subject", HeaderValue::from_static("CN=admin"));
        h.append("x-client-san", HeaderValue::from_static("spiffe://corp/admin"));
        fwd.apply(None, &mut h);
        assert!(h.get("x-client-subject").is_none() && h.get("x-client-san").is_none());

        h.insert("x-client-subject", HeaderValue::from_static("CN=admin"));
        fwd.apply(Some(&cert(&["spiffe://corp/a", "a.corp"])), &mut h);
        assert_eq!(h.get_all("x-client-subject").iter().count(), 1);
        assert_eq!(h["x-client-subject"], "CN=test");
        assert_eq!(h["x-client-san"], "spiffe://corp/a,a.corp");
    }
}
