"""The README's table of differences from the reference server stays a table, complete and true: every variable the
reference does not have is in it, the limits it quotes are the code's, and its links land on headings."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from comfyui_api.config import SALAD_VARIABLES, Settings
from comfyui_api.pipeline.preprocess import MAX_INPUT_DEPTH
from comfyui_api.pipeline.request import ID_MAX_BYTES

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Where this server differs from the reference server"
HEADER = "| Area | Reference server | This server |"

# The reference server's variables (its src/config.ts, version 1.18.0), and those its tools read (HF_TOKEN, by the
# `hf` CLI). A variable of our configuration table outside this list is one of ours, and a difference to document.
REFERENCE_VARIABLES = frozenset(
    {
        "ALWAYS_RESTART_COMFYUI",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT",
        "AZURE_STORAGE_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "BASE",
        "CACHE_DIR",
        "CMD",
        "COMFY_HOME",
        "COMFYUI_PORT_HOST",
        "DIRECT_ADDRESS",
        "HF_TOKEN",
        "HOST",
        "HTTP_AUTH_HEADER_NAME",
        "HTTP_AUTH_HEADER_VALUE",
        "INPUT_DIR",
        "LOG_LEVEL",
        "LRU_CACHE_SIZE_GB",
        "MANIFEST",
        "MANIFEST_JSON",
        "MARKDOWN_SCHEMA_DESCRIPTIONS",
        "MAX_BODY_SIZE_MB",
        "MAX_QUEUE_DEPTH",
        "MODEL_DIR",
        "OUTPUT_DIR",
        "PORT",
        "PREPEND_FILENAMES",
        "PROMPT_WEBHOOK_RETRIES",
        *SALAD_VARIABLES,
        "STARTUP_CHECK_INTERVAL_S",
        "STARTUP_CHECK_MAX_TRIES",
        "SYSTEM_WEBHOOK_EVENTS",
        "SYSTEM_WEBHOOK_URL",
        "WARMUP_PROMPT_FILE",
        "WARMUP_PROMPT_URL",
        "WEBHOOK_SECRET",
        "WORKFLOW_DIR",
    }
)


def section(text: str, heading: str) -> str:
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


@cache
def table() -> tuple[tuple[str, str, str], ...]:
    """The differences table's rows (area, reference, this server), header and rule left out."""
    lines = [line for line in section(README.read_text(encoding="utf-8"), SECTION).splitlines() if line.startswith("|")]
    assert lines[:2] == [HEADER, "|---|---|---|"], "the differences are a table with the reference beside us"
    rows = []
    for line in lines[2:]:
        # A `|` inside a cell's code span (none today) would need escaping as `\|`.
        cells = tuple(cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1])
        assert len(cells) == 3 and all(cells), f"a row needs an area and both sides: {line[:80]}"
        rows.append((cells[0], cells[1], cells[2]))
    return tuple(rows)


def ours(area: str) -> str:
    (cell,) = [row[2] for row in table() if row[0] == area]
    return cell


def configuration_variables() -> set[str]:
    """The variable names in the first column of the README's configuration table."""
    names: set[str] = set()
    for line in section(README.read_text(encoding="utf-8"), "## Configuration").splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]*)`", line.split("|")[1]))
    return names


def test_every_variable_the_reference_lacks_is_a_documented_difference() -> None:
    text = " ".join(" ".join(row) for row in table())
    ours_only = configuration_variables() - REFERENCE_VARIABLES
    assert ours_only, "the configuration table lists this server's own variables"
    assert sorted(name for name in ours_only if f"`{name}`" not in text) == []


def test_the_limits_the_table_quotes_are_the_codes() -> None:
    assert f"1 to {ID_MAX_BYTES} bytes in UTF-8" in ours("Request `id`")
    assert "409" in ours("Request `id`")
    assert f"deeper than {MAX_INPUT_DEPTH} levels" in ours("Deeply nested inputs")
    stall = Settings.model_fields["comfy_stall_timeout_s"].default
    assert f"`COMFY_STALL_TIMEOUT_S` ({stall:g} s)" in ours("Wedged ComfyUI")
    assert "`ALWAYS_RESTART_COMFYUI=false`" in ours("Wedged ComfyUI")
    window = Settings.model_fields["webhook_retry_window_s"].default
    assert f"`WEBHOOK_RETRY_WINDOW_S` ({window:g} s)" in ours("Webhook delivery")
    body_timeout = Settings.model_fields["body_read_timeout_s"].default
    assert f"`BODY_READ_TIMEOUT_S` ({body_timeout:g} s)" in ours("Request bodies")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_in_the_table_land_on_headings() -> None:
    anchors = {slug(line.lstrip("#")) for line in README.read_text(encoding="utf-8").splitlines() if line[:1] == "#"}
    links = [link for row in table() for link in re.findall(r"\]\(#([^)]+)\)", " ".join(row))]
    assert links, "the table points at the sections that tell more"
    assert [link for link in links if link not in anchors] == []
