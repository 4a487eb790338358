"""`sweep serve`: an exported model behind Ray Serve, with a web page.

One deployment (FastAPI ingress) per exported model folder:
- ``POST /predict``: a multipart upload in the field ``file``, or a JSON batch ``{"images": [base64, ...]}``;
  images are batched across requests with ``@serve.batch``;
- ``GET /``: a self-contained page to drop or choose an image and see the prediction;
- ``GET /healthz``, ``GET /model`` (the export's manifest, without paths of the server's disk).

With a token (``--token`` or $SWEEP_SERVE_TOKEN; required off loopback) ``/predict`` and ``/model`` answer only
requests with ``Authorization: Bearer <token>``; the page and ``/healthz`` stay open, and the page takes the token from
its URL's fragment (``#token=...``, which a browser never sends). The application is named after the model version
(``<experiment>-<model>-<version>``): on a shared cluster (``--address``) it answers under ``/m/<name>/``, so several
models can be served at once, and stopping one removes only its own application.

Bounded: each image's format and size are read from its header before anything is decoded; PNG, JPEG, BMP and TIFF
only (415 otherwise), at most MAX_IMAGE_PIXELS an image and MAX_REQUEST_PIXELS a request (413); decoding runs off the
event loop, DECODE_SLOTS requests at a time; a replica queues at most MAX_QUEUED_REQUESTS (then 503 with Retry-After)
and a request gets REQUEST_TIMEOUT_S (then 408).

A replica loads the folder with ``search.outputs.export.load_export`` and predicts with
``search.outputs.export.predict_arrays``, the functions `sweep predict` uses, so a served prediction is `sweep
predict`'s prediction. Whatever an export holds (one model, or an ensemble written as one model by `sweep export`)
is served the way `sweep predict` reads it.
"""

# No `from __future__ import annotations`: FastAPI reads the route methods' annotations (Request) at run time.
import asyncio
import base64
import binascii
import hashlib
import hmac
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.config import BackpressureConfig

from models.tasks import task_info
from search.errors import SweepError
from search.outputs.card import CARD_JSON, DISCLAIMER, REEXPORT, render_card, trained_on
from search.outputs.export import MODEL_FILE, STUDY_FILE, Predictions, check_export, recorded_study
from search.outputs.export import overlay as outlined
from search.study.spec import read_recorded

DEFAULT_MAX_MB = 20.0
MAX_BATCH = 16  # images per model call, gathered across concurrent requests by @serve.batch
MAX_IMAGES_PER_REQUEST = 64  # a JSON batch holds at most this many
# A small file can hold a huge image (a one-colour 10000×10000 PNG is 0.1-0.3 MB and 300 MB decoded): pixels are
# counted from the headers, before decoding. 40 megapixels is a 8000×5000 photograph, 120 MB decoded.
MAX_IMAGE_PIXELS = 40_000_000
MAX_REQUEST_PIXELS = 120_000_000  # all the images of one request together
ACCEPTED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")  # what the page says it takes, by Pillow's name for each
_ACCEPTED = f"{', '.join(ACCEPTED_FORMATS[:-1])} or {ACCEPTED_FORMATS[-1]}"
DECODE_SLOTS = 2  # requests decoding and predicting at once in a replica: at most 2 × 360 MB of decoded pixels
MAX_ONGOING_REQUESTS = 16  # sent to a replica at once (they wait for a slot there)
MAX_QUEUED_REQUESTS = 64  # waiting at the proxy beyond those; more are answered 503 with Retry-After
RETRY_AFTER_S = 5
REQUEST_TIMEOUT_S = 120  # then 408
TOKEN_ENV = "SWEEP_SERVE_TOKEN"
FRAMEWORKS = ("keras", "tensorflow", "jax", "torch")  # what --runtime onnx never imports in a replica
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
MIN_TOKEN_CHARS = 16
# RFC 6750's b64token: what a browser and curl send in `Authorization: Bearer ...` without quoting
_TOKEN_SYNTAX = re.compile(r"[A-Za-z0-9._~+/-]+=*")
PAGE_TEMPLATE = Path(__file__).with_name("serve_page.html")
CARD_ROUTE = "model-card"  # the model card, as HTML, relative to the page


