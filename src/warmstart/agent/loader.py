"""``warmstart loader``: drop-in model loader for llmaz's ``model-loader`` init container and KServe's
storage initializer.

llmaz (environment; ``pkg/controller_helper/modelsource`` and ``llmaz/model_loader`` in llmaz)::

    MODEL_SOURCE_TYPE=modelhub  MODEL_ID=ORG/NAME  MODEL_HUB_NAME=Huggingface  [MODEL_FILENAME=F]
                                [REVISION=R]  [MODEL_ALLOW_PATTERNS=a,b]  [MODEL_IGNORE_PATTERNS=c,d]
                                [HF_TOKEN | HUGGING_FACE_HUB_TOKEN]
        -> DEST/models--ORG--NAME/<the repository's files>, or DEST/F with MODEL_FILENAME
    MODEL_SOURCE_TYPE=objstore  PROVIDER=OSS|S3  ENDPOINT=HOST  BUCKET=B  MODEL_PATH=P
        -> DEST/models--<last part of P>/..., or DEST/<last part of P> for a .gguf file

KServe (arguments ``[uri, dest]``): ``warmstart loader hf://ORG/NAME[:REV] /mnt/models`` writes the
model's files straight into ``dest``; also ``s3://`` and ``oci://``.

With a node agent (``WARMSTART_AGENT`` or ``<home>/agent.sock``) the agent pulls into the node cache;
the files are then copied from the cache (unix socket: the cache is mounted) or streamed from the
agent (TCP: ``GET /v1/blobs/SHA256``), so a restarted pod fetches nothing from the origin.

>>> llmaz_target({"MODEL_SOURCE_TYPE": "modelhub", "MODEL_ID": "facebook/opt-125m"}, Path("/w"))[1:]
(PosixPath('/w/models--facebook--opt-125m'), (), ())
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .. import api, errors
from ..cache.paths import check_relpath
from ..config import Settings
from . import client

log = logging.getLogger("warmstart.loader")

DEFAULT_DEST = Path("/workspace/models")


def _patterns(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


def llmaz_target(env: Mapping[str, str], dest: Path) -> tuple[str, Path, tuple[str, ...], tuple[str, ...]]:
    """``(ref, directory, include, exclude)`` for llmaz's environment; ``ref`` carries REVISION."""
    kind = env.get("MODEL_SOURCE_TYPE", "")
    if kind == "modelhub":
        model_id = env.get("MODEL_ID", "").strip()
        if not model_id or model_id.count("/") != 1:
            raise errors.ConfigError(f"MODEL_ID={model_id!r}: llmaz's modelhub loader needs MODEL_ID=ORG/NAME")
        hub = env.get("MODEL_HUB_NAME") or "Huggingface"
        if hub.lower() != "huggingface":
            raise errors.ConfigError(f"MODEL_HUB_NAME={hub}: warmstart loads from Huggingface only; use llmaz's "
                                     "own loader image for this model")
        rev = env.get("REVISION") or None
        ref = f"hf://{model_id}" + (f"@{rev}" if rev else "")
        include, exclude = _patterns(env.get("MODEL_ALLOW_PATTERNS")), _patterns(env.get("MODEL_IGNORE_PATTERNS"))
        filename = env.get("MODEL_FILENAME") or None
        if filename:
            check_relpath(filename, "MODEL_FILENAME")  # the one name gate (cache/paths.py)
            return ref, dest, (filename,), ()
        return ref, dest / f"models--{model_id.replace('/', '--')}", include, exclude
    if kind == "objstore":
        bucket, path = env.get("BUCKET", "").strip(), env.get("MODEL_PATH", "").strip().strip("/")
        if not bucket or not path:
            raise errors.ConfigError("llmaz's objstore loader needs BUCKET and MODEL_PATH")
        last = PurePosixPath(path).name
        check_relpath(last, "MODEL_PATH's last component")
        target = dest if ".gguf" in path else dest / f"models--{last}"
        return f"s3://{bucket}/{path}", target, (), ()
    raise errors.ConfigError(f"MODEL_SOURCE_TYPE={kind!r}: llmaz sets 'modelhub' or 'objstore'; or give "
                             "`warmstart loader URI DEST` (KServe's storage initializer)")


