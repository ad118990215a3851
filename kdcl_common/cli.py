"""What every command does with an error: a KdclError (bad input) is one message and exit code
2, a stop on a signal (kdcl_common/stopping.py) says where it stopped and how to resume and
exits with 128 + the signal, and a Ctrl-C that stopped at once says how to resume. Never a
traceback for these."""
from __future__ import annotations

import sys
from typing import Callable

from . import KdclError, user_message
from .stopping import Stopped


def guarded(body: Callable[[], int | None]) -> int:
    try:
        return body() or 0
    except Stopped as e:
        print(str(e), file=sys.stderr)
        return e.exit_code
    except KdclError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped by Ctrl-C before a checkpoint of the current step could be written: "
              "run the same command with --resume to continue from the last checkpoint",
              file=sys.stderr)
        return 130
