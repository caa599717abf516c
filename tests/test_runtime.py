"""Freezing the start-up heap: what the receiver and worker processes do once ready."""

from __future__ import annotations

import gc

from webhook_worker.runtime import YOUNG_GENERATION_THRESHOLD, freeze_startup_heap


def test_freezing_moves_the_live_objects_out_of_the_collectors_reach() -> None:
    threshold = gc.get_threshold()
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_GENERATION_THRESHOLD, *threshold[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert gc.get_freeze_count() == 0
