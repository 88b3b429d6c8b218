"""Per-request credentials: glob matching exactly as the reference server, and HTTP header precedence."""

from __future__ import annotations

import pytest

from comfyui_api.storage.auth import (
    BasicAuth,
    BearerAuth,
    Credential,
    DownloadAuth,
    HeaderAuth,
    QueryAuth,
    http_credentials,
    match_credentials,
)


def http_request_target(
    url: str, auth: DownloadAuth | None, env_header: tuple[str, str] | None
) -> tuple[str, dict[str, str]]:
    """The URL and headers of the first request: the credentials applied to the URL they were given for."""
    target, credentials = http_credentials(url, auth, env_header)
    return credentials.for_url(target) if credentials is not None else (target, {})


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
    first, second = (match_credentials(f"https://a.com/{path}/x", credentials) for path in ("private", "public"))
    assert isinstance(first, BearerAuth) and first.token.get_secret_value() == "first"
    assert isinstance(second, BearerAuth) and second.token.get_secret_value() == "second"
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


def test_credentials_go_to_their_origin_only() -> None:
    query = QueryAuth(type="query", query_param="sig", query_value="secret")
    _, credentials = http_credentials("https://h.com/f", query, None)
    assert credentials is not None
    # Another origin that repeats the query credential gets it taken out; its own parameters stay.
    assert credentials.for_url("https://other.com/f?sig=secret&x=1") == ("https://other.com/f?x=1", {})
    # Back on the origin the credential was given for, it is sent again (also when the redirect dropped it).
    assert credentials.for_url("https://h.com/g") == ("https://h.com/g?sig=secret", {})
    bearer = BearerAuth(type="bearer", token="tok")
    _, credentials = http_credentials("https://h.com/f", bearer, None)
    assert credentials is not None
    assert credentials.for_url("https://h.com:443/g") == ("https://h.com:443/g", {"Authorization": "Bearer tok"})
    assert credentials.for_url("http://h.com/g") == ("http://h.com/g", {})  # another scheme is another origin
    assert credentials.for_url("https://h.com.evil/g") == ("https://h.com.evil/g", {})


def test_secrets_do_not_show_in_a_repr() -> None:
    auth = BasicAuth(type="basic", username="user", password="canary-password")
    assert "canary-password" not in repr(auth) and "canary-password" not in str(auth.model_dump())
