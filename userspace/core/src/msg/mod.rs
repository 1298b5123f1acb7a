//! The SIP message layer: datagram framing and a zero-copy view of a message.
//!
//! RFC 3261 §7 (message format: start line, §7.3 headers incl. folding and §7.3.3 compact
//! forms, §7.4 bodies, §7.5 leading CRLF), §18.3 (framing over UDP: Content-Length governs,
//! extra bytes are discarded, a short body is an error). Header values are parsed on demand
//! by [`fields`]; URIs by [`uri`]; responses are built by [`build`].
//!
//! Validation happens once here: [`parse`] returns either an error (nothing answerable) or a
//! [`Message`] whose `defect` says whether and how the request must be rejected. Nothing in
//! this module panics on any input (fuzzed: `fuzz/fuzz_targets/frame.rs`).

pub mod build;
pub mod fields;
pub mod header;
pub mod uri;

pub use header::HeaderName;

use fields::{is_token, trim, CSeq, NameAddr, Via};
use smallvec::SmallVec;
use uri::Uri;

/// Largest datagram we accept. RFC 3261 §18.1.1 keeps UDP requests under the path MTU, but
/// a received datagram may legally be up to 64 KiB; beyond this we answer 513.
pub const MAX_MESSAGE_SIZE: usize = 32 * 1024;
/// Headers beyond this many make the message "too large" (a parse-cost bound).
pub const MAX_HEADERS: usize = 128;

/// Why a datagram could not be turned into a message at all (counted drop, no answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Only CRLFs: an RFC 5626 keep-alive, not an error.
    KeepAlive,
    /// The start line is neither a request line nor a status line.
    BadStartLine,
    /// A status line that is malformed (responses are never answered).
    BadStatusLine,
    /// Not valid even as a header section (no header terminator and no final CRLF).
    Truncated,
}

/// Why a parseable request must be rejected. Each maps to a status code and reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Defect {
    BadRequestLine,
    VersionNotSupported,
    BadHeaderLine,
    BadContentLength,
    MultipleContentLength,
    BodyTruncated,
    TooLarge,
    TooManyHeaders,
    DuplicateHeader(HeaderName),
    MissingHeader(HeaderName),
    BadHeader(HeaderName, fields::FieldError),
    CSeqMethodMismatch,
}

impl Defect {
    pub fn status(self) -> u16 {
        match self {
            Defect::VersionNotSupported => 505,
            Defect::TooLarge | Defect::TooManyHeaders => 513,
            _ => 400,
        }
    }

    /// The reason phrase, specific enough for an operator reading a capture.
    pub fn reason(self) -> &'static str {
        use HeaderName as H;
        match self {
            Defect::BadRequestLine => "Malformed Request-Line",
            Defect::VersionNotSupported => "Version Not Supported",
            Defect::BadHeaderLine => "Malformed Header Line",
            Defect::BadContentLength => "Bad Content-Length",
            Defect::MultipleContentLength => "Multiple Content-Length Values",
            Defect::BodyTruncated => "Content-Length Exceeds Message",
            Defect::TooLarge => "Message Too Large",
            Defect::TooManyHeaders => "Message Too Large - Too Many Headers",
            Defect::DuplicateHeader(h) => match h {
                H::From => "Duplicate From",
                H::To => "Duplicate To",
                H::CallId => "Duplicate Call-ID",
                H::CSeq => "Duplicate CSeq",
                H::MaxForwards => "Duplicate Max-Forwards",
                H::Expires => "Duplicate Expires",
                _ => "Duplicate Header",
            },
            Defect::MissingHeader(h) => match h {
                H::Via => "Missing Via",
                H::From => "Missing From",
                H::To => "Missing To",
                H::CallId => "Missing Call-ID",
                H::CSeq => "Missing CSeq",
                _ => "Missing Mandatory Header",
            },
            Defect::BadHeader(h, e) => match h {
                H::Via => "Malformed Via",
                H::From => "Malformed From",
                H::To => "Malformed To",
                H::CallId => "Malformed Call-ID",
                H::CSeq => "Malformed CSeq",
                H::MaxForwards => "Malformed Max-Forwards",
                H::Expires => "Malformed Expires",
                H::Contact => "Malformed Contact",
                _ => e.reason(),
            },
            Defect::CSeqMethodMismatch => "CSeq Method Does Not Match Request-Line",
        }
    }
}

