"""Code shared by the stages of kdcl-bench: configs, atomic writes, provenance, distributed
helpers, the architecture registry and the backbone artifact format."""


class KdclError(Exception):
    """An error caused by the user's input (config, data, files). The CLIs print its message
    without a traceback: the message must say what is wrong and how to fix it."""


class ConfigError(KdclError):
    """A config file or override that cannot be used."""


class DataError(KdclError):
    """A dataset that is missing or malformed."""


class NonFiniteLossError(KdclError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def user_message(error: KdclError) -> str:
    """The message to show for `error`. An error raised in a DataLoader worker reaches the main
    process re-raised with the worker's traceback in its text: keep only the message."""
    text = str(error)
    if "Original Traceback (most recent call last)" not in text:
        return text
    marker = f"{type(error).__name__}: "
    return text[text.rindex(marker) + len(marker):].strip() if marker in text else text
