"""docker-compose.yml for real, on podman: the images built, the whole file up, answers over HTTP.

One module-scoped deployment (``deploy/compose-podman.sh``, the README's command): the base
images made from Debian packages, both images built with the host's pip settings, ``up -d``
(Redis, the one-shot demo job on a small training budget, the service), then the tests below
against it in order, and ``down -v``.  The wall times of the build, the first answer and the
teardown are printed at the end (deploy/README.md quotes them).

Skipped, with the reason, only where the deployment cannot run at all: podman, podman-compose or
debootstrap missing (``make container-tools`` installs them as root on Debian), not root
(debootstrap), or podman unable to start a container on this kernel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "compose-podman.sh"
CONTAINERS_CONF = REPO / "deploy" / "podman" / "containers.conf"
BASE_IMAGE = "localhost/sku-python:3.11-bookworm"
PROJECT = f"sku-smoke-{os.getpid()}"
CATALOG = "/data/catalog/catalog/manifest.jsonl"  # where the demo job writes it (compose file)
# The demo job's training budget: the smallest that still exports a working model; the default
# (6 epochs, 2 min of localizer) is for people looking at the demo's accuracy.
DEMO_BUDGET = {"SKU_DEMO_EPOCHS": "1", "SKU_DEMO_LOCALIZER_MINUTES": "0.5"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def podman_compose() -> str | None:
    venv = REPO / ".venv" / "bin" / "podman-compose"
    return str(venv) if venv.exists() else shutil.which("podman-compose")


def missing_tools() -> str | None:
    for tool in ("podman", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (`make container-tools` installs it as root)"
    if podman_compose() is None:
        return "podman-compose is not installed (the dev extra: `make setup`)"
    if os.geteuid() != 0:
        return "the base images are made with debootstrap, which needs root"
    return None


@dataclass
class Deployment:
    env: dict[str, str]
    base_url: str
    api_key: str
    timings: dict[str, float] = field(default_factory=dict)
    up_started: float = 0.0

    def compose(self, *args: str, timeout: float = 600, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(SCRIPT), *args], env=self.env, cwd=REPO, capture_output=True,
                             text=True, timeout=timeout)
        if check and out.returncode != 0:
            pytest.fail(f"compose-podman.sh {' '.join(args)} exited {out.returncode}:\n"
                        f"{out.stderr[-3000:]}\n{self.logs()}")
        return out

    def podman(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def container(self, service: str) -> str:
        names = self.podman("ps", "-a", "--format", "{{.Names}}",
                            "--filter", f"label=io.podman.compose.project={PROJECT}",
                            "--filter", f"label=com.docker.compose.service={service}")
        (name,) = names.stdout.split()
        return name

    def logs(self) -> str:
        names = self.podman("ps", "-a", "--format", "{{.Names}}",
                            "--filter", f"label=io.podman.compose.project={PROJECT}").stdout
        return "\n".join(f"--- {n}\n" + self.podman("logs", "--tail", "40", n).stdout[-3000:]
                         + self.podman("logs", "--tail", "40", n).stderr[-3000:]
                         for n in names.split())

    def volume_path(self) -> Path:
        out = self.podman("volume", "inspect", "--format", "{{.Mountpoint}}", f"{PROJECT}_data")
        assert out.returncode == 0, out.stderr
        return Path(out.stdout.strip())

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.base_url + path, timeout=10)

    def recognize(self, photo: bytes) -> httpx.Response:
        return httpx.post(f"{self.base_url}/recognize", params={"top_k": 3, "min_score": 0},
                          headers={"X-API-Key": self.api_key, "Content-Type": "image/jpeg"},
                          content=photo, timeout=60)

    def wait_readyz(self, status: int, timeout: float) -> dict[str, Any]:
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            try:
                r = self.get("/readyz")
                if r.status_code == status:
                    body: dict[str, Any] = r.json()
                    return body
                last = f"{r.status_code} {r.text[:300]}"
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(1)
        pytest.fail(f"/readyz never answered {status} in {timeout:.0f} s (last: {last})\n"
                    f"{self.logs()}")

    def index_builder(self, *argv: str) -> Any:
        out = self.compose("run", "--rm", "index-builder", *argv, "--json", "--no-progress")
        # sku-index --json prints one (indented) document; compose may print lines before it
        starts = [m.start() for m in re.finditer(r"^[{\[]", out.stdout, re.MULTILINE)]
        assert starts, f"sku-index {argv[0]} printed no JSON:\n{out.stdout}\n{out.stderr}"
        result: Any = json.JSONDecoder().raw_decode(out.stdout[starts[0]:])[0]
        return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    port, key = free_port(), f"smoke-{os.urandom(8).hex()}"
    env = dict(os.environ, COMPOSE_PROJECT_NAME=PROJECT, SKU_API_KEY=key, SKU_PORT=str(port),
               CONTAINERS_CONF=str(CONTAINERS_CONF), PODMAN_COMPOSE=str(podman_compose()),
               **DEMO_BUDGET)
    dep = Deployment(env, f"http://127.0.0.1:{port}", key)
    t = time.monotonic()
    # The base images first: the one image this machine can have without a registry, to learn
    # whether podman can start a container here at all before building on it.
    bases = subprocess.run([str(REPO / "deploy" / "local-images.sh")], env=env,
                           capture_output=True, text=True, timeout=900)
    assert bases.returncode == 0, bases.stderr[-3000:]
    probe = dep.podman("run", "--rm", BASE_IMAGE, "true")
    if probe.returncode != 0:
        pytest.skip(f"podman cannot start a container here: {probe.stderr.strip()[-500:]}")
    dep.compose("build", timeout=1200)
    dep.timings["build (base images + both images)"] = time.monotonic() - t
    t = time.monotonic()
    try:
        dep.compose("up", "--no-build", timeout=1200)  # returns once the demo job has exited
        dep.timings["up -d (demo job: catalog, training, index)"] = time.monotonic() - t
        dep.up_started = t
        yield dep
    finally:
        t = time.monotonic()
        down = dep.compose("down", "-v", "-t", "10", check=False, timeout=300)
        dep.timings["down -v"] = time.monotonic() - t
        report = {k: round(v, 1) for k, v in dep.timings.items()}
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled():  # into the run's output, not captured
            print(f"\ncompose smoke wall times (s): {json.dumps(report)}")
        assert down.returncode == 0, down.stderr[-2000:]
        left = dep.podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}")
        assert not left.stdout.strip(), "containers left after down"
        assert dep.podman("volume", "exists", f"{PROJECT}_data").returncode != 0, "volume left"


def catalog_records(volume: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in
            (volume / CATALOG.removeprefix("/data/")).read_text().splitlines() if line.strip()]
    return {r["sku_id"]: r for r in rows}


def test_demo_job_completed_and_the_service_answers_a_real_shot_photo(
        deployment: Deployment) -> None:
    job = deployment.container("demo-job")
    state = deployment.podman("inspect", "--format", "{{.State.ExitCode}}", job).stdout.strip()
    assert state == "0", f"demo job exited {state}\n{deployment.logs()}"
    ready = deployment.wait_readyz(200, timeout=180)
    assert ready["ready"] is True and ready["index_version"], ready
    volume = deployment.volume_path()
    catalog = catalog_records(volume)
    queries = [json.loads(line) for line in
               (volume / "catalog" / "queries" / "manifest.jsonl").read_text().splitlines()]
    query = queries[0]
    r = deployment.recognize((volume / "catalog" / "queries" / query["image"]).read_bytes())
    deployment.timings["first answer (from up)"] = time.monotonic() - deployment.up_started
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "recognized", body
    sku = body["sku"]
    assert sku["sku_id"] in catalog, f"{sku['sku_id']} is not a SKU of the demo catalog"
    record = catalog[sku["sku_id"]]
    assert (sku["title"], sku["category"]) == (record["title"], record["category"])
    assert sku["tags"] == record.get("tags", [])
    assert sku["image"], "the answer names the SKU's catalog image"
    assert body["index_version"] == ready["index_version"]
    assert all(c["sku_id"] in catalog for c in body["candidates"])
    unauthorised = httpx.post(f"{deployment.base_url}/recognize", content=b"x", timeout=10,
                              headers={"Content-Type": "image/jpeg"})
    assert unauthorised.status_code == 401


def test_index_builder_profile_lists_and_rebuilds_nothing_changed(
        deployment: Deployment) -> None:
    current = deployment.wait_readyz(200, timeout=60)["index_version"]
    listed = deployment.index_builder("list")
    assert current in {v["version"] for v in listed}, listed
    built = deployment.index_builder("build", "--catalog", CATALOG)
    assert built["status"] == "unchanged" and built["version"] == current, built
    assert deployment.wait_readyz(200, timeout=30)["index_version"] == current


def test_service_survives_a_redis_restart(deployment: Deployment) -> None:
    """Redis keeps nothing (no persistence): the service says 503 instead of answering from a
    version that is gone, and serves again once the index builder publishes."""
    volume = deployment.volume_path()
    query = json.loads((volume / "catalog" / "queries" / "manifest.jsonl")
                       .read_text().splitlines()[1])
    photo = (volume / "catalog" / "queries" / query["image"]).read_bytes()
    service = deployment.container("service")
    started_at = deployment.podman("inspect", "--format", "{{.State.StartedAt}}", service).stdout
    restarted = deployment.podman("restart", deployment.container("redis"))
    assert restarted.returncode == 0, restarted.stderr
    unready = deployment.wait_readyz(503, timeout=90)
    assert unready["ready"] is False, unready
    assert deployment.recognize(photo).status_code == 503
    built = deployment.index_builder("build", "--catalog", CATALOG)
    assert built["status"] == "ok", built
    ready = deployment.wait_readyz(200, timeout=90)
    assert ready["index_version"] == built["version"]
    r = deployment.recognize(photo)
    assert r.status_code == 200 and r.json()["index_version"] == built["version"], r.text
    # the same service process all along: it recovered, nothing restarted it
    assert deployment.podman("inspect", "--format", "{{.State.StartedAt}}",
                             service).stdout == started_at
