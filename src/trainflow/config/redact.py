"""Secrets never reach params, tags or config artifacts.

Lives with the config (not in `tracking`) because what is secret is a
property of config keys and override strings: the config's own extras (the
printed tree), the command line's one-line errors and the tracking layer all
mask with it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

REDACTED = "***"
# Name a secret wherever they stand in a key, plural or inside a lowercase
# compound (`dbpassword`, `clientsecrets`): no config key means anything else.
_ALWAYS_SECRET = ("password", "passwd", "passphrase", "secret", "credential")
_ALWAYS_SECRET_WORDS = frozenset({"pwd", "pwds"})
# `token` and `key` are a secret only as the key's own last word (`hub.token`,
# `accessToken`, `api_keys`), not when a word before it makes it a count, an
# order or a vocabulary entry (`max_tokens`, `pad_token`, `sort_keys`), nor
# when a word after it says what about it is meant (`key_path`, `tokens_per_batch`).
_MAYBE_SECRET = frozenset({"token", "key"})
_NOT_SECRET_BEFORE = frozenset({
    "max", "min", "num", "n", "total", "sort", "primary", "foreign", "partition", "group", "cache",
    "special", "pad", "unk", "bos", "eos", "cls", "sep", "mask", "start", "end",
})
# Lowercase compounds that are still a token or key (`accesstoken`, `apikey`);
# any other prefix (`monkey`, `turkey`) is a word of its own.
_SECRET_PREFIXES = ("api", "access", "auth", "private", "bearer", "session", "refresh", "client",
                    "signing", "encryption", "master", "ssh", "deploy", "hf", "github")
_SEGMENT_SPLIT = re.compile(r"[.@/]")
_WORD_SPLIT = re.compile(r"[_\-\s]+")
_CAMEL_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")
# The password of a URL's user info (`postgresql://user:pw@host/db`), under any key:
# a study storage or a database URL is not named like a secret but may carry one.
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)[^@\s/]+(@)")
# Masking a removed value this short in a message would garble it more than it hides.
_MIN_MASKED_LEN = 3


def key_words(segment: str) -> list[str]:
    """`AWS_SECRET_ACCESS_KEY`, `aws-secret-access-key` and `awsSecretAccessKey` alike."""
    return [w.lower() for part in _WORD_SPLIT.split(segment) for w in _CAMEL_WORDS.findall(part)]


def is_secret_key(key: str) -> bool:
    """A dotted (or `@package`, `group/option`) key any segment of which names a secret.

    Any segment, because `redact` hides a secret node's whole subtree:
    `credentials.user` is as hidden as `{credentials: {user: ...}}`.
    """
    return any(_names_secret(key_words(segment)) for segment in _SEGMENT_SPLIT.split(key))


def _names_secret(words: list[str]) -> bool:
    if any(w in _ALWAYS_SECRET_WORDS or any(s in w for s in _ALWAYS_SECRET) for w in words):
        return True
    if not words:
        return False
    last = _singular(words[-1])
    if last in _MAYBE_SECRET:
        return not any(w in _NOT_SECRET_BEFORE for w in words[:-1])
    return any(last == prefix + noun for prefix in _SECRET_PREFIXES for noun in _MAYBE_SECRET)


def _singular(word: str) -> str:
    return word[:-1] if word.endswith("s") else word


def mask_url_passwords(text: str) -> str:
    return _URL_PASSWORD.sub(rf"\g<1>{REDACTED}\g<2>", text)


def redact(node: Any) -> Any:
    """A copy of a plain container with every secret-looking value replaced."""
    if isinstance(node, dict):
        return {k: (REDACTED if is_secret_key(str(k)) and v is not None else redact(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [redact(v) for v in node]
    if isinstance(node, str):
        return mask_url_passwords(node)
    return node


def secret_values(node: Any, under_secret: bool = False) -> list[str]:
    """The scalar values `redact` hides, as text: what an error message must not repeat either."""
    if isinstance(node, dict):
        return [v for k, child in node.items() for v in secret_values(child, under_secret or is_secret_key(str(k)))]
    if isinstance(node, list):
        return [v for child in node for v in secret_values(child, under_secret)]
    if under_secret and node is not None and len(str(node)) >= _MIN_MASKED_LEN:
        return [str(node)]
    return []


def redact_overrides(overrides: list[str]) -> list[str]:
    """Hydra overrides fit for a tag or an artifact: secret values masked, the rest verbatim."""
    return [_redact_override(item)[0] for item in overrides]


def mask_secrets(text: str, overrides: list[str], values: Iterable[str] = ()) -> str:
    """An error message or traceback with every secret the overrides carried masked.

    Hydra echoes an override it cannot parse or apply whole, and a value it
    cannot convert alone, so both the override and its secret values go.
    `values`: secrets from elsewhere (the config files, `${oc.env:...}`) that
    a constructor's message may quote.
    """
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    for item in overrides:
        cleaned, removed = _redact_override(item)
        if cleaned != item:
            text = text.replace(item, cleaned)
        for value in sorted(removed, key=len, reverse=True):
            if len(value) >= _MIN_MASKED_LEN:
                text = text.replace(value, REDACTED)
    return mask_url_passwords(text)


def _redact_override(item: str) -> tuple[str, list[str]]:
    """The override as it may be logged, and the values taken out of it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    head, sep, raw = item.partition("=")
    if not sep:
        return item, []  # `~key`: a deletion carries no value
    try:
        parsed = OverridesParser.create().parse_override(item)
    except Exception:  # the step fails to compose anyway; mask the whole value if it names a secret
        secret = is_secret_key(head) or any(is_secret_key(w) for w in re.findall(r"[A-Za-z_][\w\-]*", raw))
        return (f"{head}={REDACTED}", [raw]) if secret else (mask_url_passwords(item), [])
    value = parsed.value()
    if is_secret_key(parsed.key_or_group) or is_secret_key(parsed.package or ""):
        return f"{head}={REDACTED}", [raw, *_leaves(getattr(value, "list", value))]  # a choice sweep's list
    if parsed.is_sweep_override() or not isinstance(value, dict | list):
        return mask_url_passwords(item), []
    cleaned = redact(value)
    if cleaned == value:
        return item, []
    return f"{head}={parsed._get_value_element_as_str(_quoted(cleaned))}", list(_removed(value, cleaned))


def _quoted(node: Any) -> Any:
    """Strings quoted, so a masked URL reads as written rather than with Hydra's escapes."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(node, dict):
        return {k: _quoted(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_quoted(v) for v in node]
    return QuotedString(text=node, quote=_quote_for(node)) if isinstance(node, str) else node


def _quote_for(text: str) -> Any:
    from hydra.core.override_parser.types import Quote

    return Quote.double if "'" in text else Quote.single


def _removed(original: Any, cleaned: Any) -> Iterator[str]:
    if original == cleaned:
        return
    if isinstance(original, dict) and isinstance(cleaned, dict):
        for key, value in original.items():
            yield from _removed(value, cleaned.get(key))
    elif isinstance(original, list) and isinstance(cleaned, list):
        for before, after in zip(original, cleaned, strict=True):
            yield from _removed(before, after)
    elif cleaned == REDACTED:
        yield from _leaves(original)


def _leaves(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            yield from _leaves(item)
    elif node is not None and not isinstance(node, bool):
        yield str(node)