/// Request methods we treat specially; everything else is `Other` (still a valid token).
/// Methods are case-sensitive (RFC 3261 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Register,
    Invite,
    Ack,
    Cancel,
    Bye,
    Options,
    Message,
    Subscribe,
    Notify,
    Info,
    Update,
    Prack,
    Refer,
    Publish,
    Other,
}

impl Method {
    pub fn from_bytes(m: &[u8]) -> Method {
        match m {
            b"REGISTER" => Method::Register,
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"CANCEL" => Method::Cancel,
            b"BYE" => Method::Bye,
            b"OPTIONS" => Method::Options,
            b"MESSAGE" => Method::Message,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"INFO" => Method::Info,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"REFER" => Method::Refer,
            b"PUBLISH" => Method::Publish,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request {
        method: Method,
        method_raw: &'a [u8],
        uri: &'a [u8],
    },
    Response {
        code: u16,
        reason: &'a [u8],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: HeaderName,
    /// The name as on the wire (for `Other` headers we pass through).
    pub raw_name: &'a [u8],
    /// Trimmed value; folded continuation lines are already joined by spaces.
    pub value: &'a [u8],
}

/// A framed message: start line, header lines, body. Hot fields are located during framing
/// and parsed by the accessors below.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    headers: SmallVec<[Header<'a>; 16]>,
    pub body: &'a [u8],
    /// The first reason this request must be rejected, if any. Always `None` for responses
    /// that parse (a broken response is a [`ParseError`]).
    pub defect: Option<Defect>,
    /// Index in `headers` of the first occurrence of each hot header (u8::MAX: absent).
    first: [u8; HOT_SLOTS],
    /// Parsed hot fields (set whenever they all validate, even on a defective request).
    pub hot: Option<Hot<'a>>,
    /// The top Via, when it parses: enough to answer a defective request (RFC 4475 insuf).
    pub top_via: Option<Via<'a>>,
}

const HOT_SLOTS: usize = 8;

fn hot_slot(h: HeaderName) -> Option<usize> {
    Some(match h {
        HeaderName::Via => 0,
        HeaderName::From => 1,
        HeaderName::To => 2,
        HeaderName::CallId => 3,
        HeaderName::CSeq => 4,
        HeaderName::MaxForwards => 5,
        HeaderName::Expires => 6,
        HeaderName::ContentLength => 7,
        _ => return None,
    })
}

/// The fields every transaction needs, validated once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hot<'a> {
    pub via: Via<'a>,
    pub from: NameAddr<'a>,
    pub to: NameAddr<'a>,
    /// The To URI, validated with the rest (the registrar's AOR comes from it).
    pub to_uri: Uri<'a>,
    pub call_id: &'a [u8],
    pub cseq: CSeq<'a>,
    /// `None` when absent (RFC 3261 §8.1.1.6 says to assume 70 for proxies).
    pub max_forwards: Option<u32>,
}

/// Frames and views one datagram.
///
/// `scratch` is used only when the header section has folded lines (RFC 3261 §7.3.1): the
/// message is copied there and each CRLF that precedes a continuation line is overwritten
/// with two spaces, which keeps every offset — and so the body position — unchanged.
pub fn parse<'a>(data: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<Message<'a>, ParseError> {
    // RFC 3261 §7.5: ignore CRLFs before the start line (keep-alives, sloppy stacks).
    let mut start = 0;
    while start < data.len() && (data[start] == b'\r' || data[start] == b'\n') {
        start += 1;
    }
    if start == data.len() {
        return Err(ParseError::KeepAlive);
    }
    let too_large = data.len() > MAX_MESSAGE_SIZE;
    let data = &data[start..data.len().min(start + MAX_MESSAGE_SIZE)];

    // Fast path: the datagram as is. Folded header lines (RFC 3261 §7.3.1) are rare; when the
    // scan meets one it starts over on a copy in `scratch` where every line break that
    // precedes a continuation line is overwritten with spaces. That keeps every offset — and
    // so the body position — unchanged.
    let Some(first_nl) = fields::find_byte(data, b'\n') else {
        return Err(ParseError::Truncated);
    };
    let (start_line, defect) = parse_start_line(trim_cr(&data[..first_nl]))?;
    let mut msg = Message {
        start: start_line,
        headers: SmallVec::new(),
        body: &[],
        defect,
        first: [u8::MAX; HOT_SLOTS],
        hot: None,
        top_via: None,
    };
    if too_large {
        msg.defect = msg.defect.or(Some(Defect::TooLarge));
    }
    let (buf, body_start, content_length) = match msg.scan_headers(data, first_nl + 1) {
        Ok((b, cl)) => (data, b, cl),
        Err(ScanError::Truncated) => return Err(ParseError::Truncated),
        Err(ScanError::Folded) => {
            scratch.clear();
            scratch.extend_from_slice(data);
            unfold(scratch);
            msg.headers.clear();
            msg.first = [u8::MAX; HOT_SLOTS];
            msg.defect = defect.or(too_large.then_some(Defect::TooLarge));
            let buf: &'a [u8] = scratch;
            match msg.scan_headers(buf, first_nl + 1) {
                Ok((b, cl)) => (buf, b, cl),
                Err(_) => return Err(ParseError::Truncated),
            }
        }
    };
    let is_request = msg.is_request();
    let mut defect = msg.defect;

    // RFC 3261 §18.3: Content-Length governs; bytes past it are discarded; a body shorter
    // than announced is an error. Over UDP a missing Content-Length means "to the end".
    let avail = &buf[body_start.min(buf.len())..];
    msg.body = match content_length {
        Some(n) if n <= avail.len() => &avail[..n],
        Some(_) => {
            defect = defect.or(Some(Defect::BodyTruncated));
            avail
        }
        None => avail,
    };

    msg.top_via = msg
        .header(HeaderName::Via)
        .and_then(first_list_item)
        .and_then(|v| Via::parse(v).ok());
    if is_request {
        match msg.validate_hot() {
            Ok(h) => msg.hot = Some(h),
            Err(d) => defect = defect.or(Some(d)),
        }
    } else {
        // Responses are routed by Via; a response we cannot parse that far is dropped.
        match msg.validate_hot() {
            Ok(h) if defect.is_none() => msg.hot = Some(h),
            _ => return Err(ParseError::BadStatusLine),
        }
    }
    msg.defect = defect;
    Ok(msg)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanError {
    Folded,
    Truncated,
}

/// Joins folded lines in place: a line break followed by SP/HT becomes spaces.
fn unfold(buf: &mut [u8]) {
    let head_end = scan_head_end(buf);
    for i in 1..head_end {
        if buf[i] == b'\n' && matches!(buf.get(i + 1), Some(b' ' | b'\t')) {
            buf[i] = b' ';
            if buf[i - 1] == b'\r' {
                buf[i - 1] = b' ';
            }
        }
    }
}

/// The end of the header section ignoring folding (for [`unfold`]).
fn scan_head_end(buf: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[pos..]) {
        let nl = pos + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return nl + 1,
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return nl + 1,
            None => return buf.len(),
            _ => pos = nl + 1,
        }
    }
    buf.len()
}

