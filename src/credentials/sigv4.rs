//! AWS Signature Version 4 (header-based, `AWS4-HMAC-SHA256`), as AWS's "Create a signed AWS API request"
//! describes it: the canonical request, the string to sign, the derived signing key and the
//! `Authorization` header. Pure functions; checked against AWS's published test-suite vectors.

use hmac::{Hmac, Mac, NewMac};
use sha2::{Digest, Sha256};

/// The one algorithm implemented.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What is signed: the method, the canonical URI (already URI-encoded, e.g. `/`), the query parameters
/// (not encoded; they are encoded and sorted here), the headers to sign (every one of them is signed)
/// and the payload.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, &'a str)],
    pub payload: &'a [u8],
}

/// The credential scope: `date` is `YYYYMMDD`.
pub struct Scope<'a> {
    pub date: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

impl Scope<'_> {
    fn text(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: `new_varkey` cannot fail for it.
    let mut mac =
        Hmac::<Sha256>::new_varkey(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `(YYYYMMDD, YYYYMMDDTHHMMSSZ)` for `secs` seconds since the epoch, UTC.
pub fn amz_dates(secs: u64) -> (String, String) {
    let c = crate::time::civil(secs);
    let date = format!("{:04}{:02}{:02}", c.year, c.month, c.day);
    let stamp = format!("{date}T{:02}{:02}{:02}Z", c.hour, c.minute, c.second);
    (date, stamp)
}

/// The canonical request and the `SignedHeaders` list.
pub fn canonical_request(req: &Request) -> (String, String) {
    let mut query: Vec<(String, String)> =
        req.query.iter().map(|(k, v)| (super::uri_encode(k, false), super::uri_encode(v, false))).collect();
    query.sort();
    let query = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in req.headers {
        let name = name.trim().to_ascii_lowercase();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        match headers.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            None => headers.push((name, value)),
        }
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed = headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(";");
    let text = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{signed}\n{}",
        req.method,
        req.path,
        sha256_hex(req.payload)
    );
    (text, signed)
}

/// The string to sign for a canonical request made at `stamp` (`YYYYMMDDTHHMMSSZ`).
pub fn string_to_sign(stamp: &str, scope: &Scope, canonical: &str) -> String {
    format!("{ALGORITHM}\n{stamp}\n{}\n{}", scope.text(), sha256_hex(canonical.as_bytes()))
}

/// The signing key: HMAC chain over date, region, service and `aws4_request`.
pub fn signing_key(secret_access_key: &str, scope: &Scope) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret_access_key}").as_bytes(), scope.date.as_bytes());
    let k_region = hmac(&k_date, scope.region.as_bytes());
    let k_service = hmac(&k_region, scope.service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The lower-case hex signature of `req` made at `stamp`.
pub fn signature(secret_access_key: &str, scope: &Scope, stamp: &str, req: &Request) -> String {
    let (canonical, _) = canonical_request(req);
    let to_sign = string_to_sign(stamp, scope, &canonical);
    hex(&hmac(&signing_key(secret_access_key, scope), to_sign.as_bytes()))
}

/// The `Authorization` header value for `req`; its headers must include `host` and `x-amz-date` (and
/// `x-amz-security-token` with temporary credentials).
pub fn authorization(
    access_key_id: &str,
    secret_access_key: &str,
    scope: &Scope,
    stamp: &str,
    req: &Request,
) -> String {
    let (_, signed) = canonical_request(req);
    let sig = signature(secret_access_key, scope, stamp, req);
    format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={signed}, Signature={sig}",
        scope.text()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // AWS's SigV4 test suite: credentials, scope and time shared by every example.
    const AKID: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const STAMP: &str = "20150830T123600Z";
    const SCOPE: Scope<'static> = Scope { date: "20150830", region: "us-east-1", service: "service" };
    const BASE: [(&str, &str); 2] = [("Host", "example.amazonaws.com"), ("X-Amz-Date", STAMP)];

    fn auth(method: &str, query: &[(&str, &str)], headers: &[(&str, &str)], payload: &[u8]) -> String {
        let req = Request { method, path: "/", query, headers, payload };
        authorization(AKID, SECRET, &SCOPE, STAMP, &req)
    }

    #[test]
    fn get_vanilla() {
        let req = Request { method: "GET", path: "/", query: &[], headers: &BASE, payload: b"" };
        let (canonical, _) = canonical_request(&req);
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            string_to_sign(STAMP, &SCOPE, &canonical),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n\
             bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        assert_eq!(
            auth("GET", &[], &BASE, b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date, \
             Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn get_vanilla_query_order_key_case() {
        let a = auth("GET", &[("Param2", "value2"), ("Param1", "value1")], &BASE, b"");
        assert!(
            a.ends_with("Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
            "{a}"
        );
    }

    #[test]
    fn post_vanilla() {
        let a = auth("POST", &[], &BASE, b"");
        assert!(
            a.ends_with("Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
            "{a}"
        );
    }

    #[test]
    fn get_vanilla_with_session_token() {
        let token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
        let headers = [BASE[0], BASE[1], ("X-Amz-Security-Token", token)];
        assert_eq!(
            auth("GET", &[], &headers, b""),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=host;x-amz-date;x-amz-security-token, \
             Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"
        );
    }

    #[test]
    fn post_x_www_form_urlencoded_signs_the_body() {
        let body = b"Param1=value1";
        let body_hash = sha256_hex(body);
        assert_eq!(body_hash, "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e");
        let headers = [
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Host", "example.amazonaws.com"),
            ("Content-Length", "13"),
            ("x-amz-content-sha256", body_hash.as_str()),
            ("X-Amz-Date", STAMP),
        ];
        assert_eq!(
            auth("POST", &[], &headers, body),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, \
             SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date, \
             Signature=d3875051da38690788ef43de4db0d8f280229d82040bfac253562e56c3f20e0b"
        );
    }

    #[test]
    fn header_values_are_trimmed_and_repeated_names_joined() {
        let req = Request {
            method: "GET",
            path: "/",
            query: &[],
            headers: &[("X-B", " 2 "), ("x-a", "a   b"), ("x-b", "3")],
            payload: b"",
        };
        let (canonical, signed) = canonical_request(&req);
        assert_eq!(signed, "x-a;x-b");
        assert!(canonical.contains("\nx-a:a b\nx-b:2,3\n"), "{canonical}");
    }

    #[test]
    fn dates() {
        assert_eq!(amz_dates(1_440_938_160), ("20150830".to_string(), STAMP.to_string()));
    }
}
