"""URLs as the project prints them: with any password replaced, so no log or message leaks one."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

REDACTED = "***"
# A URL inside free text: a scheme, "://", then everything up to white space or a quote.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact(url: str) -> str:
    """``url`` with the password of its user-info part replaced by ``***`` (any scheme).

    ``http://user:secret@host/x`` -> ``http://user:***@host/x``; a URL without one, or a plain
    path, is returned unchanged. The user-info ends at the host's last ``@``, so a password that
    itself holds ``:`` or ``@`` is hidden whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable as a URL (an unbalanced "[" in a host, say): hide all after "//"
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{REDACTED}" if sep else url
    if not parts.netloc or "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    netloc = f"{user}:{REDACTED}@{host}" if colon else f"{userinfo}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_text(text: str) -> str:
    """``text`` (an error message, a log line) with every URL in it passed through ``redact``.

    For messages built from text we do not control, such as an exception from a storage
    client that quotes the endpoint it failed to reach.
    """
    return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)
