//! SMTP command lines, read from a bounded buffer.
//!
//! [`LineReader`] splits client input into command lines the way postscreen's dummy engine
//! does (`postscreen_smtpd.c`): a line ends at LF, with or without the CR before it, and the
//! reader says which ([`LineEnding`]), because the bare newline test needs to know. A line
//! whose text reaches `line_length_limit` bytes is refused ([`LineError::TooLong`]) as soon as
//! that is certain, at the same byte where postscreen gives up, and the reader never holds
//! more than `limit + 1` bytes: a hostile client cannot make it allocate.
//!
//! After each line the reader reports whether more input was already buffered
//! ([`Line::pending`]) and what it is ([`Line::following`]). That is the pipelining test's
//! evidence: a command split across reads is not pipelining, two commands in one read are.
//! [`LineReader::clear`] drops buffered input, as STARTTLS requires.
//!
//! The reader does no I/O. The caller reads from its socket into [`LineReader::spare`] and
//! reports the count with [`LineReader::commit`], or hands bytes over with
//! `LineReader::extend`.

/// Postfix's `line_length_limit` default.
pub(crate) const DEFAULT_LINE_LENGTH_LIMIT: usize = 2048;

/// The largest limit a reader accepts; larger values are clamped to it. Each connection
/// holds one buffer of `limit + 1` bytes.
pub(crate) const MAX_LINE_LENGTH_LIMIT: usize = 65_536;

/// How a command line was terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LineEnding {
    /// `\r\n`, as RFC 5321 requires.
    CrLf,
    /// `\n` alone; accepted, but a deep protocol test may hold it against the client.
    BareLf,
}

/// One command line, borrowed from the reader until the next call that changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// The line without its terminator. May contain any byte except the final LF.
    pub(crate) text: &'a [u8],
    /// How the line ended.
    pub(crate) ending: LineEnding,
    /// More client input was already buffered after this line: the client sent it without
    /// waiting for the reply to this one.
    pub(crate) pending: bool,
    /// That input (empty when `pending` is false): the pipelining test logs its start.
    pub(crate) following: &'a [u8],
}

/// Input that cannot be a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LineError {
    /// The line's text reached the limit (postscreen: `COMMAND LENGTH LIMIT`).
    #[error("command line of {limit} bytes or more (line_length_limit is {limit})")]
    TooLong { limit: usize },
}

/// A fixed-size buffer that yields command lines.
#[derive(Debug)]
pub(crate) struct LineReader {
    buf: Box<[u8]>,
    /// First byte not yet handed out as part of a line.
    start: usize,
    /// End of the buffered input.
    end: usize,
    limit: usize,
}

impl LineReader {
    /// A reader for lines shorter than `limit` bytes (clamped to 1..=[`MAX_LINE_LENGTH_LIMIT`]).
    pub(crate) fn new(limit: usize) -> Self {
        let limit = limit.clamp(1, MAX_LINE_LENGTH_LIMIT);
        Self {
            // The longest acceptable line is `limit - 1` bytes of text, CR and LF.
            buf: vec![0; limit + 1].into_boxed_slice(),
            start: 0,
            end: 0,
            limit,
        }
    }

