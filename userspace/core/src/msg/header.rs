//! Header field names (RFC 3261 §7.3, §7.3.3 compact forms, §20).
//!
//! Names are case-insensitive; the compact one-letter forms are the same header.
//! Only the headers the engine looks at get a variant; everything else is `Other` and is
//! carried through verbatim.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Contact,
    Expires,
    MinExpires,
    MaxForwards,
    ContentLength,
    ContentType,
    ContentEncoding,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Route,
    RecordRoute,
    Path,
    Date,
    Subject,
    Event,
    AllowEvents,
    ReferTo,
    ReferredBy,
    SessionExpires,
    AcceptContact,
    RejectContact,
    RequestDisposition,
    Identity,
    IdentityInfo,
    Other,
}

/// Number of variants, for per-name lookup tables.
pub const HEADER_NAME_COUNT: usize = HeaderName::Other as usize + 1;

impl HeaderName {
    /// Classifies a raw header name. `raw` is the name as on the wire (no colon, no LWS).
    #[inline]
    pub fn from_bytes(raw: &[u8]) -> HeaderName {
        use HeaderName::*;
        if raw.len() == 1 {
            // RFC 3261 §7.3.3 and the compact forms registered later (RFC 3265, 3515, 3892,
            // 4028, 3841, 4474).
            return match raw[0].to_ascii_lowercase() {
                b'v' => Via,
                b'f' => From,
                b't' => To,
                b'i' => CallId,
                b'm' => Contact,
                b'l' => ContentLength,
                b'c' => ContentType,
                b'e' => ContentEncoding,
                b'k' => Supported,
                b's' => Subject,
                b'o' => Event,
                b'u' => AllowEvents,
                b'r' => ReferTo,
                b'b' => ReferredBy,
                b'x' => SessionExpires,
                b'a' => AcceptContact,
                b'j' => RejectContact,
                b'd' => RequestDisposition,
                b'y' => Identity,
                b'n' => IdentityInfo,
                _ => Other,
            };
        }
        // Dispatch on length first: one compare of a short slice per candidate.
        let eq = |s: &str| raw.eq_ignore_ascii_case(s.as_bytes());
        match raw.len() {
            2 if eq("to") => {
                return To;
            }
            3 if eq("via") => {
                return Via;
            }
            4 => {
                if eq("from") {
                    return From;
                } else if eq("cseq") {
                    return CSeq;
                } else if eq("path") {
                    return Path;
                } else if eq("date") {
                    return Date;
                }
            }
            5 => {
                if eq("route") {
                    return Route;
                } else if eq("event") {
                    return Event;
                }
            }
            7 => {
                if eq("call-id") {
                    return CallId;
                } else if eq("contact") {
                    return Contact;
                } else if eq("expires") {
                    return Expires;
                } else if eq("require") {
                    return Require;
                } else if eq("subject") {
                    return Subject;
                }
            }
            8 => {
                if eq("refer-to") {
                    return ReferTo;
                } else if eq("identity") {
                    return Identity;
                }
            }
            9 if eq("supported") => {
                return Supported;
            }
            11 => {
                if eq("min-expires") {
                    return MinExpires;
                } else if eq("unsupported") {
                    return Unsupported;
                } else if eq("referred-by") {
                    return ReferredBy;
                }
            }
            12 => {
                if eq("max-forwards") {
                    return MaxForwards;
                } else if eq("content-type") {
                    return ContentType;
                } else if eq("record-route") {
                    return RecordRoute;
                }
            }
            _ => {}
        }
        match raw.len() {
            12 if eq("allow-events") => AllowEvents,
            13 if eq("authorization") => Authorization,
            13 if eq("proxy-require") => ProxyRequire,
            13 if eq("identity-info") => IdentityInfo,
            14 if eq("content-length") => ContentLength,
            14 if eq("accept-contact") => AcceptContact,
            14 if eq("reject-contact") => RejectContact,
            15 if eq("session-expires") => SessionExpires,
            16 if eq("content-encoding") => ContentEncoding,
            16 if eq("www-authenticate") => WwwAuthenticate,
            18 if eq("proxy-authenticate") => ProxyAuthenticate,
            19 if eq("proxy-authorization") => ProxyAuthorization,
            19 if eq("request-disposition") => RequestDisposition,
            _ => Other,
        }
    }

    /// The headers of a typical REGISTER spelled exactly as almost every UA sends them: a
    /// match is a few integer compares, against the case-insensitive walk of
    /// [`from_bytes`](Self::from_bytes) (which gives the same answer for these).
    #[inline]
    pub fn from_canonical(raw: &[u8]) -> Option<HeaderName> {
        use HeaderName::*;
        Some(match raw {
            b"Via" => Via,
            b"From" => From,
            b"To" => To,
            b"Call-ID" => CallId,
            b"CSeq" => CSeq,
            b"Contact" => Contact,
            b"Expires" => Expires,
            b"Max-Forwards" => MaxForwards,
            b"Content-Length" => ContentLength,
            b"Authorization" => Authorization,
            b"Supported" => Supported,
            b"Require" => Require,
            b"Path" => Path,
            b"Route" => Route,
            _ => return None,
        })
    }

