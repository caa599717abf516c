"""Freezing the start-up heap: what the receiver and worker processes do once ready."""

from __future__ import annotations

import gc

from webhook_worker.runtime import freeze_startup_heap


def test_freezing_moves_the_live_objects_out_of_the_collectors_reach() -> None:
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
