"""Redaction of secrets in transcript lines before they leave the machine.

Behaviour (see the "Redaction" section of behaviour.md): every match of a
value pattern becomes ``[REDACTED:<TYPE>]`` (only the capture group when one is
configured); a field pattern blanks the whole string value of a JSON field
whose *name* matches.  JSON lines are redacted value by value so they stay
valid JSON; other lines get the value patterns as plain text.

Speed: a backfill pushes hundreds of MB through ``redact_line`` and almost no
line holds a secret, so every line first goes through a single cheap scan of
its raw bytes (``_PREFILTER``) and only lines that scan positive pay for
decoding and the full pattern set.  A line with no match is returned as the
very same ``bytes`` object, so it is sent byte for byte.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from .redact_scan import compile_custom_first_pass, compile_first_pass, flagged_lines

__all__ = ["Redactor", "DEFAULT_PATTERNS"]


class PatternSpec(NamedTuple):
    """One row of the default pattern table.

    ``anchors`` are not part of the behaviour: each is ``(literal, tail)``
    where the literal (plus the optional ``tail`` regex) must occur in the raw
    bytes of any line the pattern can match.  They feed the prefilter.
    """

    name: str
    type: str
    regex: str | None = None  # value pattern
    group: int = 0  # capture group to replace (0 = whole match)
    field: str | None = None  # field-name pattern
    anchors: tuple[tuple[str, str], ...] = ()
    ignore_case_anchors: bool = False


_FIELD_NAMES = (
    r"(?i)^(password|passwd|secret|api_key|apikey|api_secret|token|auth_token"
    r"|access_token|refresh_token|private_key|credential|credentials)$"
)
_CONN_TAIL = r"[^:/@\s]+:[^@\s]+@"  # "user:password@" after "://"

# The default patterns as behaviour.md lists them (the confab key moved first,
# see there), in the order they are applied.  Anthropic comes before OpenAI (both are API_KEY, "sk-ant-..."
# would match either), specific connection strings before the generic one.
DEFAULT_PATTERNS: tuple[PatternSpec, ...] = (
    PatternSpec("Sensitive field names", "sensitive_field", field=_FIELD_NAMES,
                anchors=(("passw", ""), ('secret"', ""), ('key"', ""),
                         ('token"', ""), ("credential", 's?"')),
                ignore_case_anchors=True),
    # The server makes keys as "cfb_" + secrets.token_urlsafe(30): 40 characters
    # of URL-safe base64, "-" and "_" included (without them, 3 keys in 4 leaked).
    # First, not last as behaviour.md lists it: a key's random body holds "sk-" +
    # 20 characters about once in 20,000 keys, and the OpenAI rule would then take
    # that part and leave the key's head in clear.
    PatternSpec("Confab API key", "confab_key", r"cfb_[A-Za-z0-9_-]{40}", anchors=(("cfb_", ""),)),
    PatternSpec("Anthropic API key", "api_key", r"sk-ant-api\d{2}-[A-Za-z0-9_-]{80,120}",
                anchors=(("sk-ant-api", ""),)),
    PatternSpec("OpenAI API key", "api_key", r"sk-(?:proj-)?[A-Za-z0-9_-]{20,200}",
                anchors=(("sk-", "(?:proj-)?[A-Za-z0-9_-]{20}"),)),
    PatternSpec("AWS access key", "aws_key", r"AKIA[0-9A-Z]{16}",
                anchors=(("AKIA", ""),)),
    PatternSpec("AWS secret (config file)", "aws_secret",
                r"aws_secret_access_key\s*=\s*([A-Za-z0-9/+=]{40})", group=1,
                anchors=(("aws_secret_access_key", ""),)),
    PatternSpec("AWS secret (env style)", "aws_secret",
                r"""AWS_SECRET_ACCESS_KEY\s*=\s*["']?([A-Za-z0-9/+=]{40})["']?""", group=1,
                anchors=(("AWS_SECRET_ACCESS_KEY", ""),)),
    PatternSpec("GitHub personal access token", "github_token", r"ghp_[A-Za-z0-9]{36,255}",
                anchors=(("ghp_", ""),)),
    PatternSpec("GitHub fine-grained token", "github_token", r"github_pat_[A-Za-z0-9]{22,255}",
                anchors=(("github_pat_", ""),)),
    PatternSpec("GitHub OAuth token", "github_token", r"gho_[A-Za-z0-9]{36,255}",
                anchors=(("gho_", ""),)),
    PatternSpec("GitHub user/server token", "github_token", r"(?:ghu|ghs)_[A-Za-z0-9]{36,255}",
                anchors=(("ghu_", ""), ("ghs_", ""))),
    PatternSpec("GitHub refresh token", "github_token", r"ghr_[A-Za-z0-9]{36,255}",
                anchors=(("ghr_", ""),)),
    PatternSpec("JWT", "jwt", r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
                anchors=(("eyJ", ""),)),
    PatternSpec("Private key", "private_key",
                r"(?s)-----BEGIN (RSA |EC |OPENSSH |)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                anchors=(("-----BEGIN ", ""),)),
    PatternSpec("PostgreSQL connection string", "password",
                r"(postgres(?:ql)?://[^:]+:)([^@\s]+)(@[^\s]+)", group=2,
                anchors=(("postgres", ""),)),
    PatternSpec("MySQL connection string", "password", r"(mysql://[^:]+:)([^@\s]+)(@[^\s]+)",
                group=2, anchors=(("mysql://", ""),)),
    PatternSpec("MongoDB connection string", "password",
                r"(mongodb(?:\+srv)?://[^:]+:)([^@\s]+)(@[^\s]+)", group=2,
                anchors=(("mongodb", ""),)),
    PatternSpec("Redis connection string", "password", r"(redis://[^:/@\s]*:)([^@\s]+)(@[^\s]+)",
                group=2, anchors=(("redis://", ""),)),
    PatternSpec("Generic connection string", "password", r"(://[^:/@\s]+:)([^@\s]+)(@)",
                group=2, anchors=(("://", _CONN_TAIL),)),
    PatternSpec("Slack token", "slack_token", r"xox[baprs]-[0-9a-zA-Z-]{10,255}",
                anchors=(("xox", ""),)),
    PatternSpec("Slack refresh token", "slack_token",
                r"xoxe(?:\.[a-zA-Z0-9-]+)?-[0-9a-zA-Z-]{10,255}", anchors=(("xox", ""),)),
    PatternSpec("Slack app token", "slack_token", r"xapp-[0-9a-zA-Z-]{10,255}",
                anchors=(("xapp-", ""),)),
    PatternSpec("Stripe secret key", "stripe_key", r"sk_(?:live|test)_[0-9a-zA-Z]{24,}",
                anchors=(("sk_", ""),)),
    PatternSpec("Stripe restricted key", "stripe_key", r"rk_(?:live|test)_[0-9a-zA-Z]{24,}",
                anchors=(("rk_", ""),)),
    PatternSpec("Google API key", "google_api_key", r"AIza[0-9A-Za-z_-]{35}",
                anchors=(("AIza", ""),)),
    PatternSpec("Twilio key", "twilio_key", r"SK[0-9a-fA-F]{32}",
                anchors=(("SK", "[0-9a-fA-F]{32}"),)),
    PatternSpec("SendGrid key", "sendgrid_key", r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",
                anchors=(("SG.", ""),)),
    PatternSpec("MailChimp key", "mailchimp_key", r"[0-9a-f]{32}-us[0-9]{1,2}",
                anchors=(("-us", "[0-9]"),)),
    PatternSpec("npm token", "npm_token", r"npm_[A-Za-z0-9]{36}", anchors=(("npm_", ""),)),
    PatternSpec("PyPI token", "pypi_token", r"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{70,}",
                anchors=(("pypi-AgEIcHlwaS5vcmc", ""),)),
    # Last: whatever token an Authorization header carries that no rule above
    # named (those left a marker, which this does not match).
    PatternSpec("Bearer token", "bearer_token", r"(?i:bearer)\s+([A-Za-z0-9_.~+/=-]{20,})", group=1,
                anchors=(("bearer", ""),), ignore_case_anchors=True),
)