    /// Headers whose value is a comma-separated list (RFC 3261 §7.3.1): several values may
    /// share one header line. Authorization-type headers are NOT split on commas (their
    /// params are comma-separated).
    pub fn is_list(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            Via | Contact
                | Route
                | RecordRoute
                | Path
                | Require
                | ProxyRequire
                | Supported
                | Unsupported
                | AllowEvents
        )
    }

    /// Headers that may appear at most once in a request (RFC 3261 §7.3.1, §20): a second
    /// occurrence makes the request malformed (RFC 4475 §3.1.2.19 `multi01`).
    pub fn is_singleton(self) -> bool {
        use HeaderName::*;
        matches!(
            self,
            From | To | CallId | CSeq | MaxForwards | Expires | ContentType | MinExpires | Date
        )
    }

    /// Canonical long name, for messages we build and for diagnostics.
    pub fn canonical(self) -> &'static str {
        use HeaderName::*;
        match self {
            Via => "Via",
            From => "From",
            To => "To",
            CallId => "Call-ID",
            CSeq => "CSeq",
            Contact => "Contact",
            Expires => "Expires",
            MinExpires => "Min-Expires",
            MaxForwards => "Max-Forwards",
            ContentLength => "Content-Length",
            ContentType => "Content-Type",
            ContentEncoding => "Content-Encoding",
            Authorization => "Authorization",
            ProxyAuthorization => "Proxy-Authorization",
            WwwAuthenticate => "WWW-Authenticate",
            ProxyAuthenticate => "Proxy-Authenticate",
            Require => "Require",
            ProxyRequire => "Proxy-Require",
            Supported => "Supported",
            Unsupported => "Unsupported",
            Route => "Route",
            RecordRoute => "Record-Route",
            Path => "Path",
            Date => "Date",
            Subject => "Subject",
            Event => "Event",
            AllowEvents => "Allow-Events",
            ReferTo => "Refer-To",
            ReferredBy => "Referred-By",
            SessionExpires => "Session-Expires",
            AcceptContact => "Accept-Contact",
            RejectContact => "Reject-Contact",
            RequestDisposition => "Request-Disposition",
            Identity => "Identity",
            IdentityInfo => "Identity-Info",
            Other => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName::{self, *};

    #[test]
    fn long_and_compact_forms_any_case() {
        for (raw, want) in [
            ("Via", Via),
            ("v", Via),
            ("V", Via),
            ("VIA", Via),
            ("call-id", CallId),
            ("i", CallId),
            ("m", Contact),
            ("Contact", Contact),
            ("l", ContentLength),
            ("CONTENT-LENGTH", ContentLength),
            ("f", From),
            ("t", To),
            ("k", Supported),
            ("cSeQ", CSeq),
            ("Max-Forwards", MaxForwards),
            ("Record-Route", RecordRoute),
            ("Allow-Events", AllowEvents),
            ("WWW-Authenticate", WwwAuthenticate),
            ("Proxy-Authorization", ProxyAuthorization),
            ("X-Custom", Other),
            ("q", Other),
            ("", Other),
        ] {
            assert_eq!(HeaderName::from_bytes(raw.as_bytes()), want, "{raw}");
        }
    }

    #[test]
    fn from_canonical_agrees_with_from_bytes() {
        let mut hits = 0;
        for raw in [
            "Via",
            "From",
            "To",
            "Call-ID",
            "CSeq",
            "Contact",
            "Expires",
            "Max-Forwards",
            "Content-Length",
            "Authorization",
            "Supported",
            "Require",
            "Path",
            "Route",
            "via",
            "Call-Id",
            "CALL-ID",
            "X-Via",
            "",
            "Allow",
            "User-Agent",
            "Content-Type",
        ] {
            if let Some(h) = HeaderName::from_canonical(raw.as_bytes()) {
                hits += 1;
                assert_eq!(h, HeaderName::from_bytes(raw.as_bytes()), "{raw}");
                assert_eq!(h.canonical(), raw);
            }
        }
        assert_eq!(hits, 14);
    }

    #[test]
    fn canonical_round_trips() {
        for h in [
            Via,
            From,
            To,
            CallId,
            CSeq,
            Contact,
            Expires,
            MinExpires,
            Path,
            Unsupported,
        ] {
            assert_eq!(HeaderName::from_bytes(h.canonical().as_bytes()), h);
        }
    }
}
