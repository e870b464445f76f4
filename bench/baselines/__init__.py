"""The two strategies dyups-syncer replaces, as standalone programs, and the `baselines`
scenario that measures them against it.

- `full_push`: every upstream POSTed to every proxy every interval (kube2dyups-style
  scripts, full-push controllers).
- `poll_diff`: every interval, read the source and each proxy's `GET /detail`, POST the
  upstreams whose servers differ and DELETE the ones it created that are gone.

Both read the file source's YAML and talk plain HTTP, sequentially, with no debounce.
"""
