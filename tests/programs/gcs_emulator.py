"""The Cloud Storage emulator (gcp-storage-emulator), serving one bucket in memory.

    python tests/programs/gcs_emulator.py PORT BUCKET

Real Cloud Storage answers a media download with the object's generation in the
``x-goog-generation`` / ``x-goog-metageneration`` headers; tensorstore (orbax's
array store) reads them to version what it caches and rewrites (an OCDBT manifest).
The emulator leaves them out, so they are added here; nothing else is changed.
"""

import sys

from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # noqa: BLE001 - the emulator's own download answers 404
    obj = None
  if obj is not None:
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
  return _download(request, response, storage, *args, **kwargs)


objects.download = download_with_generation  # before the server module builds its routes

from gcp_storage_emulator.server import create_server  # noqa: E402


def main():
  port, bucket = int(sys.argv[1]), sys.argv[2]
  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.run()


if __name__ == "__main__":
  main()
