"""How fast wrong tokens are answered, for the console's login and the /ops API alike.

OWASP: limit guessing globally and per source, without locking the right operator out.
Behind `ssh -L` every operator is 127.0.0.1, so a per-address limit alone would let one
person's typos delay another's login, and parallel requests would guess faster than serial
ones. Here the token is checked at once, so a correct one is never delayed; a wrong one is
answered only at its turn (see `LoginThrottle`).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

LOGIN_SPACING_SECONDS = 0.5  # at most two wrong tokens answered per second, globally


class LoginThrottle:
    """How fast wrong console tokens are answered (OWASP: limit guessing globally and per
    source, without locking the right operator out).

    The token is checked at once, so a correct one is never delayed. A wrong one is answered
    only at its turn: globally one wrong answer per `spacing` seconds (a queue of turns, so
    parallel guesses line up behind each other), and per address after `free` failures
    within `window` seconds a delay of `base * 2**k` (capped) on top of that address's
    previous turn. A guesser gets no answer before its turn, and a success is only ever
    answered to the connection that asked: holding N connections open buys N guesses once,
    then no more tries per second than guessing serially. Memory is bounded
    (`max_addresses`, oldest forgotten first)."""

    def __init__(
        self,
        *,
        spacing: float = LOGIN_SPACING_SECONDS,
        free: int = 3,
        base: float = 0.5,
        cap: float = 8.0,
        window: float = 300.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._spacing, self._free, self._base, self._cap = spacing, free, base, cap
        self._window, self._max = window, max_addresses
        self._next_turn = 0.0  # monotonic time of the next free global turn
        # address -> (failures in the window, window start, that address's next turn)
        self._addresses: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def _turn(self, address: str, now: float) -> float:
        global_turn = max(now, self._next_turn)
        self._next_turn = global_turn + self._spacing
        count, first, previous = self._addresses.pop(address, (0, now, now))
        if now - first > self._window:
            count, first, previous = 0, now, now
        count += 1
        delay = (
            0.0
            if count <= self._free
            else min(self._cap, self._base * 2 ** (count - self._free - 1))
        )
        turn = max(global_turn, max(now, previous) + delay)
        self._addresses[address] = (count, first, turn)
        while len(self._addresses) > self._max:
            self._addresses.popitem(last=False)
        return turn

    async def failed(self, address: str) -> None:
        """Wait for this wrong attempt's turn to be answered."""
        now = time.monotonic()
        await asyncio.sleep(self._turn(address, now) - now)

    def __len__(self) -> int:
        """How many addresses it remembers."""
        return len(self._addresses)

    def succeeded(self, address: str) -> None:
        self._addresses.pop(address, None)
