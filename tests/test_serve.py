"""`sweep serve` for real: the command in a fresh process, a Ray Serve app on 127.0.0.1 over a model `sweep export`
wrote (one classifier, one segmenter), its answers checked against `sweep predict`'s, a bounded load, every bad input,
and headless Chromium (Debian's chromium + chromium-driver, driven by selenium) using the page as a person would.
Every test leaves no Serve, Ray or Chromium process behind."""

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import requests
from conftest import free_port, ray_head_command, run_sweep, stop_node

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TOKEN_ENV = "SWEEP_SERVE_TOKEN"  # the name the README gives users
LOAD_REQUESTS, LOAD_CONCURRENCY = 48, 8  # six rounds of 8 in flight: batching and concurrency, not a benchmark


# ---- processes: what a test started must be gone when it ends ----------------------------------------------------


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = {int(c) for c in children.read_text().split()}
            except OSError:
                continue
            todo += kids - out
            out |= kids
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _assert_all_gone(pids: set[int], what: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while _alive(pids) and time.time() < deadline:
        time.sleep(0.5)
    left = _alive(pids)
    for pid in left:  # do not leave them to the rest of the suite, but fail: stopping should have ended them
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{what} left processes behind: {sorted(left)}"


# ---- one running server per task (the tiny segmentation sweep is conftest's) -----------------------------------------


def _cli(*args) -> tuple[int, str, str]:
    """The command line in this process, its output captured."""
    import contextlib
    import io

    from search.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _base(page: str) -> str:
    """The address the routes hang under, from the page's address as `sweep serve` prints it."""
    return page.split("#")[0].rstrip("/")


def _start_server(model_dir: Path, log: Path, *extra, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`sweep serve` in a fresh process, until its health check answers at the page's address it printed; the process
    and that address (with the token in its fragment when it has one)."""
    user_env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}  # only what `env` gives
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", "serve", str(model_dir), "--port", str(free_port()), *map(str, extra)],
        env={**user_env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        printed = [line[10:] for line in log.read_text().splitlines() if line.startswith("the page: ")]
        try:
            if printed and requests.get(_base(printed[0]) + "/healthz", timeout=5).status_code == 200:
                return proc, printed[0]
        except requests.RequestException:  # not listening yet, or the proxy waits for the replica
            pass
        time.sleep(1)
    family = _descendants(proc.pid)
    proc.kill()
    for pid in _alive(family):
        os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"sweep serve did not come up (exit {proc.poll()}):\n{log.read_text()[-4000:]}")


def _stop_server(proc: subprocess.Popen, log: Path) -> None:
    family = _descendants(proc.pid)
    proc.send_signal(signal.SIGTERM)  # as `kill` or Ctrl-C would
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    assert code == 0, f"sweep serve exited with {code}:\n{log.read_text()[-4000:]}"
    assert "stopping" in log.read_text()
    _assert_all_gone(family, "sweep serve")


@pytest.fixture(scope="module", params=["classification", "segmentation"])
def server(request, tmp_path_factory):
    """`sweep serve` in a fresh process over a fresh `sweep export`, for one task; stopped with SIGTERM at the end
    and every process it started checked gone. The classifier's server has a token, given in $SWEEP_SERVE_TOKEN as a
    user would (``http`` sends it with every request); the segmenter's has none, as loopback allows."""
    experiment = request.getfixturevalue(f"{request.param}_experiment")
    tmp = tmp_path_factory.mktemp(f"serve-{request.param}")
    code, _, err = _cli("export", experiment, "--to", tmp / "model")
    assert code == 0, err
    log = tmp / "serve.log"
    token = secrets.token_urlsafe(32) if request.param == "classification" else None
    proc, page = _start_server(tmp / "model", log, env={TOKEN_ENV: token} if token else None)
    http = requests.Session()
    if token:
        http.headers["Authorization"] = f"Bearer {token}"
    yield {
        "task": request.param,
        "url": _base(page),
        "page": page,
        "token": token,
        "http": http,
        "model_dir": tmp / "model",
        "experiment": experiment,
        "log": log,
        "pid": proc.pid,
    }
    _stop_server(proc, log)


def _post_file(server: dict, path: Path, field: str = "file", **params) -> requests.Response:
    with path.open("rb") as f:
        return server["http"].post(
            f"{server['url']}/predict", files={field: (path.name, f)}, params=params, timeout=120
        )


def _encoded(ext: str, image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok, ext
    return data.tobytes()


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk (8-bit RGB, ``width`` × ``height``) and its end, with no image data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _png(b64: str) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_UNCHANGED)


# ---- the answers are `sweep predict`'s -----------------------------------------------------------------------------


def test_served_predictions_equal_sweep_predict(server, images, tmp_path):
    url, model_dir, http = server["url"], server["model_dir"], server["http"]
    manifest = json.loads((model_dir / "export.json").read_text())
    shown = http.get(f"{url}/model", timeout=30).json()  # the export's manifest, as written
    assert shown == {**manifest, "experiment": Path(manifest["experiment"]).name}  # no path of the server's disk
    assert str(model_dir.parent) not in json.dumps(shown)
    health = http.get(f"{url}/healthz", timeout=30).json()
    from search.serving.serve import model_version

    assert health == {
        "status": "ok",
        "model": {"name": manifest["model"], "version": model_version(model_dir), "task": server["task"]},
        "runtime": "keras",
        "frameworks": health["frameworks"],
        "replica": health["replica"],
        "served": health["served"],
    }
    assert "keras" in health["frameworks"]
    assert ("served" in requests.get(f"{url}/healthz", timeout=30).json()) is (server["token"] is None)  # no token

    def served() -> dict:  # what the one replica has answered so far
        return http.get(f"{url}/healthz", timeout=30).json()["served"]

    paths = sorted(images.iterdir())
    start = served()
    one_by_one = [_post_file(server, p, overlay="true").json() for p in paths]  # multipart, one image per request
    middle = served()
    batch = http.post(  # one JSON batch of base64 images
        f"{url}/predict", json={"images": [base64.b64encode(p.read_bytes()).decode() for p in paths]}, timeout=120
    ).json()
    end = served()
    assert all(a["model"] == health["model"] for a in [*one_by_one, batch])
    n = len(paths)
    assert {k: middle[k] - start[k] for k in start} == {"requests": n, "images": n, "model_calls": n}
    assert {k: end[k] - middle[k] for k in start} == {"requests": 1, "images": n, "model_calls": 1}  # @serve.batch
    answered = [a["predictions"][0] for a in one_by_one]

    from search.outputs.export import predict_images  # what `sweep predict IMAGES --out DIR` runs

    predicted = predict_images(model_dir, [images], tmp_path / "pred")
    _assert_the_model_file_gives(answered, model_dir, manifest, paths)  # and by none of the service's own code
    if server["task"] == "classification":
        table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
        assert [Path(p).name for p in table["image"]] == [p.name for p in paths]
        expected = table[[f"p_{c}" for c in manifest["classes"]]].to_numpy()
        for answers in (answered, batch["predictions"]):
            got = np.array([[a["probabilities"][c] for c in manifest["classes"]] for a in answers])
            np.testing.assert_allclose(got, expected, atol=1e-5)
            assert [a["class"] for a in answers] == list(table["label"])
    else:
        assert [Path(p).name for p in predicted["image"]] == [p.name for p in paths]
        for path, one, from_batch, fraction in zip(paths, answered, batch["predictions"], predicted["foreground"]):
            mask = cv2.imread(str(tmp_path / "pred" / f"{path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
            assert (one["height"], one["width"]) == mask.shape == cv2.imread(str(path)).shape[:2]
            np.testing.assert_array_equal(_png(one["mask_png"]), mask)
            np.testing.assert_array_equal(_png(from_batch["mask_png"]), mask)
            assert "overlay_png" not in from_batch
            overlay = cv2.imread(str(tmp_path / "pred" / f"{path.stem}_overlay.png"))
            np.testing.assert_array_equal(_png(one["overlay_png"]), overlay)
            assert one["foreground"] == from_batch["foreground"] == pytest.approx(fraction, abs=1e-7)
        assert any(a["foreground"] > 0 for a in answered), "the tiny segmenter found no foreground: nothing compared"


def _assert_the_model_file_gives(served: list[dict], model_dir: Path, manifest: dict, paths: list[Path]) -> None:
    """An oracle that shares no code with `sweep serve` or `sweep predict`: the exported model.keras loaded with
    Keras alone, each file decoded with OpenCV and resized as the README says (area when shrinking, bilinear when
    growing), the model run on the pixels, a classifier's probabilities tempered as softmax(log p / T), a
    segmenter's output thresholded at the export's threshold and the mask resized back (nearest)."""
    import keras

    import models  # noqa: F401  (registers the models' custom layers with Keras)

    size, threshold = manifest["preprocessing"]["input_size"], manifest["preprocessing"].get("prediction_threshold")
    assert not manifest["preprocessing"].get("steps"), "this oracle resizes only"
    model = keras.saving.load_model(model_dir / "model.keras", compile=False)
    for path, answer in zip(paths, served, strict=True):
        original = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        shrink = min(original.shape[:2]) > size
        pixels = cv2.resize(original, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = keras.ops.convert_to_numpy(model(pixels[None].astype("float32"), training=False))[0].astype("float64")
        if manifest["task"] == "classification":
            t = (manifest.get("calibration") or {}).get("temperature") or 1.0
            tempered = np.exp(np.log(np.clip(out, 1e-12, 1)) / t)
            expected = tempered / tempered.sum()
            got = [answer["probabilities"][c] for c in manifest["classes"]]
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=path.name)
            assert answer["class"] == manifest["classes"][int(expected.argmax())]
        else:
            mask = (out[..., 0] >= threshold).astype(np.uint8)
            assert answer["foreground"] == pytest.approx(mask.mean(), abs=1e-7)
            full = cv2.resize(mask, original.shape[1::-1], interpolation=cv2.INTER_NEAREST)
            np.testing.assert_array_equal(_png(answer["mask_png"]) > 0, full > 0, err_msg=path.name)


def _load(http: requests.Session, url: str, data: bytes, task: str) -> str:
    """The load test: LOAD_REQUESTS requests of one image, LOAD_CONCURRENCY at a time, every one answered with the
    answer the image gets alone; what it measured, in words."""
    expected = http.post(f"{url}/predict", files={"file": ("a.png", data)}, timeout=120).json()["predictions"]

    def one(_):
        start = time.perf_counter()
        r = http.post(f"{url}/predict", files={"file": ("a.png", data)}, timeout=120)
        return time.perf_counter() - start, r.status_code, r.json()["predictions"]

    start = time.perf_counter()
    with ThreadPoolExecutor(LOAD_CONCURRENCY) as pool:
        results = list(pool.map(one, range(LOAD_REQUESTS)))
    wall = time.perf_counter() - start
    assert [code for _, code, _ in results] == [200] * LOAD_REQUESTS
    key = "probabilities" if task == "classification" else "foreground"
    for _, _, got in results:  # batched with others or not, the same image gets the same answer
        assert got[0][key] == pytest.approx(expected[0][key], abs=1e-5)
    latencies = np.array([t for t, _, _ in results]) * 1000
    return (
        f"{LOAD_REQUESTS} requests, {LOAD_CONCURRENCY} concurrent, {wall:.1f} s ({LOAD_REQUESTS / wall:.1f}/s): "
        f"p50 {np.percentile(latencies, 50):.0f} ms, p95 {np.percentile(latencies, 95):.0f} ms"
    )


def test_bounded_load_all_answered(server, images):
    """48 requests, 8 at a time: every one answered correctly; p50/p95 latency printed."""
    measured = _load(server["http"], server["url"], (images / "benign.png").read_bytes(), server["task"])
    print(f"\n{server['task']}: {measured}")


def test_the_onnx_runtime_serves_the_same_answers_with_no_framework(onnx_export, images, tmp_path):
    """`sweep serve --runtime onnx` of an export made with --format onnx, then `--runtime keras` of the same folder,
    each in a fresh process under the same load test: the ONNX replica imports no Keras, TensorFlow, JAX or PyTorch
    (its own /healthz reads its sys.modules); the page is the same; its answers (temperature applied) are the Keras
    replica's within 1e-4 and the same classes, and those of the bundle's predict.py on the same files; p50/p95
    latency and the replica's resident memory are printed for both."""
    from search.outputs.deploy import ONNX_TOLERANCE

    model_dir, _ = onnx_export("classification")
    manifest = json.loads((model_dir / "export.json").read_text())
    assert manifest["calibration"]["temperature"] != 1.0  # the ONNX replica must apply it to match
    paths = sorted(images.iterdir())
    batch = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths]}
    seen, measured = {}, {}
    for runtime in ("onnx", "keras"):
        log = tmp_path / f"serve-{runtime}.log"
        proc, page = _start_server(model_dir, log, "--runtime", runtime)
        try:
            url = _base(page)
            health = requests.get(f"{url}/healthz", timeout=30).json()
            assert health["runtime"] == runtime
            frameworks = health["frameworks"]
            assert frameworks == [] if runtime == "onnx" else "keras" in frameworks, frameworks
            assert f"{runtime} runtime" in log.read_text()
            answers = requests.post(f"{url}/predict", json=batch, timeout=120).json()["predictions"]
            page_html = requests.get(url + "/", timeout=30).text
            load = _load(requests.Session(), url, (images / "benign.png").read_bytes(), "classification")
            replica = _replica(proc.pid)
            rss = f"replica resident memory {_memory_kb(replica, 'VmRSS') / 1024:.0f} MB"
            measured[runtime] = f"{load}; {rss} (peak {_memory_kb(replica, 'VmHWM') / 1024:.0f} MB)"
            seen[runtime] = (answers, page_html)
        finally:
            _stop_server(proc, log)
    (onnx, onnx_page), (keras, keras_page) = seen["onnx"], seen["keras"]
    assert onnx_page == keras_page  # the page says nothing of the runtime: it stays as it is
    # The ONNX replica against the bundle's predict.py, which shares no code with the service (ONNX Runtime, NumPy
    # and OpenCV in a script of its own): the same model.onnx on the same files gives the same answers.
    done = subprocess.run(
        [sys.executable, str(model_dir / "predict.py"), *map(str, paths), "--out", str(tmp_path / "bundle.csv")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bundle = pd.read_csv(tmp_path / "bundle.csv")
    assert [Path(p).name for p in bundle["image"]] == [p.name for p in paths]
    assert [a["class"] for a in onnx] == list(bundle["label"])
    served = np.array([[a["probabilities"][c] for c in manifest["classes"]] for a in onnx])
    np.testing.assert_allclose(served, bundle[[f"p_{c}" for c in manifest["classes"]]].to_numpy(), atol=1e-5)
    assert [a["class"] for a in onnx] == [a["class"] for a in keras]
    for got, want in zip(onnx, keras, strict=True):
        for c in manifest["classes"]:
            assert got["probabilities"][c] == pytest.approx(want["probabilities"][c], abs=ONNX_TOLERANCE)
    print("".join(f"\n{runtime} runtime: {text}" for runtime, text in measured.items()))


def test_bad_inputs_get_a_4xx_json_error_and_the_server_goes_on(server, images, tmp_path):
    url, http = server["url"], server["http"]
    good = (images / "benign.png").read_bytes()
    jpeg = (images / "pre_photo.jpg").read_bytes()
    cases = {
        "not_an_image.png": (b"these are not pixels\n" * 50, 400, "not a decodable image"),
        "truncated.png": (good[: len(good) // 2], 400, "truncated PNG"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], 400, "truncated JPEG"),
        "empty.png": (b"", 400, "empty file"),
        "huge.png": (good + bytes(21_000_000), 413, "the limit is 20 MB"),  # a real PNG, padded past 20 MB
        "enormous.png": (bytes(30_000_000), 413, "an image may be at most 20 MB"),  # refused before it is read
    }
    rgb = cv2.imread(str(images / "benign.png"))
    cases |= {  # read from the header, refused before a pixel is decoded
        "bomb.png": (_encoded(".png", np.zeros((10_000, 10_000), np.uint8)), 413, "over the limit of 40 megapixels"),
        "photo.webp": (_encoded(".webp", rgb), 415, "is a WEBP image; send it as PNG, JPEG, BMP or TIFF"),
        "scan.ppm": (_encoded(".ppm", rgb), 415, "is a PPM image"),
        # a PNG header claiming 9000×9000 (81 megapixels) with no pixel data: decoded, it would be a truncated PNG
        # (400); its size is refused from the header alone
        "crafted.png": (_png_header(9000, 9000), 413, "over the limit of 40 megapixels an image (9000×9000)"),
        "crafted_vast.png": (_png_header(100_000, 100_000), 413, "over the limit of 40 megapixels an image"),
    }
    for name, (data, status, message) in cases.items():
        r = http.post(f"{url}/predict", files={"file": (name, data)}, timeout=120)
        assert r.status_code == status and message in r.json()["error"], (name, r.status_code, r.text[:300])
    for ext in (".tiff", ".bmp"):  # the page's other two formats are taken
        r = http.post(f"{url}/predict", files={"file": (f"a{ext}", _encoded(ext, rgb))}, timeout=120)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1, (ext, r.text[:300])
    big = base64.b64encode(_encoded(".png", np.zeros((6000, 6000), np.uint8))).decode()  # 36 megapixels: legal
    r = http.post(f"{url}/predict", json={"images": [big] * 4}, timeout=120)  # 144 together: not
    assert r.status_code == 413 and "hold 144 megapixels; at most 120 a request" in r.json()["error"], r.text[:300]

    wrong_field = http.post(f"{url}/predict", files={"image": ("a.png", good)}, timeout=60)
    assert wrong_field.status_code == 422
    assert "no field 'file' in the upload (got: image)" in wrong_field.json()["error"]
    text_field = http.post(f"{url}/predict", files={"file": (None, "smear.png")}, timeout=60)
    assert text_field.status_code == 422 and "holds text, not a file" in text_field.json()["error"]
    plain = http.post(f"{url}/predict", data=good, headers={"content-type": "image/png"}, timeout=60)
    assert plain.status_code == 415 and "multipart/form-data" in plain.json()["error"]
    for body, message in (
        (b"{not json", "not valid JSON"),
        (b'{"image": "abc"}', "no non-empty list of strings under 'images'"),
        (b'{"images": ["%%%"]}', "images[0] is not valid base64"),
        (json.dumps({"images": [base64.b64encode(good).decode()] * 65}).encode(), "at most 64"),
    ):
        r = http.post(f"{url}/predict", data=body, headers={"content-type": "application/json"}, timeout=60)
        assert 400 <= r.status_code < 500 and message in r.json()["error"], (message, r.text[:300])

    # Another web page open on this machine may post here (a multipart POST needs no CORS preflight): refused; a page
    # whose domain name is rebound to 127.0.0.1 sends another Host: refused; the server's own page is answered.
    upload = {"file": ("a.png", good)}
    evil = http.post(f"{url}/predict", files=upload, headers={"Origin": "http://evil.example"}, timeout=60)
    assert evil.status_code == 403 and "the page at http://evil.example is refused" in evil.json()["error"]
    rebound = http.get(f"{url}/model", headers={"Host": "evil.example"}, timeout=60)
    assert rebound.status_code == 403 and "not to Host evil.example" in rebound.json()["error"]
    assert http.post(f"{url}/predict", files=upload, headers={"Origin": url}, timeout=60).status_code == 200

    # With a token (the classifier's server), /predict and /model refuse a request without it or with another one;
    # the page and the health check stay open. Without one (the segmenter's), no header is needed and one is ignored.
    wrong = "Bearer " + secrets.token_urlsafe(32)
    for method, path in (("POST", "/predict"), ("GET", "/model")):
        for headers, message in (({}, "needs its token"), ({"Authorization": wrong}, "is not this server's")):
            files = upload if method == "POST" else None
            r = requests.request(method, f"{url}{path}", files=files, headers=headers, timeout=60)
            if server["token"]:
                assert r.status_code == 401 and message in r.json()["error"], (path, r.status_code, r.text[:300])
                assert r.headers["WWW-Authenticate"] == "Bearer"
            else:
                assert r.status_code == 200, (path, r.text[:300])
    assert [requests.get(f"{url}{path}", timeout=60).status_code for path in ("/", "/healthz")] == [200, 200]

    still = _post_file(server, images / "benign.png")  # the server keeps serving
    assert still.status_code == 200 and len(still.json()["predictions"]) == 1
    assert http.get(f"{url}/healthz", timeout=30).json()["status"] == "ok"


WRONG_TYPES = ["", "text/plain", "image/png", "multipart/form-data", "application/x-www-form-urlencoded"]


def _hostile_request(good: bytes):
    """A hypothesis strategy of (content type, body, as multipart or not): random bytes, cut or corrupted images,
    wrong content types, malformed JSON and base64."""
    from hypothesis import strategies as st

    def corrupt(args):
        data, positions, value = args
        out = bytearray(data)
        for i in positions:
            out[i % len(out)] = value
        return bytes(out)

    files = st.one_of(
        st.binary(max_size=4096),
        st.integers(0, len(good)).map(lambda n: good[:n]),
        st.tuples(st.just(good), st.lists(st.integers(0, 1 << 20), min_size=1, max_size=8), st.integers(0, 255)).map(
            corrupt
        ),
        st.binary(max_size=64).map(lambda tail: good[:33] + tail),  # a real PNG header, then anything
    )
    as_json = st.one_of(
        st.text(max_size=200).map(str.encode),
        st.lists(files.map(lambda b: base64.b64encode(b).decode()), max_size=3).map(
            lambda images: json.dumps({"images": images}).encode()
        ),
        st.lists(st.text(max_size=40), max_size=3).map(lambda images: json.dumps({"images": images}).encode()),
        st.recursive(st.none() | st.integers() | st.text(max_size=10), lambda c: st.lists(c, max_size=3)).map(
            lambda doc: json.dumps({"images": doc}).encode()
        ),
    )
    return st.one_of(
        files.map(lambda b: ("multipart/form-data", b, True)),
        as_json.map(lambda b: ("application/json", b, False)),
        st.tuples(
            st.sampled_from(WRONG_TYPES),
            st.binary(max_size=512),
        ).map(lambda t: (t[0], t[1], False)),
    )


def test_hostile_requests_get_only_4xx_with_a_json_error(server, images):
    """Property-based: whatever a client sends, the answer is 200 (a valid image after all) or a 4xx with a JSON
    error, never a 5xx; the server keeps answering."""
    from hypothesis import HealthCheck, given, settings

    url, good, http = server["url"], (images / "benign.png").read_bytes(), server["http"]

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(_hostile_request(good))
    def check(request):
        kind, body, multipart = request
        if multipart:
            r = http.post(f"{url}/predict", files={"file": ("x.png", body)}, timeout=120)
        else:
            r = http.post(f"{url}/predict", data=body, headers={"content-type": kind}, timeout=120)
        assert r.status_code == 200 or (400 <= r.status_code < 500 and isinstance(r.json()["error"], str)), (
            r.status_code,
            r.text[:300],
        )

    check()
    assert _post_file(server, images / "benign.png").status_code == 200


def _replicas(server_pid: int) -> list[int]:
    """The pids of the Ray Serve replicas under `sweep serve` (Ray names each process after its replica)."""
    out = []
    for pid in _descendants(server_pid):
        with contextlib.suppress(OSError):
            if b"ServeReplica" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
    return out


def _replica(server_pid: int) -> int:
    """The pid of the Ray Serve replica that `sweep serve` started."""
    replicas = _replicas(server_pid)
    assert replicas, "no ServeReplica process under sweep serve"
    return replicas[0]


def _memory_kb(pid: int, field: str) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(f"{field}:"))
    return int(line.split()[1])


REPLICA_PEAK_GROWTH_MB = 1500  # the bound a hostile load must keep the replica's resident memory under


def test_hostile_load_leaves_good_requests_answered_and_memory_bounded(server, images):
    """Image bombs (a 10000×10000 PNG of 0.1 MB), formats not taken, garbage, over-budget batches and legal large
    images, 8 at a time among good requests: every good one answered correctly, the rest refused with a 4xx, and the
    replica's peak resident memory (VmHWM, reset first) grows by less than REPLICA_PEAK_GROWTH_MB."""
    url, good, http = server["url"], (images / "benign.png").read_bytes(), server["http"]
    expected = http.post(f"{url}/predict", files={"file": ("a.png", good)}, timeout=120).json()["predictions"]
    rgb = cv2.imread(str(images / "benign.png"))
    bomb = _encoded(".png", np.zeros((10_000, 10_000), np.uint8))
    large = _encoded(".png", cv2.resize(rgb, (6000, 6000)))  # 36 megapixels: legal, 108 MB decoded
    b64 = base64.b64encode(bomb).decode()
    hostile = [
        ("files", bomb, 413),
        ("json", json.dumps({"images": [b64] * 24}).encode(), 413),  # the 24 bombs in one request
        ("files", _encoded(".webp", rgb), 415),
        ("files", b"\x89PNG\r\n\x1a\n" + bytes(200), 400),
        ("files", large, 200),
    ]
    replica = _replica(server["pid"])
    with contextlib.suppress(OSError):  # Linux: reset the peak resident set to now (else growth reads high)
        Path(f"/proc/{replica}/clear_refs").write_text("5")
    before = _memory_kb(replica, "VmRSS")

    def one(i):
        kind, body, status = hostile[i // 2 % len(hostile)] if i % 2 else ("files", good, 200)
        start = time.perf_counter()
        if kind == "files":
            r = http.post(f"{url}/predict", files={"file": ("x.png", body)}, timeout=120)
        else:
            r = http.post(f"{url}/predict", data=body, headers={"content-type": "application/json"}, timeout=120)
        return i, status, r, time.perf_counter() - start

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(40)))
    key = "probabilities" if server["task"] == "classification" else "foreground"
    for i, status, r, _ in results:
        assert r.status_code == status, (i, r.status_code, r.text[:300])
        if status != 200:
            assert isinstance(r.json()["error"], str)
        elif i % 2 == 0:  # a good one: the answer it gets alone
            assert r.json()["predictions"][0][key] == pytest.approx(expected[0][key], abs=1e-5)
    growth = (_memory_kb(replica, "VmHWM") - before) / 1024
    good_ms = np.array([t for i, _, _, t in results if i % 2 == 0]) * 1000
    print(
        f"\n{server['task']}: 20 good among 20 hostile, 8 at a time: good p50 {np.percentile(good_ms, 50):.0f} ms, "
        f"p95 {np.percentile(good_ms, 95):.0f} ms; replica peak resident memory +{growth:.0f} MB"
    )
    assert growth < REPLICA_PEAK_GROWTH_MB


# ---- a real browser --------------------------------------------------------------------------------------------------


@pytest.fixture
def browser():
    """Headless Chromium through chromedriver (Debian's packages; `make test` installs them). Quit after the test,
    its processes checked gone."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    assert not missing, f"{missing} missing: `make test` installs them (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=960,1100"):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        family = {service.process.pid, *_descendants(service.process.pid)}
        driver.quit()
        _assert_all_gone(family, "Chromium")


def _wait_for(driver, condition: str, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {condition}"))


def _screenshot(driver, tmp_path: Path, name: str) -> Path:
    """A PNG of the whole page; with SWEEP_DOCS_SCREENSHOTS=1 it is also written to docs/ (the README shows it)."""
    height = driver.execute_script("return Math.ceil(document.body.getBoundingClientRect().bottom) + 24")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 900, "height": height, "deviceScaleFactor": 1, "mobile": False}
    )
    shot = tmp_path / name
    assert driver.save_screenshot(str(shot))
    assert cv2.imread(str(shot)).shape[:2] == (height, 900)
    if os.environ.get("SWEEP_DOCS_SCREENSHOTS") == "1":
        shutil.copy(shot, DOCS / name)
    return shot


def test_the_page_in_a_real_browser(server, images, browser, tmp_path):
    from selenium.webdriver.common.by import By

    manifest = json.loads((server["model_dir"] / "export.json").read_text())
    if server["token"]:  # opened without its token, the page asks for one
        browser.get(server["url"] + "/")
        assert browser.find_element(By.ID, "token-form").is_displayed()
    browser.get(server["page"])  # the address `sweep serve` printed, with the token (if any) in its fragment
    _wait_for(browser, "location.hash === ''", timeout=10)
    assert browser.current_url == server["url"] + "/"  # the token is off the address bar
    assert not browser.find_element(By.ID, "token-form").is_displayed()
    text = browser.find_element(By.TAG_NAME, "body").text
    assert browser.find_element(By.ID, "model-name").text == manifest["model"]
    assert "not a diagnostic device" in browser.find_element(By.ID, "disclaimer").text
    trained = browser.find_element(By.ID, "trained-on").text
    assert "synthetic blood-smear dataset" in trained and f"{manifest['data']['splits']['test']['n']} images" in trained
    rows = browser.find_elements(By.CSS_SELECTOR, "#metrics tbody tr")
    shown = {r.find_element(By.TAG_NAME, "th").text: float(r.find_element(By.TAG_NAME, "td").text) for r in rows}
    assert shown == pytest.approx({k: v for k, v in manifest["test"].items() if v is not None}, abs=5e-5)
    assert "Predicted" not in text  # nothing predicted yet
    card = browser.find_element(By.ID, "model-card")  # the model card, served by the app (no token needed)
    assert card.text == "Model card" and card.get_attribute("href") == server["url"] + "/model-card"
    answer = requests.get(card.get_attribute("href"), timeout=30)
    assert answer.ok and f"<h1>Model card: {manifest['model']}" in answer.text and "Intended use" in answer.text

    image = images / "pre.png"
    browser.find_element(By.ID, "file").send_keys(str(image))  # choose a file, as a person would
    _wait_for(browser, "document.body.dataset.state === 'done'")
    served = _post_file(server, image).json()["predictions"][0]
    if server["task"] == "classification":
        assert browser.find_element(By.ID, "predicted-class").text == f"Predicted: {served['class']}"
        bars = browser.find_elements(By.CSS_SELECTOR, ".prob-row")
        assert [b.get_attribute("data-class") for b in bars] == manifest["classes"]
        shown = {b.get_attribute("data-class"): float(b.get_attribute("data-probability")) for b in bars}
        assert shown == pytest.approx(served["probabilities"], abs=1e-6)
        top = browser.find_element(By.CSS_SELECTOR, ".prob-row.top").get_attribute("data-class")
        assert top == served["class"]
        widths = [b.find_element(By.CLASS_NAME, "bar").size["width"] for b in bars]
        track = bars[0].find_element(By.CLASS_NAME, "track").size["width"]
        np.testing.assert_allclose(np.array(widths) / track, [shown[c] for c in manifest["classes"]], atol=0.02)
    else:
        assert browser.find_element(By.ID, "foreground").text == f"{100 * served['foreground']:.1f}%"
    size = browser.execute_script(
        "const i = document.getElementById('preview'); return [i.complete, i.naturalWidth, i.naturalHeight]"
    )
    assert size == [True, 64, 64]  # the image (with its mask outlined, for the segmenter) rendered
    _screenshot(browser, tmp_path, f"serve_{server['task']}.png")

    browser.find_element(By.ID, "file").send_keys(str(server["log"]))  # not an image: the page says so
    _wait_for(browser, "document.body.dataset.state === 'error'")
    assert "not a decodable image" in browser.find_element(By.ID, "error").text


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_every_image_of_a_sweeps_report_loads_in_a_real_browser(task, request, browser):
    report = request.getfixturevalue(f"{task}_experiment") / "report" / "report.html"
    browser.get(report.as_uri())
    _wait_for(browser, "document.readyState === 'complete'")
    state = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(state) >= 3, state
    broken = [alt for alt, complete, w, h in state if not (complete and w > 0 and h > 0)]
    assert not broken, f"images that did not load in {report}: {broken}"


# ---- a missing or malformed model folder stops `sweep serve` before anything starts or binds ---------------------


def test_bad_model_folders_and_options_stop_before_binding(classification_experiment, tmp_path):
    import ray

    from search.outputs.export import EXPORT_FILES

    good = tmp_path / "good"
    assert _cli("export", classification_experiment, "--to", good)[0] == 0

    def broken(name: str, change) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for f in EXPORT_FILES:
            (folder / f).symlink_to(good / f)
        change(folder)
        return folder

    def replace(file: str, data: bytes):
        def change(folder: Path):
            (folder / file).unlink()
            (folder / file).write_bytes(data)

        return change

    model = (good / "model.keras").read_bytes()
    manifest = json.loads((good / "export.json").read_text())
    study = json.loads((good / "study.json").read_text())
    cases = [
        (tmp_path / "nowhere", "is not a folder"),
        (broken("no_model", lambda f: (f / "model.keras").unlink()), "is missing model.keras"),
        (broken("bad_json", replace("export.json", b"{task: ")), "export.json is malformed (JSONDecodeError"),
        (broken("no_task", replace("export.json", b'{"model": "unet"}')), "export.json is malformed (KeyError"),
        (
            broken("wrong_task", replace("export.json", json.dumps({**manifest, "task": "detection"}).encode())),
            "export.json is malformed (task, model, classes or input size)",
        ),
        (broken("bad_study", replace("study.json", b'{"train": ')), "study.json is malformed (JSONDecodeError"),
        (broken("list_study", replace("study.json", b"[1, 2]")), "study.json: not a recorded study"),
        (broken("no_train", replace("study.json", b'{"data": {}}')), "study.json: not a recorded study"),
        (  # read by the study schema, as a study file is
            broken("typed_study", replace("study.json", json.dumps({**study, "train": {"epochs": "ten"}}).encode())),
            "problem(s): train.epochs: 'ten' must be an integer >= 1; export it again with `sweep export EXPERIMENT",
        ),
        (broken("cut_model", replace("model.keras", model[: len(model) // 2])), "is not a Keras model archive"),
        (broken("text_model", replace("model.keras", b"not a zip")), "is not a Keras model archive"),
    ]
    port = free_port()
    for folder, message in cases:
        code, out, err = _cli("serve", folder, "--port", port)
        assert code == 2 and message in err and err.count("\n") == 1 and not out, (folder.name, err)
    for options, message in (
        (["--replicas=0"], "--replicas 0: must be at least 1"),
        (["--port=70000"], "1-65535"),
        (["--host=0.0.0.0"], f"--host 0.0.0.0 opens the server to the network: give it a token in ${TOKEN_ENV}"),
        (["--host=10.0.0.5", "--token=secret"], "the token must be at least 16 characters"),
    ):
        code, _, err = _cli("serve", good, *options)
        assert code == 2 and message in err and err.count("\n") == 1, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        code, _, err = _cli("serve", good, "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and err.count("\n") == 1, err
    assert not ray.is_initialized()  # stopped before starting anything


def test_replicas_and_host_take_effect_and_more_replicas_than_cpus_are_refused(onnx_export, images, tmp_path):
    """`--replicas 2 --host 127.0.0.2` (a loopback address, so no token): two replicas, each one a process that has
    loaded the model (ONNX Runtime's library in its memory map), behind one listener at 127.0.0.2 and none at
    127.0.0.1, the default; every request answered. More replicas than this machine's CPUs: one line, exit code 2,
    after the local Ray has counted them and before anything is served."""
    model_dir, _ = onnx_export("classification")
    refused = run_sweep("serve", model_dir, "--replicas", 1000, "--port", free_port())
    said = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and said.startswith("error: --replicas 1000 needs 1000 CPUs; this machine has ")
    assert "Traceback" not in refused.stderr and "the page: " not in refused.stdout

    log = tmp_path / "serve.log"
    proc, page = _start_server(model_dir, log, "--runtime", "onnx", "--replicas", 2, "--host", "127.0.0.2")
    try:
        port = int(page.split(":")[2].split("/")[0])
        assert page == f"http://127.0.0.2:{port}/" and "with 2 replica(s)" in log.read_text()
        replicas = _replicas(proc.pid)
        assert len(replicas) == 2, replicas
        for pid in replicas:
            assert "onnxruntime" in Path(f"/proc/{pid}/maps").read_text(), pid
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)

        def predict(_) -> int:
            with (images / "benign.png").open("rb") as f:
                return requests.post(f"{_base(page)}/predict", files={"file": f}, timeout=120).status_code

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(predict, range(8))) == [200] * 8
        seen = {}  # replica -> what it has served, from /healthz, which Ray Serve routes to either replica
        for _ in range(40):
            health = requests.get(f"{_base(page)}/healthz", timeout=30).json()
            seen[health["replica"]] = health["served"]
        assert len(seen) == 2, seen
        assert sum(s["requests"] for s in seen.values()) == 8 and all(s["requests"] > 0 for s in seen.values()), seen
    finally:
        _stop_server(proc, log)


# ---- what the page says, from hand-made manifests -----------------------------------------------------------------


def test_trained_on_says_what_data_and_how_much():
    from search.serving.serve import page_context, trained_on

    splits = {"train": {"n": 70}, "val": {"n": 15}, "test": {"n": 15}}
    manifest = {
        "task": "classification",
        "model": "m",
        "classes": ["Benign", "Pro"],
        "preprocessing": {"input_size": 224},
        "data": {"splits": splits},
        "test": {"accuracy": 0.9, "loss": 0.3, "roc_auc": None},
    }
    synthetic = trained_on(manifest, {"data": {"data_dir": None}})
    assert synthetic == (
        "Trained to predict the classes Benign, Pro from the built-in synthetic blood-smear dataset: computer-"
        "generated pictures, not images of patients, at 224×224 pixels. It learned from 70 images, was chosen on 15 "
        "others and tested on 15 images it never saw before."
    )
    real = trained_on({**manifest, "task": "segmentation"}, {"data": {"data_dir": "/data/kaggle/leukemia"}})
    assert real.startswith(
        "Trained to predict which pixels belong to cells (the foreground) from the images in the folder leukemia"
    )
    context = page_context(manifest, {"data": {"data_dir": None}}, "abc", 20_000_000, token_required=False)
    assert context["metrics"] == [("accuracy", 0.9), ("loss", 0.3)] and context["max_mb"] == "20"


def test_a_runtime_the_export_cannot_serve_is_refused_with_what_to_do():
    """--runtime onnx needs model.onnx (an export made with --format onnx) and runs on the CPU: `sweep serve` checks
    it right after the folder, before Ray starts, and says what to do (exit code 2 through SweepError)."""
    from search.serving.serve import runtime_problem

    onnx = {"onnx": {"file": "model.onnx"}}
    assert runtime_problem("keras", {}, 1.0) is None and runtime_problem("onnx", onnx, 0) is None
    assert "export it again with `sweep export EXPERIMENT --to DIR --format onnx`" in runtime_problem("onnx", {}, 0)
    assert "leave --gpus-per-replica at 0" in runtime_problem("onnx", onnx, 0.5)
    assert runtime_problem("tflite", onnx, 0) == "--runtime tflite: choose one of keras, onnx"


def test_requests_from_other_pages_and_other_hosts_are_told_apart():
    from search.serving.serve import origin_problem

    assert origin_problem("127.0.0.1:8000", None, loopback=True) is None  # curl, scripts
    assert origin_problem("127.0.0.1:8000", "http://127.0.0.1:8000", loopback=True) is None  # its own page
    assert origin_problem("[::1]:8000", "http://[::1]:8000", loopback=True) is None
    assert origin_problem("localhost:8000", "http://localhost:8000", loopback=True) is None
    assert "is refused" in origin_problem("127.0.0.1:8000", "http://evil.example", loopback=True)
    assert "is refused" in origin_problem("127.0.0.1:8000", "http://127.0.0.1:9000", loopback=True)  # another port
    assert "is refused" in origin_problem("127.0.0.1:8000", "null", loopback=True)  # a sandboxed or file: page
    assert "not to Host evil.example" in origin_problem("evil.example:8000", None, loopback=True)  # DNS rebinding
    assert "not to Host 127.0.0.1.evil.example" in origin_problem("127.0.0.1.evil.example", None, loopback=True)
    assert origin_problem("127.0.0.2:8000", None, loopback=True) is None  # all of 127.0.0.0/8 is this machine
    assert origin_problem("smears.clinic.example", "https://smears.clinic.example", loopback=False) is None
    assert origin_problem("10.0.0.5:8000", None, loopback=False) is None  # off loopback: any name it is reached by


def test_json_batches_are_read_or_refused_by_hand():
    from search.serving.serve import BadRequest, images_from_json

    png = cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    b64 = base64.b64encode(png).decode()
    got = images_from_json(json.dumps({"images": [b64, f"data:image/png;base64,{b64}"]}).encode())
    assert got == [("images[0]", png), ("images[1]", png)]
    for body, status in ((b"[]", 422), (b'{"images": []}', 422), (b'{"images": [1]}', 422)):
        with pytest.raises(BadRequest) as refused:
            images_from_json(body)
        assert refused.value.status == status


def test_tokens_app_names_and_addresses_by_hand():
    from search.serving.serve import app_name, authorization_problem, page_url, route_prefix, token_problem

    token = secrets.token_urlsafe(32)
    assert token_problem("127.0.0.1", None) is None and token_problem("::1", None) is None
    assert "python -c" in token_problem("0.0.0.0", None)  # how to make one
    assert token_problem("0.0.0.0", token) is None
    assert "at least 16" in token_problem("127.0.0.1", "with spaces in it, long enough")  # a given token is checked
    assert authorization_problem(None, None) is None  # no token: nothing asked
    assert authorization_problem(f"Bearer {token}", token) is None
    assert authorization_problem(f"bearer {token}", token) is None  # the scheme is case-insensitive (RFC 7235)
    for header in (None, "", token, f"Basic {token}", "Bearer ", f"Bearer {token[:-1]}", "Bearer é"):
        assert authorization_problem(header, token), header
    manifest = {"experiment": "/runs/My Study_2", "model": "inception_resnet_v2"}
    assert app_name(manifest, "0123456789ab") == "my-study-2-inception-resnet-v2-0123456789ab"
    assert route_prefix("x", shared=False) == "/" and route_prefix("x", shared=True) == "/m/x"
    assert page_url("127.0.0.1", 8000, "/", None) == "http://127.0.0.1:8000/"
    assert page_url("::", 80, "/m/x", "t") == "http://[::]:80/m/x/#token=t"


# ---- two models on one Ray cluster ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _ray_head(home: Path):
    """A Ray head as `ray start --head` starts one on a cluster's head node (127.0.0.1 here); its GCS address."""
    port, temp = free_port(), tempfile.mkdtemp(prefix="/tmp/rayt-")
    proc = subprocess.Popen(
        ray_head_command(port, free_port(), temp, "--num-cpus=3", "--include-dashboard=false"),
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        for line in proc.stdout:  # --block: it says so once the node is up, then waits
            if "Ray runtime started" in line:
                break
        assert proc.poll() is None, "ray start --head failed"
        yield f"127.0.0.1:{port}"
    finally:
        stop_node(proc)
        shutil.rmtree(temp, ignore_errors=True)


def test_two_models_on_one_cluster_each_under_its_own_name(
    classification_experiment, segmentation_experiment, images, browser, tmp_path
):
    """Two `sweep serve --address` on one Ray: each model under /m/<its name>/, both answering (the page too, under
    its prefix); the same model version a second time is refused; stopping one leaves the other answering."""
    from selenium.webdriver.common.by import By

    from search.serving.serve import app_name, model_version

    dirs = {task: tmp_path / task for task in ("classification", "segmentation")}
    for task, experiment in (("classification", classification_experiment), ("segmentation", segmentation_experiment)):
        assert _cli("export", experiment, "--to", dirs[task])[0] == 0
    # A user's machine: a first local sweep (or `ray get-auth-token --generate`) left Ray's token in ~/.ray, so a plain
    # `ray start --head` turns token authentication on, and a driver joining it needs RAY_AUTH_MODE=token, as the
    # README says and the refusal without it tells (Ray sends no token to an explicit address otherwise).
    home = tmp_path / "home"
    home.mkdir()
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    user = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")} | {"HOME": str(home)}
    subprocess.run([*ray_cli, "get-auth-token", "--generate"], env=user, capture_output=True, check=True)
    token, env = secrets.token_urlsafe(32), {"HOME": str(home), "RAY_AUTH_MODE": "token"}
    with _ray_head(home) as address:
        cls_log, seg_log = tmp_path / "cls.log", tmp_path / "seg.log"
        cls, cls_page = _start_server(
            dirs["classification"], cls_log, "--address", address, env={**env, TOKEN_ENV: token}
        )
        try:
            seg, seg_page = _start_server(dirs["segmentation"], seg_log, "--address", address, env=env)
        except AssertionError:
            _stop_server(cls, cls_log)
            raise
        for task, page in (("classification", cls_page), ("segmentation", seg_page)):
            name = app_name(json.loads((dirs[task] / "export.json").read_text()), model_version(dirs[task]))
            assert _base(page).endswith(f"/m/{name}"), page
        assert cls_page.endswith(f"/#token={token}") and "#" not in seg_page
        assert _base(cls_page).split("/m/")[0] == _base(seg_page).split("/m/")[0]  # one proxy: the cluster's
        auth = {"Authorization": f"Bearer {token}"}

        def predicts(page: str, headers: dict) -> bool:
            with (images / "benign.png").open("rb") as f:
                r = requests.post(f"{_base(page)}/predict", files={"file": f}, headers=headers, timeout=120)
            return r.status_code == 200 and len(r.json()["predictions"]) == 1

        assert predicts(cls_page, auth) and predicts(seg_page, {})
        assert requests.get(f"{_base(cls_page)}/model", timeout=60).status_code == 401  # each app its own token

        browser.get(seg_page)  # the page works under its prefix
        browser.find_element(By.ID, "file").send_keys(str(images / "pre.png"))
        _wait_for(browser, "document.body.dataset.state === 'done'")

        user_env = {**os.environ, **env, TOKEN_ENV: token, "PYTHONPATH": str(ROOT)}
        again = run_sweep("serve", dirs["classification"], "--address", address, env=user_env)
        said = again.stderr.strip().splitlines()[-1]  # after Ray's own lines on connecting to the cluster
        assert again.returncode == 2 and said.startswith("error: ") and "served on this cluster already" in said, said

        stranger = tmp_path / "stranger"  # a machine holding another token than the cluster's
        (stranger / ".ray").mkdir(parents=True)
        (stranger / ".ray" / "auth_token").write_text(secrets.token_hex(32))
        refused = run_sweep(
            "serve", dirs["classification"], "--address", address, env={**user_env, "HOME": str(stranger)}
        )
        said = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2 and said.startswith("error: cannot join the Ray cluster"), said
        assert "the token this machine sent is not the cluster's" in said, said

        _stop_server(seg, seg_log)
        assert requests.get(f"{_base(seg_page)}/healthz", timeout=60).status_code == 404
        assert predicts(cls_page, auth)  # the other model goes on
        _stop_server(cls, cls_log)
