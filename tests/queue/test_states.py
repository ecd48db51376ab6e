import itertools

import pytest

from gateway.errors import IllegalTransition
from gateway.queue.states import TaskStatus as T, UploadStatus as U, check_transition, upload_status

# The design's diagram, written out independently of the module's table.
ALLOWED = {
    ("queued", "processing"),
    ("processing", "completed"),
    ("processing", "reviewing"),
    ("processing", "failed"),
    ("processing", "queued"),  # lease expired / released / retry after backoff
    ("reviewing", "completed"),
    ("reviewing", "discarded"),
    ("failed", "queued"),
    ("queued", "discarded"),
    ("failed", "discarded"),
}


@pytest.mark.parametrize("a,b", list(itertools.product([s.value for s in T], repeat=2)))
def test_every_pair_of_states(a, b):
    if (a, b) in ALLOWED:
        check_transition(a, b)
    else:
        with pytest.raises(IllegalTransition):
            check_transition(a, b)


@pytest.mark.parametrize(
    "statuses,expected",
    [
        (["queued", "completed"], U.PROCESSING),
        (["processing", "reviewing"], U.PROCESSING),
        (["reviewing", "completed", "failed"], U.REVIEWING),
        (["completed", "discarded"], U.COMPLETED),
        (["discarded"], U.COMPLETED),
        ([], U.COMPLETED),
        (["failed", "failed"], U.FAILED),
        (["failed", "completed"], U.PARTIAL),
        (["failed", "discarded"], U.PARTIAL),
    ],
)
def test_upload_status(statuses, expected):
    assert upload_status(statuses) is expected
