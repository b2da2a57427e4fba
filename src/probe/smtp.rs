//! SMTP client side of a probe: reply parsing (pure, fuzzed) and a small line-oriented
//! connection with hard limits, used for greeting → EHLO → STARTTLS → EHLO → QUIT.
//!
//! Every read has a deadline for the *whole* reply (not per byte), so a server that
//! drip-feeds a byte per second still ends at the step timeout; every line, reply and
//! session has a size cap, so a hostile server cannot make the probe buffer without bound.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

/// Size limits applied to everything a server sends during the SMTP dialogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmtpLimits {
    /// Longest accepted reply line including CRLF (RFC 5321 says 512; servers exceed it).
    pub max_line_len: usize,
    /// Most lines in one (multi-line) reply.
    pub max_reply_lines: usize,
    /// Most bytes read from the server over the whole session (plaintext and TLS);
    /// enforced by the stream wrapper underneath, see `tls::LimitedStream`.
    pub max_session_bytes: u64,
}

impl Default for SmtpLimits {
    fn default() -> Self {
        SmtpLimits {
            max_line_len: 4096,
            max_reply_lines: 128,
            max_session_bytes: 512 * 1024,
        }
    }
}

/// A complete SMTP reply: code and the text of every line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The reply as one line for messages: `250 first line` (+ `…` when multi-line).
    pub fn summary(&self) -> String {
        let first = self.lines.first().map(String::as_str).unwrap_or("");
        let more = if self.lines.len() > 1 { " …" } else { "" };
        format!("{} {}{}", self.code, first, more)
    }

    /// EHLO keywords (upper-cased first word of each line after the first).
    pub fn ehlo_keywords(&self) -> Vec<String> {
        self.lines
            .iter()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(|k| k.to_ascii_uppercase())
            .collect()
    }
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ReplyError {
    #[error("malformed reply line {0:?}")]
    Malformed(String),
    #[error("reply line code {got} differs from first line code {first}")]
    CodeChanged { first: u16, got: u16 },
    #[error("reply has more than {0} lines")]
    TooManyLines(usize),
    #[error("reply line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("no complete reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("I/O error: {0}")]
    Io(String),
}

/// One parsed reply line: `250-text` (more follow) or `250 text` (last).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    pub code: u16,
    pub last: bool,
    pub text: String,
}

/// Parse one reply line (without or with its CRLF). Accepts a bare `250` as a last line.
pub fn parse_reply_line(line: &[u8]) -> Result<ReplyLine, ReplyError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let malformed =
        || ReplyError::Malformed(String::from_utf8_lossy(line).chars().take(80).collect());
    let (digits, rest) = match line {
        [a, b, c, rest @ ..] => ([*a, *b, *c], rest),
        _ => return Err(malformed()),
    };
    // RFC 5321 §4.2: first digit 2-5, second 0-5, third 0-9.
    if !(b'2'..=b'5').contains(&digits[0])
        || !(b'0'..=b'5').contains(&digits[1])
        || !digits[2].is_ascii_digit()
    {
        return Err(malformed());
    }
    let code = digits
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    let (last, text) = match rest {
        [] => (true, &[][..]),
        [b' ', text @ ..] => (true, text),
        [b'-', text @ ..] => (false, text),
        _ => return Err(malformed()),
    };
    Ok(ReplyLine {
        code,
        last,
        text: String::from_utf8_lossy(text).into_owned(),
    })
}

