//! Postfix's socketmap protocol (pure): requests and replies are netstrings
//! (`<length>:<bytes>,`); a request is `<map name> <key>`, a reply `OK <value>`,
//! `NOTFOUND `, `TEMP <reason>`, `TIMEOUT <reason>` or `PERM <reason>`
//! (socketmap_table(5)).

use std::io::Write as _;

/// Longest request taken: a map name and a domain fit many times over.
pub const MAX_REQUEST: usize = 1024;

/// Why the bytes received are no netstring request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the length is not a number")]
    Length,
    #[error("the request is longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("the netstring does not end with ','")]
    NoComma,
    #[error("the request is not `<name> <key>` in UTF-8")]
    Request,
}

/// One request: the map name Postfix uses and the key looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub name: String,
    pub key: String,
}

/// Digits of the longest length taken ([`MAX_REQUEST`]).
const MAX_DIGITS: usize = 4;

/// The first complete request in `buf` and how many bytes it took; `Ok(None)` when more
/// bytes are needed.
pub fn parse(buf: &[u8]) -> Result<Option<(Request, usize)>, FrameError> {
    let colon = buf.iter().position(|&b| b == b':');
    let digits = &buf[..colon.unwrap_or(buf.len())];
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(FrameError::Length);
    }
    if digits.len() > MAX_DIGITS {
        return Err(FrameError::TooLong);
    }
    let Some(colon) = colon else {
        return Ok(None);
    };
    let len: usize = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .ok_or(FrameError::Length)?;
    if len > MAX_REQUEST {
        return Err(FrameError::TooLong);
    }
    let end = colon + 1 + len;
    if buf.len() <= end {
        return Ok(None);
    }
    if buf[end] != b',' {
        return Err(FrameError::NoComma);
    }
    let text = std::str::from_utf8(&buf[colon + 1..end]).map_err(|_| FrameError::Request)?;
    let (name, key) = text.split_once(' ').ok_or(FrameError::Request)?;
    Ok(Some((
        Request {
            name: name.to_string(),
            key: key.to_string(),
        },
        end + 1,
    )))
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Ok(String),
    NotFound,
    Temp(String),
    Perm(String),
}

impl Reply {
    /// The reply as a netstring.
    pub fn encode(&self) -> Vec<u8> {
        let (status, text) = match self {
            Reply::Ok(v) => ("OK", v.as_str()),
            Reply::NotFound => ("NOTFOUND", ""),
            Reply::Temp(r) => ("TEMP", r.as_str()),
            Reply::Perm(r) => ("PERM", r.as_str()),
        };
        // One allocation: a reply is written for every lookup.
        let len = status.len() + 1 + text.len();
        let mut out = Vec::with_capacity(len + 8);
        let _ = write!(out, "{len}:{status} {text},");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed() {
        let one = b"19:postfix example.com,";
        let (req, used) = parse(one).expect("ok").expect("complete");
        assert_eq!(
            (req.name.as_str(), req.key.as_str(), used),
            ("postfix", "example.com", 23)
        );
        // Partial: wait for more.
        for cut in [0, 1, 3, 10, 22] {
            assert_eq!(parse(&one[..cut]), Ok(None), "{cut}");
        }
        // Two in one read: the first, then the rest.
        let two = b"9:postfix a,9:postfix b,";
        let (a, used) = parse(two).expect("ok").expect("a");
        let (b, _) = parse(&two[used..]).expect("ok").expect("b");
        assert_eq!((a.key.as_str(), b.key.as_str()), ("a", "b"));
        // The longest request taken, and one byte more.
        let longest = format!("1024:postfix {},", "a".repeat(1016));
        let (req, used) = parse(longest.as_bytes()).expect("ok").expect("complete");
        assert_eq!((req.key.len(), used), (1016, longest.len()));
        assert_eq!(parse(b"1025:"), Err(FrameError::TooLong));
        assert_eq!(parse(b"1024"), Ok(None));
        for (bad, err) in [
            (&b"x:postfix a,"[..], FrameError::Length),
            (b"1x", FrameError::Length),
            (b":postfix a,", FrameError::Length),
            (b"12345", FrameError::TooLong),
            (b"01024:", FrameError::TooLong),
            (b"9999:", FrameError::TooLong),
            (b"9:postfix a;", FrameError::NoComma),
            (b"7:postfix,", FrameError::Request),
            (b"3:\xff\xfe ,", FrameError::Request),
        ] {
            assert_eq!(parse(bad), Err(err), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn replies_are_netstrings() {
        assert_eq!(Reply::NotFound.encode(), b"9:NOTFOUND ,");
        assert_eq!(
            Reply::Ok("secure match=mx.example.com".into()).encode(),
            b"30:OK secure match=mx.example.com,"
        );
        assert_eq!(Reply::Temp("x".into()).encode(), b"6:TEMP x,");
    }
}