# Printable ASCII from rarest to most common in real transcripts (measured on
# the fixtures).  Used only to pick where each prefilter anchor starts.
_RARITY = "^~?$|&+@QK%VGH<YXOJ!z>Z#NWMBjE*D'LA;=[]CFSURPIqxT()`{}763958k/w4vb21y0.\\_gfh-pm,:ucdlroains\"te "

_MARKER = re.compile(r"\[REDACTED:[^\]\s]+\]")


def _anchor_regexes(literal: str, tail: str, ignore_case: bool) -> list[tuple[str, str]]:
    """``(pivot, rest)`` regex pairs for one prefilter anchor, *pivoting on its rarest character*.

    Python's ``re`` only scans quickly when every alternative of a pattern
    begins with a literal character: it then hops from one occurrence of
    those first characters to the next.  Starting each anchor at its rarest
    character (``K`` of ``AKIA``, ``J`` of ``eyJ``) and checking the part
    before it with a look-behind keeps those stops few, which is what makes
    the prefilter cheap.  A case-insensitive anchor gives one alternative
    per case of that character (a character class would disable the scan).
    """

    def rank(ch: str) -> int:
        return _RARITY.find(ch.lower() if ignore_case else ch)

    pivot = min(range(len(literal)), key=lambda i: rank(literal[i]))
    head, char, rest = literal[:pivot], literal[pivot], literal[pivot + 1:]
    body = f"(?<={re.escape(head + char)})" if head else ""
    body += re.escape(rest) + tail
    if not ignore_case:
        return [(char, body)]
    body = f"(?i:{body})" if body else ""
    return [(c, body) for c in dict.fromkeys((char.lower(), char.upper()))]


