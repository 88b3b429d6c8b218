"""s3:// downloads with boto3 (in worker threads), concurrent ranged parts, per-request keys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..errors import AccessDenied, DownloadError, UploadError
from ..urls import redact_url
from .auth import DownloadAuth, S3Auth

_TRANSFER = TransferConfig(
    multipart_threshold=16 * 1024 * 1024,
    multipart_chunksize=16 * 1024 * 1024,
    max_concurrency=8,
    use_threads=True,
)
# Path-style addressing works with every S3-compatible server; AWS still accepts it.
_CLIENT_CONFIG = Config(s3={"addressing_style": "path"}, max_pool_connections=16, retries={"mode": "standard"})


def parse_s3_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    bucket, key = parts.netloc, unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise DownloadError(f"Invalid S3 URL (expected s3://bucket/key): {redact_url(url)}")
    return bucket, key


class S3Provider:
    name = "s3"

    def __init__(self, region: str | None) -> None:
        self._region = region
        # The endpoint (AWS_ENDPOINT_URL) and keys come from the environment, read by boto3 itself.
        self._client: Any = None

    def matches(self, url: str) -> bool:
        return url.startswith("s3://")

    def outgoing_urls(self, url: str, auth: DownloadAuth | None) -> list[str]:
        # The environment's endpoint is the operator's; an endpoint in the request's credentials is not.
        return [auth.endpoint] if isinstance(auth, S3Auth) and auth.endpoint else []

    def _client_for(self, auth: DownloadAuth | None) -> Any:
        if isinstance(auth, S3Auth):
            return boto3.session.Session().client(
                "s3",
                aws_access_key_id=auth.access_key_id.get_secret_value(),
                aws_secret_access_key=auth.secret_access_key.get_secret_value(),
                aws_session_token=auth.session_token.get_secret_value() if auth.session_token else None,
                endpoint_url=auth.endpoint,
                region_name=auth.region or self._region,
                config=_CLIENT_CONFIG,
            )
        if self._client is None:
            self._client = boto3.session.Session().client("s3", region_name=self._region, config=_CLIENT_CONFIG)
        return self._client

    async def download(self, url: str, destination: Path, auth: DownloadAuth | None) -> str | None:
        bucket, key = parse_s3_url(url)

        def fetch() -> None:
            self._client_for(auth).download_file(bucket, key, str(destination), Config=_TRANSFER)

        await self._call(url, fetch)
        return None

    async def upload(self, source: Path, url: str, content_type: str) -> None:
        bucket, key = parse_s3_url(url)

        def put() -> None:
            self._client_for(None).upload_file(
                str(source), bucket, key, ExtraArgs={"ContentType": content_type}, Config=_TRANSFER
            )

        try:
            await self._call(url, put)
        except DownloadError as exc:
            raise UploadError(str(exc)) from None

    async def check_access(self, url: str, auth: DownloadAuth) -> None:
        bucket, key = parse_s3_url(url)
        await self._call(url, lambda: self._client_for(auth).head_object(Bucket=bucket, Key=key))

    @staticmethod
    async def _call(url: str, function: Any) -> None:
        try:
            await asyncio.to_thread(function)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise DownloadError(f"S3 object not found: {redact_url(url)}") from None
            if code in ("403", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "ExpiredToken"):
                raise AccessDenied(f"S3 access denied for {redact_url(url)}: {code}") from None
            raise DownloadError(f"S3 error for {redact_url(url)}: {code} {error.get('Message', '')}".strip()) from None
        except S3UploadFailedError as exc:
            # upload_file wraps the service's error in text: "... An error occurred (<Code>) when ..."
            message = str(exc)
            if "(AccessDenied)" in message or "(SignatureDoesNotMatch)" in message:
                raise AccessDenied(f"S3 access denied for {redact_url(url)}: {message}") from None
            if "(NoSuchBucket)" in message:
                raise DownloadError(f"S3 bucket not found for {redact_url(url)}: {message}") from None
            raise DownloadError(f"S3 error for {redact_url(url)}: {message}") from None
        except BotoCoreError as exc:
            raise DownloadError(f"S3 error for {redact_url(url)}: {exc}") from None
