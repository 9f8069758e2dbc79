"""Errors raised by the builders; messages name the file and the fix."""


class ManualDataError(FileNotFoundError):
  """The manual_dir or a file the builder needs is missing; says what to put where."""


class CorruptFileError(ValueError):
  """An input file cannot be read or has unexpected content; names the file."""


class SplitLeakError(ValueError):
  """One patient or scan would land in two splits, or twice in one; names both places."""


class PathBackendError(ValueError):
  """A path names a storage (gs://, s3://, ...) that cannot be read here; says what to install."""
