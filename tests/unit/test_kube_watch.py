"""ListWatch.stop: unblocking a watch must never raise, whatever urllib3 says."""

from __future__ import annotations

import pytest

from syncer import log
from syncer.sources.kube_watch import ListWatch


class Response:
    def __init__(self, error: type[BaseException]) -> None:
        self.error = error
        self.closed = False

    def shutdown(self) -> None:
        raise self.error("urllib3 refuses")

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("error", [AttributeError, OSError, ValueError, RuntimeError])
def test_stop_closes_the_response_when_urllib3_cannot_shut_it_down(error):
    watch = ListWatch(kind="services", list_fn=lambda **_: None, on_change=print, log=log.get("t"))
    response = Response(error)
    watch._response = response
    watch.stop()  # urllib3 2.x raises ValueError or RuntimeError here: no crash log
    assert response.closed
