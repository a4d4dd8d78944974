"""The deployment files (deploy/docker, docker-compose.yml, deploy/k8s) against the code.

No Docker engine or cluster runs here, so these tests parse the files and check what they
reference against the repository: every copied path exists and survives .dockerignore; every
command is a console script of pyproject.toml whose own argparse parser accepts the exact argv
(subcommands, options, required values); every ``SKU_*`` variable is a field of its process's
settings class and the values validate; the service and the index builder agree on the model,
the index folder and the Redis key prefix; ports and probe paths agree with ``sku-serve`` and
the app's routes; the service image holds no torch.  ``docker compose config`` and ``kubectl
kustomize`` run too where those tools exist.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "deploy" / "k8s"
DOCKERFILES = {
    "service": REPO / "deploy" / "docker" / "service.Dockerfile",
    "jobs": REPO / "deploy" / "docker" / "jobs.Dockerfile",
}
PORT = 8000
SCRIPTS: dict[str, str] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
EXTRAS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
# Commands that are not ours: the Redis image's, the shell's, the healthcheck's interpreter.
SYSTEM_COMMANDS = {"redis-server", "redis-cli", "sh", "python", "sleep"}
# Console scripts being written in parallel: skipped (with the reason) only while undeclared.
PLANNED_SCRIPTS = {"sku-serve", "sku-index", "sku-train", "sku-train-localizer", "sku-demo"}
SETTINGS = {  # env prefix -> settings class ("module:Class")
    "SKU_SERVICE_": "service.api.settings:ServiceSettings",
    "SKU_INDEX_": "index_builder.settings:IndexBuilderSettings",
    "SKU_TRAIN_": "training.settings:TrainConfig",
}


# --- loading -------------------------------------------------------------------------------
@dataclass
class Instruction:
    stage: str
    keyword: str
    args: str


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, tagged by stage."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    out, stage = [], ""
    for line in logical:
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            m = re.search(r"\s+AS\s+(\S+)", rest, re.IGNORECASE)
            stage = m.group(1) if m else rest
        out.append(Instruction(stage, keyword.upper(), rest.strip()))
    return out


def runtime(kind: str) -> list[Instruction]:
    """The final stage of a Dockerfile: what the image is made of."""
    instrs = parse_dockerfile(DOCKERFILES[kind])
    return [i for i in instrs if i.stage == instrs[-1].stage]


def exec_form(instrs: list[Instruction], keyword: str) -> list[str]:
    found = [i.args for i in instrs if i.keyword == keyword]
    return json.loads(found[-1]) if found else []


def image_env(kind: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in runtime(kind):
        if i.keyword == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(i.args) if "=" in kv)
    return env


def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def compose_image_kind(svc: dict[str, Any]) -> str | None:
    """Which of our Dockerfiles builds a compose service's image (None: a public image)."""
    build = svc.get("build")
    if not build:
        return None
    path = (REPO / build["context"] / build.get("dockerfile", "Dockerfile")).resolve()
    return next(k for k, p in DOCKERFILES.items() if p.resolve() == path)


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with an empty environment, and
    ${VAR:?error} (required) as if the operator had set it."""
    value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}", r"operator-set-\1", value)
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
    return value.replace("$$", "$")


def compose_env(name: str) -> dict[str, str]:
    svc = compose()["services"][name]
    kind = compose_image_kind(svc)
    env = image_env(kind) if kind else {}
    env.update({k: interpolate(str(v)) for k, v in (svc.get("environment") or {}).items()})
    return env


def compose_argv(name: str) -> list[str]:
    svc = compose()["services"][name]
    kind = compose_image_kind(svc)
    entry = svc.get("entrypoint", exec_form(runtime(kind), "ENTRYPOINT") if kind else [])
    argv = [*entry, *svc.get("command", exec_form(runtime(kind), "CMD") if kind else [])]
    return [interpolate(str(a)) for a in argv]  # compose interpolates commands too


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(K8S_DIR.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text()) if d]


def k8s_objects(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_docs() if d["kind"] == kind]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def workloads() -> list[dict[str, Any]]:
    return k8s_objects("Deployment") + k8s_objects("CronJob")


def k8s_env(container: dict[str, Any]) -> dict[str, str]:
    """A container's environment, Secret values taken from secret.example.yaml."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in k8s_objects("ConfigMap")}
    secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in k8s_objects("Secret")}
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(maps[src["configMapRef"]["name"]])
        else:
            env.update(secrets[src["secretRef"]["name"]])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef") or var.get("valueFrom", {}).get(
            "configMapKeyRef")
        if ref is None:
            env[var["name"]] = str(var["value"])
        else:
            source = secrets if "secretKeyRef" in var["valueFrom"] else maps
            env[var["name"]] = source[ref["name"]][ref["key"]]
    return env