def _build_prefilter(specs: tuple[PatternSpec, ...]) -> re.Pattern[bytes]:
    """One compiled bytes regex over the anchors of all ``specs``.

    Anchors are literals that JSON encoding leaves intact (writers such as
    ``JSON.stringify`` and msgspec never escape printable ASCII), so a secret
    inside a JSON string value is still visible to this scan of the raw line.

    Alternatives are grouped by their pivot character (``k(?:ey"|...)``): at
    each stop the scan tries only the anchors of that character instead of
    all of them (about 25% faster on real transcripts; what remains is the
    per-stop cost of ``re``, see bench/RESULTS.md: scanning whole chunks
    instead of lines does not change it, and ``bytes.find`` per literal is
    slower still).
    """
    groups: dict[str, list[str]] = {}
    for spec in specs:
        for literal, tail in spec.anchors:
            for char, body in _anchor_regexes(literal, tail, spec.ignore_case_anchors):
                bodies = groups.setdefault(char, [])
                if body not in bodies:
                    bodies.append(body)
    alternatives = []
    for char, bodies in groups.items():
        if "" in bodies:  # the pivot alone is the whole anchor: the others add nothing
            alternatives.append(re.escape(char))
        elif len(bodies) == 1:
            alternatives.append(re.escape(char) + bodies[0])
        else:
            alternatives.append(re.escape(char) + "(?:" + "|".join(bodies) + ")")
    return re.compile("|".join(alternatives).encode("ascii"))


_DEFAULT_PREFILTER = _build_prefilter(DEFAULT_PATTERNS)
_FIRST_PASS: list = []  # [the compiled first pass, or None]: built once per process, on first use


def _default_anchors():
    return ((literal, tail, spec.ignore_case_anchors) for spec in DEFAULT_PATTERNS for literal, tail in spec.anchors)


def _cache_dir() -> str:
    from .paths import confab_dir, home_dir

    return os.path.join(confab_dir(home_dir()), "cache")


def _default_first_pass():
    """The default anchors' first pass (redact_scan.py), None without Hyperscan."""
    if not _FIRST_PASS:
        _FIRST_PASS.append(compile_first_pass(_default_anchors(), cache_dir=_cache_dir()))
    return _FIRST_PASS[0]


_CUSTOM_FIRST_PASSES: dict = {}  # (defaults?, custom patterns) -> compile_custom_first_pass(...), once per process


