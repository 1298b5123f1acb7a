//! RFC 4475 ("SIP Torture Test Messages") expectations for a registrar/proxy edge.
//!
//! One row per torture message (RFC 4475 §3, the 49 `*.dat` files of its Appendix B archive):
//! what RFC 4475 says an element must do with it, narrowed to what *this* server must answer
//! when the datagram arrives over UDP from a phone in a user IP Group with `auth = "none"`,
//! nobody registered, and `server.domain` set to the row's [`TortureCase::domain`] (the host of
//! the message's Request-URI). [`TortureCase::expected_for`] gives the answer when the served
//! domain is something else.
//!
//! The messages themselves are not in this repository: they are read from
//! `../shared/rfc4475` relative to the repository root, or from `$SUT_TORTURE_DIR`.
//!
//! Conventions shared by every row:
//! - `Expect::Response(codes)` is about the *final* response (a 100 Trying may precede it for
//!   INVITE). It goes back over UDP to the datagram's source IP (the `received` address); the
//!   port is the source port only when the top Via has `rport` (RFC 3581: only `mpart01`),
//!   otherwise the sent-by port or 5060 (RFC 3261 §18.2.2) — 5050 for `quotbal`, 5060 for all
//!   the others. A harness either listens there or configures the server to force rport. A
//!   top Via naming TCP/TLS/SCTP (`esc02`, `intmeth`, `trws`, `bext01`, ...) does not change
//!   that: the request came over UDP and there is no connection to answer on.
//! - `Expect::NoResponse`: nothing comes back within the wait. All such rows are responses that
//!   match no client transaction; RFC 3261 §18.1.2 discards a response whose top Via is not
//!   ours. A stateless proxy following §16.11 blindly would instead forward on the second Via;
//!   `bcast` exists to show why that must not happen.
//! - Relaying: the edge is not an open relay. A request whose Request-URI domain is not served
//!   gets 403 (what Kamailio's example configuration answers, "Relay Forbidden") or 404
//!   (RFC 3261 §21.4.5 names 404 for "domain ... does not match any of the domains handled");
//!   both are accepted ([`FOREIGN`]).
//! - User lookup: a request for a user of our domain with no binding gets 404 (RFC 4475
//!   §3.1.1.2: "a proxy will generate a 404") or 480 (RFC 3261 §16.5: an empty target set
//!   SHOULD give 480). With `auth = "none"` the server cannot tell an unknown user from an
//!   unregistered one, so both are accepted ([`NO_BINDING`]).

use std::path::{Path, PathBuf};

/// What the server must send back for one torture datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A final response with any of these codes.
    Response(&'static [u16]),
    /// Silence: the datagram is dropped (stray or unparseable response).
    NoResponse,
    /// Some final response, any code but these.
    NotCode(&'static [u16]),
}

impl Expect {
    /// Whether the observed final status code (`None` = nothing arrived) satisfies this.
    pub fn accepts(&self, got: Option<u16>) -> bool {
        match (*self, got) {
            (Expect::Response(codes), Some(c)) => codes.contains(&c),
            (Expect::NoResponse, None) => true,
            (Expect::NotCode(codes), Some(c)) => !codes.contains(&c),
            _ => false,
        }
    }

    /// The acceptable codes, if a response is expected (empty for `NoResponse`).
    pub fn codes(&self) -> &'static [u16] {
        match *self {
            Expect::Response(c) => c,
            Expect::NoResponse | Expect::NotCode(_) => &[],
        }
    }
}

/// One RFC 4475 message and what the edge must do with it.
#[derive(Clone, Copy, Debug)]
pub struct TortureCase {
    /// File name in the torture directory, e.g. `wsinv.dat`.
    pub file: &'static str,
    /// RFC 4475 section, e.g. `3.1.1.1`.
    pub section: &'static str,
    /// RFC 4475 says parsers must accept it as well formed (§3.1.1, and the semantically odd but
    /// syntactically fine messages of §3.2–3.4).
    pub valid: bool,
    /// The domain the server must serve for `expect` to apply: the Request-URI host. `None`
    /// for responses and for Request-URIs that have no SIP host (`unkscm`, `novelsc`).
    pub domain: Option<&'static str>,
    /// Answer when the server serves `domain`.
    pub expect: Expect,
    /// Answer when it does not (relay refused, or the same when the decision precedes routing).
    pub foreign: Expect,
    /// RFC 4475's words in short, and why these codes.
    pub note: &'static str,
}

