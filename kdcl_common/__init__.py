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
