"""A local file server that answers as the Hugging Face hub does, for tests of the
"download on request" paths: point HF_ENDPOINT at it and nothing reaches the network."""
import hashlib
import http.server
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Tuple


@contextmanager
def serving(repo: str, folder: Path) -> Iterator[Tuple[str, List[Tuple[str, str]]]]:
    """Serve the files of `folder` as `repo`'s main revision; yields (the endpoint, the
    (method, file) requests answered so far)."""
    files: Dict[str, bytes] = {p.name: p.read_bytes() for p in folder.iterdir()}
    prefix, fetched = "/%s/resolve/main/" % repo, []

    class Hub(http.server.BaseHTTPRequestHandler):
        def answer(self, body: bool) -> None:
            name = self.path[len(prefix):] if self.path.startswith(prefix) else None
            if name not in files:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            fetched.append((self.command, name))
            self.send_response(200)
            self.send_header("X-Repo-Commit", "0" * 40)
            self.send_header("ETag", '"%s"' % hashlib.sha256(files[name]).hexdigest())
            self.send_header("Content-Length", str(len(files[name])))
            self.end_headers()
            if body:
                self.wfile.write(files[name])

        def do_HEAD(self) -> None:
            self.answer(False)

        def do_GET(self) -> None:
            self.answer(True)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield "http://127.0.0.1:%d" % server.server_port, fetched
    finally:
        server.shutdown()


def hub_env(endpoint: str, hf_home: Path, pythonpath: str) -> Dict[str, str]:
    """The environment of a fresh process that downloads from `endpoint` into an empty
    Hugging Face home (huggingface_hub reads both when it is imported)."""
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), PYTHONPATH=pythonpath,
               HF_HUB_DISABLE_TELEMETRY="1")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
                 "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE"):
        env.pop(name, None)
    return env
