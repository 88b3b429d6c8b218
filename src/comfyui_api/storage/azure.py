"""Azure Blob downloads with azure-storage-blob (in worker threads), for real accounts and Azurite."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobClient, BlobServiceClient, ContentSettings

from ..config import Settings
from ..errors import AccessDenied, DownloadError, UploadError
from ..urls import redact_url, redact_urls_in
from .auth import BearerAuth, DownloadAuth, QueryAuth

_MAX_CONCURRENCY = 8


def azure_service_client(settings: Settings) -> BlobServiceClient | None:
    """The environment's Azure client, by the reference's precedence; None when Azure is not configured."""
    account = settings.azure_storage_account
    if settings.azure_storage_connection_string:
        return BlobServiceClient.from_connection_string(settings.azure_storage_connection_string.get_secret_value())
    if not account:
        return None
    url = f"https://{account}.blob.core.windows.net"
    if settings.azure_storage_key:
        key = settings.azure_storage_key.get_secret_value()
        return BlobServiceClient(url, credential={"account_name": account, "account_key": key})
    if settings.azure_storage_sas_token:
        return BlobServiceClient(url, credential=settings.azure_storage_sas_token.get_secret_value().lstrip("?"))
    from azure.identity import DefaultAzureCredential  # optional extra: comfyui-api[azure-identity]

    return BlobServiceClient(url, credential=DefaultAzureCredential())


def is_azure_url(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname and parts.hostname.endswith(".blob.core.windows.net"):
        return True
    return parts.scheme in ("http", "https") and (
        "devstoreaccount" in parts.path or "azurite" in (parts.hostname or "")
    )


def parse_blob_url(url: str) -> tuple[str, str]:
    """(container, blob) from a blob URL; emulator URLs carry the account as the first path segment."""
    parts = urlsplit(url)
    segments = unquote(parts.path).lstrip("/").split("/")
    if not (parts.hostname or "").endswith(".blob.core.windows.net"):
        segments = segments[1:]
    if len(segments) < 2 or not segments[0] or not segments[-1]:
        raise DownloadError(f"Invalid Azure Blob URL (expected .../container/blob): {redact_url(url)}")
    return segments[0], "/".join(segments[1:])


class _StaticToken:
    """A bearer token from the request, as an azure-core token credential."""

    def __init__(self, token: str) -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(self._token, 2**31)


class AzureProvider:
    name = "azure"

    def __init__(self, service: BlobServiceClient) -> None:
        self._service = service

    def matches(self, url: str) -> bool:
        return is_azure_url(url)

    def outgoing_urls(self, url: str, auth: DownloadAuth | None) -> list[str]:
        # With the URL's own SAS or the request's credentials, the URL's host is contacted; otherwise the
        # environment's account endpoint is.
        return [url] if self._names_host(url, auth) else []

    @staticmethod
    def _names_host(url: str, auth: DownloadAuth | None) -> bool:
        return isinstance(auth, QueryAuth | BearerAuth) or (auth is None and "sig=" in urlsplit(url).query)

    def _blob(self, url: str, auth: DownloadAuth | None) -> BlobClient:
        if auth is None and "sig=" in urlsplit(url).query:
            return BlobClient.from_blob_url(url)  # the URL carries its own SAS
        if isinstance(auth, QueryAuth):
            separator = "&" if urlsplit(url).query else "?"
            return BlobClient.from_blob_url(
                f"{url}{separator}{urlencode({auth.query_param: auth.query_value.get_secret_value()})}"
            )
        if isinstance(auth, BearerAuth):
            return BlobClient.from_blob_url(url, credential=_StaticToken(auth.token.get_secret_value()))
        if auth is not None:
            raise DownloadError(f"Auth type {auth.type!r} does not apply to Azure Blob URLs (use query or bearer)")
        container, blob = parse_blob_url(url)
        return self._service.get_blob_client(container, blob)

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        def fetch() -> None:
            with open(destination, "wb") as handle:
                self._blob(url, auth).download_blob(max_concurrency=_MAX_CONCURRENCY).readinto(handle)

        await self._call(url, fetch)
        return None

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        def put() -> None:
            with open(source, "rb") as handle:
                self._blob(url, None).upload_blob(
                    handle,
                    overwrite=True,
                    content_settings=ContentSettings(content_type=content_type),
                    max_concurrency=_MAX_CONCURRENCY,
                )

        try:
            await self._call(url, put)
        except DownloadError as exc:
            raise UploadError(str(exc).replace("Azure blob not found", "Azure container not found")) from None

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        await self._call(url, lambda: self._blob(url, auth).get_blob_properties())

    @staticmethod
    async def _call(url: str, function: Any) -> None:
        try:
            await asyncio.to_thread(function)
        except ResourceNotFoundError:
            raise DownloadError(f"Azure blob not found: {redact_url(url)}") from None
        except ClientAuthenticationError as exc:
            raise AccessDenied(
                f"Azure access denied for {redact_url(url)}: {redact_urls_in(str(exc.reason or exc.message))}"
            ) from None
        except HttpResponseError as exc:
            if exc.status_code in (401, 403):
                raise AccessDenied(f"Azure access denied for {redact_url(url)}: {exc.reason}") from None
            raise DownloadError(f"Azure error for {redact_url(url)}: {exc.status_code} {exc.reason}") from None
        except AzureError as exc:
            raise DownloadError(f"Azure error for {redact_url(url)}: {redact_urls_in(str(exc.message))}") from None
