//! SOAP 1.1 / 1.2 envelopes around the XML mapping, and Faults as errors.

use quick_xml::escape::escape;
use serde_json::Value;

use super::xml::{write_element, xml_to_json, XmlRead};
use crate::config::transform::SoapVersion;

pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub const SOAP12_NS: &str = "http://www.w3.org/2003/05/soap-envelope";

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// The code's local part (`Client`, `Server`, `Sender`, `Receiver`, or a dotted subcode).
    pub code: String,
    pub reason: String,
    pub detail: Option<Value>,
}

pub enum Unwrapped {
    Body(Value),
    Fault(Fault),
}

pub fn wrap(
    v: &Value,
    version: SoapVersion,
    element: &str,
    namespace: Option<&str>,
    order: &[String],
) -> Result<String, String> {
    let env_ns = match version {
        SoapVersion::V11 => SOAP11_NS,
        SoapVersion::V12 => SOAP12_NS,
    };
    let mut out = String::with_capacity(512);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    out.push_str(r#"<soap:Envelope xmlns:soap=""#);
    out.push_str(env_ns);
    out.push_str(r#""><soap:Body>"#);
    let ns = namespace.map_or(String::new(), |n| format!(r#" xmlns="{}""#, escape(n)));
    let content = match v {
        Value::Array(_) => return Err("a SOAP operation cannot be an array".into()),
        other => other,
    };
    write_element(&mut out, element, content, &ns, order, 0)?;
    out.push_str("</soap:Body></soap:Envelope>");
    Ok(out)
}

/// `array_paths` are relative to the operation element's content.
pub fn unwrap(text: &str, array_paths: &[String], keep_operation: bool) -> Result<Unwrapped, String> {
    unwrap_with(text, &reader(array_paths), keep_operation)
}

/// How [`unwrap_with`] reads an envelope whose operation content has these `array_paths`; built
/// once per plan, so a request never parses them.
pub fn reader(array_paths: &[String]) -> XmlRead {
    let paths: Vec<String> = array_paths.iter().map(|p| format!("Body.*.{p}")).collect();
    XmlRead::new(&paths, false)
}

pub fn unwrap_with(text: &str, read: &XmlRead, keep_operation: bool) -> Result<Unwrapped, String> {
    let (root, env) = xml_to_json(text, read)?;
    if root != "Envelope" {
        return Err(format!("expected a SOAP Envelope, found `{root}`"));
    }
    let body = match env.get("Body") {
        Some(Value::Object(b)) => b,
        Some(Value::Null) | Some(Value::String(_)) => return Ok(Unwrapped::Body(Value::Null)),
        _ => return Err("the envelope has no Body".into()),
    };
    if let Some(f) = body.get("Fault") {
        return Ok(Unwrapped::Fault(fault(f)));
    }
    let mut ops = body.iter().filter(|(k, _)| !k.starts_with('@'));
    let Some((name, content)) = ops.next() else {
        return Ok(Unwrapped::Body(Value::Null));
    };
    if keep_operation {
        let mut m = serde_json::Map::new();
        m.insert(name.clone(), content.clone());
        return Ok(Unwrapped::Body(Value::Object(m)));
    }
    Ok(Unwrapped::Body(content.clone()))
}

fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => {
            text_of(m.get("#text")).or_else(|| text_of(m.get("Text")).or_else(|| text_of(m.get("Value"))))
        }
        Value::Array(a) => text_of(a.first()),
        _ => None,
    }
}

fn local(code: String) -> String {
    code.rsplit_once(':').map_or(code.clone(), |(_, l)| l.to_string())
}

fn fault(f: &Value) -> Fault {
    // 1.1: faultcode / faultstring / detail. 1.2: Code/Value (+ Subcode/Value), Reason/Text, Detail.
    let code = text_of(f.get("faultcode"))
        .or_else(|| {
            let code = f.get("Code")?;
            let main = text_of(code.get("Value"))?;
            Some(match text_of(code.get("Subcode").and_then(|s| s.get("Value"))) {
                Some(sub) => format!("{}.{}", local(main), local(sub)),
                None => main,
            })
        })
        .map(local)
        .unwrap_or_else(|| "Server".into());
    let reason = text_of(f.get("faultstring"))
        .or_else(|| text_of(f.get("Reason")))
        .unwrap_or_default();
    let detail = f.get("detail").or_else(|| f.get("Detail")).cloned();
    Fault { code, reason, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wrap_then_unwrap_gives_the_operation_back() {
        let v = json!({"OrderId": "7"});
        let xml = wrap(&v, SoapVersion::V11, "GetOrder", Some("urn:orders"), &[]).unwrap();
        assert!(xml.contains(SOAP11_NS));
        assert!(xml.contains(r#"<GetOrder xmlns="urn:orders"><OrderId>7</OrderId></GetOrder>"#));
        match unwrap(&xml, &[], false).unwrap() {
            Unwrapped::Body(b) => assert_eq!(b, v),
            Unwrapped::Fault(f) => panic!("{f:?}"),
        }
    }

    #[test]
    fn soap11_and_soap12_faults_are_recognised() {
        let f11 = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><s:Fault>
            <faultcode>s:Client</faultcode><faultstring>Order 9 not found</faultstring>
            <detail><code>NF</code></detail></s:Fault></s:Body></s:Envelope>"#;
        let Unwrapped::Fault(f) = unwrap(f11, &[], false).unwrap() else {
            panic!("no fault")
        };
        assert_eq!(f.code, "Client");
        assert_eq!(f.reason, "Order 9 not found");
        assert_eq!(f.detail, Some(json!({"code": "NF"})));
        let f12 = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>
            <env:Code><env:Value>env:Receiver</env:Value></env:Code>
            <env:Reason><env:Text xml:lang="en">database down</env:Text></env:Reason>
            </env:Fault></env:Body></env:Envelope>"#;
        let Unwrapped::Fault(f) = unwrap(f12, &[], false).unwrap() else {
            panic!("no fault")
        };
        assert_eq!(
            (f.code.as_str(), f.reason.as_str()),
            ("Receiver", "database down")
        );
    }

    #[test]
    fn a_non_envelope_is_refused() {
        assert!(unwrap("<Order/>", &[], false).is_err());
    }
}