def objstore_env(env: Mapping[str, str]) -> dict[str, str]:
    """llmaz's objstore settings in the names warmstart's S3 source reads (OSS speaks S3)."""
    out: dict[str, str] = {}
    endpoint = env.get("ENDPOINT", "").strip()
    if endpoint and not env.get("AWS_ENDPOINT_URL"):
        out["AWS_ENDPOINT_URL"] = endpoint if "://" in endpoint else f"https://{endpoint}"
    for ours, theirs in (("AWS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "OSS_ACCESS_KEY_SECRET")):
        if not env.get(ours) and env.get(theirs):
            out[ours] = env[theirs]
    return out


def kserve_ref(uri: str) -> str:
    """KServe's ``hf://ORG/NAME:REVISION`` in warmstart's grammar (``@REVISION``); other URIs as they are."""
    if uri.startswith("hf://"):
        body = uri[len("hf://"):]
        if "@" not in body and ":" in body.rsplit("/", 1)[-1]:
            body, _, rev = body.rpartition(":")
            return f"hf://{body}@{rev}"
    return uri



def _stream_files(addr: client.AgentAddress, files: list[dict], target: Path) -> None:
    """Copy files the agent pulled from its ``/v1/blobs`` (no cache mount), checking each sha256."""
    for f in files:
        out = target / check_relpath(f["path"])  # names from the agent's answer: the one name gate
        if not re.fullmatch(r"[0-9a-f]{64}", str(f["sha256"])):
            raise errors.IntegrityError(f"the agent answered a malformed sha256 for {f['path']!r}; check the agent")
        if out.is_file() and out.stat().st_size == f["size"] and _sha256(out) == f["sha256"]:
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.warmstart-tmp")
        h = hashlib.sha256()
        resp = client.request(addr, "GET", f"/v1/blobs/{f['sha256']}")
        try:
            with open(tmp, "wb") as fh:
                while chunk := resp.read(1 << 20):
                    h.update(chunk)
                    fh.write(chunk)
        finally:
            resp.close()
        if h.hexdigest() != f["sha256"]:
            tmp.unlink(missing_ok=True)
            raise errors.IntegrityError(f"{f['path']} from the agent at {addr} does not match its sha256; "
                                        "run the loader again")
        os.replace(tmp, out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load(ref: str, target: Path, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
         env: Mapping[str, str] | None = None) -> Path:
    """Put ``ref``'s files into ``target`` (through the node agent when there is one); returns ``target``."""
    env = os.environ if env is None else env
    t0 = time.monotonic()
    settings = Settings.from_env(env)
    addr = client.find_agent(settings.home, env)
    if addr is not None and addr.tcp is not None:  # no cache mounted here: the agent sends the bytes
        done = client.pull(addr, ref, include=include, exclude=exclude)
        target.mkdir(parents=True, exist_ok=True)
        _stream_files(addr, done["files"], target)
    else:  # the agent (if any) pulls; the files are copied (or hardlinked) from the cache
        api.pull(ref, include=include or None, exclude=exclude or None, to=target, link="hardlink",
                 quiet=True, settings=settings)
    log.info("loaded %s into %s in %.1fs%s", ref, target, time.monotonic() - t0,
             f" through the agent at {addr}" if addr else "")
    return target


def run_llmaz(dest: Path, env: Mapping[str, str] | None = None) -> Path:
    env = dict(os.environ if env is None else env)
    ref, target, include, exclude = llmaz_target(env, dest)
    if env.get("MODEL_SOURCE_TYPE") == "objstore":
        extra = objstore_env(env)
        env.update(extra)
        os.environ.update(extra)  # the S3 source reads AWS_* from the environment
    return load(ref, target, include, exclude, env)


def run_kserve(uri: str, dest: Path) -> Path:
    return load(kserve_ref(uri), dest)


__all__ = ["DEFAULT_DEST", "llmaz_target", "kserve_ref", "run_llmaz", "run_kserve", "load"]
