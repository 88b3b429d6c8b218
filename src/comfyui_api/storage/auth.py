"""Per-request download credentials: the auth models, URL pattern matching, and HTTP headers."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from ..urls import origin_of


class _Auth(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BearerAuth(_Auth):
    type: Literal["bearer"]
    token: SecretStr


class BasicAuth(_Auth):
    type: Literal["basic"]
    username: str
    password: SecretStr


class HeaderAuth(_Auth):
    type: Literal["header"]
    header_name: str
    header_value: SecretStr


class QueryAuth(_Auth):
    type: Literal["query"]
    query_param: str
    query_value: SecretStr


class S3Auth(_Auth):
    type: Literal["s3"]
    access_key_id: SecretStr
    secret_access_key: SecretStr
    session_token: SecretStr | None = None
    endpoint: str | None = None
    region: str | None = None


DownloadAuth = Annotated[BearerAuth | BasicAuth | HeaderAuth | QueryAuth | S3Auth, Field(discriminator="type")]


class Credential(BaseModel):
    model_config = ConfigDict(extra="ignore")

    url_pattern: str = Field(description="Glob: `*` (not `/`), `**` (anything), `?` (one character).")
    auth: DownloadAuth


@lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    parts = []
    index = 0
    while index < len(glob):
        if glob.startswith("**", index):
            parts.append(".*")
            index += 2
        elif glob[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            parts.append(".")
            index += 1
        else:
            parts.append(re.escape(glob[index]))
            index += 1
    return re.compile("".join(parts), re.DOTALL)


def match_credentials(url: str, credentials: list[Credential] | None) -> DownloadAuth | None:
    """The auth of the first credential whose pattern matches the whole URL."""
    for credential in credentials or ():
        if _pattern(credential.url_pattern).fullmatch(url):
            return credential.auth
    return None


class Credentials:
    """Credentials bound to the origin they were given for: headers and a query parameter, sent there only."""

    def __init__(self, origin: str, headers: dict[str, str], query: tuple[str, str] | None = None) -> None:
        self.origin = origin
        self.headers = headers
        self.query = query

    def for_url(self, url: str) -> tuple[str, dict[str, str]]:
        """The URL to request and the credential headers for it: all of them on the origin, none elsewhere (and
        the query credential taken out of a URL on another origin that repeats it)."""
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if origin_of(parts) != self.origin:
            if self.query is not None and self.query in query:
                query.remove(self.query)
                url = urlunsplit(parts._replace(query=urlencode(query)))
            return url, {}
        if self.query is not None and self.query not in query:
            url = urlunsplit(parts._replace(query=urlencode([*query, self.query])))
        return url, dict(self.headers)


def http_credentials(
    url: str, auth: DownloadAuth | None, env_header: tuple[str, str] | None
) -> tuple[str, Credentials | None]:
    """The URL to request (without user-info) and its credentials. Precedence: per-request auth, URL user-info,
    env header."""
    parts = urlsplit(url)
    userinfo, _, host = parts.netloc.rpartition("@")
    clean = parts._replace(netloc=host)
    headers: dict[str, str] = {}
    query: tuple[str, str] | None = None
    if auth is not None:
        if isinstance(auth, BearerAuth):
            headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
        elif isinstance(auth, BasicAuth):
            headers["Authorization"] = _basic(auth.username, auth.password.get_secret_value())
        elif isinstance(auth, HeaderAuth):
            headers[auth.header_name] = auth.header_value.get_secret_value()
        elif isinstance(auth, QueryAuth):
            query = (auth.query_param, auth.query_value.get_secret_value())
    elif userinfo:
        username, _, password = userinfo.partition(":")
        headers["Authorization"] = _basic(unquote(username), unquote(password))
    elif env_header is not None:
        headers[env_header[0]] = env_header[1]
    if not headers and query is None:
        return urlunsplit(clean), None
    return urlunsplit(clean), Credentials(origin_of(clean), headers, query)


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
