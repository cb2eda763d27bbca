"""An index on object storage: URIs, credentials, metadata in the database, the writer lock object.

`--db s3://bucket/path` (or gs://, az://, any URI LanceDB opens) puts the page table on object
storage. Credentials and endpoint come from the environment as object_store reads them
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`,
`AWS_ENDPOINT_URL` or `AWS_ENDPOINT`); an `http://` endpoint (a local MinIO or moto) turns on
`allow_http`, which object_store otherwise refuses.

A remote index is self-describing: its metadata (embedder, dpi, format version, a random index
id) is a one-row `meta` table beside `pages`, not a file, and the search cache lives on the
reading machine under the cache home, keyed by the URI and the index id (`cache_dir`).

Writers (through ragvl.store.lock.writer_lock) take a lock object, `<db>/_ragvl.lock`, created
with a conditional put (`If-None-Match: *`: exactly one creator wins). Its holder renews a
lease; a lock whose lease the server's clock says has run out (its holder died) is taken over
with `If-Match` on the expired object's ETag, so two waiters cannot both take it. Only S3 (and S3-compatible servers)
implement this here; gs:// and az:// indexes are written without a lock (untested).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Callable

from ..errors import RagvlError, short
from ..fsutil import cache_home

LOCK_NAME = "_ragvl.lock"
LEASE_S = 60.0  # a lock not renewed for this long is free; renewed every LEASE_S / 3


def is_uri(db: str | os.PathLike | None) -> bool:
    """True for an object-storage URI (`s3://...`), False for a local folder (or file://)."""
    if db is None or isinstance(db, Path):
        return False
    scheme, sep, _ = str(db).partition("://")
    return bool(sep) and scheme.isalnum() and scheme.lower() not in ("file",)


def normalize_db(db: str | os.PathLike) -> str | Path:
    """A URI stays a string (Path would fold its '//'); anything else is a local Path."""
    return str(db).rstrip("/") if is_uri(db) else Path(db)


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT") or None


def storage_options() -> dict[str, str]:
    """LanceDB storage options from the environment (object_store's own names).

    object_store reads most AWS_* variables itself; the endpoint is passed explicitly because
    the two common spellings differ, and `allow_http` because a plain-http endpoint is refused
    without it.
    """
    opts: dict[str, str] = {}
    endpoint = _endpoint()
    if endpoint:
        opts["aws_endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    if os.environ.get("AWS_ALLOW_HTTP"):
        opts["allow_http"] = os.environ["AWS_ALLOW_HTTP"]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    return opts


def connect(db: str):
    """lancedb.connect on a URI with the environment's storage options; one-line errors."""
    import lancedb

    try:
        return lancedb.connect(db, storage_options=storage_options())
    except Exception as e:  # bad scheme, missing credentials, unreachable endpoint
        raise RagvlError(f"{db}: cannot open ({storage_cause(e)})") from None


def storage_cause(e: BaseException) -> str:
    """A short cause for an object-store failure (object_store's own messages run to many lines)."""
    msg = str(e)
    low = msg.lower()
    if "nosuchbucket" in low or "bucket does not exist" in low:
        return "no such bucket"
    if "accessdenied" in low or "forbidden" in low or "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low:
        return "access denied: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    if "retryerror" in low or "connection refused" in low or "error sending request" in low or "dns" in low:
        return f"cannot reach the object store at {_endpoint() or 'its default endpoint'}"
    return short(e, 200)



def cache_dir(db: str, index_id: str) -> Path:
    """The local search cache of a remote index: one folder per (URI, index id).

    The index id is random per created index, so a table deleted and recreated at the same URI
    (whose versions restart at 1) never reuses the old cache.
    """
    key = hashlib.sha256(f"{db}\0{index_id}".encode()).hexdigest()[:24]
    return cache_home() / "search" / key


def new_index_id() -> str:
    return uuid.uuid4().hex


# -- the writer lock object -----------------------------------------------------------------------
def _split_s3(db: str) -> tuple[str, str]:
    rest = db.split("://", 1)[1]
    bucket, _, prefix = rest.partition("/")
    return bucket, (prefix.rstrip("/") + "/" if prefix else "")


def s3_client():
    """A boto3 S3 client for the environment's endpoint and credentials."""
    try:
        import boto3
    except ImportError:
        raise RagvlError("writing an s3:// index needs boto3 for its lock object: pip install 'ragvl[s3]'") from None
    return boto3.client("s3", endpoint_url=_endpoint(),
                        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


class ObjectLock:
    """A lease on `<db>/_ragvl.lock` created by a conditional put; see the module docstring.

    `acquire` waits (saying who holds the lock) until the object can be created or its lease has
    run out; a daemon thread renews the lease until `release`. A holder whose renewal fails (it
    stalled longer than a lease and was overtaken) sets `lost`, and `check()` raises before its
    next commit.
    """

    def __init__(self, db: str, lease_s: float = LEASE_S, log: Callable[[str], None] | None = None,
                 poll_s: float = 2.0):
        self.db, self.lease_s, self.poll_s = db, lease_s, poll_s
        self.log = log or (lambda m: None)
        self.bucket, prefix = _split_s3(db)
        self.key = prefix + LOCK_NAME
        self.client = s3_client()
        self.etag: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "lease_s": self.lease_s, "renewed": time.time()}).encode()

    def _code(self, e) -> str:
        return str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))

    def _try_create(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                               IfNoneMatch="*")["ETag"]
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return False
            raise

    def _holder(self) -> tuple[dict, str, float] | None:
        """(holder, etag, seconds since last renewal by the server's clock), or None when gone."""
        from botocore.exceptions import ClientError

        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as e:
            if self._code(e) in ("NoSuchKey", "404"):
                return None
            raise
        try:
            holder = json.loads(r["Body"].read())
        except ValueError:
            holder = {}
        now = parsedate_to_datetime(r["ResponseMetadata"]["HTTPHeaders"]["date"])
        age = (now - r["LastModified"]).total_seconds()
        return holder, r["ETag"], age

    def _try_take_over(self, etag: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                               IfMatch=etag)["ETag"]
            return True
        except ClientError as e:
            if self._code(e) in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409",
                                 "404"):
                return False
            raise

    def acquire(self, timeout: float | None = None) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        t0, said = time.monotonic(), False
        try:
            while True:
                if self._try_create():
                    break
                state = self._holder()
                if state is not None:
                    holder, etag, age = state
                    lease = float(holder.get("lease_s", self.lease_s))
                    if age > lease:
                        if self._try_take_over(etag):
                            self.log(f"{self.db}: took over the writer lock of {holder.get('host')} pid "
                                     f"{holder.get('pid')}, whose lease ran out {age - lease:.0f}s ago")
                            break
                    elif not said:
                        self.log(f"{self.db}: waiting for the writer lock held by {holder.get('host')} pid "
                                 f"{holder.get('pid')} (lease renewed {age:.0f}s ago, expires after "
                                 f"{lease:.0f}s without renewal)")
                        said = True
                if timeout is not None and time.monotonic() - t0 >= timeout:
                    who = (f"{state[0].get('host')} pid {state[0].get('pid')}" if state is not None
                           else "another process")
                    raise RagvlError(f"{self.db}: another writer holds the index ({who})")
                time.sleep(self.poll_s)
        except (ClientError, BotoCoreError) as e:
            raise RagvlError(f"{self.db}: cannot take the writer lock ({short(e, 200)})") from None
        self._thread = threading.Thread(target=self._renew_loop, daemon=True, name="ragvl-lock-lease")
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3) and self.renew():
            pass

    def renew(self) -> bool:
        """Extend the lease (a put conditional on our last ETag); False, and `lost`, if overtaken."""
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                               IfMatch=self.etag)["ETag"]
            return True
        except Exception:  # overtaken, or the store is unreachable: stop committing
            self.lost = True
            return False

    def check(self) -> None:
        """Raise if the lease was lost (call before each commit)."""
        if self.lost:
            raise RagvlError(f"{self.db}: lost the writer lock (the lease ran out); nothing more was committed")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.etag and not self.lost:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except Exception:  # expired and overtaken, or unreachable: the lease frees it anyway
                pass
        self.etag = None
