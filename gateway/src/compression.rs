//! Response compression (gzip, brotli, zstd) on the way out, after the cache.
//!
//! [`Compress`] is a Pingora downstream module: it runs after `response_filter`
//! on every response, proxied or served from the cache, so the cache stores
//! one identity representation and each client gets the encoding it asked
//! for. It does nothing unless the proxy [`Compress::configure`]s it for the
//! request (compression on, and on for the matched route). Pingora's own
//! encoders do the work; what is ours is the decision:
//!
//! - the coding is negotiated from `Accept-Encoding` with q-values, `*` and
//!   `identity` (RFC 9110 §12.5.3); among equal q-values the configured order
//!   wins; no `Accept-Encoding` means identity;
//! - only compressible types (`text/*`, JSON, JavaScript, XML, SVG, ...), with
//!   a status that has a representation body (200, 203, 404, 410), at least
//!   `min_size` bytes when the length is known, never an already encoded
//!   body, a range (206 or `Content-Range`), `Cache-Control: no-transform`
//!   (response or request), or a HEAD;
//! - a compressible response gets `Vary: Accept-Encoding` whatever was chosen
//!   (shared caches downstream must not mix representations); a compressed one
//!   loses `Content-Length` and `Accept-Ranges`, and its strong `ETag` is made
//!   weak (RFC 9110 §8.8.3: a transformed body is another representation).

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, TRANSFER_ENCODING, VARY,
};
use http::{HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::protocols::http::compression::{Algorithm, Encode};

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `br`
    Brotli,
    /// `gzip`
    Gzip,
    /// `zstd`
    Zstd,
}

impl Encoding {
    /// The token in `Accept-Encoding` / `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
        }
    }

    /// The configuration name (`br`, `gzip`, `zstd`).
    pub fn parse(name: &str) -> Option<Encoding> {
        match name.trim().to_ascii_lowercase().as_str() {
            "br" | "brotli" => Some(Encoding::Brotli),
            "gzip" => Some(Encoding::Gzip),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }

    /// A coding token of `Accept-Encoding` (`x-gzip` is gzip, RFC 9110 §8.4.1.3).
    fn from_token(token: &str) -> Option<Encoding> {
        let t = token.as_bytes();
        if t.eq_ignore_ascii_case(b"br") {
            Some(Encoding::Brotli)
        } else if t.eq_ignore_ascii_case(b"gzip") || t.eq_ignore_ascii_case(b"x-gzip") {
            Some(Encoding::Gzip)
        } else if t.eq_ignore_ascii_case(b"zstd") {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }

    /// Pingora's encoder at the level used on the fly: cheap enough to run on
    /// every cache hit (gzip 5, brotli 4, zstd 3; see the README's figures).
    fn encoder(self) -> Option<Box<dyn Encode + Send + Sync>> {
        match self {
            // Pingora's brotli encoder only flushes at the end, leaving the
            // stream without its last block (decoders report truncation).
            Encoding::Brotli => Some(Box::new(BrotliEncoder::new(4))),
            Encoding::Gzip => Algorithm::Gzip.compressor(5),
            Encoding::Zstd => Algorithm::Zstd.compressor(3),
        }
    }

    fn index(self) -> usize {
        match self {
            Encoding::Brotli => 0,
            Encoding::Gzip => 1,
            Encoding::Zstd => 2,
        }
    }
}

/// A brotli stream that is finished (`ISLAST`) when the body ends.
struct BrotliEncoder {
    writer: Option<brotli::CompressorWriter<Vec<u8>>>,
    total_in: usize,
    total_out: usize,
    duration: std::time::Duration,
}

impl BrotliEncoder {
    fn new(quality: u32) -> Self {
        Self {
            writer: Some(brotli::CompressorWriter::new(Vec::new(), 4096, quality, 19)),
            total_in: 0,
            total_out: 0,
            duration: std::time::Duration::ZERO,
        }
    }
}

impl Encode for BrotliEncoder {
    fn encode(&mut self, input: &[u8], end: bool) -> pingora::Result<Bytes> {
        use pingora::OrErr;
        use std::io::Write;
        let started = std::time::Instant::now();
        let Some(writer) = self.writer.as_mut() else {
            return Ok(Bytes::new());
        };
        self.total_in += input.len();
        writer.write_all(input).or_err(
            pingora::ErrorType::InternalError,
            "while compressing brotli",
        )?;
        let out = if end {
            // into_inner() writes the final block.
            self.writer
                .take()
                .map(|w| w.into_inner())
                .unwrap_or_default()
        } else {
            std::mem::take(writer.get_mut())
        };
        self.total_out += out.len();
        self.duration += started.elapsed();
        Ok(out.into())
    }

    fn stat(&self) -> (&'static str, usize, usize, std::time::Duration) {
        ("brotli", self.total_in, self.total_out, self.duration)
    }
}

/// A q-value in thousandths (RFC 9110 §12.4.2: at most three decimals).
fn parse_q(v: &str) -> Option<u16> {
    let v = v.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, b) in frac.bytes().enumerate() {
        thousandths += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// The coding to send for `Accept-Encoding` (all its field lines), among
/// `offered` (in preference order); `None` means identity.
pub fn negotiate<'a>(
    accept: impl Iterator<Item = &'a HeaderValue>,
    offered: &[Encoding],
) -> Option<Encoding> {
    let mut any_field = false;
    // Explicit q per offered coding, for `*`, and for identity.
    let mut explicit: [Option<u16>; 3] = [None; 3];
    let mut star: Option<u16> = None;
    let mut identity: Option<u16> = None;
    for value in accept {
        any_field = true;
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            if coding.is_empty() {
                continue;
            }
            let mut q = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=') {
                    if k.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(v);
                    }
                }
            }
            let Some(q) = q else { continue }; // a malformed q: ignore the item
            if coding == "*" {
                star = Some(q);
            } else if coding.eq_ignore_ascii_case("identity") {
                identity = Some(q);
            } else if let Some(e) = Encoding::from_token(coding) {
                let slot = &mut explicit[e.index()];
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
    }
    if !any_field {
        return None;
    }
    let mut best: Option<(Encoding, u16)> = None;
    for &e in offered {
        let q = explicit[e.index()].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((e, q));
        }
    }
    // Identity is the fallback; it wins only where the client names it with
    // a higher q than every coding we offer (ties go to compression).
    best.filter(|&(_, q)| identity.is_none_or(|iq| q >= iq))
        .map(|(e, _)| e)
}