def all_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command the deployment files run."""
    cmds = []
    for kind in DOCKERFILES:
        instrs = runtime(kind)
        cmds.append((f"{kind}.Dockerfile CMD", [*exec_form(instrs, "ENTRYPOINT"),
                                                *exec_form(instrs, "CMD")]))
        for i in instrs:
            if i.keyword == "HEALTHCHECK":
                cmds.append((f"{kind}.Dockerfile HEALTHCHECK", healthcheck_argv(i.args)))
    for name, svc in compose()["services"].items():
        cmds.append((f"compose {name}", compose_argv(name)))
        test = svc.get("healthcheck", {}).get("test", [])
        if test:
            cmds.append((f"compose {name} healthcheck", test[1:]))
    for obj in workloads():
        for c in pod_spec(obj)["containers"]:
            where = f"{obj['kind']} {obj['metadata']['name']}"
            cmds.append((where, [*c.get("command", []), *c.get("args", [])]))
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec")
            if pre:
                cmds.append((f"{where} preStop", pre["command"]))
    return cmds


def healthcheck_argv(args: str) -> list[str]:
    return json.loads(args[args.index("CMD ") + 4:])


# --- argparse, without running the job -----------------------------------------------------
class _Parsed(Exception):
    def __init__(self, ns: argparse.Namespace, extras: list[str]) -> None:
        self.ns, self.extras = ns, extras


def console_main(script: str) -> Any:
    """The main() of a console script; skips (with why) only for a script not written yet."""
    if script not in SCRIPTS:
        if script in PLANNED_SCRIPTS:
            pytest.skip(f"{script} is not declared in pyproject [project.scripts] yet")
        pytest.fail(f"{script} is not a console script of pyproject.toml")
    module, func = SCRIPTS[script].split(":")
    try:
        missing = importlib.util.find_spec(module) is None
    except ModuleNotFoundError:
        missing = True
    if missing:
        pytest.skip(f"{script}: module {module} does not exist yet")
    return getattr(importlib.import_module(module), func)


def parse_cli(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> argparse.Namespace | None:
    """Run the script's own parser on argv and stop right after parsing (None: --help)."""
    main = console_main(script)
    orig_args, orig_known = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    depth = [0]

    def wrap(orig: Any, known: bool) -> Any:
        def parse(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> Any:
            depth[0] += 1
            try:
                result = orig(self, args, namespace)
            finally:
                depth[0] -= 1
            if depth[0] == 0:  # the outermost parse is done: the job must not start
                raise _Parsed(*(result if known else (result, [])))
            return result
        return parse

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", wrap(orig_args, False))
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", wrap(orig_known, True))
    try:
        main(argv)
    except _Parsed as parsed:
        assert not parsed.extras, f"{script}: unrecognised arguments {parsed.extras}"
        return parsed.ns
    except SystemExit as exc:
        assert exc.code in (0, None), f"{script} {argv}: {capsys.readouterr().err}"
        return None
    pytest.fail(f"{script}: main() returned without parsing its arguments")


# --- Dockerfiles ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_copies_existing_paths_not_dockerignored(kind: str) -> None:
    for i in parse_dockerfile(DOCKERFILES[kind]):
        if i.keyword in ("COPY", "ADD") and "--from" not in i.args:
            sources = [a for a in shlex.split(i.args) if not a.startswith("--")][:-1]
            for src in sources:
                assert (REPO / src).exists(), f"{kind}: COPY {src}: not in the repository"
                assert not dockerignored(src), f"{kind}: COPY {src} is excluded by .dockerignore"


def dockerignored(path: str) -> bool:
    patterns = [p.strip().lstrip("/") for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(fnmatch.fnmatch(pre, pat) or fnmatch.fnmatch(pre, pat.removeprefix("**/"))
               for pat in patterns for pre in prefixes)


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_is_multistage_non_root_and_variant_aware(kind: str) -> None:
    instrs = parse_dockerfile(DOCKERFILES[kind])
    assert len({i.stage for i in instrs}) >= 2, "build stage + runtime stage"
    assert any(i.keyword == "COPY" and i.args.startswith("--from=build") for i in runtime(kind))
    user = [i.args for i in runtime(kind) if i.keyword == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert any(i.keyword == "ARG" and i.args == "VARIANT=cpu" for i in instrs)
    for m in re.finditer(r'pip install "?\.\[([a-z,]+)\]', DOCKERFILES[kind].read_text()):
        assert set(m.group(1).split(",")) <= set(EXTRAS), f"unknown extra in {m.group(0)}"


def test_service_image_has_no_torch_and_serves_on_the_port() -> None:
    text = DOCKERFILES["service"].read_text()
    installs = re.findall(r'pip install ([^;\n]+)', text)
    extras = {e for inst in installs for m in re.finditer(r"\[([a-z,]+)\]", inst)
              for e in m.group(1).split(",")}
    assert extras and "train" not in extras and "serve" in extras
    assert not any("torch" in inst for inst in installs)
    copied = {Path(s).parts[0] for i in parse_dockerfile(DOCKERFILES["service"])
              if i.keyword == "COPY" and "--from" not in i.args
              for s in shlex.split(i.args)[:-1]}
    assert "training" not in copied, "the service image carries the inference core only"
    instrs = runtime("service")
    assert [i.args for i in instrs if i.keyword == "EXPOSE"] == [str(PORT)]
    health = next(i.args for i in instrs if i.keyword == "HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/healthz" in health


def test_service_image_packages_suffice_for_sku_serve() -> None:
    """sku-serve and the app import with only the packages the service image copies (torch and
    the repository's other packages blocked), as they must in that image."""
    copied = {Path(src).parts[0] for i in parse_dockerfile(DOCKERFILES["service"])
              if i.keyword == "COPY" and "--from" not in i.args
              for src in shlex.split(i.args)[:-1]}
    ours = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
    blocked = sorted((ours - copied) | {"torch"})
    module = SCRIPTS["sku-serve"].split(":")[0]
    code = (f"import sys\nfor m in {blocked!r}:\n    sys.modules[m] = None\n"
            f"import {module}, service.api.app\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_jobs_image_takes_cpu_torch_from_the_pytorch_index() -> None:
    instrs = parse_dockerfile(DOCKERFILES["jobs"])
    assert any(i.keyword == "ARG"
               and i.args == "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" for i in instrs)
    text = DOCKERFILES["jobs"].read_text()
    assert '--index-url "$TORCH_INDEX_URL"' in text
    # the RUN reads the torch pin from pyproject.toml: run that very snippet here
    snippet = re.search(r"torch_req=\"\$\(python -c '([^']+)'\)\"", text)
    assert snippet, "the torch requirement is read from pyproject.toml"
    out = subprocess.run([sys.executable, "-c", snippet.group(1)], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() in EXTRAS["train"] and out.stdout.startswith("torch")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_dockerfile_run_commands_are_valid_shell(kind: str) -> None:
    sh = shutil.which("dash") or shutil.which("sh")
    assert sh is not None
    for i in parse_dockerfile(DOCKERFILES[kind]):
        if i.keyword == "RUN" and not i.args.startswith("["):
            out = subprocess.run([sh, "-n", "-c", i.args], capture_output=True, text=True)
            assert out.returncode == 0, f"{kind}: RUN {i.args[:60]}...: {out.stderr}"


# --- commands ------------------------------------------------------------------------------
@pytest.mark.parametrize("where,argv", all_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_is_ours_and_its_parser_accepts_it(
        where: str, argv: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert argv, f"{where}: no command"
    if argv[:2] == ["tini", "--"]:
        argv = argv[2:]
    if argv[0] in SYSTEM_COMMANDS:
        return
    ns = parse_cli(argv[0], argv[1:], monkeypatch, capsys)
    if argv[0] == "sku-serve":
        assert ns is not None and ns.port == PORT and ns.host == "0.0.0.0", where


def test_sku_serve_default_port_is_the_deployed_one(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    ns = parse_cli("sku-serve", [], monkeypatch, capsys)
    assert ns is not None and ns.port == PORT


# --- environment ---------------------------------------------------------------------------
def settings_class(prefix: str) -> Any:
    module, cls = SETTINGS[prefix].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        pytest.skip(f"{SETTINGS[prefix]} does not exist yet ({exc})")


def is_field(cls: Any, name: str) -> bool:
    """Whether an env name (prefix removed) is a field, nested with ``__`` into sub-models."""
    *parents, leaf = name.lower().split("__")
    model = cls
    for part in parents:
        info = model.model_fields.get(part)
        candidates = (info.annotation, *get_args(info.annotation)) if info else ()
        model = next((a for a in candidates
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return False
    return leaf in model.model_fields


def every_env() -> list[tuple[str, dict[str, str]]]:
    envs = [(f"compose {n}", compose_env(n)) for n in compose()["services"]]
    envs += [(f"{kind}.Dockerfile ENV", image_env(kind)) for kind in DOCKERFILES]
    envs += [(f"{o['kind']} {o['metadata']['name']}", k8s_env(c))
             for o in workloads() for c in pod_spec(o)["containers"]]
    envs += [(f"ConfigMap {d['metadata']['name']}", d["data"]) for d in k8s_objects("ConfigMap")]
    return envs


@pytest.mark.parametrize("where,env", every_env(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_sku_variable_is_a_settings_field_and_validates(
        where: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix in SETTINGS:
        names = [k for k in env if k.startswith(prefix)]
        if not names:
            continue
        cls = settings_class(prefix)
        bad = [k for k in names if not is_field(cls, k[len(prefix):])]
        assert not bad, f"{where}: not fields of {cls.__name__}: {bad}"
        if prefix != "SKU_TRAIN_":  # TrainConfig needs a manifest; names are checked above
            load_with_env(cls, with_keys_from_a_secret(env), monkeypatch)
    unknown = [k for k in env if k.startswith("SKU_") and not k.startswith(tuple(SETTINGS))]
    assert not unknown, f"{where}: no settings class reads {unknown}"


def with_keys_from_a_secret(env: dict[str, str]) -> dict[str, str]:
    """An image's ENV or a ConfigMap is a fragment: the service's API keys (required) come
    from a Secret or from compose, so a fragment without them gets a stand-in."""
    if any(k.startswith("SKU_SERVICE_") for k in env) and not any(
            k.startswith("SKU_SERVICE_API_KEYS") for k in env):
        return {**env, "SKU_SERVICE_API_KEYS": '["stand-in-key-from-a-secret"]'}
    return env


def load_with_env(cls: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings exactly as the container would see them (values validated)."""
    for key in list(os.environ):
        if key.startswith("SKU_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls(_env_file=None)


def pairs_of_service_and_builder() -> list[tuple[str, dict[str, str], dict[str, str]]]:
    dep = k8s_objects("Deployment")[0]
    cron = k8s_objects("CronJob")[0]
    return [
        ("compose", compose_env("service"), compose_env("index-builder")),
        ("k8s", k8s_env(pod_spec(dep)["containers"][0]), k8s_env(pod_spec(cron)["containers"][0])),
    ]


@pytest.mark.parametrize("where,svc_env,idx_env", pairs_of_service_and_builder(),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_service_and_index_builder_agree(where: str, svc_env: dict[str, str],
                                         idx_env: dict[str, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Same model (the index holds its embeddings), same index folder, same key namespace."""
    svc = load_with_env(settings_class("SKU_SERVICE_"), svc_env, monkeypatch)
    idx = load_with_env(settings_class("SKU_INDEX_"), idx_env, monkeypatch)
    assert idx.artifact_dir == svc.model_dir, where
    assert idx.index_dir == svc.index_dir, where
    assert idx.key_prefix == svc.key_prefix, where
    assert svc_env["REDIS_URL"] == idx_env["REDIS_URL"], where
    assert svc.api_keys, f"{where}: the service runs with API keys"


# --- docker-compose.yml --------------------------------------------------------------------
COMPOSE_SERVICE_KEYS = {  # the compose-spec service keys this project may use
    "image", "build", "command", "entrypoint", "environment", "env_file", "ports", "expose",
    "volumes", "depends_on", "healthcheck", "restart", "profiles", "init", "stop_grace_period",
    "stop_signal", "user", "working_dir", "read_only", "tmpfs", "deploy", "labels", "networks",
    "container_name", "logging", "ulimits", "shm_size", "mem_limit", "cpus", "pull_policy",
}


def test_compose_structure() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"redis", "demo-job", "service", "index-builder"}
    assert set(doc) <= {"name", "services", "volumes", "networks"} | {
        k for k in doc if k.startswith("x-")}
    for name, svc in services.items():
        assert set(svc) <= COMPOSE_SERVICE_KEYS, f"{name}: {set(svc) - COMPOSE_SERVICE_KEYS}"
        for vol in svc.get("volumes", []):
            assert vol.split(":")[0] in doc["volumes"], f"{name}: undeclared volume {vol}"
        if "build" in svc:
            assert (REPO / svc["build"]["context"]).is_dir()
            assert compose_image_kind(svc) in DOCKERFILES
    assert interpolate(services["redis"]["image"]).startswith("redis:7")
    # The base images are build arguments whose compose defaults are the Dockerfiles' own.
    for name, svc in services.items():
        if "build" in svc:
            (arg,) = [i.args for i in parse_dockerfile(DOCKERFILES[compose_image_kind(svc)])
                      if i.keyword == "ARG" and i.args.startswith("BASE_IMAGE=")]
            assert interpolate(svc["build"]["args"]["BASE_IMAGE"]) == arg.split("=", 1)[1], name
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    svc = services["service"]
    assert compose_image_kind(svc) == "service"
    assert svc["depends_on"] == {"redis": {"condition": "service_healthy"},
                                 "demo-job": {"condition": "service_completed_successfully"}}
    assert "data:/data:ro" in svc["volumes"]
    assert [p.rsplit(":", 1)[1] for p in svc["ports"]] == [str(PORT)]
    for job in ("demo-job", "index-builder"):
        assert compose_image_kind(services[job]) == "jobs"
        assert "data:/data" in services[job]["volumes"]
        assert services[job]["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert compose_argv("demo-job")[:4] == ["tini", "--", "sku-demo", "--no-serve"]
    assert services["index-builder"]["profiles"] == ["tools"]
    assert compose_argv("index-builder")[:3] == ["tini", "--", "sku-index"]


def test_compose_service_reads_what_the_demo_job_writes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """sku-demo, run with the demo-job's argv (its --out moved to tmp_path) and its stages
    recording their paths instead of working: the service and the index-builder must name the
    artifacts and the index folder that it writes."""
    import demo.catalog
    from index_builder import cli as index_cli
    from training import train
    from training.localizer import cli as loc_cli

    seen: dict[str, Path] = {}

    def fake_train(argv: list[str]) -> int:
        args = dict(zip(argv[::2], argv[1::2], strict=True))
        out = Path(args["--output-dir"])
        # training/finish.py exports the artifact to <output_dir>/artifact/<run name>
        seen["sicot"] = out / "artifact" / args["--run-name"]
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps({"artifact": str(seen["sicot"])}))
        return 0

    def fake_localizer(argv: list[str]) -> int:
        seen["localizer"] = Path(argv[argv.index("--out") + 1])
        return 0

    def fake_index(argv: list[str]) -> int:
        seen["index"] = Path(argv[argv.index("--index-dir") + 1])
        seen["artifact"] = Path(argv[argv.index("--artifact") + 1])
        return 0

    monkeypatch.setattr(train, "main", fake_train)
    monkeypatch.setattr(loc_cli, "main", fake_localizer)
    monkeypatch.setattr(index_cli, "main", fake_index)
    monkeypatch.setattr(demo.catalog, "generate_demo_catalog", lambda *a, **k: {})
    monkeypatch.setenv("REDIS_URL", "redis://redis:6379/0")
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)  # leave the session's logging
    argv = compose_argv("demo-job")
    assert argv[:3] == ["tini", "--", "sku-demo"]
    data = Path(argv[argv.index("--out") + 1])
    argv[argv.index("--out") + 1] = str(tmp_path)
    assert console_main("sku-demo")(argv[3:]) == 0
    assert seen["artifact"] == seen["sicot"]
    in_data = {k: data / v.relative_to(tmp_path) for k, v in seen.items()}
    svc, idx = compose_env("service"), compose_env("index-builder")
    assert Path(svc["SKU_SERVICE_MODEL_DIR"]) == in_data["sicot"]
    assert Path(idx["SKU_INDEX_ARTIFACT_DIR"]) == in_data["sicot"]
    assert Path(svc["SKU_SERVICE_LOCALIZER_DIR"]) == in_data["localizer"]
    assert Path(svc["SKU_SERVICE_INDEX_DIR"]) == Path(idx["SKU_INDEX_INDEX_DIR"]) == in_data["index"]
    assert "data:/data:ro" in compose()["services"]["service"]["volumes"] and data == Path("/data")


def test_podman_start_order_follows_depends_on() -> None:
    """deploy/compose-podman.sh starts the services itself (podman 4.3 cannot honour every
    depends_on condition): every service that `up` starts, each after what it depends on."""
    text = (REPO / "deploy" / "compose-podman.sh").read_text()
    (order,) = re.findall(r'^START_ORDER="([^"]+)"', text, re.MULTILINE)
    started = order.split()
    services = compose()["services"]
    assert set(started) == {n for n, svc in services.items() if not svc.get("profiles")}
    for i, name in enumerate(started):
        deps = set(services[name].get("depends_on") or {})
        assert deps <= set(started[:i]), f"{name} starts before {deps - set(started[:i])}"
        conditions = {d.get("condition") for d in (services[name].get("depends_on") or {}).values()}
        # the script enforces these two (healthcheck run, exit code 0) and nothing else
        assert conditions <= {"service_healthy", "service_completed_successfully"}, conditions


def test_compose_config_validates_with_docker() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"],
                                        capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    out = subprocess.run([docker, "compose", "--profile", "tools", "config", "--quiet"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# --- Kubernetes ----------------------------------------------------------------------------
def test_k8s_objects_have_the_required_fields() -> None:
    docs = k8s_docs()
    kinds = {d["kind"] for _, d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret", "CronJob",
            "PersistentVolumeClaim", "Kustomization"} <= kinds
    for path, d in docs:
        assert d.get("apiVersion") and d.get("kind"), path
        if d["kind"] != "Kustomization":
            assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), path
    for obj in workloads():
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the images' app user
        for c in spec["containers"]:
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"memory"} <= set(res["limits"])
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {d["metadata"]["name"] for d in k8s_objects("PersistentVolumeClaim")}


def route_paths(routes: list[Any], prefix: str = "") -> Iterator[str]:
    """Every path the app serves, through included routers (FastAPI may keep them nested)."""
    for r in routes:
        if getattr(r, "path", None):
            yield prefix + r.path
        inner = getattr(r, "original_router", None)
        if inner is not None:
            sub = getattr(getattr(r, "include_context", None), "prefix", "") or ""
            yield from route_paths(inner.routes, prefix + sub)


def test_deployment_probes_ports_and_read_only_data() -> None:
    from service.api.app import create_app
    from service.api.settings import ServiceSettings

    routes = set(route_paths(create_app(ServiceSettings(auth="disabled")).routes))
    (dep,) = k8s_objects("Deployment")
    spec = pod_spec(dep)
    assert spec["terminationGracePeriodSeconds"] >= 15
    (c,) = spec["containers"]
    assert c["image"].split(":")[0] == "sku-recognition-service"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": PORT}
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    for name, get in probes.items():
        assert get["path"] in routes, f"{name}: {get['path']} is not a route of the app"
        assert ports.get(get["port"], get["port"]) == PORT, name
    assert {"/healthz", "/readyz", "/metrics", "/recognize"} <= routes
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    data = next(v for v in spec["volumes"] if "persistentVolumeClaim" in v)
    assert mounts[data["name"]]["readOnly"] is True
    (svc,) = k8s_objects("Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert all(ports.get(p["targetPort"], p["targetPort"]) == PORT for p in svc["spec"]["ports"])
    assert dep["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_hpa_and_cronjob() -> None:
    (hpa,) = k8s_objects("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "sku-service")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (cron,) = k8s_objects("CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(cron["spec"]["schedule"].split()) == 5
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    spec = pod_spec(cron)
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    (c,) = spec["containers"]
    assert c["image"].split(":")[0] == "sku-recognition-jobs"
    argv = [*c["command"], *c["args"]]
    assert argv[:4] == ["tini", "--", "sku-index", "build"]
    # Paths and the key prefix come from the ConfigMap, where test_service_and_index_builder_agree
    # compares them with the service's; a flag here would bypass that check.
    assert not {"--artifact", "--index-dir", "--key-prefix", "--redis-url"} & set(argv)
    assert "REDIS_URL" in k8s_env(c)
    from index_builder import cli

    documented = {v for k, v in vars(cli).items() if k.startswith("EXIT_")}
    for rule in job.get("podFailurePolicy", {}).get("rules", []):
        if "onExitCodes" in rule:
            assert rule["onExitCodes"]["containerName"] == c["name"]
            assert set(rule["onExitCodes"]["values"]) <= documented - {0}
            assert spec["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    (kust,) = [d for _, d in k8s_docs() if d["kind"] == "Kustomization"]
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files - {"secret.example.yaml"}
    assert {i["name"] for i in kust["images"]} == {"sku-recognition-service",
                                                    "sku-recognition-jobs"}


def test_kubectl_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed here")
    out = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(rendered) == sum(1 for _, d in k8s_docs()
                                if d["kind"] not in ("Kustomization", "Secret"))


# Against the Kubernetes OpenAPI schemas that kubernetes-validate ships (no cluster, no network):
# the oldest version the manifests need (podFailurePolicy on a CronJob's Job is GA in 1.31) and
# the newest the validator knows.  Strict: an unknown or misspelt field fails too.
K8S_VERSIONS = ["1.31.0", "latest"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    if version == "latest":
        version = kubernetes_validate.latest_version()
    checked = 0
    for path, doc in k8s_docs():
        if doc["kind"] == "Kustomization":  # kustomize's own file, not an API object
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path} ({doc['kind']} {doc['metadata']['name']}) against "
                        f"Kubernetes {version}: {exc.message} at {list(exc.path)}")
        checked += 1
    assert checked == sum(1 for _, d in k8s_docs() if d["kind"] != "Kustomization")


def test_k8s_schema_validation_catches_a_misspelt_field() -> None:
    """The validation above can fail: the same Deployment with one field misspelt does."""
    import kubernetes_validate

    (dep,) = k8s_objects("Deployment")
    broken = json.loads(json.dumps(dep))
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_host_build_settings_pass_pip_config_as_read_only_mounts(tmp_path: Path) -> None:
    """compose-podman.sh gives the builds the host's pip settings: a merged pip.conf (config
    files and PIP_* variables) and every local path it names, mounted read-only."""
    wheels, index = tmp_path / "wheels", tmp_path / "mirror" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    conf = tmp_path / "host-pip.conf"
    conf.write_text(f"[global]\nextra-index-url = file://{index}\n[install]\nno-compile = 1\n")
    env = dict(os.environ, PIP_CONFIG_FILE=str(conf), PIP_FIND_LINKS=str(wheels))
    out = subprocess.run([sys.executable, str(REPO / "deploy" / "podman" / "host_build_settings.py"),
                          str(tmp_path / "out")], env=env, capture_output=True, text=True,
                         check=True)
    volumes = out.stdout.split()
    assert all(v.startswith("--volume=") and v.endswith(":ro") for v in volumes), volumes
    assert f"--volume={wheels}:{wheels}:ro" in volumes
    assert f"--volume={index.parent}:{index.parent}:ro" in volumes  # files link ../../files/
    written = tmp_path / "out" / "pip.conf"
    assert f"--volume={written}:/etc/pip.conf:ro" in volumes
    merged = written.read_text()
    assert f"find-links = {wheels}" in merged and "[install]\nno-compile = 1" in merged
