//! A small streaming JSON pull parser over any [`Read`].
//!
//! COCO / Objects365 annotation files are large (Objects365 v2 val is about
//! 200 MB and 1.2M boxes), and building a `serde_json::Value` tree of one
//! costs several times the file size in memory and most of the load time.
//! This reader instead keeps one refillable buffer (1 MB by default) and lets
//! the caller walk the document: begin an object and read its keys one by
//! one, begin an array and step through its elements, read a string, a
//! number, a bool or null, or skip any value however deeply nested. Nothing
//! is allocated per value except the strings the caller asks for, so a
//! record can be parsed field by field straight into compact data.
//!
//! Tokens may be split anywhere across buffer refills; the reader keeps the
//! unread tail of the buffer when it refills, and grows the buffer only for a
//! number token longer than the buffer. The grammar is checked strictly
//! (RFC 8259), also in skipped values, except that UTF-8 is only checked in
//! strings that are decoded (skipped strings and object keys are compared as
//! bytes). A lone UTF-16 surrogate in a `\u` escape decodes to U+FFFD.
//!
//! On a syntax error the reader reports the 1-based line and byte column of
//! the fault. To do so cheaply it counts the newlines of each buffer's worth
//! of input once, when that input is discarded, so no second pass over the
//! file is needed. Deep nesting is handled without recursion, so no input
//! can overflow the stack.

use std::io::{self, Read};

/// Default buffer size: large enough that refills are rare, small enough
/// to stay cache- and memory-friendly.
pub(super) const DEFAULT_CAPACITY: usize = 1 << 20;

/// Why reading stopped.
#[derive(Debug)]
pub(super) enum JsonError {
    /// The underlying reader failed.
    Io(io::Error),
    /// The input is not well-formed JSON.
    Syntax {
        /// 1-based line of the fault.
        line: usize,
        /// 1-based byte column of the fault.
        column: usize,
        /// Absolute byte offset of the fault.
        offset: u64,
        /// What was expected and what was found.
        message: String,
    },
}

/// Result of a reader operation.
///
/// The error is boxed so that results stay small enough to be returned in
/// registers on the hot path.
pub(super) type JResult<T> = Result<T, Box<JsonError>>;

impl JsonError {
    /// For an error of a reader made with [`JsonReader::starting_at`]: the
    /// same as [`JsonReader::rebase`] does for the reader.
    pub(super) fn rebase(&mut self, lines: usize, last_newline: Option<u64>) {
        if let JsonError::Syntax {
            line,
            column,
            offset,
            ..
        } = self
        {
            if *line == 1 {
                // No newline between the start and the fault.
                *column = match last_newline {
                    Some(nl) => *offset - nl,
                    None => *offset + 1,
                } as usize;
            }
            *line += lines;
        }
    }
}

/// The kind of the next value, from its first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// `{`
    Object,
    /// `[`
    Array,
    /// `"`
    String,
    /// `-` or a digit
    Number,
    /// `true` / `false`
    Bool,
    /// `null`
    Null,
}

/// How a [`Number`] is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    /// `bits` is a plain non-negative integer (no sign, fraction or
    /// exponent) of at most 19 digits.
    Uint,
    /// The value is `±bits × 10^e10` with `bits ≤ 2^53` and `|e10| ≤ 22`:
    /// exactly representable operands, so one multiplication or division
    /// gives the correctly rounded value (Clinger's fast path).
    Decimal,
    /// `bits` holds the `f64` bits of the value parsed with
    /// `str::parse::<f64>` (out-of-range values become infinite).
    Float,
}

/// A parsed JSON number. Its `f64` value is computed on demand
/// ([`Number::value`]), so ids and flags never pay for a conversion. A
/// plain 16-byte struct, so that it travels in registers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Number {
    bits: u64,
    e10: i8,
    neg: bool,
    repr: Repr,
}

impl Number {
    /// The value, correctly rounded to `f64`.
    #[inline]
    pub(super) fn value(self) -> f64 {
        match self.repr {
            Repr::Uint => self.bits as f64,
            Repr::Decimal => {
                let m = self.bits as f64;
                let p = POW10[usize::from(self.e10.unsigned_abs()).min(22)];
                let v = if self.e10 < 0 { m / p } else { m * p };
                if self.neg {
                    -v
                } else {
                    v
                }
            }
            Repr::Float => f64::from_bits(self.bits),
        }
    }

