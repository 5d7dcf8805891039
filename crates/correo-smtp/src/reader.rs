//! Sans-IO readers for SMTP command lines and DATA.
//!
//! Both readers are fed arbitrary byte slices (as they arrive from the
//! network, possibly one byte at a time) and return how many bytes they
//! consumed, so the caller keeps the rest for the next command: this is what
//! makes pipelining (RFC 2920) work and what the smuggling tests pin down.
//! They do no I/O, so they can be unit-tested and fuzzed byte by byte.

use crate::reply::Reply;

/// RFC 5321 4.5.3.1.4: a command line is at most 512 octets including CRLF.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 4954 4: a SASL response line after a 334 challenge may be this long.
pub const MAX_AUTH_LINE: usize = 12288;
/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

/// Why a command line was refused. The whole line (up to its LF) has been
/// consumed; nothing of it is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line too long")]
    TooLong,
    #[error("NUL character in command")]
    Nul,
    #[error("bare CR in command")]
    BareCr,
    #[error("command is not valid UTF-8")]
    InvalidUtf8,
}

impl LineError {
    pub fn reply(&self) -> Reply {
        match self {
            LineError::TooLong => Reply::new(500, "5.5.2", "line too long"),
            LineError::Nul => Reply::new(500, "5.5.2", "NUL character not allowed"),
            LineError::BareCr => Reply::new(500, "5.5.2", "bare CR not allowed"),
            LineError::InvalidUtf8 => Reply::new(500, "5.5.2", "invalid UTF-8 in command"),
        }
    }
}

/// Splits a byte stream into command lines.
///
/// A line ends at LF; a CR right before the LF is removed. A bare LF line end
/// is tolerated in commands (many clients send it and it cannot hide a
/// command), but a CR anywhere else is refused.
#[derive(Debug)]
pub struct CommandReader {
    buf: Vec<u8>,
    limit: usize,
    /// The current line already overflowed: drop bytes until its LF.
    discarding: bool,
}

impl Default for CommandReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CommandReader {
    pub fn new() -> Self {
        Self::with_limit(MAX_COMMAND_LINE)
    }

    /// `limit` counts the line end too.
    pub fn with_limit(limit: usize) -> Self {
        CommandReader {
            buf: Vec::new(),
            limit: limit.max(2),
            discarding: false,
        }
    }

    /// Changes the limit for the next line (e.g. for AUTH responses).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit.max(2);
    }

    /// Forgets a partial line (after STARTTLS: nothing sent in plaintext may
    /// be carried into the TLS session, RFC 3207 section 4.2 / CVE-2011-0411).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.discarding = false;
    }

    /// True while a partial line is buffered.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() || self.discarding
    }

    /// Consumes bytes from `input` up to and including the first LF. Returns
    /// the number of bytes consumed and, when a line was completed, the line
    /// without its line end or the reason it is refused.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<String, LineError>>) {
        let (chunk, complete) = match memchr::memchr(b'\n', input) {
            Some(pos) => (&input[..=pos], true),
            None => (input, false),
        };
        let consumed = chunk.len();
        if !self.discarding {
            // Without an LF, a buffer that reaches `limit` can only become
            // longer than `limit` once its line end arrives.
            if self.buf.len() + chunk.len() > self.limit
                || (!complete && self.buf.len() + chunk.len() >= self.limit)
            {
                self.discarding = true;
                self.buf.clear();
            } else {
                self.buf.extend_from_slice(chunk);
            }
        }
        if !complete {
            return (consumed, None);
        }
        if std::mem::take(&mut self.discarding) {
            return (consumed, Some(Err(LineError::TooLong)));
        }
        let mut line = std::mem::take(&mut self.buf);
        line.pop(); // LF
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let result = if line.contains(&0) {
            Err(LineError::Nul)
        } else if line.contains(&b'\r') {
            Err(LineError::BareCr)
        } else {
            String::from_utf8(line).map_err(|_| LineError::InvalidUtf8)
        };
        (consumed, Some(result))
    }
}