/// Whether `Cache-Control` (any line) says `no-transform`.
fn no_transform<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> bool {
    values.filter_map(|v| v.to_str().ok()).any(|v| {
        v.split(',').any(|d| {
            d.split('=')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("no-transform")
        })
    })
}

/// Media types worth compressing (already-compressed formats are not).
fn compressible_type(resp: &ResponseHeader) -> bool {
    let Some(ct) = resp.headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((top, sub)) = mime.split_once('/') else {
        return false;
    };
    match top {
        // Server-sent events are a stream: compression would hold events back.
        "text" => sub != "event-stream",
        "application" => {
            matches!(
                sub,
                "json"
                    | "javascript"
                    | "ecmascript"
                    | "xml"
                    | "xhtml+xml"
                    | "rss+xml"
                    | "atom+xml"
                    | "manifest+json"
                    | "ld+json"
                    | "graphql-response+json"
                    | "wasm"
                    | "x-javascript"
                    | "vnd.ms-fontobject"
                    | "x-font-ttf"
            ) || sub.ends_with("+json")
                || sub.ends_with("+xml")
        }
        "image" => matches!(sub, "svg+xml" | "x-icon" | "vnd.microsoft.icon" | "bmp"),
        "font" => matches!(sub, "ttf" | "otf" | "eot"),
        _ => false,
    }
}

/// Whether the response could be compressed for some client (then it varies
/// on `Accept-Encoding`).
fn eligible(resp: &ResponseHeader, min_size: u64) -> bool {
    if !matches!(resp.status.as_u16(), 200 | 203 | 404 | 410) {
        return false;
    }
    let encoded = resp
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded || resp.headers.contains_key(CONTENT_RANGE) {
        return false;
    }
    if no_transform(resp.headers.get_all(CACHE_CONTROL).iter()) || !compressible_type(resp) {
        return false;
    }
    let len = resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    len.is_none_or(|n| n >= min_size)
}

