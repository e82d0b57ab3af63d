"""Image references, parsed and normalised exactly as Docker does.

The grammar is distribution/reference's (``regexp.go``) and the normalisation is
``ParseNormalizedNamed`` + ``TagNameOnly``::

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [domain "/"] path-component ["/" path-component]*
    domain    := host [":" port]        host: DNS labels or "[ipv6]"

The first path component is a registry host only when it contains ``.`` or ``:``, is
``localhost``, or has an upper-case letter; otherwise the image lives on Docker Hub
(``docker.io``), and a one-component Hub name gets ``library/`` in front. ``index.docker.io``
is an old spelling of ``docker.io``. Hub's API is served from ``registry-1.docker.io`` and its
credentials are filed under ``https://index.docker.io/v1/`` in ``~/.docker/config.json``.

Digests in references must be ``sha256:`` + 64 lowercase hex here (Docker's grammar accepts
other algorithms and then refuses them when pulling; we refuse them at parse time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from overunder.errors import InvalidArgument

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_TAG",
    "HUB_API_HOST",
    "HUB_AUTH_KEY",
    "Reference",
    "parse",
    "parse_tag_target",
    "split_domain",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
HUB_API_HOST = "registry-1.docker.io"
HUB_AUTH_KEY = "https://index.docker.io/v1/"
DEFAULT_TAG = "latest"
OFFICIAL_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"

_REFERENCE_RE = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?", re.ASCII)
_DOMAIN_RE = re.compile(_DOMAIN, re.ASCII)
_TAG_RE = re.compile(_TAG, re.ASCII)
_IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")
_SHA256_RE = re.compile(r"sha256:[0-9a-f]{64}")

_FORMAT_HINT = (
    "a reference is [HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST] with a lowercase NAME, "
    "e.g. ubuntu, reselbob/pinger:latest or 127.0.0.1:5000/team/app@sha256:<64 hex>"
)


def _invalid(detail: str = "") -> InvalidArgument:
    message = "invalid reference format" + (f": {detail}" if detail else "")
    return InvalidArgument(message, hint=_FORMAT_HINT)


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalised image reference.

    ``domain`` is the registry as named (``docker.io``, ``127.0.0.1:5000``), ``path`` the
    repository inside it (``library/ubuntu``). ``tag`` and ``digest`` may both be set
    (``name:tag@digest``); then the digest decides what is pulled, as in Docker.
    ``tag_defaulted`` records that ``latest`` was filled in (``docker pull`` says so); it does
    not take part in equality.
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None
    tag_defaulted: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        """Full repository name: ``docker.io/reselbob/pinger``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it: ``ubuntu``, ``reselbob/pinger``, ``host:5000/x``."""
        if self.domain == DEFAULT_DOMAIN:
            if (
                self.path.startswith(OFFICIAL_PREFIX)
                and "/" not in self.path[len(OFFICIAL_PREFIX) :]
            ):
                return self.path[len(OFFICIAL_PREFIX) :]
            return self.path
        return self.name

    @property
    def familiar(self) -> str:
        """Familiar string with tag and digest: ``reselbob/pinger:latest``."""
        return self.familiar_name + self._suffix()

    @property
    def api_host(self) -> str:
        """The host (and port) whose ``/v2/`` API serves this repository."""
        return HUB_API_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def auth_key(self) -> str:
        """The key of this registry in ``~/.docker/config.json`` ``auths``."""
        return HUB_AUTH_KEY if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def is_hub(self) -> bool:
        return self.domain == DEFAULT_DOMAIN

    def _suffix(self) -> str:
        out = ""
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self.name + self._suffix()

    def with_tag(self, tag: str) -> Reference:
        """Same repository, this tag, no digest."""
        if not _TAG_RE.fullmatch(tag):
            raise _invalid(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None, tag_defaulted=False)

    def with_digest(self, digest: str) -> Reference:
        """Same repository and tag, pinned to ``digest``."""
        _check_digest(digest)
        return replace(self, digest=digest)

    def repo_only(self) -> Reference:
        """The bare repository (no tag, no digest)."""
        return Reference(self.domain, self.path)

    @property
    def canonical(self) -> str:
        """``name@digest`` (a RepoDigest), or the full string when there is no digest."""
        if self.digest is None:
            return str(self)
        return f"{self.name}@{self.digest}"


def split_domain(name: str) -> tuple[str, str]:
    """Docker's ``splitDockerDomain``: (domain, remainder) with Hub defaults applied."""
    i = name.find("/")
    first = name[:i] if i >= 0 else ""
    if i == -1 or (
        not any(c in first for c in ".:") and first != "localhost" and first.lower() == first
    ):
        domain, remainder = DEFAULT_DOMAIN, name
    else:
        domain, remainder = first, name[i + 1 :]
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_PREFIX + remainder
    return domain, remainder


def _check_digest(digest: str) -> None:
    if _SHA256_RE.fullmatch(digest):
        return
    if re.fullmatch(_DIGEST, digest, re.ASCII):
        algo = digest.split(":", 1)[0]
        if algo != "sha256":
            raise InvalidArgument(
                f"unsupported digest algorithm {algo!r} in {digest!r}",
                hint="only sha256 digests are supported",
            )
        raise _invalid(f"digest {digest!r} is not sha256 followed by 64 lowercase hex")
    raise _invalid(f"invalid digest {digest!r}")


def parse(s: str, *, default_tag: bool = True) -> Reference:
    """Parse ``s`` as ``docker pull`` does.

    With ``default_tag`` (the default) a reference without tag and digest gets ``latest``
    (``tag_defaulted`` set). Raises InvalidArgument ("invalid reference format…") otherwise.
    """
    if not s:
        raise _invalid("repository name must have at least one component")
    if _IDENTIFIER_RE.fullmatch(s):
        raise InvalidArgument(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings",
            hint="that looks like an image ID; use it where an image ID is accepted",
        )
    domain, remainder = split_domain(s)
    colon = remainder.find(":")
    remote_name = remainder[:colon] if colon >= 0 else remainder
    if remote_name.lower() != remote_name:
        raise _invalid(f"repository name ({remote_name}) must be lowercase")
    full = f"{domain}/{remainder}"
    m = _REFERENCE_RE.fullmatch(full)
    if m is None:
        raise _invalid()
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters")
    if digest is not None:
        _check_digest(digest)
    path = name[len(domain) + 1 :]
    defaulted = False
    if tag is None and digest is None and default_tag:
        tag, defaulted = DEFAULT_TAG, True
    return Reference(domain=domain, path=path, tag=tag, digest=digest, tag_defaulted=defaulted)


def parse_tag_target(s: str) -> Reference:
    """Parse the target of ``docker tag``: a name with an optional tag, never a digest."""
    ref = parse(s)
    if ref.digest is not None:
        raise InvalidArgument(
            f"refusing to create a tag with a digest reference: {s}",
            hint="give the target as NAME[:TAG]",
        )
    return ref


def is_valid_domain(domain: str) -> bool:
    """True when ``domain`` is a registry host[:port] Docker would accept (``login`` uses it)."""
    return _DOMAIN_RE.fullmatch(domain) is not None