/// What to do with a CR or LF that is not part of a CRLF pair inside DATA.
/// Such line ends are what SMTP smuggling hides an end-of-data behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareLineEndings {
    /// Refuse the message (550 5.5.2) after reading to the real end. MTA.
    Reject,
    /// Convert to CRLF. MSA: some user agents still send bare LF.
    Normalize,
}

/// Why a message read by [`DataReader`] is refused. In every case the reader
/// has read up to the real end of data, so the session stays in sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("message exceeds the size limit")]
    TooBig,
    #[error("bare CR or LF not allowed")]
    BareLineEnding,
    #[error("line too long")]
    LineTooLong,
}

impl DataError {
    pub fn reply(&self) -> Reply {
        match self {
            DataError::TooBig => {
                Reply::new(552, "5.3.4", "message exceeds fixed maximum message size")
            }
            DataError::BareLineEnding => Reply::new(550, "5.5.2", "bare CR or LF not allowed"),
            DataError::LineTooLong => Reply::new(550, "5.5.2", "line too long"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataState {
    /// After a real CRLF (or at the very start): a `.` here is special.
    LineStart,
    /// After a bare CR or LF that was normalized: a new line for length,
    /// storage and dot-unstuffing (clients that send bare LF stuff dots after
    /// it, e.g. Python's smtplib), but never the start of an end-of-data
    /// marker. This is what stops `\n.\n`, `\r.\r`, `\n.\r\n` ... from
    /// ending the message.
    SoftLineStart,
    /// `.` at a soft line start: stuffing if more follows, never an end.
    SoftDot,
    InLine,
    /// A CR was read; waiting to see whether an LF follows.
    Cr,
    /// `.` at a real line start.
    Dot,
    /// `.` CR at a real line start: LF now ends the data.
    DotCr,
    Done,
}

/// Reads the DATA section: ends ONLY at CRLF `.` CRLF (RFC 5321 4.1.1.4)
/// where the first CRLF is a real one, removes dot-stuffing (4.5.2), enforces
/// the size and line-length limits and handles bare CR/LF. The output always
/// uses CRLF line endings and excludes the end-of-data line.
#[derive(Debug)]
pub struct DataReader {
    state: DataState,
    out: Vec<u8>,
    max_size: usize,
    bare: BareLineEndings,
    /// Octets of the current line (after unstuffing), without its line end.
    line_len: usize,
    /// Octets of message content seen, stored or not.
    size: usize,
    too_big: bool,
    bare_seen: bool,
    line_too_long: bool,
}

impl DataReader {
    pub fn new(max_size: usize, bare: BareLineEndings) -> Self {
        DataReader {
            state: DataState::LineStart,
            out: Vec::new(),
            max_size,
            bare,
            line_len: 0,
            size: 0,
            too_big: false,
            bare_seen: false,
            line_too_long: false,
        }
    }

    /// True once the end-of-data line has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == DataState::Done
    }

    /// Octets of content seen so far (including discarded ones).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Consumes bytes up to and including the end-of-data line; returns how
    /// many were consumed and whether the end was reached. Bytes after the
    /// end (pipelined commands) are left to the caller.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            if self.state == DataState::Done {
                break;
            }
            if self.state == DataState::InLine {
                // Fast path: copy plain text up to the next CR or LF.
                let rest = &input[i..];
                let n = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                if n > 0 {
                    self.content(&rest[..n]);
                    i += n;
                    continue;
                }
            }
            self.step(input[i]);
            i += 1;
        }
        (i, self.state == DataState::Done)
    }