class BadRequest(Exception):
    """An input the server refuses: answered with ``status`` and ``{"error": message}``; the server goes on."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


# ---- what the page and the answers say (pure) --------------------------------------------------------------------


def model_version(model_dir: str | Path) -> str:
    """The served weights' identity: the first 12 hex digits of model.keras's SHA-256."""
    digest = hashlib.sha256()
    with open(Path(model_dir) / MODEL_FILE, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def app_name(manifest: dict, version: str) -> str:
    """The Serve application's name and, on a shared cluster, its route: ``<experiment>-<model>-<version>``, lower
    case, letters, digits and dashes only (pure)."""
    parts = (Path(manifest.get("experiment", "")).name, manifest["model"], version)
    return "-".join(p for p in (re.sub(r"[^a-z0-9]+", "-", part.lower()).strip("-") for part in parts) if p)


def route_prefix(name: str, shared: bool) -> str:
    """``/`` on a Ray of this command's own; ``/m/<name>`` on a shared cluster, where other models answer too."""
    return f"/m/{name}" if shared else "/"


def token_problem(host: str, token: str | None) -> str | None:
    """Why `sweep serve` must not start with this token on this host, or None (pure): off loopback a token is
    required, and a token must be one a browser and curl can send as it is."""
    make = f"make one with: {MAKE_TOKEN}"
    if token is None:
        if is_loopback(host):
            return None
        return (
            f"--host {host} opens the server to the network: give it a token in ${TOKEN_ENV} (or --token, which "
            f"other users of this machine can see in `ps`); {make}"
        )
    if len(token) < MIN_TOKEN_CHARS or not _TOKEN_SYNTAX.fullmatch(token):
        return (
            f"the token must be at least {MIN_TOKEN_CHARS} characters of letters, digits and -._~+/ "
            f"(optionally ending in =); {make}"
        )
    return None


def authorization_problem(header: str | None, token: str | None) -> str | None:
    """Why a request is refused (401) for want of the server's token, or None (pure; compared in constant time)."""
    if token is None:
        return None
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "this server needs its token: send the header 'Authorization: Bearer <token>'"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "the token sent in 'Authorization: Bearer ...' is not this server's"
    return None


def page_context(
    manifest: dict, study: dict, version: str, max_bytes: int, token_required: bool, card: bool = False
) -> dict[str, Any]:
    """Everything the page shows, from the export's manifest and study; whether it must ask for a token; whether
    it links to a model card (exports made before cards have none)."""
    metrics = [(k, v) for k, v in manifest.get("test", {}).items() if isinstance(v, int | float)]
    return {
        "model": manifest["model"],
        "task": manifest["task"],
        "masks": task_info(manifest["task"]).masks,  # what the page shows of an answer
        "version": version,
        "trial": manifest.get("trial", ""),
        "classes": manifest["classes"],
        "metrics": metrics,
        "trained_on": trained_on(manifest, study),
        "disclaimer": DISCLAIMER,
        "max_mb": f"{max_bytes / 1e6:g}",
        "token_required": token_required,
        "card_url": CARD_ROUTE if card else None,
    }


