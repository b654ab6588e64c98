"""A real HTTP server on 127.0.0.1 that serves COCO's URL layout from fixture files, with misbehaviours.

`/train2014/<name>.jpg`, `/val2014/<name>.jpg` and `/annotations/annotations_trainval2014.zip` (holding
`annotations/captions_train2014.json`), as images.cocodataset.org lays them out. Per path, a behaviour:
`slow` (the body trickles in), `missing` (404), `flaky` (500 on the first request), `truncated` (the first
response promises the whole file and closes half-way), `broken` (always 500). Range requests are honoured,
so a downloader can resume. Every request is logged for assertions.
"""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def fixture_jpeg(seed: int, size: int = 96) -> bytes:
    """A small, distinct, decodable JPEG (a colour gradient with a seeded block pattern)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float32)
    pixels = np.stack([np.add.outer(base, base) / 2, np.tile(base, (size, 1)), np.full((size, size), 80.0)], axis=-1)
    blocks = rng.integers(0, 255, (8, 8, 3)).repeat(size // 8, 0).repeat(size // 8, 1)
    image = Image.fromarray(((pixels + blocks) / 2).astype(np.uint8), "RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def captions_zip(document: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("annotations/captions_train2014.json", json.dumps(document))
        bundle.writestr("annotations/instances_train2014.json", "{}")
    return out.getvalue()


@dataclass
class CocoServer:
    files: dict[str, bytes]  # URL path → body
    behaviour: dict[str, str] = field(default_factory=dict)
    requests: Counter = field(default_factory=Counter)
    ranges: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                path = self.path
                with server.lock:
                    server.requests[path] += 1
                    seen = server.requests[path]
                    if self.headers.get("Range"):
                        server.ranges.append(f"{path} {self.headers['Range']}")
                kind = server.behaviour.get(path, "")
                body = server.files.get(path)
                if body is None or kind == "missing":
                    self.send_error(404, "Not Found")
                    return
                if kind == "broken" or (kind == "flaky" and seen == 1):
                    self.send_error(500, "Internal Server Error")
                    return
                start = 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if kind == "truncated" and seen == 1:
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if kind == "slow":
                    for offset in range(0, len(part), 1024):
                        self.wfile.write(part[offset : offset + 1024])
                        self.wfile.flush()
                        time.sleep(0.02)
                    return
                self.wfile.write(part)

        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> CocoServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