def _custom_first_pass(with_defaults: bool, patterns: list[re.Pattern[str]]):
    """The first pass over the default anchors (when used) and custom value patterns:
    (first pass, indexes of the patterns left to `re`), None without Hyperscan."""
    key = (with_defaults, tuple((p.pattern, p.flags) for p in patterns))
    if key not in _CUSTOM_FIRST_PASSES:
        _CUSTOM_FIRST_PASSES[key] = compile_custom_first_pass(
            _default_anchors() if with_defaults else (), patterns, cache_dir=_cache_dir())
    return _CUSTOM_FIRST_PASSES[key]
# The same scan over one decoded JSON string value: lets the JSON path skip
# the whole default rule set for the (many) values of a line that hold none.
_DEFAULT_TEXT_PREFILTER = re.compile(_DEFAULT_PREFILTER.pattern.decode("ascii"))


@dataclass(frozen=True)
class _ValueRule:
    """A compiled value pattern: matches become ``marker`` (group only if set)."""

    regex: re.Pattern[str]
    group: int
    marker: str


@dataclass(frozen=True)
class _FieldRule:
    """A compiled field pattern: a matching field's string value becomes ``marker``.

    ``value`` (custom patterns that give both) narrows the rule to values the
    pattern matches.
    """

    name_regex: re.Pattern[str]
    marker: str
    value: re.Pattern[str] | None = None
    is_custom: bool = False


def _looks_like_json(line: bytes) -> bool:
    """Objects and arrays only: a bare JSON string is redacted as text anyway."""
    first = line[:1]
    if first.isspace():
        first = line.lstrip()[:1]
    return first in (b"{", b"[")


def _marker(type_: str) -> str:
    return f"[REDACTED:{type_.upper()}]"


def _compile(name: str, what: str, regex: str) -> re.Pattern[str]:
    """Compile a user-supplied regex, turning errors into a message naming it."""
    if not isinstance(regex, str):
        raise ValueError(f"redaction pattern {name!r}: {what} must be a string")
    try:
        return re.compile(regex)
    except re.error as exc:
        raise ValueError(f"redaction pattern {name!r}: invalid {what} {regex!r}: {exc}") from None


def _custom_rules(entry: Any, index: int) -> tuple[_ValueRule | None, _FieldRule | None]:
    """Validate one entry of ``redaction.patterns`` from config.json."""
    if not isinstance(entry, dict):
        raise ValueError(f"redaction pattern #{index}: must be an object")
    name = str(entry.get("name") or f"#{index}")
    marker = _marker(str(entry.get("type") or name))
    pattern, field = entry.get("pattern"), entry.get("field_pattern")
    if not pattern and not field:
        raise ValueError(f"redaction pattern {name!r}: needs 'pattern' or 'field_pattern'")
    value_regex = _compile(name, "pattern", pattern) if pattern else None
    if field:
        name_regex = _compile(name, "field_pattern", field)
        return None, _FieldRule(name_regex, marker, value_regex, is_custom=True)
    group = entry.get("capture_group") or 0
    if not isinstance(group, int) or isinstance(group, bool) or not 0 <= group <= value_regex.groups:
        raise ValueError(
            f"redaction pattern {name!r}: capture_group {group!r} is not a group of {pattern!r}"
        )
    return _ValueRule(value_regex, group, marker), None


