"""Errors whose message names the cause and the fix; `main` prints them without a traceback."""


class ConfigError(ValueError):
  """A config value is invalid (the message names the key and the valid choices)."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient; the last good checkpoint is kept."""


class DataError(ValueError):
  """An input file is unreadable or not what it should be (the message names the file)."""
