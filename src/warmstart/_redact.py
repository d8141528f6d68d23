"""What may be printed or stored: URLs without their secrets, text without control characters.

The bottom of the layering (imports nothing of warmstart), so every module can use it. Two rules:

* A URL is printed, logged and stored only as :func:`redact_url` makes it: no query string (a signed
  URL carries its credentials there: ``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``,
  a CDN's ``Signature``/``Key-Pair-Id``/``Policy``/``token``), no fragment, no ``user:password@``.
  :func:`redact_text` applies that to every URL inside a message, and hides bearer tokens and
  ``name=value`` signature parameters that appear outside a URL.
* Text that came from a server (an error header or body, a file name, a ref name) reaches the terminal
  only through :func:`clean`: control characters (C0, DEL, C1), so also every ANSI escape sequence, and
  the bidirectional overrides are shown as visible escapes, so a message stays one harmless line.

>>> redact_url("https://user:pw@cdn.example.com:8443/m/model.safetensors?X-Amz-Signature=abc#frag")
'https://cdn.example.com:8443/m/model.safetensors'
>>> redact_text("HTTP 403 from https://h/x?token=s3cret; Authorization: Bearer hf_abc")
'HTTP 403 from https://h/x; Authorization: Bearer ***'
>>> clean("bad\\x1b]0;pwned\\x07\\x1b[2J name\\n")
'bad\\\\x1b]0;pwned\\\\x07\\\\x1b[2J name\\\\n'
"""

from __future__ import annotations

import re

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_BEARER = re.compile(r"\b(Bearer)(\s+)[A-Za-z0-9._~+/=-]{4,}")
_AUTHORIZATION = re.compile(r"\b((?:Proxy-)?Authorization:\s*[A-Za-z]+\s+)\S+", re.IGNORECASE)
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
_PARAM = re.compile(
    r"\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|Key-Pair-Id|Policy|token|sig|"
    r"access_token|AWSAccessKeyId|Expires)=[^&\s'\"]+",
    re.IGNORECASE,
)
#: C0 controls, DEL, C1 controls, and the Unicode bidirectional overrides/isolates
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def redact_url(url: str, *, mark: str = "") -> str:
    """``url`` without query string, fragment and userinfo: the form that may be printed or stored.
    ``mark`` (e.g. ``***@``) stands in for userinfo that was there.

    Conservative on malformed input: anything before the last ``@`` of the authority is dropped, even
    an unencoded ``?`` or ``#`` inside a password.

    >>> redact_url("http://[::1]:8080/a?b=1")
    'http://[::1]:8080/a'
    >>> redact_url("https://u:p?w#d@host/x"), redact_url("https://u:p@host/x", mark="***@")
    ('https://host/x', 'https://***@host/x')
    """
    m = _SCHEME.match(url)
    head, rest = (url[:m.end()], url[m.end():]) if m else ("", url)
    if m:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            rest = mark + authority.rpartition("@")[2] + slash + path
    return head + re.split(r"[?#]", rest, maxsplit=1)[0]


def _redact_match(m: re.Match) -> str:
    url = m.group(0)
    trail = len(url) - len(url.rstrip(".,;:!)]}"))  # the sentence's punctuation, not the URL's
    return redact_url(url[:len(url) - trail], mark="***@") + url[len(url) - trail:]


def redact_text(text: str) -> str:
    """Every URL in ``text`` as :func:`redact_url` prints it (userinfo shown as ``***@``); bearer tokens,
    Hub tokens and signature parameters replaced by ``***``."""
    text = _URL.sub(_redact_match, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    text = _AUTHORIZATION.sub(lambda m: f"{m.group(1)}***", text)
    text = _HF_TOKEN.sub("hf_***", text)
    return _PARAM.sub(lambda m: f"{m.group(1)}=***", text)


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: str) -> str:
    """``text`` with every control character (hence every terminal escape sequence) made visible:
    ``ESC`` becomes the four characters ``\\x1b``, a newline ``\\n``; one line, safe for a terminal."""
    return _CONTROL.sub(lambda m: _escape(m.group(0)), text)


def for_terminal(text: str) -> str:
    """A message as the CLI prints it: secrets redacted, control characters escaped."""
    return clean(redact_text(text))