    /// The exact value of a plain non-negative integer token.
    #[inline]
    pub(super) fn uint(self) -> Option<u64> {
        (self.repr == Repr::Uint).then_some(self.bits)
    }
}

/// A scalar value, or the kind of a string or container that was skipped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Scalar {
    /// A number.
    Num(Number),
    /// `true` / `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A string, array or object, skipped (its syntax checked).
    Skipped(Kind),
}

/// Streaming pull parser; see the module documentation.
pub(super) struct JsonReader<R> {
    src: R,
    /// Buffer; `buf[pos..end]` is unread input.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// The source is exhausted.
    eof: bool,
    /// Absolute offset of `buf[0]` in the input.
    base: u64,
    /// Newlines in the input before `buf[0]`.
    lines_before: usize,
    /// Absolute offset of the last newline before `buf[0]`.
    last_newline_before: Option<u64>,
    /// Decoded-string scratch space, reused.
    scratch: Vec<u8>,
    /// Container stack of [`JsonReader::skip_value`] (`true` = object), reused.
    stack: Vec<bool>,
}

/// Outcome of scanning a number token in a slice.
enum NumScan {
    /// A complete number of this many bytes.
    Done(usize, Number),
    /// The slice ends inside the token: more input is needed.
    Incomplete,
    /// Not a number: the fault is this many bytes in.
    Invalid(usize, &'static str),
}

/// Powers of ten exactly representable in `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Scan (and validate) a JSON number at the start of `s` and compute its
/// value. `at_eof` says no input follows `s`.
///
/// Tokens that fit [`Repr::Uint`] or [`Repr::Decimal`] are not
/// converted here; everything else is parsed with `str::parse::<f64>`, so
/// [`Number::value`] is always correctly rounded.
#[inline(always)]
fn scan_number(s: &[u8], at_eof: bool) -> NumScan {
    let n = s.len();
    let mut i = 0;
    let neg = n > 0 && s[0] == b'-';
    if neg {
        i = 1;
    }
    if i == n {
        return if at_eof {
            NumScan::Invalid(i, "expected a digit")
        } else {
            NumScan::Incomplete
        };
    }
    let mut mant: u64 = 0;
    let mut digits: u32 = 0;
    match s[i] {
        b'0' => {
            i += 1;
            digits = 1;
        }
        b'1'..=b'9' => {
            while i < n && s[i].is_ascii_digit() {
                mant = mant.wrapping_mul(10).wrapping_add(u64::from(s[i] - b'0'));
                digits = digits.saturating_add(1);
                i += 1;
            }
        }
        _ => return NumScan::Invalid(i, "expected a digit"),
    }
    if i == n && !at_eof {
        return NumScan::Incomplete;
    }
    let mut frac: u32 = 0;
    if i < n && s[i] == b'.' {
        i += 1;
        let start = i;
        while i < n && s[i].is_ascii_digit() {
            mant = mant.wrapping_mul(10).wrapping_add(u64::from(s[i] - b'0'));
            digits = digits.saturating_add(1);
            i += 1;
        }
        if i == n && !at_eof {
            return NumScan::Incomplete;
        }
        if i == start {
            return NumScan::Invalid(i, "expected a digit after the decimal point");
        }
        frac = (i - start) as u32;
    }
    let mut has_exp = false;
    let mut exp: i64 = 0;
    if i < n && (s[i] == b'e' || s[i] == b'E') {
        has_exp = true;
        i += 1;
        if i == n && !at_eof {
            return NumScan::Incomplete;
        }
        let mut exp_neg = false;
        if i < n && (s[i] == b'+' || s[i] == b'-') {
            exp_neg = s[i] == b'-';
            i += 1;
        }
        let start = i;
        while i < n && s[i].is_ascii_digit() {
            exp = (exp * 10 + i64::from(s[i] - b'0')).min(1_000_000);
            i += 1;
        }
        if i == n && !at_eof {
            return NumScan::Incomplete;
        }
        if i == start {
            return NumScan::Invalid(i, "expected a digit in the exponent");
        }
        if exp_neg {
            exp = -exp;
        }
    }
    let e10 = exp - i64::from(frac);
    let number = if !neg && frac == 0 && !has_exp && digits <= 19 {
        Number {
            bits: mant,
            e10: 0,
            neg: false,
            repr: Repr::Uint,
        }
    } else if digits <= 19 && mant <= (1u64 << 53) && (-22..=22).contains(&e10) {
        Number {
            bits: mant,
            e10: e10 as i8,
            neg,
            repr: Repr::Decimal,
        }
    } else {
        // The token is ASCII and follows JSON's number grammar, which
        // `str::parse::<f64>` accepts.
        match std::str::from_utf8(&s[..i])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
        {
            Some(v) => Number {
                bits: v.to_bits(),
                e10: 0,
                neg: false,
                repr: Repr::Float,
            },
            None => return NumScan::Invalid(0, "malformed number"),
        }
    };
    NumScan::Done(i, number)
}

/// Length of the run of plain string bytes at the start of `s`: up to the
/// first `"`, `\\` or control character (or all of `s`). Looks at eight
/// bytes at a time (SWAR): in each test below, the lowest flagged byte is
/// always a true match, so the lowest flag of their union is the first
/// byte that ends the run.
#[inline]
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        let w = u64::from_le_bytes(bytes);
        let zero = |v: u64| v.wrapping_sub(ONES) & !v;
        let quote = zero(w ^ (ONES * u64::from(b'"')));
        let backslash = zero(w ^ (ONES * u64::from(b'\\')));
        let control = w.wrapping_sub(ONES * 0x20) & !w;
        let hits = (quote | backslash | control) & HIGHS;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

/// Number of `\n` bytes in `s`.
fn count_newlines(s: &[u8]) -> usize {
    // Summing in blocks with a byte counter lets the compiler vectorise.
    let mut total = 0usize;
    for block in s.chunks(255) {
        let mut c: u8 = 0;
        for &b in block {
            c += u8::from(b == b'\n');
        }
        total += usize::from(c);
    }
    total
}

/// A found byte (or the end of input) in words, for messages.
fn describe(b: Option<u8>) -> String {
    match b {
        None => "end of file".to_string(),
        Some(b) if b.is_ascii_graphic() || b == b' ' => format!("'{}'", b as char),
        Some(b'\n') => "a newline".to_string(),
        Some(b) => format!("byte 0x{b:02x}"),
    }
}

/// Value of an ASCII hex digit.
fn hex_val(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'f' => Some(u32::from(b - b'a') + 10),
        b'A'..=b'F' => Some(u32::from(b - b'A') + 10),
        _ => None,
    }
}