/// `Vary: Accept-Encoding`, unless `Vary` already covers it.
fn add_vary(resp: &mut ResponseHeader) {
    let covered = resp.headers.get_all(VARY).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').any(|f| {
                let f = f.trim();
                f == "*" || f.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !covered {
        let _ = resp.append_header(VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

/// A strong `ETag` made weak; one that is not a quoted string is dropped.
fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(etag) = resp.headers.get(ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    if bytes.starts_with(b"\"") {
        if let Ok(weak) = HeaderValue::from_bytes(&[b"W/", bytes].concat()) {
            let _ = resp.insert_header(ETAG, weak);
            return;
        }
    }
    resp.remove_header(&ETAG);
}

/// What the proxy decided for one request.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// The negotiated coding (`None`: identity).
    choice: Option<Encoding>,
    /// Bodies shorter than this stay as they are.
    min_size: u64,
    /// HEAD: the headers only say what a GET would vary on.
    head: bool,
}

/// The per-request compression module (see the module docs).
#[derive(Default)]
pub struct Compress {
    plan: Option<Plan>,
    encoder: Option<(Encoding, Box<dyn Encode + Send + Sync>)>,
    finished: bool,
}

impl Compress {
    /// Turns compression on for this request: negotiates the coding from the
    /// request's `Accept-Encoding` among `offered` (preference order).
    pub fn configure(&mut self, req: &RequestHeader, offered: &[Encoding], min_size: u64) {
        let choice = if no_transform(req.headers.get_all(CACHE_CONTROL).iter()) {
            None
        } else {
            negotiate(req.headers.get_all(ACCEPT_ENCODING).iter(), offered)
        };
        self.plan = Some(Plan {
            choice,
            min_size,
            head: req.method == Method::HEAD,
        });
    }

    fn header(&mut self, resp: &mut ResponseHeader, end: bool) {
        let Some(plan) = self.plan else { return };
        if resp.status.is_informational() || self.encoder.is_some() {
            return;
        }
        if !eligible(resp, plan.min_size) {
            return;
        }
        add_vary(resp);
        let Some(choice) = plan.choice else { return };
        if plan.head || end {
            return;
        }
        let Some(encoder) = choice.encoder() else {
            return;
        };
        let _ = resp.insert_header(CONTENT_ENCODING, HeaderValue::from_static(choice.token()));
        resp.remove_header(&CONTENT_LENGTH);
        resp.remove_header(&ACCEPT_RANGES);
        // HTTP/1.1 needs the framing; Pingora's HTTP/2 writer drops this field.
        let _ = resp.insert_header(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        weaken_etag(resp);
        self.encoder = Some((choice, encoder));
    }

    fn body(&mut self, body: &mut Option<Bytes>, end: bool) {
        if self.finished {
            return;
        }
        let Some((encoding, encoder)) = self.encoder.as_mut() else {
            return;
        };
        let input = body.as_deref().unwrap_or(&[]);
        match encoder.encode(input, end) {
            Ok(out) => *body = Some(out),
            Err(e) => {
                // Nothing sane can follow a broken stream: end it here.
                tracing::warn!(error = %e, "compression failed");
                *body = None;
                self.finished = true;
                return;
            }
        }
        if end {
            self.finished = true;
            let (_, bytes_in, bytes_out, _) = encoder.stat();
            crate::metrics::compressed(encoding.token(), bytes_in, bytes_out);
        }
    }
}

#[async_trait::async_trait]
impl HttpModule for Compress {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.header(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.body(body, end_of_stream);
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        if self.encoder.is_none() || self.finished {
            return Ok(None);
        }
        let mut tail = None;
        self.body(&mut tail, true);
        Ok(tail)
    }
}

/// Builds one [`Compress`] per request.
pub struct CompressBuilder;

impl HttpModuleBuilder for CompressBuilder {
    fn init(&self) -> Module {
        Box::<Compress>::default()
    }
    fn order(&self) -> i16 {
        // After other modules, like Pingora's own compression module.
        i16::MIN / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    const ALL: &[Encoding] = &[Brotli, Gzip, Zstd];

    fn pick(values: &[&str], offered: &[Encoding]) -> Option<Encoding> {
        let v: Vec<HeaderValue> = values
            .iter()
            .map(|s| HeaderValue::from_str(s).unwrap())
            .collect();
        negotiate(v.iter(), offered)
    }

    #[test]
    fn negotiation_follows_q_values_star_and_identity() {
        assert_eq!(pick(&[], ALL), None, "no Accept-Encoding: identity");
        assert_eq!(pick(&[""], ALL), None);
        assert_eq!(pick(&["gzip"], ALL), Some(Gzip));
        assert_eq!(
            pick(&["gzip, deflate, br"], ALL),
            Some(Brotli),
            "ties: our order"
        );
        assert_eq!(pick(&["gzip, br"], &[Gzip, Brotli]), Some(Gzip));
        assert_eq!(pick(&["br;q=0.5, gzip;q=0.8"], ALL), Some(Gzip));
        assert_eq!(
            pick(&["br;q=0.5", "gzip;q=0.4"], ALL),
            Some(Brotli),
            "several lines"
        );
        assert_eq!(pick(&["*"], ALL), Some(Brotli));
        assert_eq!(pick(&["br;q=0, *"], ALL), Some(Gzip));
        assert_eq!(pick(&["*;q=0"], ALL), None);
        assert_eq!(pick(&["identity"], ALL), None);
        assert_eq!(pick(&["gzip;q=0"], ALL), None);
        assert_eq!(
            pick(&["gzip;q=0.5, identity"], ALL),
            None,
            "identity preferred"
        );
        assert_eq!(pick(&["gzip;q=0.5, identity;q=0.1"], ALL), Some(Gzip));
        assert_eq!(pick(&["gzip;q=0.5, identity;q=0"], ALL), Some(Gzip));
        assert_eq!(pick(&["GZIP;Q=1"], ALL), Some(Gzip), "case-insensitive");
        assert_eq!(
            pick(&["gzip;q=2, zstd"], ALL),
            Some(Zstd),
            "bad q: item ignored"
        );
        assert_eq!(pick(&["gzip;q=0.0001"], ALL), None, "more than 3 decimals");
        assert_eq!(pick(&["zstd"], &[Gzip]), None, "not offered");
        assert_eq!(pick(&["brotli"], ALL), None, "the token is br");
    }

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn only_compressible_whole_untransformed_bodies_are_eligible() {
        let ok = [
            ("content-type", "text/html; charset=utf-8"),
            ("content-length", "5000"),
        ];
        assert!(eligible(&resp(200, &ok), 1024));
        assert!(eligible(
            &resp(200, &[("content-type", "application/problem+json")]),
            1024
        ));
        assert!(!eligible(&resp(200, &ok), 8192), "below min_size");
        assert!(!eligible(&resp(206, &ok), 0));
        assert!(!eligible(&resp(304, &ok), 0));
        assert!(!eligible(&resp(200, &[("content-type", "image/png")]), 0));
        assert!(!eligible(
            &resp(200, &[("content-type", "text/event-stream")]),
            0
        ));
        let mut gz = ok.to_vec();
        gz.push(("content-encoding", "gzip"));
        assert!(!eligible(&resp(200, &gz), 0), "never twice");
        let mut nt = ok.to_vec();
        nt.push(("cache-control", "public, No-Transform"));
        assert!(!eligible(&resp(200, &nt), 0));
        let mut range = ok.to_vec();
        range.push(("content-range", "bytes 0-9/5000"));
        assert!(!eligible(&resp(200, &range), 0));
    }

    #[test]
    fn etags_are_weakened_and_vary_is_added_once() {
        let mut r = resp(200, &[("etag", "\"abc\""), ("vary", "Origin")]);
        weaken_etag(&mut r);
        add_vary(&mut r);
        add_vary(&mut r);
        assert_eq!(r.headers["etag"], "W/\"abc\"");
        let vary: Vec<_> = r.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        let mut bad = resp(200, &[("etag", "abc")]);
        weaken_etag(&mut bad);
        assert!(!bad.headers.contains_key("etag"));
    }
}
