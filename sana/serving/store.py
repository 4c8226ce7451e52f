"""Generated images kept in memory for `GET /v1/images/{id}/content`: bounded in count and bytes, oldest out."""

from __future__ import annotations

import re
import secrets
import threading
from collections import OrderedDict

ID_RE = re.compile(r"img_[A-Za-z0-9_-]{16,64}")
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class ImageStore:
    def __init__(self, *, max_items: int = 256, max_bytes: int = 512 * 2**20):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, output_format: str) -> str:
        """Keep `data` and return its new id (unguessable: an id is the only key to an image)."""
        image_id = "img_" + secrets.token_urlsafe(18)
        with self._lock:
            self._items[image_id] = (data, MEDIA_TYPES[output_format])
            self._bytes += len(data)
            while self._items and (len(self._items) > self.max_items or self._bytes > self.max_bytes):
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= len(old)
        return image_id

    def get(self, image_id: str) -> tuple[bytes, str] | None:
        """(bytes, media type), or None for an id never issued or already evicted."""
        if not ID_RE.fullmatch(image_id):
            return None
        with self._lock:
            return self._items.get(image_id)
