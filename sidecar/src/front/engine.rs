//! What the front reads of Engine.IO: the session id a request names, and the one a polling
//! handshake's answer opens. Pure functions, no I/O.

/// The longest session id taken as one: Engine.IO's are 20 characters; anything much longer
/// is not a session id and is passed to the app as it is (which refuses it).
pub const MAX_SID: usize = 64;

/// A session id: URL-safe characters only (Engine.IO's are base64url), at most [`MAX_SID`].
pub fn valid_sid(sid: &str) -> bool {
    !sid.is_empty()
        && sid.len() <= MAX_SID
        && sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The `sid` query parameter of a request (`/socket.io/?EIO=4&transport=polling&sid=...`), if
/// it is a valid one. Engine.IO's ids need no percent-decoding.
pub fn sid_of(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("sid="))
        .filter(|sid| valid_sid(sid))
}

/// Whether the request asks for the polling transport (a handshake the front records).
pub fn is_polling(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').any(|pair| pair == "transport=polling"))
}

/// The session id in a polling handshake's answer: the open packet `0{"sid":"...",...}`
/// (Engine.IO 4), or the same behind Engine.IO 3's `<length>:` prefix.
pub fn opened_sid(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body.get(..body.len().min(4096))?).ok()?;
    let packet = match text.split_once(':') {
        Some((len, rest)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
            rest.get(..len.parse::<usize>().ok()?)?
        }
        _ => text,
    };
    let open = packet.strip_prefix('0')?;
    let value: serde_json::Value = serde_json::from_str(open.split('\u{1e}').next()?).ok()?;
    let sid = value.get("sid")?.as_str()?;
    valid_sid(sid).then(|| sid.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sid_of_a_request_is_read_from_its_query() {
        assert_eq!(
            sid_of(Some("EIO=4&transport=polling&t=x&sid=AbC-d_9")),
            Some("AbC-d_9")
        );
        assert_eq!(sid_of(Some("EIO=4&transport=polling")), None);
        assert_eq!(sid_of(None), None);
        assert_eq!(sid_of(Some("sid=")), None, "empty");
        assert_eq!(sid_of(Some("sid=a%20b")), None, "not an Engine.IO id");
        let long = format!("sid={}", "a".repeat(MAX_SID + 1));
        assert_eq!(sid_of(Some(&long)), None, "too long");
    }

    #[test]
    fn a_handshake_answer_opens_its_sid() {
        let eio4 = br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
        assert_eq!(opened_sid(eio4).as_deref(), Some("lv_VI97HAXpY6yYWAAAC"));
        let open = r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":5000}"#;
        let eio3 = format!("{}:{open}2:40", open.len());
        assert_eq!(
            opened_sid(eio3.as_bytes()).as_deref(),
            Some("abc"),
            "EIO3: the open packet, then the next one"
        );
        assert_eq!(opened_sid(b"4hello"), None, "not an open packet");
        assert_eq!(opened_sid(br#"0{"sid":"../x"}"#), None, "not an id");
        assert_eq!(opened_sid(b"0{not json"), None);
        assert_eq!(opened_sid(&[0xff, 0xfe]), None);
    }

    #[test]
    fn polling_is_told_from_the_query() {
        assert!(is_polling(Some("EIO=4&transport=polling&t=1")));
        assert!(!is_polling(Some("EIO=4&transport=websocket")));
        assert!(!is_polling(None));
    }
}
