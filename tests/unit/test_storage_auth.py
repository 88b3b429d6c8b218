"""Per-request credentials: glob matching exactly as the reference server, and HTTP header precedence."""

from __future__ import annotations

import pytest

from comfyui_api.storage.auth import (
    BasicAuth,
    BearerAuth,
    Credential,
    HeaderAuth,
    QueryAuth,
    http_request_target,
    match_credentials,
    strip_userinfo,
)


def credential(pattern: str, token: str = "t") -> Credential:
    return Credential(url_pattern=pattern, auth=BearerAuth(type="bearer", token=token))


@pytest.mark.parametrize(
    ("pattern", "url", "matches"),
    [
        ("https://example.com/*", "https://example.com/model.safetensors", True),
        ("https://example.com/*", "https://example.com/a/model.safetensors", False),
        ("https://example.com/**", "https://example.com/a/b/model.safetensors", True),
        ("https://example.com/model?.bin", "https://example.com/model1.bin", True),
        ("https://example.com/model?.bin", "https://example.com/model12.bin", False),
        ("https://example.com/a?b", "https://example.com/a/b", True),  # ? matches any one character, / too
        ("https://example.com/x.bin", "https://example.com/xxbin", False),  # . is literal
        ("https://example.com/*", "https://example.com/", True),
        ("s3://bucket/**", "s3://bucket/models/x.safetensors", True),
        ("https://example.com/*", "https://example.com/file?x=1", True),  # the whole raw URL is matched
        ("https://example.com", "https://example.com/file", False),  # anchored at both ends
    ],
)
def test_glob_matching(pattern: str, url: str, matches: bool) -> None:
    assert (match_credentials(url, [credential(pattern)]) is not None) is matches


def test_the_first_matching_credential_wins() -> None:
    credentials = [credential("https://a.com/private/*", "first"), credential("https://a.com/**", "second")]
    assert match_credentials("https://a.com/private/x", credentials) == BearerAuth(type="bearer", token="first")
    assert match_credentials("https://a.com/public/x", credentials) == BearerAuth(type="bearer", token="second")
    assert match_credentials("https://b.com/x", credentials) is None
    assert match_credentials("https://b.com/x", None) is None


def test_request_auth_wins_over_user_info_and_the_environment() -> None:
    url, headers = http_request_target("https://u:p@h.com/f", BearerAuth(type="bearer", token="tok"), ("X-Env", "env"))
    assert url == "https://h.com/f"
    assert headers == {"Authorization": "Bearer tok"}


def test_user_info_becomes_basic_auth_and_leaves_the_url() -> None:
    url, headers = http_request_target("https://user%40x:p%3Aw@h.com/f", None, ("X-Env", "env"))
    assert url == "https://h.com/f"
    assert headers == {"Authorization": "Basic dXNlckB4OnA6dw=="}  # user@x:p:w


def test_the_environment_header_applies_last() -> None:
    assert http_request_target("https://h.com/f", None, ("X-Env", "env")) == ("https://h.com/f", {"X-Env": "env"})
    assert http_request_target("https://h.com/f", None, None) == ("https://h.com/f", {})


def test_each_auth_type_becomes_its_header_or_query() -> None:
    basic = BasicAuth(type="basic", username="a", password="b")
    assert http_request_target("https://h/f", basic, None)[1] == {"Authorization": "Basic YTpi"}
    header = HeaderAuth(type="header", header_name="X-Key", header_value="v")
    assert http_request_target("https://h/f", header, None)[1] == {"X-Key": "v"}
    query = QueryAuth(type="query", query_param="sig", query_value="a b")
    assert http_request_target("https://h/f?x=1", query, None) == ("https://h/f?x=1&sig=a+b", {})


def test_strip_userinfo() -> None:
    assert strip_userinfo("https://u:p@h.com:8080/f?q") == "https://h.com:8080/f?q"
    assert strip_userinfo("s3://bucket/key") == "s3://bucket/key"
