#!/usr/bin/env python3
"""Give image builds this host's pip settings and CA bundle, at build time only.

    python3 deploy/podman/host_build_settings.py OUT_DIR    # prints podman build arguments

Writes ``OUT_DIR/pip.conf``: the host's effective pip configuration (``pip config list``: every
config file and the ``PIP_*`` variables, the variables winning, as pip itself merges them), and
prints one ``--volume=SRC:DST:ro`` per line: that pip.conf at ``/etc/pip.conf``, the host's CA
bundle at ``/etc/ssl/certs/ca-certificates.crt`` (where Debian's pip, Python and apt look), and
every local folder or file the configuration names (find-links folders, ``file://`` indexes,
constraint files) at its own path.  ``podman build`` mounts them into each ``RUN`` step and into
no layer, so nothing of the host's set-up ends up in an image: the images stay the same as
the ones built from the public registries, and an air-gapped site's mirror, wheel folders and
private CA reach the build anyway.  Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

CA_IN_IMAGE = "/etc/ssl/certs/ca-certificates.crt"
# pip options whose values are local paths (or file:// URLs) that the build must see.
PATH_OPTIONS = {"find-links", "index-url", "extra-index-url", "constraint", "requirement",
                "cert", "client-cert"}


def pip_config(pip: list[str]) -> dict[str, dict[str, str]]:
    """The host's pip settings by section, as ``pip config list`` reports them (env last)."""
    sections: dict[str, dict[str, str]] = {}
    out = subprocess.run([*pip, "config", "list"], capture_output=True, text=True)
    if out.returncode != 0:  # no pip for this interpreter: no pip settings to pass on
        sys.stderr.write(f"host_build_settings: `pip config list` failed, no pip settings "
                         f"passed: {out.stderr.strip()[-300:]}\n")
        return {"global": {}}
    env: dict[str, str] = {}
    for line in out.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        value = ast.literal_eval(raw)  # pip prints the value as a Python string literal
        section, _, name = key.rpartition(".")
        if section == ":env:":  # PIP_FOO: pip applies it to every command, over the files
            env[name] = value
        else:
            sections.setdefault(section, {})[name] = value
    sections.setdefault("global", {}).update(env)
    return sections


def local_path(value: str) -> Path | None:
    """The host path behind a pip value (a path or a file:// URL), if it exists here."""
    if "://" in value:
        url = urlparse(value)
        if url.scheme != "file":
            return None
        path = Path(unquote(url.path))
        # A PEP 503 index links its files relative to .../simple/<name>/: mount the parent.
        if path.name == "simple":
            path = path.parent
    else:
        path = Path(value)
    return path if path.is_absolute() and path.exists() else None


def host_ca_bundle(sections: dict[str, dict[str, str]]) -> Path | None:
    for candidate in (sections.get("global", {}).get("cert"), os.environ.get("SSL_CERT_FILE"),
                      os.environ.get("REQUESTS_CA_BUNDLE"), CA_IN_IMAGE):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def build_volumes(out_dir: Path, pip: list[str]) -> list[str]:
    sections = pip_config(pip)
    mounts: dict[str, Path] = {}
    ca = host_ca_bundle(sections)
    if ca is not None:
        mounts[CA_IN_IMAGE] = ca
        sections["global"]["cert"] = CA_IN_IMAGE
    for options in sections.values():
        for name, value in options.items():
            if name not in PATH_OPTIONS or name == "cert":
                continue
            for item in value.split():
                path = local_path(item)
                if path is not None:
                    mounts.setdefault(str(path), path.resolve())
    conf = configparser.ConfigParser(interpolation=None)
    for section, options in sections.items():
        conf[section] = options
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "pip.conf").open("w") as f:
        conf.write(f)
    mounts["/etc/pip.conf"] = (out_dir / "pip.conf").resolve()
    return [f"--volume={src}:{dst}:ro" for dst, src in sorted(mounts.items())]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write(__doc__ or "")
        return 2
    for line in build_volumes(Path(args[0]), [sys.executable, "-m", "pip"]):
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
