"""Exit codes of every command: 0 done, 1 a problem was found or a step failed, 2 bad
configuration or usage (the message says which variable or option, and a good value), 3 a
migration gave up waiting for the lock another run holds (the message names it)."""

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
