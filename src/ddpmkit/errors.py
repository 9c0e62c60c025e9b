"""Exception types. The CLI maps every DdpmkitError to one line on stderr and exit code 2."""


class DdpmkitError(Exception):
    """Base class for errors caused by user input (values, paths, files)."""


class ConfigError(DdpmkitError, ValueError):
    """An option has a value we cannot use (unknown name, out of range, incompatible)."""


class DataError(DdpmkitError):
    """A dataset is missing, empty, malformed, or fails its checksum."""


class CheckpointError(DdpmkitError):
    """A run directory or checkpoint is missing, unreadable or incompatible."""


class OutputError(DdpmkitError):
    """An output path cannot be written."""


class TrainingError(DdpmkitError):
    """Training had to stop (e.g. a non-finite loss); the last good checkpoint is kept."""


class SamplingError(DdpmkitError):
    """Sampling produced NaN or infinite values (damaged weights, or unstable sampler options)."""


class DataWarning(UserWarning):
    """Something in the data was left out or looks wrong (unreadable files skipped, duplicates)."""