/// Accumulates lines into a reply, enforcing the line-count limit and code consistency.
#[derive(Debug)]
pub struct ReplyAssembler {
    max_lines: usize,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyAssembler {
    pub fn new(max_lines: usize) -> Self {
        ReplyAssembler {
            max_lines,
            code: None,
            lines: Vec::new(),
        }
    }

    /// Feed one raw line; returns the reply when it is complete.
    pub fn feed(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = parse_reply_line(raw)?;
        match self.code {
            Some(first) if first != line.code => {
                return Err(ReplyError::CodeChanged {
                    first,
                    got: line.code,
                });
            }
            _ => self.code = Some(line.code),
        }
        if self.lines.len() >= self.max_lines {
            return Err(ReplyError::TooManyLines(self.max_lines));
        }
        self.lines.push(line.text);
        if line.last {
            return Ok(Some(Reply {
                code: line.code,
                lines: std::mem::take(&mut self.lines),
            }));
        }
        Ok(None)
    }
}

/// Parse every complete reply in `input` (for tests and fuzzing of the pure parser).
/// Returns the replies and the number of bytes consumed.
pub fn parse_replies(input: &[u8], limits: &SmtpLimits) -> Result<(Vec<Reply>, usize), ReplyError> {
    let mut replies = Vec::new();
    let mut assembler = ReplyAssembler::new(limits.max_reply_lines);
    let mut consumed = 0;
    let mut start = 0;
    while let Some(nl) = input[start..].iter().position(|&b| b == b'\n') {
        let end = start + nl + 1;
        if end - start > limits.max_line_len {
            return Err(ReplyError::LineTooLong(limits.max_line_len));
        }
        if let Some(reply) = assembler.feed(&input[start..end])? {
            replies.push(reply);
            consumed = end;
        }
        start = end;
    }
    if input.len() - start > limits.max_line_len {
        return Err(ReplyError::LineTooLong(limits.max_line_len));
    }
    Ok((replies, consumed))
}

/// A line-oriented SMTP connection over any byte stream, with limits and deadlines.
pub struct SmtpConn<S> {
    stream: S,
    buf: Vec<u8>,
    limits: SmtpLimits,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SmtpConn<S> {
    pub fn new(stream: S, limits: SmtpLimits) -> Self {
        SmtpConn {
            stream,
            buf: Vec::with_capacity(512),
            limits,
        }
    }

    /// Read one complete reply, all of it within `step`.
    pub async fn read_reply(&mut self, step: Duration) -> Result<Reply, ReplyError> {
        let deadline = Instant::now() + step;
        let mut assembler = ReplyAssembler::new(self.limits.max_reply_lines);
        loop {
            let line = self.read_line(deadline, step).await?;
            if let Some(reply) = assembler.feed(&line)? {
                return Ok(reply);
            }
        }
    }

    async fn read_line(
        &mut self,
        deadline: Instant,
        step: Duration,
    ) -> Result<Vec<u8>, ReplyError> {
        let mut scanned = 0;
        loop {
            if let Some(nl) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + nl + 1;
                if end > self.limits.max_line_len {
                    return Err(ReplyError::LineTooLong(self.limits.max_line_len));
                }
                return Ok(self.buf.drain(..end).collect());
            }
            scanned = self.buf.len();
            // Stop as soon as the line is over the limit, never buffering the rest.
            if self.buf.len() >= self.limits.max_line_len {
                return Err(ReplyError::LineTooLong(self.limits.max_line_len));
            }
            let room = self.limits.max_line_len - self.buf.len();
            let mut chunk = [0u8; 2048];
            let want = room.min(chunk.len());
            let n = match timeout_at(deadline, self.stream.read(&mut chunk[..want])).await {
                Err(_) => return Err(ReplyError::Timeout(step)),
                Ok(Err(e)) => return Err(ReplyError::Io(e.to_string())),
                Ok(Ok(0)) => return Err(ReplyError::Closed),
                Ok(Ok(n)) => n,
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Send one command line (CRLF appended) within `step`.
    pub async fn send(&mut self, line: &str, step: Duration) -> Result<(), ReplyError> {
        let mut data = Vec::with_capacity(line.len() + 2);
        data.extend_from_slice(line.as_bytes());
        data.extend_from_slice(b"\r\n");
        match tokio::time::timeout(step, async {
            self.stream.write_all(&data).await?;
            self.stream.flush().await
        })
        .await
        {
            Err(_) => Err(ReplyError::Timeout(step)),
            Ok(Err(e)) => Err(ReplyError::Io(e.to_string())),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Send a command and read its reply.
    pub async fn command(&mut self, line: &str, step: Duration) -> Result<Reply, ReplyError> {
        self.send(line, step).await?;
        self.read_reply(step).await
    }

    /// Bytes received but not yet consumed (after STARTTLS these must be empty: anything
    /// here was sent before the handshake and would be injected into the TLS session).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Give back the stream (for the TLS handshake).
    pub fn into_inner(self) -> S {
        self.stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multiline() {
        let input = b"250-mx.example.com hi\r\n250-PIPELINING\r\n250 STARTTLS\r\n";
        let (replies, used) = parse_replies(input, &SmtpLimits::default()).unwrap();
        assert_eq!(used, input.len());
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code, 250);
        assert_eq!(replies[0].ehlo_keywords(), vec!["PIPELINING", "STARTTLS"]);
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(parse_reply_line(b"hello").is_err());
        assert!(parse_reply_line(b"250x").is_err());
        assert!(parse_reply_line(b"650 no").is_err());
        assert!(parse_reply_line(b"250").unwrap().last);
        let err = parse_replies(b"250-a\r\n251 b\r\n", &SmtpLimits::default()).unwrap_err();
        assert_eq!(
            err,
            ReplyError::CodeChanged {
                first: 250,
                got: 251
            }
        );
    }

    #[test]
    fn enforces_limits() {
        let limits = SmtpLimits {
            max_line_len: 16,
            max_reply_lines: 2,
            max_session_bytes: 1000,
        };
        assert_eq!(
            parse_replies(&[b'2'; 40], &limits).unwrap_err(),
            ReplyError::LineTooLong(16)
        );
        assert_eq!(
            parse_replies(b"250-a\r\n250-b\r\n250 c\r\n", &limits).unwrap_err(),
            ReplyError::TooManyLines(2)
        );
    }
}