impl TortureCase {
    /// The expectation given the domain the server under test serves (case-insensitive).
    pub fn expected_for(&self, served_domain: &str) -> Expect {
        match self.domain {
            Some(d) if !d.eq_ignore_ascii_case(served_domain) => self.foreign,
            _ => self.expect,
        }
    }

    /// Whether the message is a response (status line) rather than a request.
    pub fn is_response(&self) -> bool {
        self.expect == Expect::NoResponse
    }
}

/// Not our domain: relaying denied (see the module comment).
pub const FOREIGN: &[u16] = &[403, 404];
/// Our domain, no binding for the user (see the module comment).
pub const NO_BINDING: &[u16] = &[404, 480];
/// Our domain, no binding, or a preloaded Route from a phone refused by policy.
const NO_BINDING_OR_ROUTE_REFUSED: &[u16] = &[403, 404, 480];
/// RFC 4475 allows rejecting as malformed (400) or processing liberally (then no binding).
const BAD_OR_NO_BINDING: &[u16] = &[400, 404, 480];
/// Same, when the domain is not ours.
const BAD_OR_FOREIGN: &[u16] = &[400, 403, 404];

/// Every RFC 4475 §3 message, in RFC order.
pub const CASES: &[TortureCase] = &[
    // ---- 3.1.1 Valid messages -------------------------------------------------------------
    TortureCase {
        file: "wsinv.dat",
        section: "3.1.1.1",
        valid: true,
        domain: Some("chair-dnrc.example.com"),
        expect: Expect::Response(NO_BINDING_OR_ROUTE_REFUSED),
        foreign: Expect::Response(FOREIGN),
        note: "Short tortuous INVITE: folding everywhere (a Via split over three lines), LWS \
               around colons, Max-Forwards 0068 / CSeq 0009, branch without magic cookie (RFC \
               2543 matching), unknown headers, 3 Via values in 2 headers. All elements must \
               treat it as well formed, so never 400. It carries a preloaded loose Route to \
               services.example.com: RFC 3261 §16.5 looks up our domain's user first (empty \
               target set -> 404/480); an edge may also refuse the phone's preloaded Route (403). \
               It must never resolve or forward to services.example.com.",
    },
    TortureCase {
        file: "intmeth.dat",
        section: "3.1.1.2",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[404, 480, 501]),
        foreign: Expect::Response(&[403, 404, 501]),
        note: "Unknown method made of every token character; R-URI userinfo with a password; \
               quoted NUL/BEL/DEL in To; UTF-8 header value. RFC 4475: a proxy that does not \
               know the URI generates 404, an endpoint 501 with Allow. The edge proxies it to \
               a user with no binding: 404 (480 per §16.5), or 501 if it answers as endpoint. \
               `%` is not an escape in the method: it is not INVITE.",
    },
    TortureCase {
        file: "esc01.dat",
        section: "3.1.1.3",
        valid: true,
        domain: Some("example.net"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "%-escapes in R-URI, To, From, Contact. The R-URI user is `sips:user@example.com` \
               escaped; the host is example.net (not example.com, not a sips URI). Well formed: \
               lookup of that odd user at our domain -> no binding.",
    },
    TortureCase {
        file: "escnull.dat",
        section: "3.1.1.4",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "REGISTER of AOR sip:null-%00-null@example.com with two contacts whose user parts \
               are %00 and %00%00. Well formed; the AOR must not be cut at the NUL and the two \
               contacts are distinct bindings: 200 listing both.",
    },
    TortureCase {
        file: "esc02.dat",
        section: "3.1.1.5",
        valid: true,
        domain: Some("registrar.example.com"),
        expect: Expect::Response(&[501]),
        foreign: Expect::Response(&[403, 404, 501]),
        note: "Method RE%47IST%45R is an unknown method, NOT REGISTER (must not get 200 or create \
               bindings). R-URI is the server itself (no user part), so the edge is the endpoint: \
               RFC 4475 says an endpoint rejects with 501 (RFC 3261 §21.5.2: method not \
               recognized; 405 is for recognised-but-unsupported methods). C%6Fntact is an \
               extension header, so there are 2 Contacts, not 3.",
    },
    TortureCase {
        file: "lwsdisp.dat",
        section: "3.1.1.6",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "No LWS between display name and `<` in From: RFC 3261 grammar bug, elements must \
               accept it (no 400). OPTIONS to user@domain is routed: no binding.",
    },
    TortureCase {
        file: "longreq.dat",
        section: "3.1.1.7",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "3.5 KB INVITE: long display name, params, tag, Call-ID, extension header; 34 Via \
               values in mixed-case long and compact forms (`v :`), top one TCP without branch. \
               Well formed; must not be truncated by a small receive buffer; the response echoes \
               every Via in order.",
    },
    TortureCase {
        file: "dblreq.dat",
        section: "3.1.1.8",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "One UDP datagram: a REGISTER with Content-Length 0, then octets that look like an \
               INVITE. RFC 3261 §18.3: bytes after the body are discarded. Exactly one response, \
               the REGISTER's 200; nothing (no 100, no 404) for the INVITE-looking noise.",
    },
    TortureCase {
        file: "semiuri.dat",
        section: "3.1.1.9",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "R-URI user part `user;par=u%40example.net` contains `;`: the host is example.com \
               and there are no URI parameters. Well formed; no binding for that user.",
    },
    TortureCase {
        file: "transports.dat",
        section: "3.1.1.10",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "Via values with UDP, SCTP, TLS, an UNKNOWN transport and TCP: process as if they \
               were any other transport. OPTIONS to a user: no binding.",
    },
    TortureCase {
        file: "mpart01.dat",
        section: "3.1.1.11",
        valid: true,
        domain: Some("example.org"),
        expect: Expect::Response(NO_BINDING_OR_ROUTE_REFUSED),
        foreign: Expect::Response(FOREIGN),
        note: "MESSAGE with a multipart/mixed body whose binary part contains NUL bytes: frame by \
               Content-Length (553), never by C string functions. Preloaded strict Route \
               <sip:127.0.0.1:5080>: the user lookup at our domain comes first (no binding: \
               404/480), or the phone's preloaded Route is refused (403). The edge must not \
               forward to 127.0.0.1:5080.",
    },
    TortureCase {
        file: "unreason.dat",
        section: "3.1.1.12",
        valid: true,
        domain: None,
        expect: Expect::NoResponse,
        foreign: Expect::NoResponse,
        note: "200 OK with a UTF-8 reason phrase with escapes and a body. Well formed, but a \
               response matching no transaction: discarded (RFC 3261 §18.1.2, top Via not ours).",
    },
    TortureCase {
        file: "noreason.dat",
        section: "3.1.1.13",
        valid: true,
        domain: None,
        expect: Expect::NoResponse,
        foreign: Expect::NoResponse,
        note: "`SIP/2.0 100 ` with an empty reason phrase (the SP is present): well formed; a \
               stray response, discarded.",
    },
    // ---- 3.1.2 Invalid messages -----------------------------------------------------------
    TortureCase {
        file: "badinv01.dat",
        section: "3.1.2.1",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Extraneous separators in Via (`;;,;,,`) and Contact (`;;;;`): RFC 4475 says \
               respond 400.",
    },
    TortureCase {
        file: "clerr.dat",
        section: "3.1.2.2",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Content-Length 9999, body 154 bytes. Over UDP the datagram ends before the body: \
               RFC 3261 §18.3 / RFC 4475 say a request gets 400.",
    },
    TortureCase {
        file: "ncl.dat",
        section: "3.1.2.3",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Content-Length -999. RFC 4475: respond with an error; over UDP the rest of the \
               datagram is simply discarded. 400.",
    },
    TortureCase {
        file: "scalar02.dat",
        section: "3.1.2.4",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "REGISTER with CSeq 2^65, Max-Forwards 300, Expires 10^100, contact \
               expires=280297596632815. RFC 4475: respond 400 because of the CSeq. (Had only \
               Max-Forwards been out of range the element could treat it as absent; had only the \
               expiries been, it could use the default, 3600. So not 483 and not 423.)",
    },
    TortureCase {
        file: "scalarlg.dat",
        section: "3.1.2.5",
        valid: false,
        domain: None,
        expect: Expect::NoResponse,
        foreign: Expect::NoResponse,
        note: "503 response with CSeq > 2^32-1, a huge Retry-After and a 4-digit Warning code. \
               RFC 4475: an element receiving this response simply discards it. (The 400-vs-483 \
               question belongs to the request twin, scalar02: 400, never 483.)",
    },
    TortureCase {
        file: "quotbal.dat",
        section: "3.1.2.6",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Unterminated quoted string in the To display name: 400.",
    },
    TortureCase {
        file: "ltgtruri.dat",
        section: "3.1.2.7",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Request-URI enclosed in <>: 400.",
    },
    TortureCase {
        file: "lwsruri.dat",
        section: "3.1.2.8",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "LWS inside the Request-URI (`sip:user@example.com; lr`): the request line has four \
               elements. RFC 4475: 400.",
    },
    TortureCase {
        file: "lwsstart.dat",
        section: "3.1.2.9",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "Multiple SP between request-line elements. RFC 4475: acceptable to reject as \
               malformed (400); a liberal element may ignore the extra SP (then: no binding), and \
               must not forward them.",
    },
    TortureCase {
        file: "trws.dat",
        section: "3.1.2.10",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "SP characters after SIP/2.0 at the end of the request line. Same latitude as \
               lwsstart: 400, or ignore them (OPTIONS to a user: no binding).",
    },
    TortureCase {
        file: "escruri.dat",
        section: "3.1.2.11",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "Escaped headers (`?Route=...`) in the SIP Request-URI. RFC 4475: 400 is \
               acceptable; a liberal element ignores them, and a proxy must neither keep them in \
               the forwarded R-URI nor turn them into a Route header.",
    },
    TortureCase {
        file: "baddate.dat",
        section: "3.1.2.12",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "Date with time zone EST (only GMT is legal). RFC 4475: rejecting is acceptable, \
               though an element shouldn't unless it uses the Date; the edge does not, so the \
               preferred answer is the ordinary one (no binding). 400 is tolerated.",
    },
    TortureCase {
        file: "regbadct.dat",
        section: "3.1.2.13",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[200, 400]),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "REGISTER whose Contact URI has an escaped header but no <>: must be name-addr. \
               RFC 4475: reasonable to answer 400; a liberal registrar may infer the brackets \
               (no ambiguity here) and register it: 200.",
    },
    TortureCase {
        file: "badaspec.dat",
        section: "3.1.2.14",
        valid: false,
        domain: Some("example.org"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "Spaces inside the To addr-spec (`< sip:t.watson@example.org >`). RFC 4475: parsers \
               must not break; reasonable to reject with 400, liberal elements may ignore the \
               spaces (then OPTIONS to a user: no binding).",
    },
    TortureCase {
        file: "baddn.dat",
        section: "3.1.2.15",
        valid: false,
        domain: Some("example.org"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "Unquoted display names with non-token characters (`Bell, Alexander`). RFC 4475: \
               reasonable always to reject with 400; may infer the quotes (a proxy must not \
               forward the error). The archive's file also lacks the empty line after the last \
               header: the headers end with the datagram, another reason a strict element may \
               answer 400. Silence is not acceptable.",
    },
    TortureCase {
        file: "badvers.dat",
        section: "3.1.2.16",
        valid: false,
        domain: Some("example.org"),
        expect: Expect::Response(&[505]),
        foreign: Expect::Response(&[505]),
        note: "SIP/7.0 in the request line (and the Via): 505 Version Not Supported.",
    },
    TortureCase {
        file: "mismatch01.dat",
        section: "3.1.2.17",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "OPTIONS request line with CSeq method INVITE: any element responds 400.",
    },
    TortureCase {
        file: "mismatch02.dat",
        section: "3.1.2.18",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400, 501]),
        foreign: Expect::Response(&[400, 501]),
        note: "Unknown method NEWMETHOD with CSeq method INVITE. RFC 4475: respond 501; 400 is \
               also acceptable, but 501 (particularly at proxies) is more future-proof.",
    },
    TortureCase {
        file: "bigcode.dat",
        section: "3.1.2.19",
        valid: false,
        domain: None,
        expect: Expect::NoResponse,
        foreign: Expect::NoResponse,
        note: "Status code 4294967301 (> 699, > u32): the receiver drops it; must not wrap to 5.",
    },
    // ---- 3.2 Transaction layer semantics --------------------------------------------------
    TortureCase {
        file: "badbranch.dat",
        section: "3.2.1",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(BAD_OR_NO_BINDING),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "branch=z9hG4bK with nothing after the magic cookie. Syntactically fine; RFC 4475: \
               reject with 400 (preferably statelessly) or fall back to RFC 2543 transaction \
               matching and process it (OPTIONS to a user: no binding).",
    },
    // ---- 3.3 Application layer semantics --------------------------------------------------
    TortureCase {
        file: "insuf.dat",
        section: "3.3.1",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "INVITE without To, From, Call-ID and Max-Forwards: must not break; ideally 400 \
               (built from what is present: Via and CSeq).",
    },
    TortureCase {
        file: "unkscm.dat",
        section: "3.3.2",
        valid: true,
        domain: None,
        expect: Expect::Response(&[416]),
        foreign: Expect::Response(&[416]),
        note: "Request-URI `nobodyKnowsThisScheme:totallyopaquecontent`: 416 Unsupported URI \
               Scheme, whatever the served domain (RFC 3261 §16.3 step 2 / §8.2.2.1 precede \
               routing).",
    },
    TortureCase {
        file: "novelsc.dat",
        section: "3.3.3",
        valid: true,
        domain: None,
        expect: Expect::Response(&[416]),
        foreign: Expect::Response(&[416]),
        note:
            "Request-URI `soap.beep://192.0.2.103:3002`: IANA-registered but never meaningful to \
               this edge, so treat as unknown: 416. (RFC 4475 allows 404 only for elements that \
               accept some URIs of that scheme; this one accepts none.)",
    },
    TortureCase {
        file: "unksm2.dat",
        section: "3.3.4",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[400, 404]),
        foreign: Expect::Response(BAD_OR_FOREIGN),
        note: "REGISTER with To isbn:..., From http:..., Contact name:... Syntactically valid. \
               RFC 4475: a registrar rejects it with 400 because the To must be a SIP/SIPS AOR. \
               404 is tolerated: RFC 3261 §10.3 step 5 says an AOR not valid for the domain gets \
               404. Never 200, never a stored binding.",
    },
    TortureCase {
        file: "bext01.dat",
        section: "3.3.5",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[420]),
        foreign: Expect::Response(&[403, 404, 420]),
        note: "Proxy-Require and Require with unknown option tags. 420 Bad Extension with an \
               Unsupported header: listing the Proxy-Require tags when acting as proxy (this \
               OPTIONS is for a user, so the edge is a proxy; RFC 3261 §16.3 step 5 precedes \
               routing), the Require tags when acting as UAS. Via is TLS: answer the UDP source.",
    },
    TortureCase {
        file: "invut.dat",
        section: "3.3.6",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "INVITE with Content-Type application/unknownformat. RFC 4475: a proxy processes it \
               like any INVITE (only a UAS answers 415). The edge proxies: no binding.",
    },
    TortureCase {
        file: "regaut01.dat",
        section: "3.3.7",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "REGISTER with `Authorization: NoOneKnowsThisScheme ...`. A registrar that does not \
               authenticate (auth = \"none\") ignores the header: 200. There is no Contact, so \
               this is a query: the 200 lists the (zero) current bindings. With auth = \"local\" \
               the answer would be 401 with a Digest challenge.",
    },
    TortureCase {
        file: "multi01.dat",
        section: "3.3.8",
        valid: false,
        domain: Some("company.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Two values each for CSeq, Call-ID, To and From: 400.",
    },
    TortureCase {
        file: "mcl01.dat",
        section: "3.3.9",
        valid: false,
        domain: Some("example.com"),
        expect: Expect::Response(&[400]),
        foreign: Expect::Response(&[400]),
        note: "Two Content-Length values (13 and 5) with a 67-byte body: no way to frame it. \
               RFC 4475: respond with an error (400); over UDP the rest of the datagram is \
               discarded.",
    },
    TortureCase {
        file: "bcast.dat",
        section: "3.3.10",
        valid: true,
        domain: None,
        expect: Expect::NoResponse,
        foreign: Expect::NoResponse,
        note: "200 OK whose second Via sent-by is 255.255.255.255. Well formed; an endpoint \
               discards it, and a proxy must drop it rather than forward it to the broadcast \
               address (the attack a blind stateless §16.11 forwarder would enable). Nothing is \
               sent anywhere.",
    },
    TortureCase {
        file: "zeromf.dat",
        section: "3.3.11",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200, 483]),
        foreign: Expect::Response(&[200, 403, 404, 483]),
        note:
            "OPTIONS with Max-Forwards 0. RFC 4475: a proxy does not forward it and answers 483. \
               RFC 3261 §16.3 step 3: for OPTIONS the element MAY instead act as the final \
               recipient and answer per §11 (200). The check precedes the user lookup, so not \
               404/480.",
    },
    TortureCase {
        file: "cparam01.dat",
        section: "3.3.12",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "Contact `sip:+19725552222@gw1.example.net;unknownparam` without <>: unknownparam \
               is a contact-param, not a URI param. Registration succeeds (200); neither the 200 \
               nor later fetches may show unknownparam inside the URI.",
    },
    TortureCase {
        file: "cparam02.dat",
        section: "3.3.13",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "Contact `<sip:+19725552222@gw1.example.net;unknownparam>`: here unknownparam is a \
               URI parameter and must be kept in the stored binding. 200.",
    },
    TortureCase {
        file: "regescrt.dat",
        section: "3.3.14",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(&[200]),
        foreign: Expect::Response(FOREIGN),
        note: "Contact (compact `M:`) `<sip:user@example.com?Route=%3Csip:sip.example.com%3E>`: a \
               legal escaped header in a name-addr. Registrar accepts (200) and returns the \
               contact as given; the escaped Route must not be applied.",
    },
    TortureCase {
        file: "sdp01.dat",
        section: "3.3.15",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "INVITE with `Accept: text/nobodyKnowsThis`. RFC 4475 lets the recipient UAS answer \
               406 (or 400); a proxy does not look at Accept. The edge proxies: no binding.",
    },
    // ---- 3.4 Backward compatibility -------------------------------------------------------
    TortureCase {
        file: "inv2543.dat",
        section: "3.4.1",
        valid: true,
        domain: Some("example.com"),
        expect: Expect::Response(NO_BINDING),
        foreign: Expect::Response(FOREIGN),
        note: "RFC 2543 INVITE: Via without branch, no Max-Forwards (a proxy inserts 70), no From \
               tag, no Content-Length (over UDP the body runs to the end of the datagram), no \
               Contact. Elements wanting backward compatibility accept it; an edge facing old \
               phones does: no binding, not 400.",
    },
];