#[inline]
fn trim_cr(line: &[u8]) -> &[u8] {
    match line {
        [rest @ .., b'\r'] => rest,
        _ => line,
    }
}

/// The first element of a list header value: the common case (no quotes) is one scan.
fn first_list_item(v: &[u8]) -> Option<&[u8]> {
    if fields::find_byte(v, b'"').is_none() {
        let end = fields::find_byte(v, b',').unwrap_or(v.len());
        let item = trim(&v[..end]);
        return (!item.is_empty()).then_some(item);
    }
    fields::split_list(v).next()
}

impl<'a> Message<'a> {
    /// Header lines from `pos` to the empty line, in one pass: one scan per line, names
    /// checked with a lookup table. Returns the body start and the Content-Length.
    fn scan_headers(
        &mut self,
        buf: &'a [u8],
        mut pos: usize,
    ) -> Result<(usize, Option<usize>), ScanError> {
        let is_request = self.is_request();
        let mut content_length: Option<usize> = None;
        let mut defect = self.defect;
        let body_start = loop {
            if pos >= buf.len() {
                // Headers end at the end of the datagram without the empty line (RFC 4475
                // baddn.dat as distributed): framed, with no body.
                break buf.len();
            }
            match buf[pos] {
                b'\n' => break pos + 1,
                b'\r' if buf.get(pos + 1) == Some(&b'\n') => break pos + 2,
                b' ' | b'\t' => return Err(ScanError::Folded),
                _ => {}
            }
            let eol = match fields::find_byte(&buf[pos..], b'\n') {
                Some(i) => pos + i,
                None => return Err(ScanError::Truncated),
            };
            let line = trim_cr(&buf[pos..eol]);
            pos = eol + 1;
            // header-name HCOLON, HCOLON = *( SP / HTAB ) ":" SWS: the name is what precedes
            // the first ':' less trailing SP/HT, and must be a non-empty token.
            let Some(colon) = fields::find_byte(line, b':') else {
                defect = defect.or(Some(Defect::BadHeaderLine));
                continue;
            };
            let mut n = colon;
            while n > 0 && (line[n - 1] == b' ' || line[n - 1] == b'\t') {
                n -= 1;
            }
            let raw_name = &line[..n];
            let name = match HeaderName::from_canonical(raw_name) {
                Some(h) => h,
                None if fields::is_token(raw_name) => HeaderName::from_bytes(raw_name),
                None => {
                    defect = defect.or(Some(Defect::BadHeaderLine));
                    continue;
                }
            };
            let value = trim(&line[colon + 1..]);
            if self.headers.len() >= MAX_HEADERS {
                defect = defect.or(Some(Defect::TooManyHeaders));
                continue;
            }
            if let Some(slot) = hot_slot(name) {
                if self.first[slot] == u8::MAX {
                    self.first[slot] = self.headers.len() as u8;
                } else if name.is_singleton() && is_request {
                    defect = defect.or(Some(Defect::DuplicateHeader(name)));
                }
            } else if name.is_singleton()
                && is_request
                && self.headers.iter().any(|h| h.name == name)
            {
                defect = defect.or(Some(Defect::DuplicateHeader(name)));
            }
            if name == HeaderName::ContentLength {
                match fields::parse_u32(value, false) {
                    Ok(v) => match content_length {
                        None => content_length = Some(v as usize),
                        // RFC 4475 §3.1.2.14 mcl01: no way to know which one is right.
                        Some(_) => defect = defect.or(Some(Defect::MultipleContentLength)),
                    },
                    Err(_) => defect = defect.or(Some(Defect::BadContentLength)),
                }
            }
            self.headers.push(Header {
                name,
                raw_name,
                value,
            });
        };
        self.defect = defect;
        Ok((body_start, content_length))
    }
}

