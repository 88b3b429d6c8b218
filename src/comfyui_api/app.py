"""The app factory: builds the FastAPI app and the objects behind it from settings, and keeps them on `app.state`
(read by the route dependencies in api/deps.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from fastapi import APIRouter, FastAPI

from . import __version__
from .api import control, dashboard, docs, download, job_status, models, probes, prompt, v2_assets
from .api import metrics as metrics_route
from .api import v2_jobs as v2_jobs_routes
from .api.auth import OPEN_PATHS, install_bearer_auth
from .api.handlers import install_error_handlers
from .api.middleware import BodySizeLimit, CatalogContext, RequestContext
from .comfy.client import ComfyClient
from .comfy.events import EventStream
from .comfy.process import ComfyProcess
from .config import Settings, on_saladcloud, system_metadata
from .errors import ConfigError, InvalidWebhookSecret
from .fleet.node import Fleet
from .jobstore.base import JobStore
from .jobstore.postgres import PostgresJobStore
from .jobstore.records import JobRecord
from .jobstore.sqlite import SQLiteJobStore
from .jobstore.writer import RecordWriter
from .lifecycle import Lifecycle, V2Parts, create_folder
from .metrics import Metrics, Reading
from .pipeline.delivery import Delivery
from .pipeline.janitor import Janitor
from .pipeline.jobs import JobRegistry
from .pipeline.runner import PromptRunner
from .salad import DeletionCost
from .state import ServerState
from .storage.azure import azure_service_client
from .storage.manager import StorageManager
from .storage.net import Proxies, UrlGuard
from .storage.uploads import Uploader
from .tracing import tracing_from_environment
from .urls import url_origin
from .v2.assets import AssetStore
from .v2.events import JobEvents, PreviewRouter
from .v2.jobs import StagedAssets, V2Jobs
from .webhooks.sender import WebhookSender
from .webhooks.system import SystemWebhooks
from .workflows.catalog import Catalog, using_catalog
from .workflows.loader import discover, mount


def _exit_without_server(code: int) -> None:
    raise SystemExit(code)


def create_app(
    settings: Settings,
    *,
    process: ComfyProcess,
    request_exit: Callable[[int], None] = _exit_without_server,
) -> FastAPI:
    """`process` is ComfyUI's (launched already or not); `request_exit(code)` asks the hosting server to stop with
    that exit code (ComfyUI died for good)."""
    state = ServerState()
    metrics = Metrics() if settings.metrics_enabled else None
    tracing = tracing_from_environment(os.environ)
    client = ComfyClient(settings.comfy_url)
    events = EventStream(settings.comfy_ws_url)
    assets = AssetStore(
        settings.assets_path,
        retention_s=settings.asset_retention_s,
        max_upload_bytes=settings.asset_max_upload_mb * 1024 * 1024,
        disk_limit_bytes=round(settings.asset_disk_limit_gb * 1024**3),
        shared_url=settings.job_store_url.get_secret_value() if settings.job_store_url is not None else None,
    )
    store: JobStore = (
        PostgresJobStore(settings.job_store_url.get_secret_value())
        if settings.job_store_url is not None
        else SQLiteJobStore(settings.state_dir / "jobs.db")
    )
    records = RecordWriter(
        store,
        retention_s=settings.job_retention_s,
        before_write=assets.flush_outputs,
        shared=settings.job_store_url is not None,
    )
    hub = JobEvents(max_streams=settings.max_event_streams)
    # Who hears of each record change: the writer, the event hub, and in fleet mode the other replicas.
    listeners: list[Callable[[JobRecord], None]] = [records.changed, hub.on_record]

    def record_changed(record: JobRecord) -> None:
        for listener in listeners:
            listener(record)

    jobs = JobRegistry(record_changed, connection=lambda: events.connections)
    events.subscribe(jobs.dispatch)
    previews = PreviewRouter(hub, lambda prompt_id: job.id if (job := jobs.by_prompt_id(prompt_id)) else None)
    events.subscribe(previews.on_event)
    events.subscribe_binary(previews.on_binary)
    azure = azure_service_client(settings)
    guard = url_guard(settings, azure.primary_endpoint if azure is not None else None)
    try:
        webhooks = WebhookSender(
            settings.webhook_secret.get_secret_value() if settings.webhook_secret else None,
            settings.prompt_webhook_retries,
            guard=guard,
            retry_window_s=settings.webhook_retry_window_s,
            backoff_base_s=settings.webhook_retry_base_s,
            backoff_max_s=settings.webhook_retry_max_delay_s,
            metrics=metrics,
        )
    except InvalidWebhookSecret as exc:
        raise ConfigError(str(exc)) from None
    system = _system_webhooks(settings, webhooks, jobs, metrics)
    storage_events = system.on_storage_event if system is not None else None
    if system is not None:
        events.subscribe(system.on_comfy_event)
    storage = StorageManager(settings, guard, on_event=storage_events, metrics=metrics)
    janitor = Janitor(client, settings.outputs_path, interrupt_grace_s=settings.interrupt_grace_s)
    events.subscribe(janitor.on_event)
    deletion_cost = DeletionCost(settings.salad_metadata_url) if on_saladcloud(dict(os.environ)) else None
    if deletion_cost is not None:
        events.subscribe(deletion_cost.on_event)
    runner = PromptRunner(
        settings,
        client,
        events,
        jobs,
        state,
        storage,
        janitor,
        assets=StagedAssets(assets),
        metrics=metrics,
        tracing=tracing,
    )
    delivery = Delivery(
        runner,
        Uploader(storage, on_event=storage_events, metrics=metrics),
        webhooks,
        output_dir=settings.outputs_path,
        hf_endpoint=settings.hf_endpoint,
        azure_base=azure.primary_endpoint if azure is not None else None,
        guard=guard,
        tracing=tracing,
    )
    fleet = Fleet(settings, state, records, hub, delivery, runner) if settings.fleet else None
    if fleet is not None:
        listeners[1] = fleet.after_written(hub.on_record)
        listeners.append(fleet.on_record)
        hub.remote = fleet.followers
    v2_jobs = V2Jobs(
        runner,
        jobs,
        records,
        assets,
        max_queue_depth=settings.max_queue_depth,
        output_retention_s=settings.job_retention_s,
        door=fleet.door if fleet is not None else None,
        canceler=fleet if fleet is not None else runner,
    )
    if fleet is not None:
        fleet.serve_v2(v2_jobs)
    lifecycle = Lifecycle(
        settings,
        state,
        process,
        client,
        events,
        jobs,
        runner,
        janitor,
        storage,
        delivery,
        webhooks,
        system,
        request_exit,
        deletion_cost=deletion_cost,
        records=records,
        v2=V2Parts(v2_jobs, assets),
        fleet=fleet,
        metrics=metrics,
        tracing=tracing,
    )

    app = FastAPI(
        title="ComfyUI API",
        version=__version__,
        description="A stateless HTTP API in front of ComfyUI.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/docs/json",
    )
    catalog = Catalog()
    app.state.settings = settings
    app.state.server_state = state
    app.state.events = events
    app.state.jobs = jobs
    app.state.job_records = records
    app.state.runner = runner
    app.state.storage = storage
    app.state.delivery = delivery
    app.state.door = fleet.door if fleet is not None else delivery
    app.state.canceler = fleet if fleet is not None else runner
    app.state.comfy_client = client
    app.state.catalog = catalog
    app.state.lifecycle = lifecycle
    app.state.assets = assets
    app.state.v2_jobs = v2_jobs
    app.state.job_events = hub
    app.state.metrics = metrics
    if metrics is not None:
        metrics.watch(_readings(state, events, jobs, hub, fleet))
        app.include_router(metrics_route.router)
    install_error_handlers(app)
    app.include_router(probes.router)
    for router in _routers(settings):
        app.include_router(router)
    docs.add_doc_routes(app, "/docs/json")
    # Each middleware added wraps those added before it: RequestContext, added last, is the outermost, so the request
    # id is set before anything logs, and a request that auth refuses is logged too, before its body is read.
    app.add_middleware(CatalogContext, catalog=catalog)
    # Asset uploads have their own limit (ASSET_MAX_UPLOAD_MB), enforced as they stream in.
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_body_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        unlimited={v2_assets.UPLOAD_ROUTE},
    )
    if settings.api_keys:
        open_paths = OPEN_PATHS if settings.metrics_require_auth else OPEN_PATHS | {metrics_route.METRICS_PATH}
        open_paths |= docs.OPEN_PATHS | dashboard.PAGE_PATHS
        install_bearer_auth(app, settings.api_keys, open_paths)
    app.add_middleware(RequestContext, metrics=metrics)
    return app


def _readings(
    state: ServerState, events: EventStream, jobs: JobRegistry, hub: JobEvents, fleet: Fleet | None
) -> list[Reading]:
    """The state metrics, read at each scrape."""
    readings = [
        Reading(
            "jobs_in_flight", "Jobs this server holds: preprocessing, queued or running.", "gauge", lambda: len(jobs)
        ),
        Reading(
            "comfyui_queue_depth",
            "Prompts in ComfyUI's queue, running one included, as its websocket last said.",
            "gauge",
            lambda: events.queue_remaining,
        ),
        Reading("comfyui_up", "1 while ComfyUI answers.", "gauge", lambda: float(state.comfy_up.is_set())),
        Reading("event_streams_open", "Server-Sent Events streams open.", "gauge", lambda: hub.streams),
        Reading(
            "websocket_reconnects",
            "Times the websocket to ComfyUI was connected again after its first connection.",
            "counter",
            lambda: max(events.connections - 1, 0),
        ),
    ]
    if fleet is not None:
        readings += [
            Reading(
                "fleet_broker_connected", "1 while RabbitMQ is connected.", "gauge", lambda: fleet.broker.connected
            ),
            Reading("fleet_store_ok", "1 while PostgreSQL answers.", "gauge", lambda: float(fleet.store_ok)),
            Reading(
                "fleet_ready",
                "1 while the broker is connected and the job store answers (what /ready requires).",
                "gauge",
                lambda: float(state.fleet_ok),
            ),
        ]
    return readings


def _routers(settings: Settings) -> list[APIRouter]:
    """The routes beside the probes: none on a worker-only replica; on an API-only one, those that need no ComfyUI
    here (jobs go to the workers through the queue, assets are the fleet's)."""
    if settings.fleet_role == "worker":
        return []
    local = [download.router, models.router] if settings.runs_comfy else []
    return [
        prompt.router,
        job_status.router,
        control.router,
        *local,
        v2_jobs_routes.router,
        v2_assets.router,
        dashboard.router,
    ]


async def mount_workflows(app: FastAPI) -> None:
    """Once ComfyUI is up: read its models and samplers, then mount the workflow endpoints (whose
    schemas may use those lists)."""
    settings: Settings = app.state.settings
    if settings.fleet_role == "worker":
        return  # no public API: no workflow endpoints
    catalog: Catalog = app.state.catalog
    warmup = app.state.lifecycle.warmup_prompt
    catalog.warmup_checkpoint = next(
        (
            node["inputs"].get("ckpt_name")
            for node in (warmup or {}).values()
            if node.get("class_type") == "CheckpointLoaderSimple"
        ),
        None,
    )
    if settings.runs_comfy:  # an API-only replica's inputs list no models and samplers: its workers' ComfyUI checks
        await catalog.refresh(app.state.comfy_client, settings.models_path)
    create_folder("WORKFLOW_DIR", settings.workflow_dir)
    workflows = await asyncio.to_thread(discover, settings.workflow_dir)
    with using_catalog(catalog):  # the routes' markdown descriptions are built now, from the inputs' schemas
        mount(app, workflows, markdown_descriptions=settings.markdown_schema_descriptions)


def url_guard(settings: Settings, azure_endpoint: str | None) -> UrlGuard:
    """The URL guard: HTTP_TRUSTED_ORIGINS plus the origins of every URL the operator configured are trusted."""
    operator = [*settings.operator_origins]
    if azure_endpoint:
        operator.append(url_origin(azure_endpoint))
    try:
        proxies = Proxies.from_environment()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return UrlGuard(
        block_private=settings.http_block_private_addresses,
        trusted_origins=(*settings.http_trusted_origins, *operator),
        auth_origins=settings.http_auth_allowed_origins,
        proxies=proxies,
    )


def _system_webhooks(
    settings: Settings, sender: WebhookSender, jobs: JobRegistry, metrics: Metrics | None
) -> SystemWebhooks | None:
    if settings.system_webhook_url is None or not settings.system_webhook_events:
        return None

    def request_id_for(prompt_id: str) -> str | None:
        job = jobs.by_prompt_id(prompt_id)
        return job.id if job is not None else None

    return SystemWebhooks(
        settings.system_webhook_url,
        settings.system_webhook_events,
        system_metadata(dict(os.environ)),
        sender,
        request_id_for,
        metrics=metrics,
    )