/// Directory holding the torture `.dat` files: `$SUT_TORTURE_DIR`, else `../shared/rfc4475`
/// relative to the repository root.
pub fn torture_dir() -> PathBuf {
    match std::env::var_os("SUT_TORTURE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/rfc4475"),
    }
}

/// The bytes of one torture message, exactly as in the archive (one UDP datagram).
///
/// Panics with the path when the file is missing: the test cannot run without it.
pub fn load(file: &str) -> Vec<u8> {
    let path = torture_dir().join(file);
    std::fs::read(&path).unwrap_or_else(|e| panic!("torture message {}: {e}", path.display()))
}

/// The row for a file name, if any.
pub fn case(file: &str) -> Option<&'static TortureCase> {
    CASES.iter().find(|c| c.file == file)
}

#[cfg(test)]
/// Host of the Request-URI on a request line, lower-cased; `None` for a status line or a
/// non-SIP URI. Handles the torture shapes: `<...>`, extra SP, userinfo containing `;`, `?`,
/// `:` and escaped `@`.
fn request_uri_host(first_line: &str) -> Option<String> {
    if first_line.starts_with("SIP/") {
        return None;
    }
    let uri = first_line.split_whitespace().nth(1)?;
    let uri = uri.trim_start_matches('<').trim_end_matches('>');
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let hostport = rest.rsplit('@').next()?;
    let end = hostport
        .find([';', '?', ':', '>'])
        .unwrap_or(hostport.len());
    Some(hostport[..end].to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeSet;

    fn dat_files() -> BTreeSet<String> {
        let dir = torture_dir();
        let rd = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "torture dir {} unreadable ({e}); set SUT_TORTURE_DIR",
                dir.display()
            )
        });
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".dat"))
            .collect()
    }

    fn first_line(bytes: &[u8]) -> String {
        let end = bytes
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or(bytes.len());
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    #[test]
    fn every_dat_file_has_exactly_one_row_and_vice_versa() {
        let on_disk = dat_files();
        let mut in_table = BTreeSet::new();
        for c in CASES {
            assert!(
                in_table.insert(c.file.to_string()),
                "duplicate row {}",
                c.file
            );
        }
        let missing_rows: Vec<_> = on_disk.difference(&in_table).collect();
        let missing_files: Vec<_> = in_table.difference(&on_disk).collect();
        assert!(missing_rows.is_empty(), "no row for {missing_rows:?}");
        assert!(missing_files.is_empty(), "no file for {missing_files:?}");
        assert_eq!(CASES.len(), 49, "RFC 4475 has 49 messages");
    }

    #[test]
    fn files_match_the_published_checksums() {
        let sums = std::fs::read_to_string(torture_dir().join("SHA256SUMS")).expect("SHA256SUMS");
        let mut checked = 0;
        for line in sums.lines().filter(|l| !l.trim().is_empty()) {
            let (sum, name) = line.split_once(char::is_whitespace).expect("sum line");
            let name = name.trim().trim_start_matches('*');
            let got = hex::encode(Sha256::digest(load(name)));
            assert_eq!(got, sum, "{name} differs from the RFC 4475 archive");
            checked += 1;
        }
        assert_eq!(checked, CASES.len());
    }

    #[test]
    fn sections_are_unique_and_in_rfc_order() {
        let key = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap()).collect() };
        for w in CASES.windows(2) {
            assert!(
                key(w[0].section) < key(w[1].section),
                "{} ({}) must come before {} ({})",
                w[0].file,
                w[0].section,
                w[1].file,
                w[1].section
            );
        }
        for c in CASES {
            assert!(c.section.starts_with("3."), "{}", c.file);
            if c.section.starts_with("3.1.1.") {
                assert!(c.valid, "{} is in 3.1.1 Valid Messages", c.file);
            }
            if c.section.starts_with("3.1.2.") {
                assert!(!c.valid, "{} is in 3.1.2 Invalid Messages", c.file);
            }
        }
    }

    /// Responses are never answered, and every request gets an answer.
    #[test]
    fn silence_exactly_for_responses() {
        for c in CASES {
            let line = first_line(&load(c.file));
            let is_status_line = line.starts_with("SIP/");
            assert_eq!(
                is_status_line,
                c.expect == Expect::NoResponse,
                "{}: first line {line:?} vs {:?}",
                c.file,
                c.expect
            );
            assert_eq!(
                is_status_line,
                c.foreign == Expect::NoResponse,
                "{}",
                c.file
            );
            assert_eq!(c.is_response(), is_status_line);
        }
    }

    /// `domain` is the Request-URI host of the message itself, so a harness can configure it.
    #[test]
    fn domain_is_the_request_uri_host() {
        for c in CASES {
            let host = request_uri_host(&first_line(&load(c.file)));
            assert_eq!(host.as_deref(), c.domain, "{}", c.file);
        }
    }

    #[test]
    fn codes_are_final_status_codes() {
        for c in CASES {
            for e in [c.expect, c.foreign] {
                if let Expect::Response(codes) = e {
                    assert!(!codes.is_empty(), "{}", c.file);
                    for &code in codes {
                        assert!((200..700).contains(&code), "{}: {code}", c.file);
                    }
                }
            }
        }
    }

    #[test]
    fn expected_for_switches_on_the_served_domain() {
        let wsinv = case("wsinv.dat").unwrap();
        assert_eq!(
            wsinv.expected_for("CHAIR-DNRC.example.com"),
            wsinv.expect,
            "domain comparison is case-insensitive"
        );
        assert_eq!(
            wsinv.expected_for("example.test"),
            Expect::Response(FOREIGN)
        );
        let unkscm = case("unkscm.dat").unwrap();
        assert_eq!(
            unkscm.expected_for("example.test"),
            Expect::Response(&[416])
        );
        let bcast = case("bcast.dat").unwrap();
        assert_eq!(bcast.expected_for("anything"), Expect::NoResponse);
    }

    #[test]
    fn expect_accepts() {
        let r = Expect::Response(&[400, 404]);
        assert!(r.accepts(Some(404)));
        assert!(!r.accepts(Some(200)));
        assert!(!r.accepts(None));
        assert!(Expect::NoResponse.accepts(None));
        assert!(!Expect::NoResponse.accepts(Some(400)));
        let n = Expect::NotCode(&[500]);
        assert!(n.accepts(Some(404)));
        assert!(!n.accepts(Some(500)));
        assert!(!n.accepts(None), "NotCode still requires an answer");
    }

    #[test]
    fn request_uri_host_handles_the_torture_shapes() {
        assert_eq!(
            request_uri_host("INVITE <sip:user@example.com> SIP/2.0").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            request_uri_host("OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0").as_deref(),
            Some("example.com")
        );
        assert_eq!(request_uri_host("SIP/2.0 200 OK"), None);
        assert_eq!(
            request_uri_host("OPTIONS soap.beep://192.0.2.103:3002 SIP/2.0"),
            None
        );
    }
}
