"""Per-request download credentials: the auth models, URL pattern matching, and HTTP headers."""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field


class _Auth(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BearerAuth(_Auth):
    type: Literal["bearer"]
    token: str


class BasicAuth(_Auth):
    type: Literal["basic"]
    username: str
    password: str


class HeaderAuth(_Auth):
    type: Literal["header"]
    header_name: str
    header_value: str


class QueryAuth(_Auth):
    type: Literal["query"]
    query_param: str
    query_value: str


class S3Auth(_Auth):
    type: Literal["s3"]
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
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


def http_request_target(
    url: str, auth: DownloadAuth | None, env_header: tuple[str, str] | None
) -> tuple[str, dict[str, str]]:
    """The URL to request and its headers. Precedence: per-request auth, URL user-info, env header."""
    parts = urlsplit(url)
    headers: dict[str, str] = {}
    userinfo, _, host = parts.netloc.rpartition("@")
    clean_url = urlunsplit(parts._replace(netloc=host)) if userinfo else url
    if auth is not None:
        if isinstance(auth, BearerAuth):
            headers["Authorization"] = f"Bearer {auth.token}"
        elif isinstance(auth, BasicAuth):
            headers["Authorization"] = _basic(auth.username, auth.password)
        elif isinstance(auth, HeaderAuth):
            headers[auth.header_name] = auth.header_value
        elif isinstance(auth, QueryAuth):
            clean = urlsplit(clean_url)
            query = [*parse_qsl(clean.query, keep_blank_values=True), (auth.query_param, auth.query_value)]
            clean_url = urlunsplit(clean._replace(query=urlencode(query)))
    elif userinfo:
        username, _, password = userinfo.partition(":")
        headers["Authorization"] = _basic(unquote(username), unquote(password))
    elif env_header is not None:
        headers[env_header[0]] = env_header[1]
    return clean_url, headers


def strip_userinfo(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
