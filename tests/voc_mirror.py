"Test helpers for yolo_voc.download: an HTTP mirror on 127.0.0.1 and tars made by hand."
import hashlib
import http.server
import io
import re
import sys
import tarfile
import threading
import time
from email.utils import formatdate
from pathlib import Path

TRAINVAL, TEST = "VOCtrainval_06-Nov-2007.tar", "VOCtest_06-Nov-2007.tar"


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """Serves `files` (name -> bytes) as a web server does: an ETag (the MD5) and a Last-Modified date, `Range: bytes=N-`
    honoured unless `If-Range` names another version. `cut[name] = n` sends only n bytes of the next answer; names in
    `ignore_range` always get the whole file (200); `no_validators` sends no ETag or Last-Modified; `delay` seconds
    between 64 kB chunks make a slow server; after `down_after` requests, every answer is 503 (a server that went down).
    `log` records (name, Range), `if_range` the If-Range values received."""
    files, cut, log, if_range, ignore_range, no_validators, delay, down_after, requests = \
        {}, {}, [], [], set(), False, 0.0, None, [0]

    def log_message(self, *args): pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.log.append((name, self.headers.get("Range")))
        if self.headers.get("If-Range"): self.if_range.append(self.headers["If-Range"])
        self.requests[0] += 1
        if self.down_after is not None and self.requests[0] > self.down_after:
            return self.send_error(503, "Service Unavailable")
        if name not in self.files: return self.send_error(404, "Not Found")
        data, start = self.files[name], 0
        etag, modified = f'"{hashlib.md5(data).hexdigest()}"', formatdate(1_000_000_000 + len(data), usegmt=True)
        wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        same = self.headers.get("If-Range") in (None, etag, modified)
        if wanted and same and name not in self.ignore_range:
            start = int(wanted.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else: self.send_response(200)
        if not self.no_validators:
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", modified)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if (n := self.cut.pop(name, None)) is not None: body, self.close_connection = body[:n], True
        for i in range(0, len(body), 1 << 16):
            self.wfile.write(body[i:i + (1 << 16)])
            if self.delay: time.sleep(self.delay)


class QuietServer(http.server.ThreadingHTTPServer):
    "A threaded HTTP server that does not print a traceback when a client hangs up early (a refused download does)."
    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)): super().handle_error(request, client_address)


def serve(files: dict, **settings):
    "Start a mirror of `files` on 127.0.0.1: (base URL, handler class, server); `settings` override MirrorHandler's."
    attrs = {"files": dict(files), "cut": {}, "log": [], "if_range": [], "ignore_range": set(), "requests": [0]} | settings
    handler = type("Handler", (MirrorHandler,), attrs)
    server = QuietServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", handler, server


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def pack_voc(voc: Path, splits, year: str = "2007") -> bytes:
    "Tar `splits` of the VOC folder `voc` as the official tars are packed: split files and their images under VOCdevkit/VOC<year>/."
    ids = sorted({i for s in splits for i in (voc / "ImageSets" / "Main" / f"{s}.txt").read_text().split()})
    files = [f"ImageSets/Main/{s}.txt" for s in splits]
    files += [f"{d}/{i}.{e}" for i in ids for d, e in (("Annotations", "xml"), ("JPEGImages", "jpg"))]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for f in files: t.add(voc / f, f"VOCdevkit/VOC{year}/{f}", filter=_plain)
    return buf.getvalue()


LINK_TYPES = {"link": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
OTHER_TYPES = {"dir": tarfile.DIRTYPE, "fifo": tarfile.FIFOTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE}


def make_tar(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    """A tar of `members` in their order (a dict or (name, what) pairs): what is bytes for a file, ('link', target) for a
    symlink, ('hardlink', target) for a hard link, ('dir',), ('fifo',), ('chr',) or ('blk',)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, what in (members.items() if isinstance(members, dict) else members):
            info = tarfile.TarInfo(name)
            if isinstance(what, tuple):
                info.type = LINK_TYPES.get(what[0]) or OTHER_TYPES[what[0]]
                if what[0] in LINK_TYPES: info.linkname = what[1]
                if what[0] == "dir": info.mode = 0o755
                t.addfile(info)
            else:
                info.size = len(what)
                t.addfile(info, io.BytesIO(what))
    return buf.getvalue()


def tar_headers(data: bytes) -> list[tuple[int, str]]:
    "(offset, name) of each member header of the plain tar `data`, as Python's tarfile reads them."
    with tarfile.open(fileobj=io.BytesIO(data)) as t: return [(m.offset, m.name) for m in t.getmembers()]