impl<R: Read> JsonReader<R> {
    /// A reader with the default 1 MB buffer.
    pub(super) fn new(src: R) -> Self {
        Self::with_capacity(src, DEFAULT_CAPACITY)
    }

    /// A reader with a buffer of `capacity` bytes (at least 1); small
    /// capacities exercise tokens split across refills.
    pub(super) fn with_capacity(src: R, capacity: usize) -> Self {
        Self::starting_at(src, 0, capacity)
    }

    /// A reader over input that starts at absolute offset `base` of a
    /// larger document (`src` yields the bytes from there on). Line numbers
    /// count from `base` until [`JsonReader::rebase`] is called.
    pub(super) fn starting_at(src: R, base: u64, capacity: usize) -> Self {
        Self {
            src,
            buf: vec![0; capacity.max(1)],
            pos: 0,
            end: 0,
            eof: false,
            base,
            lines_before: 0,
            last_newline_before: None,
            scratch: Vec::new(),
            stack: Vec::new(),
        }
    }

    /// Discard the consumed input, keep the unread tail, and read more
    /// (growing the buffer if the tail fills it). Returns `false` at the end
    /// of input.
    #[cold]
    #[inline(never)]
    fn fill_more(&mut self) -> JResult<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.pos > 0 {
            let gone = &self.buf[..self.pos];
            let lines = count_newlines(gone);
            if lines > 0 {
                self.lines_before += lines;
                if let Some(i) = gone.iter().rposition(|&b| b == b'\n') {
                    self.last_newline_before = Some(self.base + i as u64);
                }
            }
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.base += self.pos as u64;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            let grown = self.buf.len().saturating_mul(2).max(16);
            self.buf.resize(grown, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n.min(self.buf.len() - self.end);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Box::new(JsonError::Io(e))),
            }
        }
    }

    /// Make at least `n` unread bytes available if the input has them;
    /// returns whether it does.
    fn fill_to(&mut self, n: usize) -> JResult<bool> {
        while self.end - self.pos < n {
            if !self.fill_more()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Skip whitespace and return the absolute offset of the next byte.
    pub(super) fn peek_offset(&mut self) -> JResult<u64> {
        self.peek_nonws()?;
        Ok(self.base + self.pos as u64)
    }

    /// Newlines before the current position, and the absolute offset of
    /// the last of them.
    pub(super) fn lines_to_here(&self) -> (usize, Option<u64>) {
        let before = &self.buf[..self.pos];
        let last = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| self.base + i as u64)
            .or(self.last_newline_before);
        (self.lines_before + count_newlines(before), last)
    }

    /// For a reader made with [`JsonReader::starting_at`]: account for the
    /// `lines` newlines before its start, the last at `last_newline`, so
    /// that its line and column numbers become those of the whole document.
    pub(super) fn rebase(&mut self, lines: usize, last_newline: Option<u64>) {
        self.lines_before += lines;
        self.last_newline_before = self.last_newline_before.or(last_newline);
    }

    /// A syntax error at the current position.
    #[cold]
    fn error_here(&self, message: impl Into<String>) -> Box<JsonError> {
        let rel = self.pos.min(self.end);
        let before = &self.buf[..rel];
        let line = self.lines_before + count_newlines(before) + 1;
        let abs = self.base + rel as u64;
        let last = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map(|i| self.base + i as u64)
            .or(self.last_newline_before);
        let column = match last {
            Some(nl) => abs - nl,
            None => abs + 1,
        };
        Box::new(JsonError::Syntax {
            line,
            column: column as usize,
            offset: abs,
            message: message.into(),
        })
    }

    /// "expected X, found Y" at the current position.
    #[cold]
    fn unexpected(&self, found: Option<u8>, expected: &str) -> Box<JsonError> {
        self.error_here(format!("expected {expected}, found {}", describe(found)))
    }

    /// Skip whitespace and look at the next byte (`None` at the end).
    #[inline]
    fn peek_nonws(&mut self) -> JResult<Option<u8>> {
        loop {
            while self.pos < self.end {
                let b = self.buf[self.pos];
                match b {
                    b' ' | b'\n' | b'\r' | b'\t' => self.pos += 1,
                    _ => return Ok(Some(b)),
                }
            }
            if !self.fill_more()? {
                return Ok(None);
            }
        }
    }

    /// The kind of the next value (after whitespace); an error if the next
    /// byte cannot start a value.
    #[inline]
    pub(super) fn peek_kind(&mut self) -> JResult<Kind> {
        match self.peek_nonws()? {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b'-' | b'0'..=b'9') => Ok(Kind::Number),
            Some(b't' | b'f') => Ok(Kind::Bool),
            Some(b'n') => Ok(Kind::Null),
            other => Err(self.unexpected(other, "a value")),
        }
    }

    /// Consume `{` and the first key and its `:`; `key` maps the raw key
    /// bytes (escapes decoded) to the caller's field. `None` for `{}`.
    pub(super) fn begin_object<T>(&mut self, key: impl FnOnce(&[u8]) -> T) -> JResult<Option<T>> {
        match self.peek_nonws()? {
            Some(b'{') => self.pos += 1,
            other => return Err(self.unexpected(other, "'{'")),
        }
        match self.peek_nonws()? {
            Some(b'}') => {
                self.pos += 1;
                Ok(None)
            }
            Some(b'"') => self.key_colon(key).map(Some),
            other => Err(self.unexpected(other, "a key string or '}'")),
        }
    }

    /// After a member's value: consume `,` and the next key and its `:`, or
    /// the closing `}` (then `None`).
    #[inline]
    pub(super) fn next_key<T>(&mut self, key: impl FnOnce(&[u8]) -> T) -> JResult<Option<T>> {
        match self.peek_nonws()? {
            Some(b',') => {
                self.pos += 1;
                match self.peek_nonws()? {
                    Some(b'"') => self.key_colon(key).map(Some),
                    other => Err(self.unexpected(other, "a key string")),
                }
            }
            Some(b'}') => {
                self.pos += 1;
                Ok(None)
            }
            other => Err(self.unexpected(other, "',' or '}' after an object member")),
        }
    }

    /// At a `"`: read a key, then its `:`.
    #[inline]
    fn key_colon<T>(&mut self, key: impl FnOnce(&[u8]) -> T) -> JResult<T> {
        let t = self.with_string(key)?;
        match self.peek_nonws()? {
            Some(b':') => {
                self.pos += 1;
                Ok(t)
            }
            other => Err(self.unexpected(other, "':' after an object key")),
        }
    }

    /// At a `"`: read a string and hand its decoded bytes to `f`. Borrows
    /// straight from the buffer when the string has no escapes and lies in
    /// it whole.
    #[inline]
    fn with_string<T>(&mut self, f: impl FnOnce(&[u8]) -> T) -> JResult<T> {
        let start = self.pos + 1;
        let i = start + plain_run(&self.buf[start..self.end]);
        if i < self.end && self.buf[i] == b'"' {
            let t = f(&self.buf[start..i]);
            self.pos = i + 1;
            return Ok(t);
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let r = self.decode_string(&mut out);
        let t = r.map(|()| f(&out));
        self.scratch = out;
        t
    }

    /// At a `"`: decode a string into `out`, consuming the closing quote.
    fn decode_string(&mut self, out: &mut Vec<u8>) -> JResult<()> {
        self.pos += 1;
        loop {
            let start = self.pos;
            let i = start + plain_run(&self.buf[start..self.end]);
            out.extend_from_slice(&self.buf[start..i]);
            self.pos = i;
            if i == self.end {
                if !self.fill_more()? {
                    return Err(self.error_here("unterminated string: found end of file"));
                }
                continue;
            }
            match self.buf[i] {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => self.escape(Some(out))?,
                _ => return Err(self.error_here("control character in a string (must be escaped)")),
            }
        }
    }

    /// Four hex digits at `pos + 2 .. pos + 6` (the caller made them
    /// available or reports the end of input).
    fn hex4(&mut self) -> JResult<u32> {
        if !self.fill_to(6)? {
            self.pos = self.end;
            return Err(self.error_here("unterminated \\u escape: found end of file"));
        }
        let mut v = 0;
        for k in 2..6 {
            match hex_val(self.buf[self.pos + k]) {
                Some(d) => v = v * 16 + d,
                None => {
                    let found = Some(self.buf[self.pos + k]);
                    self.pos += k;
                    return Err(self.unexpected(found, "a hex digit in a \\u escape"));
                }
            }
        }
        Ok(v)
    }

    /// At a `\`: check an escape and consume it, appending the decoded
    /// character to `out` when given.
    fn escape(&mut self, out: Option<&mut Vec<u8>>) -> JResult<()> {
        if !self.fill_to(2)? {
            self.pos = self.end;
            return Err(self.error_here("unterminated string: found end of file"));
        }
        let c = self.buf[self.pos + 1];
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => 0,
            _ => {
                self.pos += 1;
                return Err(self.unexpected(Some(c), "an escape character (one of \"\\/bfnrtu)"));
            }
        };
        if c != b'u' {
            self.pos += 2;
            if let Some(out) = out {
                out.push(simple);
            }
            return Ok(());
        }
        let hi = self.hex4()?;
        self.pos += 6;
        let mut ch = hi;
        if (0xD800..0xDC00).contains(&hi) {
            // A high surrogate: pair it with a following `\uDC00`–`\uDFFF`.
            ch = 0xFFFD;
            if self.fill_to(2)? && self.buf[self.pos] == b'\\' && self.buf[self.pos + 1] == b'u' {
                let lo = self.hex4()?;
                if (0xDC00..0xE000).contains(&lo) {
                    self.pos += 6;
                    ch = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                }
            }
        }
        if let Some(out) = out {
            let ch = char::from_u32(ch).unwrap_or('\u{FFFD}');
            let mut tmp = [0u8; 4];
            out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
        }
        Ok(())
    }

    /// Read a string value (checked to be UTF-8).
    pub(super) fn read_string(&mut self) -> JResult<String> {
        match self.peek_nonws()? {
            Some(b'"') => {}
            other => return Err(self.unexpected(other, "a string")),
        }
        let mut out = Vec::new();
        self.decode_string(&mut out)?;
        String::from_utf8(out).map_err(|_| self.error_here("string is not valid UTF-8"))
    }

    /// At a `"`: skip a string, checking its escapes.
    fn skip_string(&mut self) -> JResult<()> {
        self.pos += 1;
        loop {
            let i = self.pos + plain_run(&self.buf[self.pos..self.end]);
            self.pos = i;
            if i == self.end {
                if !self.fill_more()? {
                    return Err(self.error_here("unterminated string: found end of file"));
                }
                continue;
            }
            match self.buf[i] {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => self.escape(None)?,
                _ => return Err(self.error_here("control character in a string (must be escaped)")),
            }
        }
    }

    /// Read a number.
    #[inline]
    pub(super) fn read_number(&mut self) -> JResult<Number> {
        match self.peek_nonws()? {
            Some(b'-' | b'0'..=b'9') => self.number_here(),
            other => Err(self.unexpected(other, "a number")),
        }
    }

    /// At a `-` or digit: read a number.
    #[inline]
    fn number_here(&mut self) -> JResult<Number> {
        loop {
            match scan_number(&self.buf[self.pos..self.end], self.eof) {
                NumScan::Done(len, num) => {
                    self.pos += len;
                    return Ok(num);
                }
                NumScan::Incomplete => {
                    self.fill_more()?;
                }
                NumScan::Invalid(at, message) => {
                    self.pos += at;
                    let found = (self.pos < self.end).then(|| self.buf[self.pos]);
                    return Err(self.error_here(format!("{message}, found {}", describe(found))));
                }
            }
        }
    }

    /// Read any value as a [`Scalar`]: numbers, bools and null are
    /// returned, strings and containers skipped.
    #[inline]
    pub(super) fn read_scalar(&mut self) -> JResult<Scalar> {
        match self.peek_nonws()? {
            Some(b'-' | b'0'..=b'9') => self.number_here().map(Scalar::Num),
            Some(b'"') => self.skip_string().map(|()| Scalar::Skipped(Kind::String)),
            Some(b't' | b'f') => self.read_bool().map(Scalar::Bool),
            Some(b'n') => self.read_null().map(|()| Scalar::Null),
            Some(b'{') => self.skip_value().map(|()| Scalar::Skipped(Kind::Object)),
            Some(b'[') => self.skip_value().map(|()| Scalar::Skipped(Kind::Array)),
            other => Err(self.unexpected(other, "a value")),
        }
    }

    /// Consume the literal `lit` byte by byte.
    fn literal(&mut self, lit: &[u8]) -> JResult<()> {
        for &want in lit {
            if self.pos == self.end && !self.fill_more()? {
                return Err(self.unexpected(None, &format!("'{}'", String::from_utf8_lossy(lit))));
            }
            let got = self.buf[self.pos];
            if got != want {
                return Err(
                    self.unexpected(Some(got), &format!("'{}'", String::from_utf8_lossy(lit)))
                );
            }
            self.pos += 1;
        }
        Ok(())
    }

    /// Read `true` or `false`.
    pub(super) fn read_bool(&mut self) -> JResult<bool> {
        match self.peek_nonws()? {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            other => Err(self.unexpected(other, "true or false")),
        }
    }

    /// Read `null`.
    pub(super) fn read_null(&mut self) -> JResult<()> {
        match self.peek_nonws()? {
            Some(b'n') => self.literal(b"null"),
            other => Err(self.unexpected(other, "null")),
        }
    }

    /// Consume `[`; returns whether the array has an element (`false`
    /// consumes the `]` of an empty array).
    pub(super) fn begin_array(&mut self) -> JResult<bool> {
        match self.peek_nonws()? {
            Some(b'[') => self.pos += 1,
            other => return Err(self.unexpected(other, "'['")),
        }
        match self.peek_nonws()? {
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            _ => Ok(true),
        }
    }

    /// After an element: consume `,` (then `true`: another element follows)
    /// or the closing `]` (then `false`).
    #[inline]
    pub(super) fn next_element(&mut self) -> JResult<bool> {
        match self.peek_nonws()? {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(b']') => {
                self.pos += 1;
                Ok(false)
            }
            other => Err(self.unexpected(other, "',' or ']' after an array element")),
        }
    }

    /// Skip one value of any kind, checking its syntax. Iterative, so deep
    /// nesting cannot overflow the stack.
    pub(super) fn skip_value(&mut self) -> JResult<()> {
        // Fast paths for scalars.
        match self.peek_kind()? {
            Kind::Number => return self.read_number().map(drop),
            Kind::String => return self.skip_string(),
            Kind::Bool => return self.read_bool().map(drop),
            Kind::Null => return self.read_null(),
            Kind::Object | Kind::Array => {}
        }
        let mut stack = std::mem::take(&mut self.stack);
        stack.clear();
        let r = self.skip_nested(&mut stack);
        self.stack = stack;
        r
    }

    /// The body of [`JsonReader::skip_value`] for containers.
    fn skip_nested(&mut self, stack: &mut Vec<bool>) -> JResult<()> {
        loop {
            // At the start of a value.
            match self.peek_kind()? {
                Kind::Object => {
                    self.pos += 1;
                    match self.peek_nonws()? {
                        Some(b'}') => self.pos += 1,
                        Some(b'"') => {
                            self.skip_key()?;
                            stack.push(true);
                            continue;
                        }
                        other => return Err(self.unexpected(other, "a key string or '}'")),
                    }
                }
                Kind::Array => {
                    self.pos += 1;
                    match self.peek_nonws()? {
                        Some(b']') => self.pos += 1,
                        _ => {
                            stack.push(false);
                            continue;
                        }
                    }
                }
                Kind::Number => drop(self.read_number()?),
                Kind::String => self.skip_string()?,
                Kind::Bool => drop(self.read_bool()?),
                Kind::Null => self.read_null()?,
            }
            // After a value: close containers until one continues.
            loop {
                let Some(&is_object) = stack.last() else {
                    return Ok(());
                };
                let b = self.peek_nonws()?;
                match (b, is_object) {
                    (Some(b','), true) => {
                        self.pos += 1;
                        match self.peek_nonws()? {
                            Some(b'"') => self.skip_key()?,
                            other => return Err(self.unexpected(other, "a key string")),
                        }
                        break;
                    }
                    (Some(b','), false) => {
                        self.pos += 1;
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.pos += 1;
                        stack.pop();
                    }
                    (other, true) => {
                        return Err(self.unexpected(other, "',' or '}' after an object member"))
                    }
                    (other, false) => {
                        return Err(self.unexpected(other, "',' or ']' after an array element"))
                    }
                }
            }
        }
    }

    /// At a `"`: skip a key and its `:`.
    fn skip_key(&mut self) -> JResult<()> {
        self.skip_string()?;
        match self.peek_nonws()? {
            Some(b':') => {
                self.pos += 1;
                Ok(())
            }
            other => Err(self.unexpected(other, "':' after an object key")),
        }
    }

    /// Check that only whitespace is left.
    pub(super) fn finish(&mut self) -> JResult<()> {
        match self.peek_nonws()? {
            None => Ok(()),
            other => Err(self.unexpected(other, "end of file after the top-level value")),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A source that hands out one byte per `read` (the loader's tests use
    /// it too).
    pub(crate) struct Trickle<'a>(pub &'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    fn num(s: &str) -> Number {
        let mut r = JsonReader::new(s.as_bytes());
        let n = r.read_number().unwrap();
        r.finish().unwrap();
        n
    }

    #[allow(clippy::boxed_local)]
    fn syntax(e: Box<JsonError>) -> (usize, usize, String) {
        match *e {
            JsonError::Syntax {
                line,
                column,
                message,
                ..
            } => (line, column, message),
            JsonError::Io(e) => panic!("io error {e}"),
        }
    }

    #[test]
    fn numbers_are_correctly_rounded() {
        for s in [
            "0",
            "-0",
            "1",
            "12.5",
            "491.37",
            "-3.25e2",
            "1E+2",
            "0.1",
            "0.3",
            "1584.6008000000002",
            "123456789012345678",
            "12345678901234567890123",
            "1e-320",
            "2.2250738585072014e-308",
            "9007199254740993",
            "1.7976931348623157e308",
            "0.000001",
            "5e-324",
            "1e22",
            "1e23",
        ] {
            assert_eq!(num(s).value(), s.parse::<f64>().unwrap(), "{s}");
        }
        assert_eq!(num("1e999").value(), f64::INFINITY);
        assert!(num("-0").value().is_sign_negative());
        assert_eq!(num("42").uint(), Some(42));
        assert_eq!(num("18446744073709551615").uint(), None);
        assert_eq!(num("-1").uint(), None);
        assert_eq!(num("1.0").uint(), None);
    }

    #[test]
    fn plain_runs() {
        let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        let mut rng = crate::core::rng::SplitMix64::new(3);
        for _ in 0..20_000 {
            let len = rng.below(40);
            let s: Vec<u8> = (0..len)
                .map(|_| match rng.below(12) {
                    0 => b'"',
                    1 => b'\\',
                    2 => rng.below(0x20) as u8,
                    3 => 0x80 + rng.below(0x80) as u8,
                    _ => 0x20 + rng.below(0x60) as u8,
                })
                .collect();
            assert_eq!(plain_run(&s), naive(&s).unwrap_or(s.len()), "{s:?}");
        }
    }

    #[test]
    fn bad_numbers() {
        for (s, col) in [
            ("-", 2),
            ("-x", 2),
            ("1.", 3),
            ("1.e5", 3),
            ("1e", 3),
            ("1e+", 4),
            ("+1", 1),
        ] {
            let mut r = JsonReader::new(s.as_bytes());
            let (line, column, _) = syntax(r.read_number().unwrap_err());
            assert_eq!((line, column), (1, col), "{s}");
        }
    }

    #[test]
    fn strings_and_escapes() {
        let src =
            r#"["a\"b\\c\/d\b\f\n\r\t", "\u00e9\u4e2d", "\ud83d\ude00", "\ud83d x", "\ude00"]"#;
        for cap in [1, 2, 3, 5, 7, 1024] {
            let mut r = JsonReader::with_capacity(Trickle(src.as_bytes()), cap);
            assert!(r.begin_array().unwrap());
            let mut got = Vec::new();
            loop {
                got.push(r.read_string().unwrap());
                if !r.next_element().unwrap() {
                    break;
                }
            }
            r.finish().unwrap();
            assert_eq!(
                got,
                [
                    "a\"b\\c/d\u{8}\u{c}\n\r\t",
                    "é中",
                    "😀",
                    "\u{FFFD} x",
                    "\u{FFFD}"
                ]
            );
        }
    }

    #[test]
    fn walks_objects_and_skips() {
        let src = br#" { "a" : [1, {"x": [[], {}, "s\"}"]}, true, null, -2.5e3] , "b\u0041": false, "c": {} } "#;
        for cap in [1, 4, 9, 64, 1 << 20] {
            let mut r = JsonReader::with_capacity(Trickle(src), cap);
            let mut keys = Vec::new();
            let mut k = r.begin_object(|k| k.to_vec()).unwrap();
            while let Some(key) = k {
                if key == b"bA" {
                    assert!(!r.read_bool().unwrap());
                } else {
                    r.skip_value().unwrap();
                }
                keys.push(key);
                k = r.next_key(|k| k.to_vec()).unwrap();
            }
            r.finish().unwrap();
            assert_eq!(keys, [b"a".to_vec(), b"bA".to_vec(), b"c".to_vec()]);
        }
    }

    #[test]
    fn numbers_split_across_refills() {
        let src = b"[491.37, 1584.6008000000002, 123456789, -7e-3, 0]";
        for cap in [1, 2, 3, 8] {
            let mut r = JsonReader::with_capacity(Trickle(src), cap);
            assert!(r.begin_array().unwrap());
            let mut got = Vec::new();
            loop {
                got.push(r.read_number().unwrap().value());
                if !r.next_element().unwrap() {
                    break;
                }
            }
            assert_eq!(got, [491.37, 1584.6008000000002, 123456789.0, -7e-3, 0.0]);
        }
    }

    #[test]
    fn error_positions_across_refills() {
        let src = "[\n  1,\n  2 3\n]";
        for cap in [1, 3, 1 << 20] {
            let mut r = JsonReader::with_capacity(Trickle(src.as_bytes()), cap);
            let e = r.skip_value().unwrap_err();
            let (line, column, message) = syntax(e);
            assert_eq!((line, column), (3, 5), "cap {cap}: {message}");
            assert!(message.contains("found '3'"), "{message}");
        }
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let mut src = vec![b'['; 200_000];
        src.extend(vec![b']'; 200_000]);
        let mut r = JsonReader::new(&src[..]);
        r.skip_value().unwrap();
        r.finish().unwrap();
        let mut r = JsonReader::new(&src[..150_000]);
        assert!(r.skip_value().is_err());
    }
}