    /// The message, or why it is refused. Call after `feed` returned true.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.too_big {
            Err(DataError::TooBig)
        } else if self.bare_seen && self.bare == BareLineEndings::Reject {
            Err(DataError::BareLineEnding)
        } else if self.line_too_long {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.out)
        }
    }

    fn step(&mut self, b: u8) {
        use DataState::*;
        match (self.state, b) {
            (Done, _) => {}
            (LineStart, b'.') => self.state = Dot,
            (Dot, b'\r') => self.state = DotCr,
            (DotCr, b'\n') => self.state = Done,
            // A `.` line ended by something other than CRLF: it is content,
            // not the end, and the dot was not stuffing (nothing follows it).
            (Dot, b'\n') => {
                self.content(b".");
                self.bare_line_end();
            }
            (DotCr, _) => {
                self.content(b".");
                self.bare_line_end();
                self.step(b);
            }
            // `..x` or `.x`: the first dot is stuffing.
            (Dot, _) => {
                self.state = InLine;
                self.step(b);
            }
            (SoftLineStart, b'.') => self.state = SoftDot,
            // A lone `.` on a line keeps its dot (nothing follows it).
            (SoftDot, b'\r') => {
                self.content(b".");
                self.state = Cr;
            }
            (SoftDot, b'\n') => {
                self.content(b".");
                self.bare_line_end();
            }
            (SoftDot, _) => {
                self.state = InLine;
                self.step(b);
            }
            (Cr, b'\n') => {
                self.line_end();
                self.state = LineStart;
            }
            (Cr, _) => {
                self.bare_line_end();
                self.step(b);
            }
            (LineStart | SoftLineStart | InLine, b'\r') => self.state = Cr,
            (LineStart | SoftLineStart | InLine, b'\n') => self.bare_line_end(),
            (LineStart | SoftLineStart | InLine, _) => {
                self.content(&[b]);
                self.state = InLine;
            }
        }
    }

    fn content(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len + 2 > MAX_TEXT_LINE {
            self.line_too_long = true;
        }
        self.store(bytes);
    }

    fn line_end(&mut self) {
        self.line_len = 0;
        self.store(b"\r\n");
    }

    /// A CR or LF that is not part of CRLF. Stored as CRLF (only matters for
    /// Normalize; Reject refuses the message at the end).
    fn bare_line_end(&mut self) {
        self.bare_seen = true;
        self.line_len = 0;
        self.store(b"\r\n");
        self.state = DataState::SoftLineStart;
    }

    fn store(&mut self, bytes: &[u8]) {
        self.size = self.size.saturating_add(bytes.len());
        if self.too_big {
            return;
        }
        if self.size > self.max_size {
            // Keep reading to the end so the session stays in sync, but stop
            // holding the message in memory.
            self.too_big = true;
            self.out = Vec::new();
            return;
        }
        if self.bare_seen && self.bare == BareLineEndings::Reject {
            self.out = Vec::new();
            return;
        }
        self.out.extend_from_slice(bytes);
    }
}

/// Dot-stuffs `message` for sending after DATA and appends the end-of-data
/// line. Bare CR and LF become CRLF so the output can never contain a
/// line end that a receiver might read differently (SMTP smuggling).
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 5);
    let mut at_line_start = true;
    let mut i = 0;
    while i < message.len() {
        let b = message[i];
        match b {
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                // CRLF is one line end; a lone CR or LF is one too.
                if b == b'\r' && message.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                at_line_start = true;
            }
            _ => {
                if at_line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                at_line_start = false;
            }
        }
        i += 1;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// A reply line longer than this is refused (RFC 5321 allows 512; some
/// servers send more, none legitimately this much).
pub const MAX_REPLY_LINE: usize = 2048;
/// A reply with more lines is refused, so a hostile server cannot make the
/// client buffer without bound.
pub const MAX_REPLY_LINES: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line too long")]
    TooLong,
    #[error("too many reply lines")]
    TooManyLines,
    #[error("malformed reply line {0:?}")]
    Malformed(String),
}

/// Reads (possibly multi-line) SMTP replies from a server, client side.
/// Enhanced status codes are split off when present (RFC 2034).
#[derive(Debug)]
pub struct ReplyReader {
    lines: CommandReader,
    code: Option<u16>,
    enhanced: Option<String>,
    text: Vec<String>,
}