class Redactor:
    """Applies the configured redaction patterns to transcript lines."""

    hits: int

    def __init__(
        self,
        default_rules: list[_ValueRule],
        custom_rules: list[_ValueRule],
        field_rules: list[_FieldRule],
    ) -> None:
        self._default_rules = default_rules
        self._custom_rules = custom_rules
        self._field_rules = field_rules
        # A custom field pattern can match any key: no anchor to scan for.
        self._always_scan_json = any(rule.is_custom for rule in field_rules)
        # Only the default patterns: the whole no-match path is one scan.
        self._scan = (_DEFAULT_PREFILTER.search
                      if default_rules and not custom_rules and not self._always_scan_json else None)
        self._field_cache: dict[str, _FieldRule | None] = {}
        self.hits = 0

    # -- construction -------------------------------------------------------

    @classmethod
    def from_config(cls, redaction: dict | None) -> Redactor | None:
        """Build from the ``"redaction"`` object of ``~/.confab/config.json``.

        Returns None when redaction is missing or not enabled, so callers can
        skip it entirely.  Raises ValueError naming the pattern when a custom
        regex does not compile: silently sending secrets is worse than
        refusing to start.
        """
        if not isinstance(redaction, dict) or redaction.get("enabled") is not True:
            return None
        use_defaults = redaction.get("use_default_patterns", True) is not False
        entries = redaction.get("patterns") or []
        if not isinstance(entries, list):
            raise ValueError("redaction.patterns must be a list")

        default_rules: list[_ValueRule] = []
        custom_rules: list[_ValueRule] = []
        field_rules: list[_FieldRule] = []
        if use_defaults:
            for spec in DEFAULT_PATTERNS:
                marker = _marker(spec.type)
                if spec.field:
                    field_rules.append(_FieldRule(re.compile(spec.field), marker))
                else:
                    default_rules.append(_ValueRule(re.compile(spec.regex), spec.group, marker))
        for index, entry in enumerate(entries):
            value_rule, field_rule = _custom_rules(entry, index)
            if value_rule:
                custom_rules.append(value_rule)
            if field_rule:
                field_rules.append(field_rule)
        return cls(default_rules, custom_rules, field_rules)

    # -- per batch ----------------------------------------------------------

    def redact_lines(self, lines: list[bytes], joined: bytes | None = None) -> list[bytes]:
        """`redact_line` of each line, in one first pass over the batch when it can
        be (redact_scan.py: Hyperscan); each line that nothing matched is the very
        object given, as with `redact_line`. `joined`: the same lines joined by
        newlines, when the caller has it.

        The first pass flags every line `redact_line` can change: a hit of the
        default anchors or of a custom value pattern's superset. Custom patterns it
        could not take are searched on every line, and a custom field pattern
        (it can name any key) sends every JSON line on, as `redact_line` does."""
        left_to_re: list[re.Pattern[str]] = []
        if self._scan is not None:
            first_pass = _default_first_pass()
        else:
            plan = _custom_first_pass(bool(self._default_rules), [rule.regex for rule in self._custom_rules])
            first_pass = plan[0] if plan else None
            left_to_re = [self._custom_rules[i].regex for i in plan[1]] if plan else []
        if first_pass is None:
            return [self.redact_line(line) for line in lines]
        out = list(lines)
        flagged = flagged_lines(lines, first_pass, joined)
        if left_to_re or self._always_scan_json:
            flagged = self._also_flagged(lines, set(flagged), left_to_re)
        for index in flagged:
            out[index] = self.redact_line(lines[index])
        return out

    def _also_flagged(self, lines: list[bytes], flagged: set[int], left_to_re: list[re.Pattern[str]]) -> list[int]:
        """`flagged` plus the lines the first pass cannot judge: those a custom pattern
        left to `re` matches (searched as `_may_contain_secret` does), and with a
        custom field pattern every JSON line."""
        scan_json = self._always_scan_json
        for index, line in enumerate(lines):
            if index in flagged:
                continue
            if scan_json and _looks_like_json(line):
                flagged.add(index)
            elif left_to_re:
                text = line.decode("utf-8", "surrogateescape")
                if any(regex.search(text) for regex in left_to_re):
                    flagged.add(index)
        return sorted(flagged)

    # -- per line -----------------------------------------------------------

    def redact_line(self, line: bytes) -> bytes:
        """Redact one transcript line (without its trailing newline).

        Returns ``line`` itself (same object) when nothing matched, so an
        untouched line goes out byte for byte.  JSON objects and arrays are
        re-encoded only when a value actually changed.
        """
        scan = self._scan
        if scan is not None:
            if scan(line) is None:
                return line
        elif not (self._always_scan_json and _looks_like_json(line)):
            if not self._may_contain_secret(line):
                return line
        if _looks_like_json(line):
            try:
                document = msgspec.json.decode(line)
            except (msgspec.DecodeError, UnicodeDecodeError):
                pass  # not JSON after all (or not UTF-8): treat as text
            else:
                return msgspec.json.encode(document) if self._redact_tree(document) else line
        return self._redact_raw_text(line)

    def _may_contain_secret(self, line: bytes) -> bool:
        """Cheap scan of the raw bytes: False means no pattern can match.

        Custom value patterns cannot be turned into anchors, so each is run as
        is over the text.  They run as ``str`` regexes (not bytes): in bytes
        mode ``\\w``, ``\\d`` and ``(?i)`` are ASCII-only and would miss matches
        the real ``str`` pattern finds in non-ASCII text.  Like the defaults,
        they see JSON string values in their escaped form.
        """
        if self._default_rules and _DEFAULT_PREFILTER.search(line):
            return True
        if self._custom_rules:
            text = line.decode("utf-8", "surrogateescape")
            return any(rule.regex.search(text) for rule in self._custom_rules)
        return False

    def _redact_raw_text(self, line: bytes) -> bytes:
        """Value patterns over a non-JSON line; invalid UTF-8 bytes survive."""
        text = line.decode("utf-8", "surrogateescape")
        redacted = self._redact_text(text)
        if redacted is text:
            return line
        return redacted.encode("utf-8", "surrogateescape")

    # -- JSON ---------------------------------------------------------------

    def _redact_tree(self, root: dict | list) -> bool:
        """Redact every string value of a decoded JSON document in place.

        Keys are never touched.  Iterative rather than recursive so a deeply
        nested line cannot hit the recursion limit.  Returns whether anything
        changed (so unchanged lines keep their exact original bytes).
        """
        changed = False
        stack: list[dict | list] = [root]
        while stack:
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                if isinstance(value, str):
                    redacted = self._redact_value(key, value)
                    if redacted is not value:
                        node[key] = redacted  # same key: safe while iterating
                        changed = True
                elif isinstance(value, (dict, list)):
                    stack.append(value)
        return changed

    def _redact_value(self, key: str | int, value: str) -> str:
        """A field rule on the name wins; otherwise the value patterns apply."""
        rule = self._field_rule(key) if isinstance(key, str) else None
        if rule is not None and (rule.value is None or rule.value.search(value)):
            if value == rule.marker:
                return value
            self.hits += 1
            return rule.marker
        return self._redact_text(value)

    def _field_rule(self, key: str) -> _FieldRule | None:
        """First field rule matching ``key``; memoised, keys repeat constantly."""
        try:
            return self._field_cache[key]
        except KeyError:
            pass
        rule = next((r for r in self._field_rules if r.name_regex.search(key)), None)
        if len(self._field_cache) < 10_000:
            self._field_cache[key] = rule
        return rule

    # -- text ---------------------------------------------------------------

    def _redact_text(self, text: str) -> str:
        """Apply the value rules in order; returns ``text`` itself if unchanged."""
        if self._default_rules and _DEFAULT_TEXT_PREFILTER.search(text):
            text = self._apply(self._default_rules, text)
        if self._custom_rules:
            text = self._apply(self._custom_rules, text)
        return text

    def _apply(self, rules: list[_ValueRule], text: str) -> str:
        for rule in rules:
            if rule.regex.search(text):
                redacted = rule.regex.sub(self._replacer(rule), text)
                if redacted != text:  # only already-redacted spans matched
                    text = redacted
        return text

    def _replacer(self, rule: _ValueRule):
        """Build the ``re.sub`` callback for one rule.

        Only the configured group is replaced, the rest of the match is kept.
        A span that already is a marker is left alone: rules overlap (the
        generic connection-string rule re-matches what the PostgreSQL rule
        produced) and must not count a hit twice.  Empty spans (a group that
        did not take part, a custom pattern matching "") are not secrets.
        """

        def replace(match: re.Match[str]) -> str:
            start, end = match.span(rule.group)
            whole = match.group(0)
            if start >= end or _MARKER.fullmatch(match.string, start, end):
                return whole
            self.hits += 1
            offset = match.start()
            return whole[: start - offset] + rule.marker + whole[end - offset:]

        return replace