fn parse_start_line(line: &[u8]) -> Result<(StartLine<'_>, Option<Defect>), ParseError> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase
        let sp = fields::find_byte(line, b' ').ok_or(ParseError::BadStatusLine)?;
        if !line[..sp].eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::BadStatusLine);
        }
        let rest = &line[sp + 1..];
        if rest.len() < 3
            || !rest[..3].iter().all(u8::is_ascii_digit)
            || rest.get(3).is_some_and(|&c| c != b' ')
        {
            return Err(ParseError::BadStatusLine);
        }
        let code =
            (rest[0] - b'0') as u16 * 100 + (rest[1] - b'0') as u16 * 10 + (rest[2] - b'0') as u16;
        // RFC 4475 §3.1.2.? bigcode: codes above 699 are invalid.
        if !(100..=699).contains(&code) {
            return Err(ParseError::BadStatusLine);
        }
        let reason = rest.get(4..).unwrap_or(&[]);
        return Ok((StartLine::Response { code, reason }, None));
    }
    // Request-Line = Method SP Request-URI SP SIP-Version: exactly one SP each
    // (RFC 4475 §3.1.2.5 lwsstart, §3.1.2.6 trws, §3.1.2.7 lwsruri).
    let sp1 = fields::find_byte(line, b' ').ok_or(ParseError::BadStartLine)?;
    let method_raw = &line[..sp1];
    if !is_token(method_raw) {
        return Err(ParseError::BadStartLine);
    }
    let rest = &line[sp1 + 1..];
    let Some(sp2) = fields::rfind_byte(rest, b' ') else {
        return Err(ParseError::BadStartLine);
    };
    let uri = &rest[..sp2];
    let version = &rest[sp2 + 1..];
    let method = Method::from_bytes(method_raw);
    let mut defect = None;
    if uri.is_empty() || fields::has_lws(uri) || version.is_empty() {
        defect = Some(Defect::BadRequestLine);
    } else if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        defect = Some(
            if version.len() > 4 && version[..4].eq_ignore_ascii_case(b"SIP/") {
                Defect::VersionNotSupported
            } else {
                Defect::BadRequestLine
            },
        );
    }
    Ok((
        StartLine::Request {
            method,
            method_raw,
            uri: trim(uri),
        },
        defect,
    ))
}

