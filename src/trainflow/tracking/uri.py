"""Which tracking store a step uses, and failing fast when it is unreachable."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from trainflow.errors import TrackingError


def resolve_tracking_uri(configured: str | None, root: Path) -> str:
    """MLFLOW_TRACKING_URI, else the config, else the embedded sqlite store.

    The embedded default is an absolute path under the project root so that a
    Hydra run directory or a test's cwd never grows a second, empty store.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def bound_http_client(timeout_s: float, max_retries: int) -> None:
    """Cap MLflow's HTTP retries unless the user set them.

    MLflow retries 7 times with exponential backoff and a 120 s timeout: an
    unreachable server hangs a step for minutes before it says anything.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout_s, 1) * 3)))


def check_reachable(uri: str, timeout_s: float) -> None:
    """One cheap request to the server before anything is logged.

    Only http(s) stores can be unreachable; databases and local paths fail
    with their own clear errors.
    """
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read(64)
    except urllib.error.HTTPError as exc:
        # /health may sit behind auth or a proxy that answers 401/404: the
        # server is there, and the first real call reports the rest.
        if exc.code >= 500:
            raise TrackingError(f"tracking server {uri} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"cannot reach tracking server {uri} within {timeout_s:g}s: {reason}"
        ) from exc