    /// The line length limit in force.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The buffer's size: the most input it ever holds.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Input received but not yet returned as a line.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Room for the next read. Never empty after [`next_line`](Self::next_line) returned
    /// `Ok(None)`; reading into an empty slice would look like end of input.
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        self.compact();
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare) (at most its length).
    pub(crate) fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Copies as much of `bytes` as fits and returns how many bytes were taken.
    #[cfg(test)]
    pub(crate) fn extend(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.commit(n);
        n
    }

    /// The next complete line, `Ok(None)` when more input is needed, or the error that ends
    /// the session. After an error the reader stays in that state.
    pub(crate) fn next_line(&mut self) -> Result<Option<Line<'_>>, LineError> {
        let data = &self.buf[self.start..self.end];
        // A LF beyond the first `limit + 1` bytes cannot end an acceptable line.
        let window = &data[..data.len().min(self.limit + 1)];
        let Some(lf) = window.iter().position(|&b| b == b'\n') else {
            // postscreen refuses the byte that arrives when `limit` bytes are held and the
            // last of them is not a CR: here, a `limit + 1`-th byte that is not that LF.
            if data.len() > self.limit {
                return Err(LineError::TooLong { limit: self.limit });
            }
            return Ok(None);
        };
        let (text_len, ending) = if lf > 0 && window[lf - 1] == b'\r' {
            (lf - 1, LineEnding::CrLf)
        } else {
            (lf, LineEnding::BareLf)
        };
        if text_len >= self.limit {
            return Err(LineError::TooLong { limit: self.limit });
        }
        let text_start = self.start;
        self.start += lf + 1;
        Ok(Some(Line {
            text: &self.buf[text_start..text_start + text_len],
            ending,
            pending: self.start < self.end,
            following: &self.buf[self.start..self.end],
        }))
    }

    /// Forgets all buffered input, and with it an over-long line. After STARTTLS this is what
    /// keeps plaintext that the client (or someone in the middle) sent behind the command
    /// from being read as if it had come over TLS.
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Moves unread input to the front of the buffer, so that the free space is contiguous.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line the reader yields for `chunks` fed one after another, as
    /// (text, ending, pending).
    fn lines_of(limit: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, LineEnding, bool)> {
        let mut reader = LineReader::new(limit);
        let mut out = Vec::new();
        for chunk in chunks {
            assert_eq!(reader.extend(chunk), chunk.len(), "chunk does not fit");
            while let Some(line) = reader.next_line().unwrap() {
                out.push((line.text.to_vec(), line.ending, line.pending));
            }
        }
        out
    }

    #[test]
    fn splits_on_crlf_and_bare_lf() {
        let got = lines_of(64, &[b"EHLO a\r\nNOOP\nQUIT\r\n"]);
        assert_eq!(
            got,
            vec![
                (b"EHLO a".to_vec(), LineEnding::CrLf, true),
                (b"NOOP".to_vec(), LineEnding::BareLf, true),
                (b"QUIT".to_vec(), LineEnding::CrLf, false),
            ]
        );
    }

    #[test]
    fn empty_lines_and_stray_carriage_returns() {
        let got = lines_of(64, &[b"\r\n\n\r\r\nA\rB\r\n"]);
        assert_eq!(
            got,
            vec![
                (b"".to_vec(), LineEnding::CrLf, true),
                (b"".to_vec(), LineEnding::BareLf, true),
                // Only the CR right before the LF belongs to the terminator.
                (b"\r".to_vec(), LineEnding::CrLf, true),
                (b"A\rB".to_vec(), LineEnding::CrLf, false),
            ]
        );
    }

    #[test]
    fn a_crlf_split_between_reads_is_still_crlf() {
        let got = lines_of(64, &[b"NOOP\r", b"\n"]);
        assert_eq!(got, vec![(b"NOOP".to_vec(), LineEnding::CrLf, false)]);
    }

    #[test]
    fn garbage_bytes_pass_through_as_text() {
        let got = lines_of(64, &[b"\x00\xff\xfe GET / HTTP/1.0\x1b\r\n"]);
        assert_eq!(
            got,
            vec![(
                b"\x00\xff\xfe GET / HTTP/1.0\x1b".to_vec(),
                LineEnding::CrLf,
                false
            )]
        );
    }

    #[test]
    fn one_command_split_at_every_position_is_one_line_and_not_pipelined() {
        let input = b"MAIL FROM:<a@example.org>\r\n";
        for k in 0..=input.len() {
            let got = lines_of(64, &[&input[..k], &input[k..]]);
            assert_eq!(
                got,
                vec![(
                    b"MAIL FROM:<a@example.org>".to_vec(),
                    LineEnding::CrLf,
                    false
                )],
                "split at {k}"
            );
        }
    }

    #[test]
    fn two_commands_split_at_every_position() {
        let first = b"EHLO client.example\r\n";
        let input = b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\n";
        for k in 0..=input.len() {
            let got = lines_of(64, &[&input[..k], &input[k..]]);
            // The second command was already buffered when the first completed, unless the
            // reads split exactly between them.
            let pipelined = k != first.len();
            assert_eq!(
                got,
                vec![
                    (b"EHLO client.example".to_vec(), LineEnding::CrLf, pipelined),
                    (
                        b"MAIL FROM:<a@example.org>".to_vec(),
                        LineEnding::CrLf,
                        false
                    ),
                ],
                "split at {k}"
            );
        }
    }

    #[test]
    fn pending_input_is_visible_after_a_line() {
        let mut reader = LineReader::new(64);
        reader.extend(b"EHLO a\r\nMAIL FROM:<x>\r\nRC");
        let line = reader.next_line().unwrap().unwrap();
        assert!(line.pending);
        assert_eq!(reader.buffered(), b"MAIL FROM:<x>\r\nRC");
        reader.next_line().unwrap().unwrap();
        assert_eq!(reader.buffered(), b"RC");
        assert_eq!(reader.next_line(), Ok(None));
        assert_eq!(reader.buffered(), b"RC");
    }

    #[test]
    fn following_is_the_input_buffered_after_each_line() {
        let mut reader = LineReader::new(64);
        reader.extend(b"EHLO a\r\nMAIL FROM:<x>\nRC");
        let line = reader.next_line().unwrap().unwrap();
        assert_eq!(line.following, b"MAIL FROM:<x>\nRC");
        let line = reader.next_line().unwrap().unwrap();
        assert_eq!(
            (line.text, line.ending),
            (&b"MAIL FROM:<x>"[..], LineEnding::BareLf)
        );
        assert_eq!(line.following, b"RC");
        assert!(line.pending);
        reader.extend(b"PT TO:<y>\r\n");
        let line = reader.next_line().unwrap().unwrap();
        assert_eq!(line.text, b"RCPT TO:<y>");
        assert_eq!(line.following, b"");
        assert!(!line.pending);
    }

    #[test]
    fn pending_and_following_agree_at_every_split() {
        let input = b"EHLO a\r\nNOOP\nQUIT\r\n";
        for k in 0..=input.len() {
            let mut reader = LineReader::new(64);
            for chunk in [&input[..k], &input[k..]] {
                reader.extend(chunk);
                while let Some(line) = reader.next_line().unwrap() {
                    assert_eq!(line.pending, !line.following.is_empty(), "split at {k}");
                    // The following input is exactly what the reader still holds.
                    let following = line.following.to_vec();
                    assert_eq!(reader.buffered(), &following[..], "split at {k}");
                }
            }
        }
    }

    #[test]
    fn clear_drops_buffered_input_and_a_pending_error() {
        let mut reader = LineReader::new(64);
        reader.extend(b"STARTTLS\r\nMAIL FROM:<injected@x>\r\nRCPT");
        assert_eq!(reader.next_line().unwrap().unwrap().text, b"STARTTLS");
        reader.clear();
        assert!(reader.buffered().is_empty());
        assert_eq!(reader.next_line(), Ok(None));
        assert_eq!(reader.spare().len(), reader.capacity());
        reader.extend(b"EHLO b\r\n");
        assert_eq!(reader.next_line().unwrap().unwrap().text, b"EHLO b");

        let mut reader = LineReader::new(8);
        reader.extend(b"0123456789");
        assert!(reader.next_line().is_err());
        reader.clear();
        reader.extend(b"NOOP\r\n");
        assert_eq!(reader.next_line().unwrap().unwrap().text, b"NOOP");
    }

    #[test]
    fn the_longest_accepted_line_has_limit_minus_one_bytes() {
        let limit = 8;
        let text = vec![b'x'; limit - 1];
        for ending in [&b"\r\n"[..], b"\n"] {
            let mut reader = LineReader::new(limit);
            reader.extend(&text);
            reader.extend(ending);
            assert_eq!(reader.next_line().unwrap().unwrap().text, &text[..]);
        }
    }

    #[test]
    fn a_line_of_limit_bytes_is_too_long() {
        let limit = 8;
        let text = vec![b'x'; limit];
        for ending in [&b"\r\n"[..], b"\n"] {
            let mut reader = LineReader::new(limit);
            reader.extend(&text);
            // `limit` bytes alone may still be a partial line: postscreen waits as well.
            assert_eq!(reader.next_line(), Ok(None));
            reader.extend(ending);
            assert_eq!(reader.next_line(), Err(LineError::TooLong { limit }));
            // The error sticks.
            assert_eq!(reader.next_line(), Err(LineError::TooLong { limit }));
        }
    }

    #[test]
    fn a_partial_line_that_cannot_fit_is_refused_before_its_end() {
        let limit = 8;
        let mut reader = LineReader::new(limit);
        reader.extend(&[b'x'; 8]);
        assert_eq!(reader.next_line(), Ok(None));
        reader.extend(b"y");
        assert_eq!(reader.next_line(), Err(LineError::TooLong { limit }));
        // Text of limit - 1 bytes and a CR still waits for its LF.
        let mut reader = LineReader::new(limit);
        reader.extend(b"xxxxxxx\r");
        assert_eq!(reader.next_line(), Ok(None));
    }

    #[test]
    fn an_overlong_line_after_a_good_one() {
        let mut reader = LineReader::new(8);
        // The buffer holds limit + 1 bytes.
        assert_eq!(reader.extend(b"NOOP\r\n0123456789"), 9);
        assert_eq!(reader.next_line().unwrap().unwrap().text, b"NOOP");
        assert_eq!(reader.next_line(), Ok(None));
        assert_eq!(reader.extend(b"3456789"), 6);
        assert_eq!(reader.next_line(), Err(LineError::TooLong { limit: 8 }));
    }

    #[test]
    fn a_megabyte_line_never_grows_the_buffer() {
        let limit = DEFAULT_LINE_LENGTH_LIMIT;
        let mut reader = LineReader::new(limit);
        let capacity = reader.capacity();
        assert_eq!(capacity, limit + 1);
        let chunk = [b'A'; 1000];
        let mut fed = 0;
        let mut refused = false;
        while fed < 1 << 20 {
            let taken = reader.extend(&chunk);
            fed += taken;
            assert!(reader.buffered().len() <= capacity);
            match reader.next_line() {
                Ok(None) => assert!(taken > 0, "no room and no verdict"),
                Err(LineError::TooLong { .. }) => {
                    refused = true;
                    break;
                }
                Ok(Some(_)) => panic!("a line without LF"),
            }
        }
        assert!(refused);
        assert!(fed <= capacity);
        assert_eq!(reader.capacity(), capacity);
        // Full: further input is not taken.
        assert_eq!(reader.extend(&chunk), 0);
    }

    #[test]
    fn spare_room_is_never_empty_while_a_line_is_incomplete() {
        let mut reader = LineReader::new(16);
        for b in b"0123456789abcde" {
            reader.extend(&[*b]);
            assert_eq!(reader.next_line(), Ok(None));
            assert!(!reader.spare().is_empty());
        }
    }

    #[test]
    fn commit_is_clamped_to_the_buffer() {
        let mut reader = LineReader::new(4);
        let n = reader.spare().len();
        reader.spare()[..2].copy_from_slice(b"\r\n");
        reader.commit(n + 100);
        assert_eq!(reader.buffered().len(), n);
    }

    #[test]
    fn consumed_lines_make_room_for_more_input() {
        let mut reader = LineReader::new(8);
        for _ in 0..100 {
            assert_eq!(reader.extend(b"NOOP\r\n"), 6);
            assert_eq!(reader.next_line().unwrap().unwrap().text, b"NOOP");
        }
        assert!(reader.buffered().is_empty());
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(LineReader::new(0).limit(), 1);
        assert_eq!(LineReader::new(usize::MAX).limit(), MAX_LINE_LENGTH_LIMIT);
        // A limit of 1 accepts only empty lines.
        let mut reader = LineReader::new(1);
        reader.extend(b"\r\n");
        assert_eq!(reader.next_line().unwrap().unwrap().text, b"");
        reader.extend(b"x\n");
        assert_eq!(reader.next_line(), Err(LineError::TooLong { limit: 1 }));
    }

    #[test]
    fn the_error_names_the_limit() {
        let text = LineError::TooLong { limit: 2048 }.to_string();
        assert!(text.contains("2048"), "{text}");
    }
}