impl<'a> Message<'a> {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            _ => None,
        }
    }

    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri),
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            _ => None,
        }
    }

    /// All header lines in order.
    pub fn headers(&self) -> &[Header<'a>] {
        &self.headers
    }

    /// First value of header `name`.
    pub fn header(&self, name: HeaderName) -> Option<&'a [u8]> {
        if let Some(slot) = hot_slot(name) {
            let i = self.first[slot];
            return (i != u8::MAX).then(|| self.headers[i as usize].value);
        }
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value)
    }

    /// Every line of header `name`, in order (not split on commas).
    pub fn header_lines(&self, name: HeaderName) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| h.value)
    }

    /// Every element of list header `name` across all its lines (RFC 3261 §7.3.1).
    pub fn list(&self, name: HeaderName) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.header_lines(name).flat_map(fields::split_list)
    }

    /// The Expires header value (delta-seconds, saturating); `Err` when present but not
    /// a number.
    pub fn expires(&self) -> Result<Option<u32>, fields::FieldError> {
        self.header(HeaderName::Expires)
            .map(|v| fields::parse_u32(v, true))
            .transpose()
    }

    /// Finds, validates and parses the fields every request/response needs.
    fn validate_hot(&self) -> Result<Hot<'a>, Defect> {
        use HeaderName as H;
        let need = |h: HeaderName| self.header(h).ok_or(Defect::MissingHeader(h));
        need(H::Via)?;
        let via = self
            .top_via
            .ok_or(Defect::BadHeader(H::Via, fields::FieldError::Via))?;
        let parse_na = |h: HeaderName| -> Result<(NameAddr<'a>, Uri<'a>), Defect> {
            let v = need(h)?;
            let na = NameAddr::parse(v).map_err(|e| Defect::BadHeader(h, e))?;
            if !na.params_ok() {
                return Err(Defect::BadHeader(h, fields::FieldError::Params));
            }
            let uri = na.parsed_uri().map_err(|e| Defect::BadHeader(h, e))?;
            Ok((na, uri))
        };
        let (from, _) = parse_na(H::From)?;
        let (to, to_uri) = parse_na(H::To)?;
        let call_id = need(H::CallId)?;
        if call_id.is_empty() || fields::has_lws(call_id) {
            return Err(Defect::BadHeader(H::CallId, fields::FieldError::Params));
        }
        let cseq = CSeq::parse(need(H::CSeq)?).map_err(|e| Defect::BadHeader(H::CSeq, e))?;
        if let StartLine::Request { method_raw, .. } = self.start {
            // RFC 3261 §8.2.2 / RFC 4475 §3.1.2.17-18 mismatch01/02.
            if cseq.method != method_raw {
                return Err(Defect::CSeqMethodMismatch);
            }
        }
        let max_forwards = match self.header(H::MaxForwards) {
            None => None,
            Some(v) => {
                let n = fields::parse_u32(v, false)
                    .map_err(|e| Defect::BadHeader(H::MaxForwards, e))?;
                if n > 255 {
                    // Max-Forwards is 0-255 in practice (RFC 3261 §20.22 allows 1*DIGIT,
                    // RFC 4475 §3.1.2.? scalarlg treats huge values as invalid).
                    return Err(Defect::BadHeader(
                        H::MaxForwards,
                        fields::FieldError::Number,
                    ));
                }
                Some(n)
            }
        };
        Ok(Hot {
            via,
            from,
            to,
            to_uri,
            call_id,
            cseq,
            max_forwards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &[u8] = b"REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Alice <sip:alice@example.test>\r\n\
From: Alice <sip:alice@example.test>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.test\r\n\
CSeq: 314159 REGISTER\r\n\
Contact: <sip:alice@192.0.2.10:5062>;expires=3600, <sip:alice@198.51.100.7>;q=0.5\r\n\
Expires: 7200\r\n\
Content-Length: 0\r\n\r\n";

    fn p(data: &[u8]) -> Message<'_> {
        // Leaks the scratch buffer: fine for tests, keeps the signature simple.
        let scratch: &'static mut Vec<u8> = Box::leak(Box::new(Vec::new()));
        parse(data, scratch).unwrap()
    }

    #[test]
    fn typical_register() {
        let m = p(REG);
        assert_eq!(m.defect, None);
        assert_eq!(m.method(), Some(Method::Register));
        assert_eq!(m.request_uri(), Some(&b"sip:example.test"[..]));
        let h = m.hot.unwrap();
        assert_eq!(h.via.branch, Some(&b"z9hG4bK776asdhds"[..]));
        assert_eq!(h.via.rport, Some(None));
        assert_eq!(h.from.tag(), Some(&b"1928301774"[..]));
        assert_eq!(h.to.tag(), None);
        assert_eq!(h.call_id, b"a84b4c76e66710@pc33.example.test");
        assert_eq!(h.cseq.seq, 314159);
        assert_eq!(h.max_forwards, Some(70));
        assert_eq!(m.list(HeaderName::Contact).count(), 2);
        assert_eq!(m.expires(), Ok(Some(7200)));
        assert!(m.body.is_empty());
    }

    #[test]
    fn compact_forms_and_folding() {
        let msg = b"\r\n\r\nREGISTER sip:example.test SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.10\r\n ;branch=z9hG4bKfold\r\n\
t: <sip:bob@example.test>\r\n\
f: <sip:bob@example.test>\r\n\t;tag=x\r\n\
i: cid\r\n\
CSeq: 1 REGISTER\r\n\
m: <sip:bob@192.0.2.10>\r\n\
l: 4\r\n\r\nbodyEXTRA";
        let m = p(msg);
        assert_eq!(m.defect, None, "{:?}", m.defect);
        let h = m.hot.unwrap();
        assert_eq!(h.via.branch, Some(&b"z9hG4bKfold"[..]));
        assert_eq!(h.from.tag(), Some(&b"x"[..]));
        assert_eq!(h.call_id, b"cid");
        // Extra bytes after Content-Length are discarded (RFC 3261 §18.3).
        assert_eq!(m.body, b"body");
    }

    #[test]
    fn framing_defects() {
        let cases: &[(&[u8], Defect)] = &[
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 50\r\n\r\nshort", Defect::BodyTruncated),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 1\r\nl: 2\r\n\r\nab", Defect::MultipleContentLength),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: -3\r\n\r\n", Defect::BadContentLength),
            (b"OPTIONS  sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", Defect::BadRequestLine),
            (b"OPTIONS sip:x@y SIP/7.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n", Defect::VersionNotSupported),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n", Defect::CSeqMethodMismatch),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nTo: <sip:z@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n\r\n", Defect::DuplicateHeader(HeaderName::To)),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nTo: <sip:x@y>\r\nCSeq: 1 OPTIONS\r\n\r\n", Defect::MissingHeader(HeaderName::From)),
            (b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nNo colon here\r\n\r\n", Defect::BadHeaderLine),
        ];
        for (raw, want) in cases {
            let m = p(raw);
            assert_eq!(m.defect, Some(*want), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn responses_and_garbage() {
        let m = p(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>;tag=2\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(m.status(), Some(200));
        let mut s = Vec::new();
        assert_eq!(
            parse(b"SIP/2.0 900 Weird\r\n\r\n", &mut s).unwrap_err(),
            ParseError::BadStatusLine
        );
        assert_eq!(
            parse(b"\r\n\r\n", &mut s).unwrap_err(),
            ParseError::KeepAlive
        );
        assert_eq!(parse(b"hello", &mut s).unwrap_err(), ParseError::Truncated);
        assert_eq!(
            parse(b"\x00\x01 junk\r\n\r\n", &mut s).unwrap_err(),
            ParseError::BadStartLine
        );
    }

    #[test]
    fn no_panic_on_prefixes_and_byte_flips() {
        let mut scratch = Vec::new();
        for n in 0..REG.len() {
            let _ = parse(&REG[..n], &mut scratch);
        }
        let mut x = REG.to_vec();
        for i in 0..x.len() {
            for b in [0u8, b'\r', b'\n', b' ', b':', b';', b'<', b'"', b',', 0xff] {
                let old = x[i];
                x[i] = b;
                let _ = parse(&x, &mut scratch);
                x[i] = old;
            }
        }
    }
}
