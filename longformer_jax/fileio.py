"""Every path a user gives or a run writes, local or ``gs://``, through one layer.

Paths are ``etils.epath.Path`` (what orbax, tfds and grain use): a local path and
a Cloud Storage path behave the same here, so a run never asks which store it is
on. :func:`path` turns what a user typed into one (local paths made absolute).

* Reads: :func:`read_text`, :func:`read_bytes`, :func:`open_read` (a stream, gzip
  and xz included for data files), :func:`read_json`.
* Writes that leave nothing half-written: :func:`write_atomic` (a temporary file
  renamed into place locally; a single-object upload on a bucket, which appears
  whole or not at all), :func:`append_text`, :func:`staged_dir` (a directory
  assembled locally and moved or uploaded into place, its marker file last).
* Libraries that only read local files (safetensors' memory map, tokenizers,
  array_record) get :func:`local_copy` / :func:`local_mirror`: the remote object
  copied once into the per-host cache (:func:`cache_dir`), refreshed when the
  bucket's copy changes.

Against the Cloud Storage emulator (``STORAGE_EMULATOR_HOST`` /
``TENSORSTORE_GCS_HTTP_URL`` set) the clients are configured not to probe services
the emulator lacks (:func:`configure_clients`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import lzma
import os
import shutil
import tempfile
import time
from typing import Iterator

from etils import epath

log = logging.getLogger("longformer_jax")

PathLike = str | os.PathLike
REMOTE_SCHEMES = ("gs://", "s3://")
CACHE_ENV = "LONGFORMER_JAX_CACHE"
COPY_CHUNK = 16 << 20


def configure_clients() -> None:
  """With an emulator set, the GCS clients talk to it without probing what it lacks:
  gcsfs's bucket-layout lookup (a gRPC service the emulator does not serve, which
  warns on every call and can wait a minute for its deadline) and the credential
  search of tensorstore (orbax's array store), which warns when none is found.

  Always: bucket paths go through gcsfs (fsspec) even where TensorFlow is installed (the
  ``prepare`` extra), where epath would otherwise switch them to ``tf.io.gfile``: one
  client, configured here, whichever packages a host has (``EPATH_USE_TF`` set by the
  user wins)."""
  os.environ.setdefault("EPATH_USE_TF", "false")
  if os.environ.get("STORAGE_EMULATOR_HOST"):
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  if os.environ.get("TENSORSTORE_GCS_HTTP_URL") and not os.environ.get(
      "GOOGLE_APPLICATION_CREDENTIALS"):
    os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
  try:
    import fsspec.config
  except ImportError:
    return
  # Other processes write the same bucket (hosts, a restarted run): listings are read
  # fresh, never from a client's cache of an earlier listing.
  fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


configure_clients()


# ---- paths ---------------------------------------------------------------------------


def is_remote(p: PathLike) -> bool:
  return os.fspath(p).startswith(REMOTE_SCHEMES)


def path(p: PathLike) -> epath.Path:
  """A user's path as an ``epath.Path``: a bucket path as given, a local one absolute
  with ``~`` expanded."""
  s = os.fspath(p)
  if is_remote(s):
    return epath.Path(s)
  return epath.Path(os.path.abspath(os.path.expanduser(s)))


def join(p: PathLike, *parts: str) -> epath.Path:
  return path(p).joinpath(*parts)


def exists(p: PathLike) -> bool:
  return path(p).exists()


def isfile(p: PathLike) -> bool:
  return path(p).is_file()


def isdir(p: PathLike) -> bool:
  return path(p).is_dir()


def listdir(p: PathLike) -> list[str]:
  """The names in directory ``p``, sorted ([] when it does not exist)."""
  d = path(p)
  if not d.is_dir():
    return []
  return sorted(c.name for c in d.iterdir())


def walk_files(p: PathLike) -> list[str]:
  """Paths of every file under ``p``, relative to it (``/``-separated), sorted."""
  out, stack = [], [(path(p), "")]
  while stack:
    directory, rel = stack.pop()
    if not directory.is_dir():
      continue
    for child in directory.iterdir():
      name = f"{rel}{child.name}"
      if child.is_dir():
        stack.append((child, name + "/"))
      else:
        out.append(name)
  return sorted(out)


def size_and_mtime(p: PathLike) -> tuple[int, float]:
  st = path(p).stat()
  return int(st.length), float(st.mtime)


def makedirs(p: PathLike) -> epath.Path:
  d = path(p)
  d.mkdir(parents=True, exist_ok=True)
  return d


def rmtree(p: PathLike) -> None:
  """Removes a directory and everything under it, if it exists."""
  d = path(p)
  if d.exists():
    d.rmtree(missing_ok=True)


def remove(p: PathLike) -> None:
  f = path(p)
  if f.exists():
    f.unlink()


def first_missing(root: PathLike, p: PathLike) -> epath.Path | None:
  """The outermost folder from ``root`` down to ``p`` that does not exist yet (what to
  remove to undo creating ``p``); None when ``p`` exists."""
  root, target = path(root), path(p)
  chain = [target]
  while chain[-1] != root and chain[-1].parent != chain[-1]:
    chain.append(chain[-1].parent)
  return next((d for d in reversed(chain) if not d.exists()), None)


@contextlib.contextmanager
def file_lock(p: PathLike):
  """An exclusive lock on local file ``p`` (created) for processes sharing this host's
  disk (a bucket has no locks: a bucket's data is prepared by one process)."""
  import fcntl
  lock = path(p)
  lock.parent.mkdir(parents=True, exist_ok=True)
  with open(lock, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


# ---- reading ---------------------------------------------------------------------------


def read_bytes(p: PathLike) -> bytes:
  return path(p).read_bytes()


def read_text(p: PathLike) -> str:
  return path(p).read_bytes().decode("utf-8")


def read_json(p: PathLike):
  return json.loads(read_text(p))


@contextlib.contextmanager
def open_read(p: PathLike, *, text: bool = False, decompress: bool = False):
  """A binary (or UTF-8 text) stream of ``p``; with ``decompress``, gzip and xz files
  (recognised by their first bytes) are decompressed as they are read."""
  with path(p).open("rb") as raw:
    stream = raw
    if decompress:
      magic = raw.read(6)
      raw.seek(0)
      if magic[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=raw)
      elif magic == b"\xfd7zXZ\x00":
        stream = lzma.LZMAFile(raw)
    if text:
      import io
      stream = io.TextIOWrapper(stream, encoding="utf-8")
    yield stream


# ---- writing ---------------------------------------------------------------------------


def write_atomic(p: PathLike, data: str | bytes) -> None:
  """Writes ``data`` so that readers see the old file or the new one, never a part:
  locally a temporary file renamed into place, on a bucket one object upload."""
  dst = path(p)
  payload = data.encode("utf-8") if isinstance(data, str) else data
  if is_remote(dst):
    dst.write_bytes(payload)
    return
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = f"{dst}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, dst)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(p: PathLike, obj, **kwargs) -> None:
  write_atomic(p, json.dumps(obj, indent=2, sort_keys=True, **kwargs))


def append_text(p: PathLike, text: str) -> None:
  """Appends ``text`` to ``p``: in place locally; on a bucket (whose objects cannot be
  appended to) the object is rewritten whole, old content first."""
  dst = path(p)
  if not is_remote(dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "a", encoding="utf-8") as f:
      f.write(text)
    return
  old = dst.read_bytes() if dst.exists() else b""
  dst.write_bytes(old + text.encode("utf-8"))


def copy_file(src: PathLike, dst: PathLike) -> None:
  """Copies one file between any two stores (streamed), atomically at ``dst``."""
  s, d = path(src), path(dst)
  if not is_remote(d):
    d.parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{d}.tmp-{os.getpid()}"
    try:
      with s.open("rb") as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo, COPY_CHUNK)
      os.replace(tmp, d)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    return
  with s.open("rb") as fi, d.open("wb") as fo:
    shutil.copyfileobj(fi, fo, COPY_CHUNK)


def copy_tree(src: PathLike, dst: PathLike, *, last: tuple[str, ...] = ()) -> None:
  """Copies every file under ``src`` to ``dst``; the files named in ``last`` (relative
  paths) go after all others, so a reader waiting for them sees a complete tree."""
  files = walk_files(src)
  for rel in [f for f in files if f not in last] + [f for f in last if f in files]:
    copy_file(join(src, rel), join(dst, rel))


@contextlib.contextmanager
def staged_dir(out_dir: PathLike, *, marker: str | None = None,
               allow_existing: bool = False) -> Iterator[str]:
  """Yields a local scratch directory that becomes ``out_dir`` when the block ends;
  when it raises, nothing of it is left.

  Locally the scratch directory sits beside ``out_dir`` and is renamed to it. For a
  bucket it is a local temporary directory uploaded file by file, ``marker`` (the
  file readers look for first, e.g. ``config.json``) last; a failed upload removes
  what it wrote. ``out_dir`` must not hold files unless ``allow_existing``.
  """
  out = path(out_dir)
  if not allow_existing and listdir(out):
    raise FileExistsError(f"{out} exists and is not empty")
  if not is_remote(out):
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
      yield tmp
      if out.exists() and not listdir(out):
        out.rmdir()
      elif out.exists():  # allow_existing: the new files join the old ones
        copy_tree(tmp, out)
        shutil.rmtree(tmp)
        return
      os.replace(tmp, out)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return
  with tempfile.TemporaryDirectory(prefix="longformer_jax-") as tmp:
    yield tmp
    try:
      copy_tree(tmp, out, last=(marker,) if marker else ())
    except BaseException:
      if not allow_existing:
        rmtree(out)
      raise


# ---- the per-host cache of remote files -------------------------------------------------


def cache_dir() -> str:
  """This host's cache of copies of remote files: ``$LONGFORMER_JAX_CACHE``, else
  ``$XDG_CACHE_HOME/longformer_jax``, else ``~/.cache/longformer_jax``."""
  if os.environ.get(CACHE_ENV):
    return os.path.abspath(os.path.expanduser(os.environ[CACHE_ENV]))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "longformer_jax")


def cache_path(p: PathLike) -> str:
  """Where this host keeps its copy of remote ``p``: ``cache_dir()/remote/gs/BUCKET/KEY``."""
  s = os.fspath(p)
  scheme, _, rest = s.partition("://")
  return os.path.join(cache_dir(), "remote", scheme, *[x for x in rest.split("/") if x])


def local_copy(p: PathLike) -> str:
  """A local file with ``p``'s bytes: ``p`` itself when local, else this host's cached
  copy, fetched when missing or older than the bucket's object (or of another size)."""
  if not is_remote(p):
    return os.fspath(path(p))
  local = cache_path(p)
  size, mtime = size_and_mtime(p)
  if os.path.isfile(local):
    st = os.stat(local)
    if st.st_size == size and st.st_mtime >= mtime:
      return local
  copy_file(p, local)
  return local


def local_mirror(p: PathLike) -> str:
  """A local directory with the files of directory ``p`` (:func:`local_copy` of each)."""
  if not is_remote(p):
    return os.fspath(path(p))
  for rel in walk_files(p):
    local_copy(join(p, rel))
  return cache_path(p)


def wait_for(p: PathLike, *, what: str, timeout_s: float, poll_s: float = 2.0) -> None:
  """Waits until ``p`` exists (written by another host), logging every minute;
  TimeoutError naming it after ``timeout_s``."""
  t0 = last = time.time()
  while not exists(p):
    now = time.time()
    if now - t0 > timeout_s:
      raise TimeoutError(f"waited {timeout_s:.0f}s for {what} at {p}")
    if now - last >= 60:
      log.info("waiting for %s at %s (%.0fs)", what, p, now - t0)
      last = now
    time.sleep(poll_s)