impl Default for ReplyReader {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyReader {
    pub fn new() -> Self {
        ReplyReader {
            lines: CommandReader::with_limit(MAX_REPLY_LINE),
            code: None,
            enhanced: None,
            text: Vec::new(),
        }
    }

    /// Consumes bytes up to the end of one complete reply; returns how many
    /// were consumed and the reply once complete. Later replies (pipelining)
    /// stay in the caller's buffer.
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Reply, ReplyError>>) {
        let mut consumed = 0;
        while consumed < input.len() {
            let (n, line) = self.lines.feed(&input[consumed..]);
            consumed += n;
            let Some(line) = line else { continue };
            let result = match line {
                Ok(line) => self.line(&line),
                Err(LineError::TooLong) => Some(Err(ReplyError::TooLong)),
                Err(_) => Some(Err(ReplyError::Malformed(
                    "control characters or invalid UTF-8".into(),
                ))),
            };
            if let Some(result) = result {
                self.code = None;
                self.enhanced = None;
                self.text.clear();
                return (consumed, Some(result));
            }
        }
        (consumed, None)
    }

    fn line(&mut self, line: &str) -> Option<Result<Reply, ReplyError>> {
        let malformed = || Some(Err(ReplyError::Malformed(line.chars().take(80).collect())));
        let bytes = line.as_bytes();
        if bytes.len() < 3
            || !bytes[..3].iter().all(u8::is_ascii_digit)
            || !(b'2'..=b'5').contains(&bytes[0])
        {
            return malformed();
        }
        let code: u16 = line[..3].parse().unwrap_or(0);
        let last = match bytes.get(3) {
            None | Some(b' ') => true,
            Some(b'-') => false,
            Some(_) => return malformed(),
        };
        if self.code.is_some_and(|c| c != code) {
            return malformed();
        }
        self.code = Some(code);
        let text = line.get(4..).unwrap_or("");
        let (enhanced, text) = crate::reply::split_enhanced(text);
        if self.enhanced.is_none() {
            self.enhanced = enhanced.map(str::to_owned);
        }
        self.text.push(text.to_owned());
        if last {
            return Some(Ok(Reply {
                code,
                enhanced: self.enhanced.take(),
                lines: std::mem::take(&mut self.text),
            }));
        }
        if self.text.len() >= MAX_REPLY_LINES {
            return Some(Err(ReplyError::TooManyLines));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one byte at a time and collects the lines.
    fn lines_bytewise(input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut r = CommandReader::new();
        let mut out = Vec::new();
        for b in input {
            let (n, line) = r.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            out.extend(line);
        }
        out
    }

    fn lines_whole(input: &[u8]) -> Vec<Result<String, LineError>> {
        let mut r = CommandReader::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let (n, line) = r.feed(&input[pos..]);
            pos += n;
            out.extend(line);
        }
        out
    }

    #[test]
    fn command_lines() {
        let input = b"EHLO a\r\nMAIL FROM:<x@y>\r\nNOOP\nQUIT\r\npartial";
        let expect = vec![
            Ok("EHLO a".to_string()),
            Ok("MAIL FROM:<x@y>".to_string()),
            Ok("NOOP".to_string()),
            Ok("QUIT".to_string()),
        ];
        assert_eq!(lines_bytewise(input), expect);
        assert_eq!(lines_whole(input), expect);
    }

    #[test]
    fn command_line_limit() {
        // 510 octets + CRLF = 512: accepted.
        let ok = format!("NOOP {}\r\n", "a".repeat(505));
        assert_eq!(ok.len(), 512);
        assert_eq!(
            lines_bytewise(ok.as_bytes()),
            vec![Ok(ok.trim_end().to_string())]
        );
        // 513 octets: refused, and the tail is never executed as a command.
        let long = format!("NOOP {}QUIT\r\nRSET\r\n", "a".repeat(504));
        for lines in [
            lines_bytewise(long.as_bytes()),
            lines_whole(long.as_bytes()),
        ] {
            assert_eq!(lines, vec![Err(LineError::TooLong), Ok("RSET".to_string())]);
        }
        // Way too long, no line end yet: nothing buffered beyond the limit.
        let mut r = CommandReader::new();
        let (n, line) = r.feed(&[b'a'; 100_000]);
        assert_eq!((n, line), (100_000, None));
        assert!(r.buf.is_empty());
        assert_eq!(
            r.feed(b"MAIL FROM:<a@b>\r\n").1,
            Some(Err(LineError::TooLong))
        );
        assert_eq!(r.feed(b"NOOP\r\n").1, Some(Ok("NOOP".into())));
    }

    #[test]
    fn command_line_junk() {
        assert_eq!(lines_bytewise(b"NO\0OP\r\n"), vec![Err(LineError::Nul)]);
        assert_eq!(
            lines_bytewise(b"NOOP\rQUIT\r\n"),
            vec![Err(LineError::BareCr)]
        );
        assert_eq!(
            lines_bytewise(b"NOOP \xff\xfe\r\n"),
            vec![Err(LineError::InvalidUtf8)]
        );
        assert_eq!(lines_bytewise(b"\r\n"), vec![Ok(String::new())]);
        assert_eq!(
            LineError::TooLong.reply().to_string(),
            "500 5.5.2 line too long"
        );
    }

    #[test]
    fn clear_drops_partial_line() {
        let mut r = CommandReader::new();
        r.feed(b"MAIL FROM:<evil@x>");
        assert!(r.has_partial());
        r.clear();
        assert_eq!(r.feed(b"\r\n").1, Some(Ok(String::new())));
    }

    /// Feeds `input` byte by byte; returns the result and the bytes left over.
    fn data_bytewise(
        input: &[u8],
        bare: BareLineEndings,
    ) -> (Option<Result<Vec<u8>, DataError>>, Vec<u8>) {
        let mut r = DataReader::new(1 << 20, bare);
        for (i, b) in input.iter().enumerate() {
            let (n, done) = r.feed(std::slice::from_ref(b));
            if done {
                assert_eq!(n, 1);
                return (Some(r.finish()), input[i + 1..].to_vec());
            }
        }
        (None, Vec::new())
    }

    fn data_whole(
        input: &[u8],
        max: usize,
        bare: BareLineEndings,
    ) -> (Option<Result<Vec<u8>, DataError>>, Vec<u8>) {
        let mut r = DataReader::new(max, bare);
        let (n, done) = r.feed(input);
        if done {
            (Some(r.finish()), input[n..].to_vec())
        } else {
            (None, Vec::new())
        }
    }

    fn both(input: &[u8], bare: BareLineEndings) -> (Option<Result<Vec<u8>, DataError>>, Vec<u8>) {
        let a = data_bytewise(input, bare);
        let b = data_whole(input, 1 << 20, bare);
        assert_eq!(a, b, "bytewise and whole feeding differ for {input:?}");
        a
    }

    use BareLineEndings::{Normalize, Reject};

    #[test]
    fn data_simple_and_unstuffing() {
        let (msg, rest) = both(
            b"Subject: hi\r\n\r\n..leading dot\r\n.x\r\nbody\r\n.\r\nQUIT\r\n",
            Reject,
        );
        assert_eq!(
            msg,
            Some(Ok(
                b"Subject: hi\r\n\r\n.leading dot\r\nx\r\nbody\r\n".to_vec()
            ))
        );
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn data_empty_message() {
        assert_eq!(both(b".\r\n", Reject), (Some(Ok(Vec::new())), Vec::new()));
        assert_eq!(both(b"\r\n.\r\n", Reject).0, Some(Ok(b"\r\n".to_vec())));
    }

    #[test]
    fn data_incomplete() {
        assert_eq!(both(b"a\r\n.", Reject).0, None);
        assert_eq!(both(b"a\r\n.\r", Reject).0, None);
        assert_eq!(both(b"a\r\n", Reject).0, None);
    }

    /// Each sequence must NOT end the data: the pipelined second MAIL FROM
    /// stays part of the first message.
    #[test]
    fn smuggling_sequences_never_end_data() {
        for smuggle in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\n",
            b"\r.\r",
            b"\r.\r\n",
            b"\r\n\x00.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\n\r.\r\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nfirst".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(
                b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\n",
            );
            // Not ended yet.
            for bare in [Reject, Normalize] {
                assert_eq!(both(&input, bare).0, None, "ended early on {smuggle:?}");
            }
            input.extend_from_slice(b"smuggled\r\n.\r\nQUIT\r\n");
            for bare in [Reject, Normalize] {
                let (result, rest) = both(&input, bare);
                assert_eq!(rest, b"QUIT\r\n", "wrong end for {smuggle:?}");
                let result = result.unwrap();
                if smuggle.contains(&0) {
                    // No bare line ending: a NUL is content.
                    let msg = result.unwrap();
                    assert!(msg.windows(9).any(|w| w == b"MAIL FROM"));
                } else if bare == Reject {
                    assert_eq!(result, Err(DataError::BareLineEnding), "{smuggle:?}");
                } else {
                    let msg = result.unwrap();
                    assert!(msg.windows(9).any(|w| w == b"MAIL FROM"));
                    assert!(msg.ends_with(b"smuggled\r\n"));
                    assert_no_bare_line_endings(&msg);
                }
            }
        }
    }

    fn assert_no_bare_line_endings(msg: &[u8]) {
        for (i, &b) in msg.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(msg.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && msg[i - 1] == b'\r', "bare LF at {i}");
            }
        }
    }

    #[test]
    fn normalize_bare_line_endings() {
        let (msg, _) = both(b"a\nb\rc\r\r\nd\r\n.\r\n", Normalize);
        assert_eq!(msg, Some(Ok(b"a\r\nb\r\nc\r\n\r\nd\r\n".to_vec())));
        // A `.` line after a bare LF is content, not stuffing and not the end.
        let (msg, _) = both(b"a\n.\nb\r\n.\r\n", Normalize);
        assert_eq!(msg, Some(Ok(b"a\r\n.\r\nb\r\n".to_vec())));
        let (msg, _) = both(b"a\r\n.\rb\r\n.\r\n", Normalize);
        assert_eq!(msg, Some(Ok(b"a\r\n.\r\nb\r\n".to_vec())));
        // Dots stuffed after a bare LF are unstuffed; `\n.\r\n` is content.
        let (msg, _) = both(b"a\n..x\n..\n.\r\nb\r\n.\r\n", Normalize);
        assert_eq!(msg, Some(Ok(b"a\r\n.x\r\n.\r\n.\r\nb\r\n".to_vec())));
    }

    #[test]
    fn reject_bare_line_endings() {
        assert_eq!(
            both(b"a\nb\r\n.\r\n", Reject).0,
            Some(Err(DataError::BareLineEnding))
        );
        assert_eq!(
            both(b"a\rb\r\n.\r\n", Reject).0,
            Some(Err(DataError::BareLineEnding))
        );
        assert_eq!(
            DataError::BareLineEnding.reply().to_string(),
            "550 5.5.2 bare CR or LF not allowed"
        );
    }

    #[test]
    fn line_length_limit() {
        let ok = format!("{}\r\n.\r\n", "a".repeat(998));
        assert!(both(ok.as_bytes(), Reject).0.unwrap().is_ok());
        // A stuffed dot does not count.
        let ok = format!(".{}\r\n.\r\n", ".".repeat(998));
        assert!(both(ok.as_bytes(), Reject).0.unwrap().is_ok());
        let long = format!("{}\r\n.\r\nQUIT\r\n", "a".repeat(999));
        let (msg, rest) = both(long.as_bytes(), Reject);
        assert_eq!(msg, Some(Err(DataError::LineTooLong)));
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn size_limit_reads_to_end() {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        let (msg, rest) = data_whole(&input, 1000, Reject);
        assert_eq!(msg, Some(Err(DataError::TooBig)));
        assert_eq!(rest, b"QUIT\r\n");
        let (msg, _) = data_whole(&input, 10_000, Reject);
        assert_eq!(msg.unwrap().unwrap().len(), 4200);
        assert_eq!(DataError::TooBig.reply().code, 552);
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"a\r\n"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b"a"), b"a\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n..x\r\n"), b"..\r\n...x\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\n.\nb\r.\r"), b"a\r\n..\r\nb\r\n..\r\n.\r\n");
        // Round trip through the reader gives the CRLF-normalized input back.
        for msg in [&b"x\r\n.\r\n..\r\n"[..], b"\r\n\r\n.", b"a\nb\rc"] {
            let stuffed = dot_stuff(msg);
            let (out, rest) = both(&stuffed, Reject);
            let out = out.unwrap().unwrap();
            assert!(rest.is_empty());
            assert_no_bare_line_endings(&out);
            let again = dot_stuff(&out);
            assert_eq!(again, stuffed);
        }
    }
    fn replies(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
        let mut r = ReplyReader::new();
        let mut out = Vec::new();
        for b in input {
            let (n, reply) = r.feed(std::slice::from_ref(b));
            assert_eq!(n, 1);
            out.extend(reply);
        }
        out
    }

    #[test]
    fn reply_reader() {
        let got = replies(b"220 mx ESMTP\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 100\r\n550 5.1.1 no such user\r\n250\r\n");
        assert_eq!(got.len(), 4);
        let ehlo = got[1].as_ref().unwrap();
        assert_eq!(ehlo.lines, vec!["mx", "PIPELINING", "SIZE 100"]);
        assert_eq!(ehlo.enhanced, None);
        assert_eq!(got[2], Ok(Reply::new(550, "5.1.1", "no such user")));
        assert_eq!(got[3].as_ref().unwrap().code, 250);
        // Whole buffer: one reply per call, the rest left for later.
        let input = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n";
        let mut r = ReplyReader::new();
        let (n, reply) = r.feed(input);
        assert_eq!(reply.unwrap().unwrap().code, 250);
        assert_eq!(&input[n..], b"250 2.1.5 ok\r\n");
    }

    #[test]
    fn reply_reader_refuses_junk() {
        assert!(matches!(
            replies(b"hello\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            replies(b"250-a\r\n251 b\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            replies(b"250xa\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        assert!(matches!(
            replies(b"650 a\r\n")[0],
            Err(ReplyError::Malformed(_))
        ));
        let long = format!("250 {}\r\n", "a".repeat(3000));
        assert_eq!(replies(long.as_bytes())[0], Err(ReplyError::TooLong));
        let many = "250-a\r\n".repeat(200);
        assert_eq!(replies(many.as_bytes())[0], Err(ReplyError::TooManyLines));
    }
    /// Any split of the input into chunks gives the same result as feeding
    /// it whole (the property a fuzz target would check).
    #[test]
    fn data_reader_is_chunking_independent() {
        let alphabet: &[u8] = b"\r\n.\0ab";
        let mut seed: u64 = 0x2545f4914f6cdd1d;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..300 {
            let len = (next() % 60) as usize;
            let mut input: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            input.extend_from_slice(b"\r\n.\r\nREST");
            for bare in [Reject, Normalize] {
                let whole = data_whole(&input, 40, bare);
                let mut r = DataReader::new(40, bare);
                let mut pos = 0;
                let mut result = None;
                while pos < input.len() {
                    let take = 1 + (next() % 7) as usize;
                    let end = (pos + take).min(input.len());
                    let (n, done) = r.feed(&input[pos..end]);
                    pos += n;
                    if done {
                        result = Some((Some(r.finish()), input[pos..].to_vec()));
                        break;
                    }
                }
                assert_eq!(result.unwrap(), whole, "{input:?}");
            }
        }
    }
}