def render_page(context: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(PAGE_TEMPLATE.read_text()).render(**context)


def _png_base64(image: np.ndarray) -> str:
    import cv2

    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    return base64.b64encode(cv2.imencode(".png", image)[1].tobytes()).decode()


def answers(pred: Predictions, originals: list[np.ndarray], manifest: dict, overlays: list[bool]) -> list[dict]:
    """One JSON-ready answer per image: class and per-class probabilities, or the mask (PNG, 0/255, at the image's
    own size, as `sweep predict --out` writes it), its foreground fraction and, where ``overlays`` asks, the image
    with the mask tinted and outlined (`sweep predict`'s overlay)."""
    if not task_info(manifest["task"]).masks:
        return [
            {"class": label, "probabilities": dict(zip(manifest["classes"], map(float, p), strict=True))}
            for label, p in zip(pred.labels, pred.probabilities, strict=True)
        ]
    out = []
    for mask, fraction, original, with_overlay in zip(pred.masks, pred.foreground, originals, overlays, strict=True):
        answer = {"foreground": float(fraction), "width": mask.shape[1], "height": mask.shape[0]}
        answer["mask_png"] = _png_base64(mask * 255)
        if with_overlay:
            answer["overlay_png"] = _png_base64(outlined(original, mask))
        out.append(answer)
    return out


def body_limit(max_bytes: int) -> int:
    """The largest request body read: room for one image at the limit, base64-encoded, plus the envelope."""
    return max_bytes * 4 // 3 + (1 << 20)


def images_from_json(body: bytes) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image of a JSON batch ``{"images": [base64 or data: URL, ...]}``."""
    usage = 'send {"images": ["<base64 of a PNG or JPEG>", ...]}'
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise BadRequest(422, f"the body is not valid JSON ({exc}); {usage}") from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(i, str) for i in images):
        raise BadRequest(422, f"the JSON has no non-empty list of strings under 'images'; {usage}")
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise BadRequest(413, f"{len(images)} images in one request; at most {MAX_IMAGES_PER_REQUEST}")
    out = []
    for i, text in enumerate(images):
        if text.startswith("data:"):
            text = text.partition(",")[2]
        try:
            out.append((f"images[{i}]", base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError):
            raise BadRequest(422, f"images[{i}] is not valid base64; {usage}") from None
    return out


def image_header(data: bytes, name: str) -> tuple[str, int, int]:
    """(format, width, height) read from an image's header by Pillow, which decodes no pixels; BadRequest for a
    format not taken (415), more than MAX_IMAGE_PIXELS (413) or bytes that are no image (400). Empty data passes, for
    the decoder to name."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "", 0, 0
    too_many = f"{name} is over the limit of {MAX_IMAGE_PIXELS / 1e6:g} megapixels an image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # counted below, against our limit
            with Image.open(io.BytesIO(data)) as image:
                kind, (width, height) = image.format, image.size
    except Image.DecompressionBombError:  # Pillow's own refusal (over 179 megapixels)
        raise BadRequest(413, too_many) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadRequest(400, f"{name} is not a decodable image: send a {_ACCEPTED} file") from None
    if kind not in ACCEPTED_FORMATS:
        raise BadRequest(415, f"{name} is a {kind} image; send it as {_ACCEPTED}")
    if width * height > MAX_IMAGE_PIXELS:
        raise BadRequest(413, f"{too_many} ({width}×{height}); send it smaller")
    return kind, width, height


def check_pixels(images: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """Each image's (width, height) from its header, within the limits of one image and of one request (pure)."""
    sizes = [image_header(data, name)[1:] for name, data in images]
    total = sum(w * h for w, h in sizes)
    if total > MAX_REQUEST_PIXELS:
        raise BadRequest(
            413,
            f"the request's {len(images)} images hold {total / 1e6:.0f} megapixels; at most "
            f"{MAX_REQUEST_PIXELS / 1e6:g} a request: send them in several requests",
        )
    return sizes


def decode_checked(images: list[tuple[str, bytes]], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    """The images as uint8 RGB, each as large as its header said (one whose pixels disagree is refused)."""
    from data_pipeline.io import decode_rgb

    out = []
    for (name, data), (width, height) in zip(images, sizes, strict=True):
        rgb = decode_rgb(data, name)
        if rgb.shape[:2] not in ((height, width), (width, height)):
            raise BadRequest(
                400, f"{name}: its header says {width}×{height} but it holds {rgb.shape[1]}×{rgb.shape[0]} pixels"
            )
        out.append(rgb)
    return out


def is_loopback(host: str) -> bool:
    """localhost, or an address in 127.0.0.0/8 or ::1 (a name that merely starts with "127." is not one)."""
    import ipaddress

    name = host.strip("[]")
    try:
        return name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def origin_problem(host_header: str | None, origin: str | None, loopback: bool) -> str | None:
    """Why a request must be refused (403) as not coming from this server's own page, or None (pure).
    - Any web page open in a browser on the same machine can send a multipart POST here without a CORS preflight:
      a request with an ``Origin`` must come from this server's own origin (the Host it was sent to).
    - A server on loopback answers only requests addressed to a loopback name, so a page that rebinds its own
      domain name to 127.0.0.1 (DNS rebinding) is not answered either."""
    from urllib.parse import urlsplit

    host_header = (host_header or "").lower()
    if loopback:
        name = urlsplit(f"//{host_header}").hostname or ""
        if not is_loopback(name):
            return f"this server answers requests to 127.0.0.1 or localhost only, not to Host {host_header or '(none)'}"
    if origin is None:
        return None  # not sent by a browser's cross-site request: curl, scripts, the page's own GET
    if urlsplit(origin.lower()).netloc != host_header:
        return f"a request from the page at {origin} is refused: use this server's own page, {host_header}/"
    return None


def public_manifest(manifest: dict) -> dict:
    """The manifest as `/model` shows it: the experiment by its name, not its path on the server's disk (pure)."""
    return {**manifest, "experiment": Path(manifest["experiment"]).name} if "experiment" in manifest else manifest


async def _read_body(request: Request, max_bytes: int) -> bytes:
    limit = body_limit(max_bytes)
    too_large = f"too large: an image may be at most {max_bytes / 1e6:g} MB"
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"the request is {int(declared) / 1e6:.1f} MB, {too_large}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"the request is over {limit / 1e6:.1f} MB, {too_large}")
    return bytes(body)


async def images_from_request(request: Request, max_bytes: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of every image a request carries, each within ``max_bytes``; BadRequest otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("multipart/form-data", "application/json"):
        raise BadRequest(
            415,
            f"Content-Type {kind or '(none)'} is not accepted: upload the image as multipart/form-data in the field "
            "'file' (curl -F file=@smear.png URL/predict) or send a JSON batch of base64 images",
        )
    body = await _read_body(request, max_bytes)
    if kind == "application/json":
        images = images_from_json(body)
    else:
        images = await _images_from_multipart(request, body)
    for name, data in images:
        if len(data) > max_bytes:
            raise BadRequest(413, f"{name} is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:g} MB")
    return images


async def _images_from_multipart(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    from starlette.datastructures import UploadFile

    async def replay() -> dict:  # the body was read (within the limit) already: parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=MAX_IMAGES_PER_REQUEST)
    except Exception as exc:  # starlette raises its own errors for a malformed multipart body
        raise BadRequest(422, f"the multipart body cannot be parsed ({exc})") from None
    uploads = form.getlist("file")
    if not uploads:
        got = ", ".join(sorted(set(form.keys()))) or "no fields"
        raise BadRequest(
            422, f"no field 'file' in the upload (got: {got}); send the image as 'file': curl -F file=@smear.png"
        )
    out = []
    for item in uploads:
        if not isinstance(item, UploadFile):
            raise BadRequest(422, "the field 'file' holds text, not a file: curl -F file=@smear.png (note the @)")
        out.append((f"upload {item.filename or 'file'!r}", await item.read()))
    return out


# ---- the Ray Serve deployment --------------------------------------------------------------------------------------

api = FastAPI(title="leukemia-sweep model server", docs_url=None, redoc_url=None)
api.state.loopback = True  # each replica sets it from `sweep serve --host`


@api.exception_handler(BadRequest)
async def _refused(request: Request, exc: BadRequest) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=exc.headers)


def _authorize(request: Request, token: str | None) -> None:
    """Refuse (401) a request without the server's token, if it has one."""
    problem = authorization_problem(request.headers.get("authorization"), token)
    if problem:
        raise BadRequest(401, problem, headers={"WWW-Authenticate": "Bearer"})


@api.middleware("http")
async def _own_page_only(request: Request, call_next):
    # request.app: the replica's own copy of `api` (Ray pickles the ingress class with it), which __init__ sets
    problem = origin_problem(request.headers.get("host"), request.headers.get("origin"), request.app.state.loopback)
    if problem:
        return JSONResponse({"error": problem}, status_code=403)
    return await call_next(request)


@serve.deployment(
    name="model",
    max_ongoing_requests=MAX_ONGOING_REQUESTS,
    max_queued_requests=MAX_QUEUED_REQUESTS,
    backpressure_config=BackpressureConfig(retry_after_s=RETRY_AFTER_S),
    health_check_period_s=10,
)
@serve.ingress(api)
class ModelServer:
    """One replica: the exported model in memory, its page rendered once."""

    def __init__(self, model_dir: str, max_bytes: int, loopback: bool, token: str | None, runtime: str):
        from search.outputs.export import load_export

        api.state.loopback = loopback
        self.token = token

        self.model, self.manifest = load_export(model_dir, runtime)
        self.runtime = runtime
        self.max_bytes = max_bytes
        self.version = model_version(model_dir)
        _, study = read_recorded(Path(model_dir) / STUDY_FILE, REEXPORT)
        card = Path(model_dir) / CARD_JSON
        # the card as HTML, rendered once; shown like the page itself (the same facts, no token needed)
        self.card = render_card(json.loads(card.read_text()), "html") if card.is_file() else None
        context = page_context(self.manifest, study, self.version, max_bytes, token is not None, self.card is not None)
        self.page = render_page(context)
        self.slots = asyncio.Semaphore(DECODE_SLOTS)
        # What this replica has answered: prediction requests, the images in them, and the model calls they took
        # (fewer calls than images: @serve.batch gathered images of one request or of concurrent ones)
        self.served = {"requests": 0, "images": 0, "model_calls": 0}

    def _identity(self) -> dict:
        return {"name": self.manifest["model"], "version": self.version, "task": self.manifest["task"]}

    @api.get("/", response_class=HTMLResponse)
    def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get(f"/{CARD_ROUTE}", response_class=HTMLResponse)
    def model_card(self) -> HTMLResponse:
        if self.card is None:
            raise BadRequest(404, "this export has no model card: export it again with a newer `sweep export`")
        return HTMLResponse(self.card)

    @api.get("/healthz")
    def healthz(self, request: Request) -> dict:
        """Up, which model, and what runs it: the runtime and the deep-learning frameworks this replica imported;
        which replica answers (Ray Serve's tag). What it has served only with the server's token, if it has one:
        how much a model is used is not for anyone who can reach the port."""
        imported = sorted(f for f in FRAMEWORKS if f in sys.modules)
        health = {"status": "ok", "model": self._identity(), "runtime": self.runtime, "frameworks": imported}
        health["replica"] = serve.get_replica_context().replica_tag
        if authorization_problem(request.headers.get("authorization"), self.token) is None:
            health["served"] = dict(self.served)
        return health

    @api.get("/model")
    def model(self, request: Request) -> dict:
        _authorize(request, self.token)
        return public_manifest(self.manifest)

    @api.post("/predict")
    async def predict(self, request: Request, overlay: bool = False) -> JSONResponse:
        from data_pipeline.errors import DataError

        _authorize(request, self.token)
        try:
            images = await images_from_request(request, self.max_bytes)
            sizes = check_pixels(images)  # from the headers: nothing decoded yet
            async with self.slots:  # decoded pixels of at most DECODE_SLOTS requests in memory
                originals = await asyncio.to_thread(decode_checked, images, sizes)  # the event loop goes on
                results = await asyncio.gather(*(self._predict_batch((o, overlay)) for o in originals))
        except DataError as exc:  # not an image, truncated, empty, refused by OpenCV
            return JSONResponse({"error": str(exc)}, status_code=400)
        self.served["requests"] += 1
        return JSONResponse({"model": self._identity(), "predictions": list(results)})

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.01)
    async def _predict_batch(self, items: list[tuple[np.ndarray, bool]]) -> list[dict]:
        from search.outputs.export import predict_arrays

        originals = [o for o, _ in items]
        self.served["model_calls"] += 1
        self.served["images"] += len(items)
        pred = await asyncio.to_thread(predict_arrays, self.model, self.manifest, originals)
        return answers(pred, originals, self.manifest, [with_overlay for _, with_overlay in items])


# ---- `sweep serve` -------------------------------------------------------------------------------------------------


def runtime_problem(runtime: str, manifest: dict, gpus_per_replica: float) -> str | None:
    """Why this export cannot be served with ``runtime``, or None (pure)."""
    from search.outputs.deploy import FORMATS, ONNX_FILE

    if runtime not in FORMATS:
        return f"--runtime {runtime}: choose one of {', '.join(FORMATS)}"
    if runtime == "onnx" and not manifest.get("onnx"):
        return (
            f"--runtime onnx needs {ONNX_FILE}, which this export does not have: export it again with "
            "`sweep export EXPERIMENT --to DIR --format onnx`"
        )
    if runtime == "onnx" and gpus_per_replica:
        return "--runtime onnx runs on the CPU (ONNX Runtime's CPU provider): leave --gpus-per-replica at 0"
    return None


def _check_options(port: int, replicas: int, gpus_per_replica: float, max_mb: float) -> None:
    problems = []
    if not 0 < port < 65536:
        problems.append(f"--port {port}: must be 1-65535")
    if replicas < 1:
        problems.append(f"--replicas {replicas}: must be at least 1")
    if gpus_per_replica < 0:
        problems.append(f"--gpus-per-replica {gpus_per_replica}: must be 0 or more")
    if max_mb <= 0:
        problems.append(f"--max-mb {max_mb}: must be more than 0")
    if problems:
        raise SweepError("; ".join(problems))


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise SweepError(
                f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host"
            ) from None


def _check_room(replicas: int, gpus_per_replica: float) -> None:
    """On a local Ray, replicas that cannot all be placed would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources()
    if replicas > have.get("CPU", 0):
        raise SweepError(f"--replicas {replicas} needs {replicas} CPUs; this machine has {have.get('CPU', 0):g}")
    if replicas * gpus_per_replica > have.get("GPU", 0):
        raise SweepError(
            f"--replicas {replicas} × --gpus-per-replica {gpus_per_replica:g} needs "
            f"{replicas * gpus_per_replica:g} GPUs; this machine has {have.get('GPU', 0):g}"
        )


def serve_model(
    model_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
    gpus_per_replica: float = 0.0,
    address: str | None = None,
    max_mb: float = DEFAULT_MAX_MB,
    token: str | None = None,
    runtime: str = "keras",
) -> None:
    """Serve an exported model until Ctrl-C or SIGTERM, then take down what this command started: on a Ray of its
    own everything, on a shared cluster (``address``) its own application only. The folder, the options and the
    token (required off loopback) are checked before anything starts or binds (SweepError). ``runtime``: "keras"
    (``model.keras``) or "onnx" (``model.onnx`` with ONNX Runtime, on the CPU; no deep-learning framework in the
    replica)."""
    import ray

    from search.cluster.connect import init_ray
    from search.sweep.trial import limit_gpu_memory

    model_dir = Path(model_dir).expanduser().resolve()
    manifest = check_export(model_dir)
    _check_options(port, replicas, gpus_per_replica, max_mb)
    if problem := runtime_problem(runtime, manifest, gpus_per_replica):
        raise SweepError(f"{model_dir}: {problem}")
    if problem := token_problem(host, token):
        raise SweepError(problem)
    if address is None:
        _check_port_free(host, port)
    backend = os.environ.get("KERAS_BACKEND") or recorded_study(model_dir).train.backend
    init_ray(address, backend)
    signal.signal(signal.SIGTERM, _interrupt)  # after Ray's own handler: `kill` stops the server as Ctrl-C does
    name, started = app_name(manifest, model_version(model_dir)), False
    try:
        if address is None:
            _check_room(replicas, gpus_per_replica)
        serve.start(
            http_options={"host": host, "port": port, "request_timeout_s": REQUEST_TIMEOUT_S}, proxy_location="HeadOnly"
        )
        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # from here on, this command says what happens
        host, port = _proxy_address()  # on a cluster, whatever the first `serve.start` there chose
        if problem := token_problem(host, token):
            raise SweepError(f"this cluster's Ray Serve listens on {host}: {problem}")
        if name in serve.status().applications:
            raise SweepError(
                f"{name} (this model version) is served on this cluster already, at {route_prefix(name, True)}/: "
                "stop that `sweep serve` first"
            )
        env = {**limit_gpu_memory(gpus_per_replica), "OPENCV_IO_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS)}
        app = ModelServer.options(
            num_replicas=replicas,
            ray_actor_options={"num_cpus": 1, "num_gpus": gpus_per_replica, "runtime_env": {"env_vars": env}},
        ).bind(str(model_dir), int(max_mb * 1e6), is_loopback(host), token, runtime)
        prefix = route_prefix(name, shared=address is not None)
        started = True
        serve.run(app, name=name, route_prefix=prefix)
        print(
            f"serving {manifest['model']} ({manifest['task']}, {runtime} runtime) from {model_dir} as {name} with "
            f"{replicas} replica(s); Ctrl-C to stop\nthe page: {page_url(host, port, prefix, token)}",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            if address is None:
                serve.shutdown()
            elif started:  # a shared cluster: take down this app only
                serve.delete(name)
        finally:
            ray.shutdown()


def page_url(host: str, port: int, prefix: str, token: str | None) -> str:
    """The page's address; with the token in its fragment, which a browser keeps to itself (pure)."""
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}{prefix.rstrip('/')}/"
    return f"{url}#token={token}" if token else url


def _proxy_address() -> tuple[str, int]:
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config
    return config.host, config.port


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
